//! A light receiver's own transport, once the session descriptions are agreed: ICE checks,
//! the DTLS client, and SRTP for the sample and for RTCP.
//!
//! Why: one webrtc-rs peer connection holds some 88 KB once connected (its DTLS, SRTP and ICE
//! state, its pipeline's queues; BENCHMARKS.md, "The load tester's own cost"), most of what a
//! simulated peer cost. A light receiver needs little of it: it measures media from the clear
//! headers ([`crate::light`]), decrypts one packet in 64 and sends a receiver report a second.
//! So a light connection keeps its peer connection only to write and read session
//! descriptions (offers, answers, renegotiations), never hands it a datagram or runs its
//! timers, and does the rest here, as the node's own transport does from the other end
//! (`sfu_node::media::transport`, whose DTLS it shares).
//!
//! ICE: toward an ICE-lite server (this project's node), and toward a full one that offered
//! (Janus), the roles are fixed by RFC 8445 §6.1.1. The client checks an ICE-lite server as
//! the controlling agent, nominating the one pair it checks (USE-CANDIDATE; a lite server
//! takes the first nomination), and DTLS starts once a check is answered. A full-ICE server
//! that offered is the controlling agent: the client answers its checks (they prove they
//! know our password), checks it back as the controlled agent, and starts DTLS once the
//! server nominates a pair, toward the address that nomination came from.
//!
//! A sampled packet is decrypted with the rollover counter the caller knows from the headers
//! of every packet ([`crate::stats::Reception::rollovers`]): a decryptor that sees one packet
//! in 64 cannot tell whether the sequence number wrapped between its first sample and the
//! stream's first packet, and would fail a whole stream when it did.
//!
//! Consent (RFC 7675): a check every [`CONSENT_INTERVAL`] once connected; the server also
//! counts our authenticated receiver reports as signs of life.

use bytes::BytesMut;
use rtc::crypto::RTCCryptoProvider;
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::rtcp;
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;
use rtc::stun::attributes::{
    ATTR_ICE_CONTROLLED, ATTR_ICE_CONTROLLING, ATTR_PRIORITY, ATTR_USE_CANDIDATE, ATTR_USERNAME,
};
use rtc::stun::fingerprint::FINGERPRINT;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::{BINDING_REQUEST, BINDING_SUCCESS, Message, Setter, TransactionId};
use rtc::stun::textattrs::TextAttribute;
use sfu_node::media::transport::dtls::{Dtls, DtlsEvent, SrtpKeys};
use sfu_node::media::transport::srtp::{Profile, RtpProtector};
use sfu_node::media::transport::stun;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Between checks until one is answered: RFC 8445's pacing (Ta), as browsers check.
const CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Between consent checks once connected (RFC 7675 asks for 5 s on average; the node lets a
/// connection go after some 30 s without one).
pub const CONSENT_INTERVAL: Duration = Duration::from_secs(4);
/// A host candidate's priority (RFC 8445 §5.1.2.1: type preference 126, one component).
const PRIORITY: u32 = (126 << 24) | (65_535 << 8) | 255;

/// Why the transport could not be set up or a datagram was refused.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("the session description has no {0}")]
    Sdp(&'static str),
    #[error("DTLS: {0}")]
    Dtls(#[from] sfu_node::media::transport::dtls::DtlsError),
    #[error("SRTP: {0}")]
    Srtp(String),
    #[error("STUN: {0}")]
    Stun(String),
}

fn srtp_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Srtp(e.to_string())
}

/// What a datagram brought.
#[derive(Debug)]
pub enum TransportEvent {
    /// DTLS is done: media can be decrypted.
    Connected,
    /// The server closed DTLS.
    Closed,
    /// RTCP from the server (sender reports).
    Rtcp(Vec<Box<dyn rtcp::Packet>>),
    /// A decrypted RTP packet (the sample).
    Rtp(rtc::rtp::packet::Packet),
}

/// The certificate every light connection of this process presents (and its peer connection
/// announces): one key pair for all, as one browser has for all its tabs of a site, so that
/// joining does not generate a key per peer.
pub fn certificate() -> Result<&'static RTCCertificate, TransportError> {
    static CERT: OnceLock<RTCCertificate> = OnceLock::new();
    if let Some(c) = CERT.get() {
        return Ok(c);
    }
    let c = sfu_node::media::peer::worker_certificate().map_err(|e| {
        TransportError::Dtls(sfu_node::media::transport::dtls::DtlsError::Dtls(
            e.to_string(),
        ))
    })?;
    Ok(CERT.get_or_init(|| c))
}

/// What the transport needs from the two session descriptions.
#[derive(Debug, PartialEq, Eq)]
pub struct Agreed {
    pub local_ufrag: String,
    pub local_pwd: String,
    pub remote_ufrag: String,
    pub remote_pwd: String,
    /// The hex of the server's `a=fingerprint:sha-256`.
    pub fingerprint: String,
    /// The server's first UDP candidate of component 1.
    pub remote: SocketAddr,
    /// Whether we are the controlling agent (see the module documentation).
    pub controlling: bool,
}

/// The first value of `a=<name>:` in `sdp` (session or media level: bundled sections share
/// them).
fn attribute<'a>(sdp: &'a str, name: &str) -> Option<&'a str> {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a="))
        .find_map(|a| a.strip_prefix(name)?.strip_prefix(':'))
}

impl Agreed {
    /// What `local` and `remote` agreed (`offered`: whether `local` is the offer); `None`
    /// unless we take the DTLS client's role and the ICE roles are ones the transport plays
    /// (see the module documentation).
    pub fn from_sdp(
        local: &str,
        remote: &str,
        offered: bool,
    ) -> Result<Option<Self>, TransportError> {
        let lite = remote.lines().any(|l| l.trim_end() == "a=ice-lite");
        let client = attribute(local, "setup") == Some("active")
            || attribute(remote, "setup") == Some("passive");
        // A full-ICE server answering our offer would have to settle the roles with us.
        let roles_fixed = lite || !offered;
        if !roles_fixed || !client {
            return Ok(None);
        }
        let fingerprint = attribute(remote, "fingerprint")
            .and_then(|f| f.strip_prefix("sha-256 "))
            .ok_or(TransportError::Sdp("sha-256 fingerprint"))?;
        let remote_addr = remote
            .lines()
            .filter_map(|l| l.trim_end().strip_prefix("a=candidate:"))
            .find_map(|c| {
                // foundation component transport priority address port typ type ...
                let f: Vec<&str> = c.split_whitespace().collect();
                let udp = f.get(2)?.eq_ignore_ascii_case("udp");
                (f.get(1) == Some(&"1") && udp)
                    .then(|| {
                        Some(SocketAddr::new(
                            f.get(4)?.parse().ok()?,
                            f.get(5)?.parse().ok()?,
                        ))
                    })
                    .flatten()
            })
            .ok_or(TransportError::Sdp("UDP candidate"))?;
        let field = |sdp, name, what| {
            attribute(sdp, name)
                .map(str::to_owned)
                .ok_or(TransportError::Sdp(what))
        };
        Ok(Some(Self {
            local_ufrag: field(local, "ice-ufrag", "local ice-ufrag")?,
            local_pwd: field(local, "ice-pwd", "local ice-pwd")?,
            remote_ufrag: field(remote, "ice-ufrag", "remote ice-ufrag")?,
            remote_pwd: field(remote, "ice-pwd", "remote ice-pwd")?,
            fingerprint: fingerprint.to_owned(),
            remote: remote_addr,
            controlling: lite,
        }))
    }
}

/// The SRTP contexts of a connected transport.
struct Keys {
    rtp_in: RtpProtector,
    rtcp_in: Context,
    rtcp_out: Context,
}

/// See the module documentation.
pub struct Transport {
    local: SocketAddr,
    agreed: Agreed,
    crypto: Arc<dyn RTCCryptoProvider>,
    tie_breaker: u64,
    /// The transaction of the latest check sent (an answer to an older one still counts: the
    /// server answers each).
    checks: [Option<TransactionId>; 4],
    /// When the next check is due.
    next_check: Instant,
    /// One of our checks was answered; the server nominated a pair (controlled only).
    answered: bool,
    nominated: bool,
    /// Started once ICE is done (see the module documentation).
    dtls: Option<Dtls>,
    keys: Option<Keys>,
    /// Datagrams to send, and where.
    out: Vec<(SocketAddr, BytesMut)>,
}

impl Transport {
    pub fn new(local: SocketAddr, agreed: Agreed, now: Instant) -> Result<Self, TransportError> {
        let crypto = rtc::crypto::default_provider().map_err(srtp_err)?;
        Ok(Self {
            local,
            agreed,
            crypto,
            tie_breaker: rand::random(),
            checks: [None; 4],
            next_check: now,
            answered: false,
            nominated: false,
            dtls: None,
            keys: None,
            out: Vec::new(),
        })
    }

    pub fn connected(&self) -> bool {
        self.keys.is_some()
    }

    /// A binding request signed with the server's password; the controlling agent's
    /// nominates the one pair (USE-CANDIDATE).
    fn check(&mut self) -> Result<(), TransportError> {
        let a = &self.agreed;
        let transaction = TransactionId::new();
        let mut m = Message::new();
        let setters: [Box<dyn Setter + '_>; 3] = [
            Box::new(BINDING_REQUEST),
            Box::new(transaction),
            Box::new(TextAttribute::new(
                ATTR_USERNAME,
                format!("{}:{}", a.remote_ufrag, a.local_ufrag),
            )),
        ];
        let stun_err = |e: rtc::shared::error::Error| TransportError::Stun(e.to_string());
        m.build(&setters).map_err(stun_err)?;
        if a.controlling {
            m.add(ATTR_ICE_CONTROLLING, &self.tie_breaker.to_be_bytes());
            m.add(ATTR_USE_CANDIDATE, &[]);
        } else {
            m.add(ATTR_ICE_CONTROLLED, &self.tie_breaker.to_be_bytes());
        }
        m.add(ATTR_PRIORITY, &PRIORITY.to_be_bytes());
        MessageIntegrity::new_short_term_integrity_with_provider(
            a.remote_pwd.clone(),
            self.crypto.crypto(),
        )
        .add_to(&mut m)
        .map_err(stun_err)?;
        FINGERPRINT.add_to(&mut m).map_err(stun_err)?;
        self.checks.rotate_right(1);
        self.checks[0] = Some(transaction);
        self.out.push((a.remote, BytesMut::from(&m.raw[..])));
        Ok(())
    }

    /// Whether `data` answers one of our checks, authenticated with the server's password.
    fn answers_check(&self, data: &[u8]) -> bool {
        let mut m = Message::new();
        m.raw = data.to_vec();
        m.decode().is_ok()
            && m.typ == BINDING_SUCCESS
            && self.checks.contains(&Some(m.transaction_id))
            && FINGERPRINT.check(&m).is_ok()
            && MessageIntegrity::check(
                &mut m,
                self.agreed.remote_pwd.as_bytes(),
                self.crypto.crypto(),
            )
            .is_ok()
    }

    /// A datagram from `from`: what it brought, if anything; `roc`: the rollover counter of
    /// an RTP packet's stream. STUN other than answers to our checks and authenticated checks
    /// of the server, and other datagrams from elsewhere than the server's address, are
    /// dropped.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        roc: u32,
    ) -> Result<Option<TransportEvent>, TransportError> {
        let first = data.first().copied().unwrap_or(255);
        if first > 3 && from != self.agreed.remote {
            return Ok(None);
        }
        // RFC 7983: the first byte tells STUN, DTLS and RTP/RTCP apart.
        match first {
            0..=3 => {
                let a = &self.agreed;
                let crypto = self.crypto.crypto();
                if let Ok(check) = stun::answer(data, from, &a.local_ufrag, &a.local_pwd, crypto) {
                    self.out.push((from, BytesMut::from(&check.response[..])));
                    if check.nominated && !a.controlling && !self.nominated {
                        self.nominated = true;
                        self.agreed.remote = from;
                    }
                } else if from == self.agreed.remote && self.answers_check(data) {
                    self.answered = true;
                }
                let done = if self.agreed.controlling {
                    self.answered
                } else {
                    self.nominated
                };
                if self.dtls.is_none() && done {
                    let a = &self.agreed;
                    let mut dtls = Dtls::client(
                        self.local,
                        a.remote,
                        certificate()?,
                        self.crypto.clone(),
                        &a.fingerprint,
                        now,
                    )?;
                    while let Some(d) = dtls.poll_transmit() {
                        self.out.push(d);
                    }
                    self.dtls = Some(dtls);
                    self.next_check = now + CONSENT_INTERVAL;
                }
                Ok(None)
            }
            20..=63 => {
                let Some(dtls) = self.dtls.as_mut() else {
                    return Ok(None);
                };
                let mut replies = Vec::new();
                let event = dtls.handle(now, from, data, &mut replies)?;
                self.out.extend(replies);
                match event {
                    Some(DtlsEvent::Connected(keys)) => {
                        self.keys = Some(self.session(keys)?);
                        Ok(Some(TransportEvent::Connected))
                    }
                    Some(DtlsEvent::Closed) => Ok(Some(TransportEvent::Closed)),
                    None => Ok(None),
                }
            }
            128..=191 if data.len() >= 8 => {
                let Some(keys) = self.keys.as_mut() else {
                    return Ok(None);
                };
                if (192..=223).contains(&data[1]) {
                    let clear = keys.rtcp_in.decrypt_rtcp(data).map_err(srtp_err)?;
                    let packets = rtcp::packet::unmarshal(&mut clear.freeze()).map_err(srtp_err)?;
                    return Ok(Some(TransportEvent::Rtcp(packets)));
                }
                let header = crate::light::rtp_header(data).ok_or(TransportError::Srtp(
                    "an RTP header longer than its datagram".into(),
                ))?;
                let mut clear = BytesMut::from(data);
                let len = keys
                    .rtp_in
                    .unprotect(&mut clear, header.len, roc)
                    .map_err(srtp_err)?;
                clear.truncate(len);
                let packet =
                    <rtc::rtp::packet::Packet as rtc::shared::marshal::Unmarshal>::unmarshal(
                        &mut clear.freeze(),
                    )
                    .map_err(srtp_err)?;
                Ok(Some(TransportEvent::Rtp(packet)))
            }
            _ => Ok(None),
        }
    }

    fn session(&self, keys: SrtpKeys) -> Result<Keys, TransportError> {
        let crypto = self.crypto.crypto();
        let profile = match keys.profile {
            Profile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
            Profile::Aes128CmHmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        };
        let context = |key: &[u8], salt: &[u8]| {
            Context::new(key, salt, profile, None, None, crypto).map_err(srtp_err)
        };
        Ok(Keys {
            rtp_in: RtpProtector::new(crypto, keys.profile, &keys.remote_key, &keys.remote_salt)
                .map_err(srtp_err)?,
            rtcp_in: context(&keys.remote_key, &keys.remote_salt)?,
            rtcp_out: context(&keys.local_key, &keys.local_salt)?,
        })
    }

    /// Protects RTCP (receiver reports) for the server; dropped before the connection is up.
    pub fn send_rtcp(&mut self, packets: &[Box<dyn rtcp::Packet>]) -> Result<(), TransportError> {
        let Some(keys) = self.keys.as_mut() else {
            return Ok(());
        };
        let clear = rtcp::packet::marshal(packets).map_err(srtp_err)?;
        let protected = keys.rtcp_out.encrypt_rtcp(&clear).map_err(srtp_err)?;
        self.out.push((self.agreed.remote, protected));
        Ok(())
    }

    /// When [`Transport::handle_timeout`] is next due: a check, or a DTLS retransmission.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let dtls = self
            .dtls
            .as_ref()
            .filter(|_| self.keys.is_none())
            .and_then(Dtls::poll_timeout);
        Some(dtls.map_or(self.next_check, |d| d.min(self.next_check)))
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), TransportError> {
        if now >= self.next_check {
            self.check()?;
            self.next_check = now
                + if self.dtls.is_some() {
                    CONSENT_INTERVAL
                } else {
                    CHECK_INTERVAL
                };
        }
        if self.keys.is_none()
            && let Some(dtls) = self.dtls.as_mut()
        {
            let mut resent = Vec::new();
            dtls.handle_timeout(now, &mut resent);
            self.out.extend(resent);
        }
        Ok(())
    }

    /// Tells the server DTLS is closing (`close_notify`), best effort.
    pub fn close(&mut self, now: Instant) {
        if let Some(dtls) = self.dtls.as_mut() {
            let mut out = Vec::new();
            dtls.close(now, &mut out);
            self.out.extend(out);
        }
    }

    /// The datagrams to send, and where, oldest first.
    pub fn take_out(&mut self) -> std::vec::Drain<'_, (SocketAddr, BytesMut)> {
        self.out.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-lite\r\n\
        a=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n\
        a=ice-ufrag:nodeU\r\na=ice-pwd:node-password-22-characters\r\n\
        a=fingerprint:sha-256 AB:CD:EF\r\na=setup:actpass\r\na=mid:0\r\n\
        a=candidate:1 1 tcp 2130706431 127.0.0.1 9 typ host\r\n\
        a=candidate:2 1 UDP 2130706431 127.0.0.1 7882 typ host\r\na=end-of-candidates\r\n";
    const ANSWER: &str = "v=0\r\na=ice-ufrag:meU\r\na=ice-pwd:my-password\r\na=setup:active\r\n";

    #[test]
    fn an_ice_lite_server_and_our_client_role_give_the_transport_what_it_needs() {
        let a = Agreed::from_sdp(ANSWER, NODE_OFFER, false)
            .unwrap()
            .unwrap();
        assert_eq!(
            a,
            Agreed {
                local_ufrag: "meU".into(),
                local_pwd: "my-password".into(),
                remote_ufrag: "nodeU".into(),
                remote_pwd: "node-password-22-characters".into(),
                fingerprint: "AB:CD:EF".into(),
                remote: "127.0.0.1:7882".parse().unwrap(),
                controlling: true,
            },
            "the UDP candidate, not the TCP one"
        );
        let full_ice = NODE_OFFER.replace("a=ice-lite\r\n", "");
        let janus = Agreed::from_sdp(ANSWER, &full_ice, false).unwrap().unwrap();
        assert!(
            !janus.controlling,
            "a full-ICE server that offered controls"
        );
        assert!(
            Agreed::from_sdp(ANSWER, &full_ice, true).unwrap().is_none(),
            "a full-ICE server answering our offer would need role negotiation: not played"
        );
        let passive = ANSWER.replace("active", "passive");
        assert!(
            Agreed::from_sdp(&passive, NODE_OFFER, false)
                .unwrap()
                .is_none()
        );
        let no_candidate = NODE_OFFER.replace("UDP", "tcp");
        assert!(matches!(
            Agreed::from_sdp(ANSWER, &no_candidate, false),
            Err(TransportError::Sdp("UDP candidate"))
        ));
    }

    /// Our check as the node's own ICE-lite code sees it: it names both ufrags, nominates, and
    /// proves it knows the node's password; the node's answer is taken, a forged one is not.
    #[test]
    fn checks_are_what_the_node_answers_and_only_its_answers_start_dtls() {
        let agreed = Agreed::from_sdp(ANSWER, NODE_OFFER, false)
            .unwrap()
            .unwrap();
        let (node, local) = (agreed.remote, "127.0.0.1:5000".parse().unwrap());
        let now = Instant::now();
        let mut t = Transport::new(local, agreed, now).unwrap();
        assert_eq!(t.poll_timeout(), Some(now), "a check at once");
        t.handle_timeout(now).unwrap();
        let check: Vec<_> = t.take_out().map(|(to, d)| (to, d.to_vec())).collect();
        assert_eq!(check.len(), 1);
        assert_eq!(check[0].0, node);
        let provider = rtc::crypto::default_provider().unwrap();
        let crypto = provider.crypto();
        let forged = sfu_node::media::transport::stun::answer(
            &check[0].1,
            local,
            "nodeU",
            "node-password-22-characters",
            crypto,
        )
        .unwrap();
        assert!(forged.nominated, "USE-CANDIDATE");
        // An answer signed with another password (a third party's) starts nothing.
        let mut wrong = Message::new();
        wrong.raw = forged.response.clone();
        wrong.decode().unwrap();
        let mut other = Message::new();
        let setters: [Box<dyn Setter + '_>; 2] =
            [Box::new(wrong.transaction_id), Box::new(BINDING_SUCCESS)];
        other.build(&setters).unwrap();
        MessageIntegrity::new_short_term_integrity_with_provider("guessed".into(), crypto)
            .add_to(&mut other)
            .unwrap();
        FINGERPRINT.add_to(&mut other).unwrap();
        assert!(
            t.handle_datagram(now, node, &other.raw, 0)
                .unwrap()
                .is_none()
        );
        assert!(t.take_out().next().is_none(), "no DTLS yet");
        assert_eq!(t.poll_timeout(), Some(now + CHECK_INTERVAL), "checks go on");
        // The node's own answer, from elsewhere: dropped; from the node: DTLS starts.
        let elsewhere: SocketAddr = "127.0.0.2:7882".parse().unwrap();
        t.handle_datagram(now, elsewhere, &forged.response, 0)
            .unwrap();
        assert!(t.take_out().next().is_none());
        t.handle_datagram(now, node, &forged.response, 0).unwrap();
        let hello: Vec<_> = t.take_out().collect();
        assert!(
            matches!(hello[..], [(to, ref d)] if d[0] == 22 && to == node),
            "a ClientHello"
        );
        assert!(!t.connected());
    }

    /// A check from the server (`username` "ours:theirs"), signed with `pwd`.
    fn server_check(username: &str, pwd: &str, nominate: bool) -> Vec<u8> {
        let provider = rtc::crypto::default_provider().unwrap();
        let mut m = Message::new();
        let setters: [Box<dyn Setter + '_>; 3] = [
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(TextAttribute::new(ATTR_USERNAME, username.to_owned())),
        ];
        m.build(&setters).unwrap();
        m.add(ATTR_ICE_CONTROLLING, &7u64.to_be_bytes());
        if nominate {
            m.add(ATTR_USE_CANDIDATE, &[]);
        }
        MessageIntegrity::new_short_term_integrity_with_provider(pwd.into(), provider.crypto())
            .add_to(&mut m)
            .unwrap();
        FINGERPRINT.add_to(&mut m).unwrap();
        m.raw
    }

    /// Janus (full ICE, the offerer) controls: its authenticated checks are answered wherever
    /// they come from, ours do not nominate, and DTLS starts toward the pair it nominates.
    #[test]
    fn a_full_ice_server_that_offered_nominates_and_dtls_follows_its_choice() {
        let offer = NODE_OFFER.replace("a=ice-lite\r\n", "");
        let agreed = Agreed::from_sdp(ANSWER, &offer, false).unwrap().unwrap();
        let local = "127.0.0.1:5000".parse().unwrap();
        let now = Instant::now();
        let mut t = Transport::new(local, agreed, now).unwrap();
        t.handle_timeout(now).unwrap();
        let ours: Vec<_> = t.take_out().map(|(_, d)| d.to_vec()).collect();
        let provider = rtc::crypto::default_provider().unwrap();
        let seen = sfu_node::media::transport::stun::answer(
            &ours[0],
            local,
            "nodeU",
            "node-password-22-characters",
            provider.crypto(),
        )
        .unwrap();
        assert!(!seen.nominated, "the controlled agent does not nominate");

        // Janus checks from an address of its own that the offer did not list.
        let janus: SocketAddr = "127.0.0.3:4000".parse().unwrap();
        let forged = server_check("meU:nodeU", "guessed-password", true);
        t.handle_datagram(now, janus, &forged, 0).unwrap();
        assert!(
            t.take_out().next().is_none(),
            "a forged check is not answered"
        );
        t.handle_datagram(
            now,
            janus,
            &server_check("meU:nodeU", "my-password", false),
            0,
        )
        .unwrap();
        let out: Vec<_> = t.take_out().collect();
        assert!(
            matches!(out[..], [(to, ref d)] if to == janus && d[0] == 1),
            "answered, to where it came from: {out:?}"
        );
        t.handle_datagram(
            now,
            janus,
            &server_check("meU:nodeU", "my-password", true),
            0,
        )
        .unwrap();
        let out: Vec<_> = t.take_out().collect();
        assert!(
            matches!(out[..], [(a, ref r), (b, ref hello)] if a == janus && r[0] == 1
                && b == janus && hello[0] == 22),
            "answered, then a ClientHello toward the nominated pair: {out:?}"
        );
    }
}
