//! The DTLS handshake of a subscriber's connection (RFC 5764), as the server: the browser,
//! ICE-controlling and answering `setup:active`, starts it. Its certificate must match the
//! fingerprint of its SDP; once done, the SRTP master keys are exported from it.
//!
//! The load tester's light receivers ([`Dtls::client`]) run the same handshake from the other
//! end.

use rtc::crypto::{HashAlgorithm, RTCCryptoProvider};
use rtc::dtls::config::{ClientAuthType, ConfigBuilder, ExtendedMasterSecretType};
use rtc::dtls::endpoint::{Endpoint, EndpointEvent};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::shared::TransportProtocol;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::srtp::Profile;

/// What the handshake yields: the profile and the master keys of both directions.
pub struct SrtpKeys {
    pub profile: Profile,
    pub local_key: Vec<u8>,
    pub local_salt: Vec<u8>,
    pub remote_key: Vec<u8>,
    pub remote_salt: Vec<u8>,
}

/// What happened to a DTLS datagram.
pub enum DtlsEvent {
    /// The handshake finished and the peer's certificate matches its fingerprint.
    Connected(SrtpKeys),
    /// The peer closed the connection.
    Closed,
}

/// Why the handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum DtlsError {
    #[error("DTLS: {0}")]
    Dtls(String),
    #[error("the peer's certificate does not match its fingerprint")]
    Fingerprint,
    #[error("no SRTP profile the node supports was negotiated")]
    Profile,
}

fn dtls_err(e: impl std::fmt::Display) -> DtlsError {
    DtlsError::Dtls(e.to_string())
}

/// What both ends configure alike: our certificate, the SRTP profiles browsers offer, and no
/// CA: the peer's certificate is self-signed and is checked against the SDP's fingerprint once
/// the handshake is done (see `Dtls::keys`).
fn config(
    certificate: &rtc::peer_connection::certificate::RTCCertificate,
    crypto: &Arc<dyn RTCCryptoProvider>,
) -> ConfigBuilder {
    ConfigBuilder::default()
        .with_crypto_provider(crypto.clone())
        .with_certificates(vec![certificate.dtls_certificate.clone()])
        .with_srtp_protection_profiles(vec![
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        ])
        .with_insecure_skip_verify(true)
        .with_extended_master_secret(ExtendedMasterSecretType::Require)
}

/// One connection's DTLS server (or client).
pub struct Dtls {
    /// Whether this end is the client, which orders the exported keys (RFC 5764 §4.2).
    client: bool,
    endpoint: Endpoint,
    crypto: Arc<dyn RTCCryptoProvider>,
    /// SHA-256 of the certificate the peer's SDP announced (empty until the SDP is known).
    fingerprint: Vec<u8>,
    remote: Option<SocketAddr>,
    /// A handshake that finished before the peer's SDP (its answer travels over the WebSocket,
    /// its DTLS over UDP, and either may arrive first): it is checked when the SDP comes.
    finished_early: Option<SocketAddr>,
}

impl Dtls {
    pub fn new(
        local: SocketAddr,
        certificate: &rtc::peer_connection::certificate::RTCCertificate,
        crypto: Arc<dyn RTCCryptoProvider>,
    ) -> Result<Self, DtlsError> {
        let config = config(certificate, &crypto)
            .with_client_auth(ClientAuthType::RequireAnyClientCert)
            .build(false, None)
            .map_err(dtls_err)?;
        Ok(Self {
            client: false,
            endpoint: Endpoint::new(local, TransportProtocol::UDP, Some(Arc::new(config))),
            crypto,
            fingerprint: Vec::new(),
            remote: None,
            finished_early: None,
        })
    }

    /// A client that starts the handshake with `remote` now (its ClientHello waits in
    /// [`Dtls::poll_transmit`]), expecting the certificate `fingerprint` names (the hex of the
    /// peer's `a=fingerprint:sha-256`).
    pub fn client(
        local: SocketAddr,
        remote: SocketAddr,
        certificate: &rtc::peer_connection::certificate::RTCCertificate,
        crypto: Arc<dyn RTCCryptoProvider>,
        fingerprint: &str,
        now: Instant,
    ) -> Result<Self, DtlsError> {
        let config = config(certificate, &crypto)
            .build(true, None)
            .map_err(dtls_err)?;
        let mut endpoint = Endpoint::new(local, TransportProtocol::UDP, None);
        endpoint
            .connect(now, remote, Arc::new(config), None)
            .map_err(dtls_err)?;
        let mut dtls = Self {
            client: true,
            endpoint,
            crypto,
            fingerprint: Vec::new(),
            remote: Some(remote),
            finished_early: None,
        };
        dtls.set_remote_fingerprint(fingerprint)?;
        Ok(dtls)
    }

    /// The next datagram to send, and where (a client's, which runs outside a worker).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, bytes::BytesMut)> {
        self.endpoint
            .poll_transmit()
            .map(|t| (t.transport.peer_addr, t.message))
    }

    /// The peer's certificate fingerprint from its SDP (`a=fingerprint:sha-256 AB:CD:...`).
    /// If the handshake already finished, it is checked now: the keys, if it matches.
    pub fn set_remote_fingerprint(&mut self, hex: &str) -> Result<Option<SrtpKeys>, DtlsError> {
        self.fingerprint = hex
            .split(':')
            .map(|b| u8::from_str_radix(b, 16))
            .collect::<Result<_, _>>()
            .map_err(|_| DtlsError::Fingerprint)?;
        match self.finished_early.take() {
            Some(from) => self.keys(from).map(Some),
            None => Ok(None),
        }
    }

    /// A DTLS datagram from `from`; what it sends back goes into `out`.
    pub fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        out: &mut Vec<(SocketAddr, bytes::BytesMut)>,
    ) -> Result<Option<DtlsEvent>, DtlsError> {
        self.remote = Some(from);
        let events = self
            .endpoint
            .read(now, from, None, bytes::BytesMut::from(data));
        self.drain(out);
        let mut result = None;
        for event in events.map_err(dtls_err)? {
            match event {
                EndpointEvent::HandshakeComplete if self.fingerprint.is_empty() => {
                    self.finished_early = Some(from);
                }
                EndpointEvent::HandshakeComplete => {
                    result = Some(DtlsEvent::Connected(self.keys(from)?))
                }
                EndpointEvent::PeerClosed => result = Some(DtlsEvent::Closed),
                _ => {}
            }
        }
        Ok(result)
    }

    fn keys(&self, from: SocketAddr) -> Result<SrtpKeys, DtlsError> {
        let state = self
            .endpoint
            .get_connection_state(from)
            .ok_or_else(|| DtlsError::Dtls("no connection state".into()))?;
        let certificate = state
            .peer_certificates
            .first()
            .ok_or(DtlsError::Fingerprint)?;
        let digest = self
            .crypto
            .crypto()
            .hash(HashAlgorithm::Sha256, certificate)
            .map_err(dtls_err)?;
        if self.fingerprint.is_empty() || digest != self.fingerprint {
            return Err(DtlsError::Fingerprint);
        }
        let profile = match state.srtp_protection_profile() {
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => Profile::AeadAes128Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => Profile::Aes128CmHmacSha1_80,
            _ => return Err(DtlsError::Profile),
        };
        // RFC 5764 §4.2: client key, server key, client salt, server salt.
        let (k, s) = (profile.key_len(), profile.salt_len());
        let material = state
            .export_keying_material(
                rtc::srtp::config::LABEL_EXTRACTOR_DTLS_SRTP,
                &[],
                2 * (k + s),
            )
            .map_err(dtls_err)?;
        let m: &[u8] = material.as_ref();
        let (client_key, server_key) = (m[..k].to_vec(), m[k..2 * k].to_vec());
        let (client_salt, server_salt) = (m[2 * k..2 * k + s].to_vec(), m[2 * k + s..].to_vec());
        Ok(if self.client {
            SrtpKeys {
                profile,
                local_key: client_key,
                local_salt: client_salt,
                remote_key: server_key,
                remote_salt: server_salt,
            }
        } else {
            SrtpKeys {
                profile,
                remote_key: client_key,
                remote_salt: client_salt,
                local_key: server_key,
                local_salt: server_salt,
            }
        })
    }

    fn drain(&mut self, out: &mut Vec<(SocketAddr, bytes::BytesMut)>) {
        while let Some(t) = self.endpoint.poll_transmit() {
            out.push((t.transport.peer_addr, t.message));
        }
    }

    /// When the handshake next needs [`Dtls::handle_timeout`] (retransmissions).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.endpoint.poll_timeout(&self.remote?)
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<(SocketAddr, bytes::BytesMut)>) {
        if let Some(remote) = self.remote {
            let _ = self.endpoint.handle_timeout(remote, now);
            self.drain(out);
        }
    }

    /// Tells the peer the connection is closing (`close_notify`), best effort.
    pub fn close(&mut self, now: Instant, out: &mut Vec<(SocketAddr, bytes::BytesMut)>) {
        if let Some(remote) = self.remote {
            let _ = self.endpoint.stop(now, remote);
            self.drain(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::peer::worker_certificate;
    use rtc::peer_connection::certificate::RTCCertificate;

    /// The `a=fingerprint:sha-256` value of a certificate.
    fn fingerprint(cert: &RTCCertificate) -> String {
        let provider = rtc::crypto::default_provider().unwrap();
        let der = cert.dtls_certificate.certificate[0].as_ref();
        let digest = provider.crypto().hash(HashAlgorithm::Sha256, der).unwrap();
        digest
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// A browser's side of the handshake with certificate `cert`, in memory: runs until
    /// neither side sends more, and returns what the server reported.
    fn handshake(server: &mut Dtls, cert: &RTCCertificate) -> Result<Vec<DtlsEvent>, DtlsError> {
        let config = ConfigBuilder::default()
            .with_crypto_provider(rtc::crypto::default_provider().unwrap())
            .with_certificates(vec![cert.dtls_certificate.clone()])
            .with_srtp_protection_profiles(vec![SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm])
            .with_insecure_skip_verify(true)
            .with_extended_master_secret(ExtendedMasterSecretType::Require)
            .build(true, None)
            .unwrap();
        let (client_addr, server_addr): (SocketAddr, SocketAddr) = (
            "127.0.0.1:5000".parse().unwrap(),
            "127.0.0.1:6000".parse().unwrap(),
        );
        let mut client = Endpoint::new(client_addr, TransportProtocol::UDP, None);
        let now = Instant::now();
        client
            .connect(now, server_addr, Arc::new(config), None)
            .unwrap();
        let mut events = Vec::new();
        for _ in 0..20 {
            let mut to_client = Vec::new();
            let mut sent = false;
            while let Some(t) = client.poll_transmit() {
                sent = true;
                let event = server.handle(now, client_addr, &t.message, &mut to_client)?;
                events.extend(event);
            }
            for (_, d) in to_client {
                sent = true;
                client.read(now, server_addr, None, d).unwrap();
            }
            if !sent {
                break;
            }
        }
        Ok(events)
    }

    fn server() -> Dtls {
        let cert = worker_certificate().unwrap();
        let provider = rtc::crypto::default_provider().unwrap();
        Dtls::new("127.0.0.1:6000".parse().unwrap(), &cert, provider).unwrap()
    }

    /// The answer (with the fingerprint) travels over the WebSocket, the handshake over UDP:
    /// either may come first.
    #[test]
    fn a_handshake_that_finishes_before_the_answer_connects_when_it_comes() {
        let (mut s, browser) = (server(), worker_certificate().unwrap());
        let events = handshake(&mut s, &browser).unwrap();
        assert!(
            events.is_empty(),
            "no keys before the certificate can be checked"
        );
        let keys = s.set_remote_fingerprint(&fingerprint(&browser)).unwrap();
        assert!(keys.is_some(), "the answer's fingerprint connects it");
    }

    #[test]
    fn a_handshake_after_the_answer_connects_at_once() {
        let (mut s, browser) = (server(), worker_certificate().unwrap());
        assert!(
            s.set_remote_fingerprint(&fingerprint(&browser))
                .unwrap()
                .is_none()
        );
        let events = handshake(&mut s, &browser).unwrap();
        assert!(matches!(events[..], [DtlsEvent::Connected(_)]));
    }

    #[test]
    fn another_certificate_than_the_answer_names_is_refused_either_way() {
        let (browser, other) = (worker_certificate().unwrap(), worker_certificate().unwrap());
        let mut early = server();
        assert!(handshake(&mut early, &browser).unwrap().is_empty());
        assert!(matches!(
            early.set_remote_fingerprint(&fingerprint(&other)),
            Err(DtlsError::Fingerprint)
        ));
        let mut late = server();
        late.set_remote_fingerprint(&fingerprint(&other)).unwrap();
        assert!(matches!(
            handshake(&mut late, &browser),
            Err(DtlsError::Fingerprint)
        ));
    }

    /// The load tester's client and the node's server, in memory: each ends with the other's
    /// keys as its remote ones, and a client that expects another certificate refuses.
    #[test]
    fn a_client_and_the_server_agree_on_mirrored_keys() {
        let (node_cert, tester_cert) =
            (worker_certificate().unwrap(), worker_certificate().unwrap());
        let provider = rtc::crypto::default_provider().unwrap();
        let (client_addr, server_addr): (SocketAddr, SocketAddr) = (
            "127.0.0.1:5000".parse().unwrap(),
            "127.0.0.1:6000".parse().unwrap(),
        );
        let run = |expected: &RTCCertificate| {
            let mut server = Dtls::new(server_addr, &node_cert, provider.clone()).unwrap();
            server
                .set_remote_fingerprint(&fingerprint(&tester_cert))
                .unwrap();
            let now = Instant::now();
            let mut client = Dtls::client(
                client_addr,
                server_addr,
                &tester_cert,
                provider.clone(),
                &fingerprint(expected),
                now,
            )
            .unwrap();
            let (mut server_keys, mut client_result) = (None, None);
            let mut to_server: Vec<_> = std::iter::from_fn(|| client.poll_transmit()).collect();
            for _ in 0..20 {
                let mut to_client = Vec::new();
                for (_, d) in to_server.drain(..) {
                    if let Some(DtlsEvent::Connected(k)) =
                        server.handle(now, client_addr, &d, &mut to_client).unwrap()
                    {
                        server_keys = Some(k);
                    }
                }
                if to_client.is_empty() {
                    break;
                }
                for (_, d) in to_client {
                    match client.handle(now, server_addr, &d, &mut to_server) {
                        Ok(Some(DtlsEvent::Connected(k))) => client_result = Some(Ok(k)),
                        Err(e) => client_result = Some(Err(e)),
                        _ => {}
                    }
                }
            }
            (server_keys, client_result)
        };
        let (server, client) = run(&node_cert);
        let (server, client) = (server.unwrap(), client.unwrap().unwrap());
        assert_eq!(client.local_key, server.remote_key);
        assert_eq!(client.local_salt, server.remote_salt);
        assert_eq!(client.remote_key, server.local_key);
        assert_eq!(client.remote_salt, server.local_salt);
        assert_ne!(client.local_key, client.remote_key, "one key per direction");

        let (_, refused) = run(&tester_cert);
        assert!(matches!(refused, Some(Err(DtlsError::Fingerprint))));
    }
}
