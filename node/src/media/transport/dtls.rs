//! The DTLS handshake of a subscriber's connection (RFC 5764), as the server: the browser,
//! ICE-controlling and answering `setup:active`, starts it. Its certificate must match the
//! fingerprint of its SDP; once done, the SRTP master keys are exported from it.

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

/// One connection's DTLS server.
pub struct Dtls {
    endpoint: Endpoint,
    crypto: Arc<dyn RTCCryptoProvider>,
    /// SHA-256 of the certificate the peer's SDP announced (empty until the SDP is known).
    fingerprint: Vec<u8>,
    remote: Option<SocketAddr>,
}

impl Dtls {
    pub fn new(
        local: SocketAddr,
        certificate: &rtc::peer_connection::certificate::RTCCertificate,
        crypto: Arc<dyn RTCCryptoProvider>,
    ) -> Result<Self, DtlsError> {
        let config = ConfigBuilder::default()
            .with_crypto_provider(crypto.clone())
            .with_certificates(vec![certificate.dtls_certificate.clone()])
            .with_srtp_protection_profiles(vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
            ])
            .with_client_auth(ClientAuthType::RequireAnyClientCert)
            // The peer's certificate is self-signed: it is checked against the SDP's
            // fingerprint once the handshake is done (see `handle`), not against a CA.
            .with_insecure_skip_verify(true)
            .with_extended_master_secret(ExtendedMasterSecretType::Require)
            .build(false, None)
            .map_err(dtls_err)?;
        Ok(Self {
            endpoint: Endpoint::new(local, TransportProtocol::UDP, Some(Arc::new(config))),
            crypto,
            fingerprint: Vec::new(),
            remote: None,
        })
    }

    /// The peer's certificate fingerprint from its SDP (`a=fingerprint:sha-256 AB:CD:...`).
    pub fn set_remote_fingerprint(&mut self, hex: &str) -> Result<(), DtlsError> {
        self.fingerprint = hex
            .split(':')
            .map(|b| u8::from_str_radix(b, 16))
            .collect::<Result<_, _>>()
            .map_err(|_| DtlsError::Fingerprint)?;
        Ok(())
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
        // RFC 5764 §4.2: client key, server key, client salt, server salt. We are the server.
        let (k, s) = (profile.key_len(), profile.salt_len());
        let material = state
            .export_keying_material(
                rtc::srtp::config::LABEL_EXTRACTOR_DTLS_SRTP,
                &[],
                2 * (k + s),
            )
            .map_err(dtls_err)?;
        let m: &[u8] = material.as_ref();
        Ok(SrtpKeys {
            profile,
            remote_key: m[..k].to_vec(),
            local_key: m[k..2 * k].to_vec(),
            remote_salt: m[2 * k..2 * k + s].to_vec(),
            local_salt: m[2 * k + s..].to_vec(),
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
