//! Federation: one conference across two organisations' clusters.
//!
//! A **federation gateway** is an ordinary node with a `[federation]` section. It keeps a
//! QUIC link (its own endpoint and port, ALPN `sfu-federation/1`) to each configured peer's
//! gateway, with mutual TLS trusting only the peers' federation CAs, never the mesh CA. Over
//! it go the relay protocol's frames and datagrams (the same wire format, so wants, layers,
//! keyframe requests, NACKs and audio levels work as on relay links: see [`levels`]) plus a
//! small JSON protocol of its own on a second stream ([`control`]): each side's room mappings,
//! and the participants and tracks of each room both sides map.
//!
//! Inside its cluster the gateway plays the node the peer's participants are on: it writes
//! them into its registry (identities namespaced `peer/identity`, node `gateway~peer`), so its
//! rooms pull their tracks over the federation link exactly as they pull another node's over a
//! relay link: one copy per direction, only while wanted, only the layers needed
//! ([`link`] translates room names and refuses what is not mapped).
//!
//! - [`config`]: the `[federation]` section.
//! - [`peers`]: the peers in effect (configured and added at runtime) and their trust.
//! - [`active`]: which gateway of the cluster carries the federation (failover).
//! - [`mapping`]: room mappings, kept in the cluster's etcd.
//! - [`link`]: the link handler: translation, refusal, counters.
//! - [`roster`]: the participants and tracks that cross.
//! - [`control`]: the federation's own messages.
//! - [`levels`]: the audio levels that cross (speaker ranking on both sides).
//! - [`guard`]: bounds on what a peer can make us do (rates, datagram checks, log lines).
//! - [`http`]: the admin API (map, unmap, list).
//! - [`metrics`]: Prometheus metrics per peer.

pub mod active;
pub mod config;
pub mod control;
pub mod guard;
pub mod http;
pub mod levels;
pub mod link;
pub mod mapping;
pub mod metrics;
pub mod peers;
pub mod roster;

pub use config::{FederationConfig, Identities, PeerConfig};

use crate::cluster::Router;
use crate::media::MediaPlane;
use anyhow::Context;
use link::{FederationLinks, Stats};
use mapping::Mappings;
use peers::{KnownPeer, Source, Trust};
use sfu_control::federation::AddedPeer;
use sfu_control::{EtcdRegistry, Membership};
use sfu_relay::quic::{LinkHandler, LinkManager};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// ALPN of the federation protocol: a relay (mesh) endpoint refuses it, and this endpoint
/// refuses the relay's.
pub const ALPN: &[u8] = b"sfu-federation/1";
/// How often mappings are re-read and rosters compared with what was last sent.
const SYNC_PERIOD: Duration = Duration::from_millis(300);

/// Each peer's name and gateway addresses, for [`active::Active`].
fn dial_list(peers: &[KnownPeer]) -> Vec<(String, Vec<SocketAddr>)> {
    peers
        .iter()
        .map(|p| (p.name.clone(), p.addrs.clone()))
        .collect()
}

/// A running federation gateway.
pub struct Federation {
    /// This cluster's name towards its peers.
    pub name: String,
    links: Arc<LinkManager>,
    pub state: Arc<FederationLinks>,
    pub mappings: Arc<Mappings>,
    task: tokio::task::JoinHandle<()>,
}

impl Federation {
    /// Binds the federation endpoint and starts linking to the configured peers.
    pub async fn start(
        config: &FederationConfig,
        node_id: &str,
        media: MediaPlane,
        membership: Membership,
        registry: EtcdRegistry,
        metrics: metrics::FederationMetrics,
        webhooks: crate::webhook::Webhooks,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let mut configured = Vec::new();
        for p in &config.peers {
            let pem = std::fs::read(&p.ca).with_context(|| {
                format!("federation peer {}: reading {}", p.name, p.ca.display())
            })?;
            configured.push(KnownPeer {
                name: p.name.clone(),
                addrs: p.addrs.clone(),
                ca_pem: pem,
                source: Source::Config,
            });
        }
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))
        };
        let cert = read(&config.cert).context("federation.cert")?;
        let key = read(&config.key).context("federation.key")?;
        let added_prefix = sfu_control::federation::added_prefix(membership.keys());
        let mut current = peers::effective(
            &config.name,
            &configured,
            membership.view::<AddedPeer>(&added_prefix),
        );
        let (trust, identity) =
            Trust::build(&config.name, &cert, &key, &current).context("federation identity")?;
        let mappings = Arc::new(Mappings::new(registry, membership.clone()));
        let state = FederationLinks::new(
            link::Names {
                name: config.name.clone(),
                node_id: node_id.to_owned(),
                pseudonyms: roster::Pseudonyms {
                    key: roster::pseudonym_key(&key),
                    default: config.identities,
                    peers: config
                        .peers
                        .iter()
                        .filter_map(|p| Some((p.name.clone(), p.identities?)))
                        .collect(),
                },
            },
            trust,
            Router::new(media),
            membership.clone(),
            mappings.clone(),
            metrics,
            webhooks,
        );
        let links = LinkManager::start(
            config.bind,
            &identity,
            state.clone() as Arc<dyn LinkHandler>,
        )
        .context("federation endpoint")?;
        let mut active = active::Active::new(&membership, node_id, dial_list(&current));
        let (s, m, l) = (state.clone(), mappings.clone(), links.clone());
        let name = config.name.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_PERIOD);
            for n in 0u64.. {
                tick.tick().await;
                // Peers added or removed in the registry (the membership view follows it).
                let fresh = peers::effective(
                    &name,
                    &configured,
                    membership.view::<AddedPeer>(&added_prefix),
                );
                if fresh != current {
                    match Trust::build(&name, &cert, &key, &fresh) {
                        Ok((trust, identity)) => {
                            let unlink: Vec<String> = current
                                .iter()
                                .filter(|old| {
                                    !fresh
                                        .iter()
                                        .any(|p| p.name == old.name && p.ca_pem == old.ca_pem)
                                })
                                .map(|p| p.name.clone())
                                .collect();
                            if let Err(e) = l.set_identity(&identity) {
                                tracing::warn!("federation: new trust not applied: {e:#}");
                            }
                            s.set_trust(trust, &unlink);
                            active.set_peers(dial_list(&fresh));
                            tracing::info!(
                                peers = ?fresh.iter().map(|p| (&p.name, p.source.as_str())).collect::<Vec<_>>(),
                                removed = ?unlink,
                                "federation peers changed"
                            );
                        }
                        Err(e) => tracing::warn!("federation: peers not applied: {e:#}"),
                    }
                    current = fresh;
                }
                active.turn(&membership, &s, &l).await;
                if n % 10 == 9 {
                    s.resend_rosters();
                }
                if let Err(e) = m.refresh().await {
                    tracing::debug!("federation: reading room mappings: {e}");
                }
                s.sync();
            }
        });
        tracing::info!(
            name = %config.name,
            addr = %links.local_addr()?,
            peers = state.peer_names().len(),
            "federation gateway started"
        );
        Ok(Self {
            name: config.name.clone(),
            links,
            state,
            mappings,
            task,
        })
    }

    /// Passes the audio levels our nodes share with this gateway (`tap`: the mesh router's)
    /// on to the peers (see [`levels`]).
    pub fn take_levels(&self, tap: &crate::cluster::LevelsTap) {
        let weak = Arc::downgrade(&self.state);
        let set = tap.set(Box::new(move |l| {
            if let Some(s) = weak.upgrade() {
                s.levels_from_cluster(l);
            }
        }));
        if set.is_err() {
            tracing::warn!("federation: audio levels already passed elsewhere; not to the peers");
        }
    }

    /// Where the federation endpoint listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.links.local_addr()
    }

    /// Counters (links refused, frames refused, ...).
    pub fn stats(&self) -> &Stats {
        &self.state.stats
    }

    /// Closes the federation links.
    pub fn close(&self) {
        self.task.abort();
        self.links.close();
    }
}
