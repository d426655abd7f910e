//! The peers a gateway federates with: those in its configuration and those an administrator
//! added in the registry (`<prefix>federation/added/<peer>`, `FederationService.AddPeer`),
//! which it watches through its membership view and applies at runtime.
//!
//! Each peer is trusted through its own CA only: the federation endpoint's TLS accepts a
//! certificate from any peer's CA (one TLS configuration serves all peers), and
//! [`Trust::verify`] then checks that the certificate chains to the CA of the peer it names,
//! so a certificate from peer X's CA naming peer Y is refused.

use sfu_control::federation::{AddedPeer, is_federation_name};
use sfu_relay::quic::Identity;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime, pem::PemObject};
use rustls::server::danger::ClientCertVerifier;

/// Where a peer comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Config,
    Added,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Added => "added",
        }
    }
}

/// One peer as the gateway uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownPeer {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    /// Its CA, PEM.
    pub ca_pem: Vec<u8>,
    pub source: Source,
}

/// The peers in effect: the configured ones, then the added ones whose names no configured
/// peer has (the configuration wins), that are valid and are not ourselves. Sorted by name.
pub fn effective(
    own_name: &str,
    configured: &[KnownPeer],
    added: Vec<AddedPeer>,
) -> Vec<KnownPeer> {
    let mut peers: BTreeMap<String, KnownPeer> = configured
        .iter()
        .map(|p| (p.name.clone(), p.clone()))
        .collect();
    for a in added {
        if peers.contains_key(&a.name) {
            continue;
        }
        if a.name == own_name || !is_federation_name(&a.name) {
            tracing::warn!(peer = %a.name, "added federation peer ignored: its name is ours or no DNS name");
            continue;
        }
        if let Err(e) = a.check() {
            tracing::warn!(peer = %a.name, "added federation peer ignored: {e}");
            continue;
        }
        peers.insert(
            a.name.clone(),
            KnownPeer {
                name: a.name,
                addrs: a.addrs,
                ca_pem: a.ca_pem.into_bytes(),
                source: Source::Added,
            },
        );
    }
    peers.into_values().collect()
}

/// Whom the gateway trusts, per peer.
pub struct Trust {
    peers: BTreeMap<String, (Source, Arc<dyn ClientCertVerifier>)>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Trust {
    /// Builds the per-peer verifiers and the endpoint's identity (our certificate, trusting
    /// every peer's CA). With no peer at all the endpoint trusts a CA made up here, whose key
    /// is dropped: nobody can present a certificate it accepts.
    pub fn build(
        name: &str,
        cert: &[u8],
        key: &[u8],
        peers: &[KnownPeer],
    ) -> anyhow::Result<(Self, Identity)> {
        let mut all = Vec::new();
        let mut verifiers = BTreeMap::new();
        for p in peers {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&p.ca_pem) {
                roots.add(c?)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .build()?;
            verifiers.insert(p.name.clone(), (p.source, verifier));
            all.extend_from_slice(&p.ca_pem);
            all.push(b'\n');
        }
        if peers.is_empty() {
            all = sfu_relay::certs::create_ca("no federation peer")?
                .cert
                .into_bytes();
        }
        let identity = Identity::from_pem(name, &all, cert, key)?.with_alpn(super::ALPN);
        Ok((Self { peers: verifiers }, identity))
    }

    /// Whether `peer` is one of ours.
    pub fn knows(&self, peer: &str) -> bool {
        self.peers.contains_key(peer)
    }

    /// The peers and where each comes from.
    pub fn names(&self) -> Vec<(String, Source)> {
        self.peers
            .iter()
            .map(|(n, (s, _))| (n.clone(), *s))
            .collect()
    }

    /// Checks that a peer's certificate chain (leaf first) was issued by that peer's own CA.
    pub fn verify(&self, peer: &str, chain: &[CertificateDer<'static>]) -> Result<(), String> {
        let (_, verifier) = self
            .peers
            .get(peer)
            .ok_or_else(|| format!("{peer} is no configured peer"))?;
        let (leaf, rest) = chain.split_first().ok_or("no certificate")?;
        verifier
            .verify_client_cert(leaf, rest, UnixTime::now())
            .map(|_| ())
            .map_err(|e| format!("not issued by {peer}'s CA: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfu_relay::certs::{create_ca, issue_node};

    fn peer(name: &str, ca: &str, source: Source) -> KnownPeer {
        KnownPeer {
            name: name.into(),
            addrs: vec!["127.0.0.1:1".parse().unwrap()],
            ca_pem: ca.as_bytes().to_vec(),
            source,
        }
    }

    #[test]
    fn configured_peers_win_and_bad_added_ones_are_ignored() {
        let ca = create_ca("x").unwrap().cert;
        let added = |name: &str, ca_pem: &str| AddedPeer {
            name: name.into(),
            addrs: vec!["127.0.0.1:2".parse().unwrap()],
            ca_pem: ca_pem.into(),
        };
        let got = effective(
            "a.example",
            &[peer("b.example", &ca, Source::Config)],
            vec![
                added("b.example", &ca),
                added("c.example", &ca),
                added("a.example", &ca),
                added("d.example", "not a certificate"),
            ],
        );
        let names: Vec<_> = got.iter().map(|p| (p.name.as_str(), p.source)).collect();
        assert_eq!(
            names,
            [("b.example", Source::Config), ("c.example", Source::Added)]
        );
        assert_eq!(got[0].addrs[0].port(), 1, "the configured addresses stay");
    }

    #[test]
    fn a_certificate_must_come_from_the_ca_of_the_peer_it_names() {
        let (b_ca, c_ca) = (create_ca("b").unwrap(), create_ca("c").unwrap());
        let own = issue_node(&create_ca("a").unwrap(), "a.example").unwrap();
        let peers = [
            peer("b.example", &b_ca.cert, Source::Config),
            peer("c.example", &c_ca.cert, Source::Added),
        ];
        let (trust, _) =
            Trust::build("a.example", own.cert.as_bytes(), own.key.as_bytes(), &peers).unwrap();
        let chain = |pem: &str| -> Vec<CertificateDer<'static>> {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let b = issue_node(&b_ca, "b.example").unwrap();
        assert!(trust.verify("b.example", &chain(&b.cert)).is_ok());
        // B's CA vouching for C's name.
        let forged = issue_node(&b_ca, "c.example").unwrap();
        assert!(trust.verify("c.example", &chain(&forged.cert)).is_err());
        assert!(trust.verify("d.example", &chain(&b.cert)).is_err());
        // No peer at all still makes an endpoint identity.
        assert!(Trust::build("a.example", own.cert.as_bytes(), own.key.as_bytes(), &[]).is_ok());
    }
}
