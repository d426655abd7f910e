//! TLS for what leaves the machine: the HTTP and gRPC listeners of nodes and of the control
//! plane, and the HTTPS clients that deliver webhooks and call nodes' admin API.
//!
//! One crypto provider everywhere (ring, as the relay's QUIC uses), passed explicitly rather
//! than installed process-wide, so that a library user's own choice is never overridden.
//! Certificates are checked against the platform's roots plus, optionally, one extra CA file:
//! a cluster with its own private CA names it once (`--tls-ca`) instead of installing it
//! system-wide.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("invalid TLS setting: {0}")]
    Config(#[from] rustls::Error),
    #[error("HTTP client: {0}")]
    Client(String),
}

/// The crypto provider of every TLS endpoint here.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process's default crypto provider, unless one was chosen already: an HTTP
/// client built without [`http_client`] (`reqwest::Client::new()`) panics without one.
/// Every program here calls it first; [`http_client`] needs none.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Certificates from a PEM file (a chain: the leaf first).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |e: &dyn std::fmt::Display| TlsError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(&e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// A private key from a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// A listener's TLS setting from its certificate chain and key; offers HTTP/2 (gRPC) and
/// HTTP/1.1 (browsers' WebSocket upgrades, WHIP, JSON) by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certificates(cert)?, private_key(key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client's TLS setting: the platform's roots, plus the certificates of `extra_ca`.
pub fn client_config(extra_ca: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let extra = match extra_ca {
        Some(path) => certificates(path)?,
        None => Vec::new(),
    };
    let provider = provider();
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())?;
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// An HTTP client that speaks `http://` and `https://` (verified as [`client_config`] does).
pub fn http_client(
    extra_ca: Option<&Path>,
    timeout: Duration,
) -> Result<reqwest::Client, TlsError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(client_config(extra_ca)?)
        .timeout(timeout)
        .build()
        .map_err(|e| TlsError::Client(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_files_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("sfu-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(matches!(
            certificates(&empty),
            Err(TlsError::NoCertificate { .. })
        ));
        let missing = dir.join("missing.pem");
        let e = server_config(&missing, &missing).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        assert!(client_config(Some(&missing)).is_err());
        assert!(client_config(None).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
