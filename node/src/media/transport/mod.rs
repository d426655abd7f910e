//! The transport of a subscriber's connection, run by the node itself: ICE-lite
//! ([`stun`]), DTLS ([`dtls`]) and SRTP ([`srtp`]).
//!
//! webrtc-rs still negotiates the connection (its SDP, transceivers, payload types and header
//! extensions); the connection's datagrams never enter its pipeline. This is the direct send
//! path of forwarded media: the forwarding core's packet is written once into the worker's
//! send buffer and protected where it lies, with no per-packet allocation, no copy between
//! pipeline handlers and no second header parse. RTCP (a few packets a second) uses
//! webrtc-rs's SRTP context.
//!
//! Security: an address is bound to the connection only by a binding request that carries
//! the connection's password (MESSAGE-INTEGRITY), and only such requests, DTLS and SRTCP that
//! authenticates keep it alive; the DTLS peer must present the certificate its SDP's
//! fingerprint names.

pub mod arena;
pub mod dtls;
pub mod srtp;
pub mod stun;

use bytes::{BufMut, BytesMut};
use rtc::crypto::RTCCryptoProvider;
use rtc::rtcp;
use rtc::shared::marshal::{Marshal, MarshalSize};
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Addresses remembered per connection: a browser checks from a few candidates at most.
const MAX_ADDRS: usize = 4;
/// A one-byte header extension block holding one two-byte element, padded to a word.
const TWCC_EXTENSION_LEN: usize = 8;

/// What a datagram did to the connection.
pub enum TransportEvent {
    /// An authenticated check came from a new address (the worker routes it here from now on).
    Address(SocketAddr),
    /// DTLS is done: media may flow.
    Connected,
    /// The peer closed DTLS.
    Closed,
    /// RTCP from the subscriber (feedback: NACK, PLI, TWCC, REMB, receiver reports).
    Rtcp(Vec<Box<dyn rtcp::Packet>>),
}

/// Why a datagram was refused (counted; the connection goes on).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Stun(#[from] stun::StunError),
    #[error(transparent)]
    Dtls(#[from] dtls::DtlsError),
    #[error("SRTP: {0}")]
    Srtp(String),
    #[error("not a packet of this connection")]
    Unexpected,
}

/// The SRTP state of a connected transport.
struct Keys {
    rtp: srtp::RtpProtector,
    rtcp_out: Context,
    rtcp_in: Context,
}

/// See the module documentation.
pub struct Transport {
    ufrag: String,
    pwd: String,
    crypto: Arc<dyn RTCCryptoProvider>,
    dtls: dtls::Dtls,
    /// Where media goes: the address of the latest nominated (or first) authenticated check.
    remote: Option<SocketAddr>,
    addrs: Vec<SocketAddr>,
    keys: Option<Keys>,
}

impl Transport {
    pub fn new(
        ufrag: &str,
        pwd: &str,
        local: SocketAddr,
        certificate: &rtc::peer_connection::certificate::RTCCertificate,
        crypto: Arc<dyn RTCCryptoProvider>,
    ) -> Result<Self, TransportError> {
        Ok(Self {
            ufrag: ufrag.to_owned(),
            pwd: pwd.to_owned(),
            dtls: dtls::Dtls::new(local, certificate, crypto.clone())?,
            crypto,
            remote: None,
            addrs: Vec::new(),
            keys: None,
        })
    }

    /// A transport whose handshake is taken as done, with these keys, sending to `remote`: for
    /// tests and benchmarks of the send path.
    #[doc(hidden)]
    pub fn established(
        mut self,
        keys: dtls::SrtpKeys,
        remote: SocketAddr,
    ) -> Result<Self, TransportError> {
        self.keys = Some(self.session(keys)?);
        self.remote = Some(remote);
        Ok(self)
    }

    /// The fingerprint the peer's SDP announced. True if that connects the transport: the
    /// DTLS handshake had finished before the SDP arrived, and the certificate matches.
    pub fn set_remote_fingerprint(&mut self, hex: &str) -> Result<bool, TransportError> {
        match self.dtls.set_remote_fingerprint(hex)? {
            Some(keys) => {
                self.keys = Some(self.session(keys)?);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub fn connected(&self) -> bool {
        self.keys.is_some() && self.remote.is_some()
    }

    /// Addresses authenticated checks came from.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// A datagram from `from`; replies go into `out`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        out: &mut Vec<(SocketAddr, BytesMut)>,
    ) -> Result<Option<TransportEvent>, TransportError> {
        // RFC 7983: the first byte tells STUN, DTLS and RTP/RTCP apart.
        match data.first().copied().unwrap_or(255) {
            0..=3 => self.on_stun(from, data, out),
            20..=63 => {
                if !self.addrs.contains(&from) {
                    // DTLS only from an address that proved it knows the password.
                    return Err(TransportError::Unexpected);
                }
                match self.dtls.handle(now, from, data, out)? {
                    Some(dtls::DtlsEvent::Connected(keys)) => {
                        self.keys = Some(self.session(keys)?);
                        Ok(Some(TransportEvent::Connected))
                    }
                    Some(dtls::DtlsEvent::Closed) => Ok(Some(TransportEvent::Closed)),
                    None => Ok(None),
                }
            }
            128..=191 if data.len() >= 8 && (192..=223).contains(&data[1]) => {
                let keys = self.keys.as_mut().ok_or(TransportError::Unexpected)?;
                let clear = keys
                    .rtcp_in
                    .decrypt_rtcp(data)
                    .map_err(|e| TransportError::Srtp(e.to_string()))?;
                let packets = rtcp::packet::unmarshal(&mut clear.freeze())
                    .map_err(|e| TransportError::Srtp(e.to_string()))?;
                Ok(Some(TransportEvent::Rtcp(packets)))
            }
            // A subscriber sends no media; anything else is noise.
            _ => Err(TransportError::Unexpected),
        }
    }

    fn on_stun(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        out: &mut Vec<(SocketAddr, BytesMut)>,
    ) -> Result<Option<TransportEvent>, TransportError> {
        let answered = stun::answer(data, from, &self.ufrag, &self.pwd, self.crypto.crypto())?;
        out.push((from, BytesMut::from(&answered.response[..])));
        if answered.nominated || self.remote.is_none() {
            self.remote = Some(from);
        }
        if self.addrs.contains(&from) {
            return Ok(None);
        }
        if self.addrs.len() >= MAX_ADDRS {
            self.addrs.remove(0);
        }
        self.addrs.push(from);
        Ok(Some(TransportEvent::Address(from)))
    }

    fn session(&self, keys: dtls::SrtpKeys) -> Result<Keys, TransportError> {
        let crypto = self.crypto.crypto();
        let srtp_err = |e: rtc::shared::error::Error| TransportError::Srtp(e.to_string());
        let profile = match keys.profile {
            srtp::Profile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
            srtp::Profile::Aes128CmHmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        };
        Ok(Keys {
            rtp: srtp::RtpProtector::new(crypto, keys.profile, &keys.local_key, &keys.local_salt)
                .map_err(|e| TransportError::Srtp(e.to_string()))?,
            rtcp_out: Context::new(
                &keys.local_key,
                &keys.local_salt,
                profile,
                None,
                None,
                crypto,
            )
            .map_err(srtp_err)?,
            rtcp_in: Context::new(
                &keys.remote_key,
                &keys.remote_salt,
                profile,
                None,
                Some(rtc::srtp::option::srtcp_replay_protection(64)),
                crypto,
            )
            .map_err(srtp_err)?,
        })
    }

    /// Protects an RTP packet for the subscriber, written into `arena` (a buffer the worker
    /// sends from, grown in large chunks and reused once its datagrams are sent) with its
    /// per-subscriber edits: the datagram and where it goes, or `None` before the connection
    /// is up. Allocates nothing once the arena has grown.
    pub fn send_rtp(
        &mut self,
        header: &rtc::rtp::header::Header,
        payload: &[u8],
        edits: &sfu_core::PacketEdits,
        arena: &mut arena::SendArena,
    ) -> Result<Option<(SocketAddr, BytesMut)>, TransportError> {
        let (Some(remote), Some(keys)) = (self.remote, self.keys.as_mut()) else {
            return Ok(None);
        };
        if header.extension && edits.twcc.is_some() {
            // Not a forwarded packet (those carry no extension of their own): the slow way.
            let whole = edits.applied(&sfu_core::Packet {
                header: header.clone(),
                payload: bytes::Bytes::copy_from_slice(payload),
            });
            let plain = sfu_core::PacketEdits::default();
            return self.send_rtp(&whole.header, &whole.payload, &plain, arena);
        }
        let fixed = header.marshal_size();
        let extension = if edits.twcc.is_some() {
            TWCC_EXTENSION_LEN
        } else {
            0
        };
        let header_len = fixed + extension;
        // RTP padding (probe packets): to a multiple of four bytes, four if already aligned;
        // the last byte says how many (RFC 3550 §5.1), as webrtc-rs marshals it.
        let padding = if header.padding {
            match payload.len() % 4 {
                0 => 4,
                r => 4 - r,
            }
        } else {
            0
        };
        let len = header_len + payload.len() + padding;
        let total = len + keys.rtp.profile().overhead();
        let arena = arena.room(total);
        // Uninitialised capacity becomes the packet: header, payload, room for the tag.
        arena.put_bytes(0, fixed);
        header
            .marshal_to(&mut arena[..fixed])
            .map_err(|e| TransportError::Srtp(e.to_string()))?;
        if let Some((id, seq)) = edits.twcc {
            // RFC 8285 one-byte header extension with one element: the transport-wide number.
            arena[0] |= 0x10;
            let [hi, lo] = seq.to_be_bytes();
            arena.put_slice(&[0xBE, 0xDE, 0x00, 0x01, (id << 4) | 1, hi, lo, 0x00]);
        }
        arena.put_slice(payload);
        if let Some(vp8) = &edits.vp8 {
            vp8.apply(&mut arena[header_len..header_len + payload.len()]);
        }
        if padding > 0 {
            arena.put_bytes(0, padding - 1);
            arena.put_u8(padding as u8);
        }
        arena.put_bytes(0, total - len);
        let n = keys
            .rtp
            .protect(&mut arena[..total], len, header_len)
            .map_err(|e| TransportError::Srtp(e.to_string()))?;
        Ok(Some((remote, arena.split_to(n))))
    }

    /// Protects RTCP for the subscriber (sender reports): the datagram and where it goes.
    pub fn send_rtcp(
        &mut self,
        packets: &[Box<dyn rtcp::Packet>],
    ) -> Result<Option<(SocketAddr, BytesMut)>, TransportError> {
        let (Some(remote), Some(keys)) = (self.remote, self.keys.as_mut()) else {
            return Ok(None);
        };
        let clear =
            rtcp::packet::marshal(packets).map_err(|e| TransportError::Srtp(e.to_string()))?;
        let protected = keys
            .rtcp_out
            .encrypt_rtcp(&clear)
            .map_err(|e| TransportError::Srtp(e.to_string()))?;
        Ok(Some((remote, protected)))
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.dtls.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<(SocketAddr, BytesMut)>) {
        self.dtls.handle_timeout(now, out);
    }

    /// Closes DTLS (`close_notify`), best effort.
    pub fn close(&mut self, now: Instant, out: &mut Vec<(SocketAddr, BytesMut)>) {
        self.dtls.close(now, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A third party that saw a connection's username (it travels in clear) but not its
    /// password: its checks, from its own address, are not answered, bind nothing, and (being
    /// errors) refresh nothing; its DTLS is refused. The peer's own check binds its address.
    #[test]
    fn a_spoofed_check_neither_binds_nor_counts_as_the_peer() {
        let provider = rtc::crypto::default_provider().unwrap();
        let cert = crate::media::peer::worker_certificate().unwrap();
        let pwd = "p4ssword-of-22-characters";
        let local = "127.0.0.1:7882".parse().unwrap();
        let mut t = Transport::new("local", pwd, local, &cert, provider.clone()).unwrap();
        let (peer, spoofer): (SocketAddr, SocketAddr) = (
            "192.0.2.7:5000".parse().unwrap(),
            "198.51.100.9:6000".parse().unwrap(),
        );
        let now = Instant::now();
        let mut out = Vec::new();
        let forged = stun::tests::request(
            "local:remote",
            "not-the-password-at-all",
            provider.crypto(),
            true,
        );
        assert!(t.handle_datagram(now, spoofer, &forged, &mut out).is_err());
        assert!(out.is_empty(), "not answered");
        assert!(t.addrs().is_empty(), "nothing bound");
        let dtls_hello = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            t.handle_datagram(now, spoofer, &dtls_hello, &mut out),
            Err(TransportError::Unexpected)
        ));
        let real = stun::tests::request("local:remote", pwd, provider.crypto(), true);
        assert!(matches!(
            t.handle_datagram(now, peer, &real, &mut out),
            Ok(Some(TransportEvent::Address(a))) if a == peer
        ));
        assert_eq!(t.addrs(), [peer]);
        assert_eq!(out.len(), 1, "the peer's check is answered");
    }
}
