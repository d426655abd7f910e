//! The `[federation]` section of a gateway's configuration.

use anyhow::bail;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A node with this section is a federation gateway of its cluster.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// This cluster's name towards its peers (e.g. `a.example`): its federation certificate
    /// names it, and peers namespace our participants with it.
    pub name: String,
    /// Where the federation endpoint listens (UDP, QUIC).
    pub bind: SocketAddr,
    /// This gateway's federation certificate and key (PEM), issued for `name` by this
    /// cluster's federation CA, which is not its mesh CA.
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// How our participants appear to peers (each peer may override it; peers added at
    /// runtime get this one).
    #[serde(default)]
    pub identities: Identities,
}

/// How our participants appear to a peer (who namespaces them with our name either way).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Identities {
    /// Their identities and names, as our clients see them.
    #[default]
    Identity,
    /// A stable pseudonym per identity (a keyed hash, different for each peer), with no name,
    /// metadata or attributes that would reveal who it is.
    Pseudonym,
}

/// A federation peer: another organisation's cluster.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its name: its certificate must name it, and its participants appear as `name/identity`.
    pub name: String,
    /// Its gateways' federation endpoints.
    pub addrs: Vec<SocketAddr>,
    /// The only CA (or self-signed certificate) trusted for this peer.
    pub ca: PathBuf,
    /// How our participants appear to this peer (default: the section's `identities`).
    #[serde(default)]
    pub identities: Option<Identities>,
}

impl FederationConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        let dns = |n: &str| {
            !n.is_empty()
                && n.len() <= 253
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        };
        if !dns(&self.name) {
            bail!(
                "federation.name {:?} must be a DNS name (letters, digits, '.', '-')",
                self.name
            );
        }
        for p in &self.peers {
            if !dns(&p.name) || p.name == self.name {
                bail!(
                    "federation peer name {:?} must be a DNS name other than ours",
                    p.name
                );
            }
            if p.addrs.is_empty() {
                bail!("federation peer {}: no address", p.name);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, peer: &str, addrs: Vec<SocketAddr>) -> FederationConfig {
        FederationConfig {
            name: name.into(),
            bind: "127.0.0.1:0".parse().unwrap(),
            cert: "c".into(),
            key: "k".into(),
            peers: vec![PeerConfig {
                name: peer.into(),
                addrs,
                ca: "ca".into(),
                identities: None,
            }],
            identities: Identities::Identity,
        }
    }

    #[test]
    fn names_must_be_dns_names_and_peers_reachable() {
        let addr = vec!["127.0.0.1:1".parse().unwrap()];
        assert!(
            config("a.example", "b.example", addr.clone())
                .validate()
                .is_ok()
        );
        assert!(
            config("a example", "b.example", addr.clone())
                .validate()
                .is_err()
        );
        assert!(
            config("a.example", "a.example", addr.clone())
                .validate()
                .is_err()
        );
        assert!(config("a.example", "b/x", addr).validate().is_err());
        assert!(config("a.example", "b.example", vec![]).validate().is_err());
    }

    #[test]
    fn the_section_parses_from_toml() {
        let c: FederationConfig = toml::from_str(
            r#"
            name = "a.example"
            bind = "0.0.0.0:7443"
            cert = "a.pem"
            key = "a.key"
            [[peers]]
            name = "b.example"
            addrs = ["192.0.2.1:7443"]
            ca = "b-ca.pem"
            identities = "pseudonym"
            "#,
        )
        .unwrap();
        assert_eq!(c.peers[0].name, "b.example");
        assert_eq!(c.peers[0].identities, Some(Identities::Pseudonym));
        assert_eq!(c.identities, Identities::Identity);
        assert!(toml::from_str::<FederationConfig>("name = 1").is_err());
    }
}
