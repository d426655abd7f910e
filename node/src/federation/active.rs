//! Which gateway of the cluster carries the federation: one at a time, the holder of a
//! registry key bound to its lease (`<prefix>federation/active`). Every gateway tries to claim
//! it every few hundred milliseconds; when the active gateway stops or dies its lease goes, and
//! another one claims the key and dials the peers (failover). A standby gateway dials no one
//! and refuses links (see [`super::link`]). An active gateway that finds the key held by
//! another (its own lease expired while it stalled) steps down: it closes its links and
//! stands by.
//!
//! The active gateway dials each peer's first address, or, after a failover, the address the
//! previous active gateway was linked to (standby gateways remember it from the registry's
//! peer records, which go with the dead gateway's lease); while a peer stays unlinked it moves
//! to the peer's next address every [`ROTATE_AFTER`] (the peer's active gateway may be
//! another).

use super::link::FederationLinks;
use serde::{Deserialize, Serialize};
use sfu_control::Membership;
use sfu_control::federation::{PeerRecord, peers_prefix};
use sfu_relay::NodeId;
use sfu_relay::quic::LinkManager;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a peer may stay unlinked before its next address is dialed.
const ROTATE_AFTER: Duration = Duration::from_millis(1500);

#[derive(Serialize)]
struct ActiveRecord<'a> {
    gateway: &'a str,
}

/// [`ActiveRecord`] as read from the registry view.
#[derive(Deserialize)]
struct Holder {
    gateway: String,
}

/// See the module documentation.
pub struct Active {
    node_id: String,
    key: String,
    /// Each peer's name and gateway addresses (never empty).
    peers: Vec<(String, Vec<SocketAddr>)>,
    /// Per peer: the address dialed now, and since when it is unlinked.
    dialing: HashMap<String, (usize, Option<Instant>)>,
    /// Whether the link manager was handed the list since this gateway became active (or the
    /// peers changed).
    started: bool,
}

impl Active {
    pub fn new(
        membership: &Membership,
        node_id: &str,
        peers: Vec<(String, Vec<SocketAddr>)>,
    ) -> Self {
        Self {
            node_id: node_id.to_owned(),
            key: format!("{}federation/active", membership.keys().prefix()),
            peers,
            dialing: HashMap::new(),
            started: false,
        }
    }

    /// The peers changed (added or removed at runtime): the next turn dials the new list.
    pub fn set_peers(&mut self, peers: Vec<(String, Vec<SocketAddr>)>) {
        // The next turn hands the link manager the whole list (dialers of peers no longer
        // listed stop).
        self.dialing.clear();
        self.started = false;
        self.peers = peers;
    }

    /// On standby: starts each peer's dialing at the address another gateway of ours is linked
    /// to now, if it is one of the peer's addresses.
    fn remember_linked(&mut self, membership: &Membership) {
        let records: Vec<PeerRecord> = membership.view(&peers_prefix(membership.keys()));
        for r in records
            .iter()
            .filter(|r| r.linked && r.gateway != self.node_id)
        {
            let Some((_, addrs)) = self.peers.iter().find(|(n, _)| *n == r.peer) else {
                continue;
            };
            if let Some(i) = addrs.iter().position(|a| Some(*a) == r.remote) {
                self.dialing.insert(r.peer.clone(), (i, None));
            }
        }
    }

    /// Whether the key is held by another gateway: first seen in the registry view, then
    /// confirmed by reading the registry itself (the view may still show the previous
    /// holder's record just after this gateway claimed the key).
    async fn taken_by_another(&self, membership: &Membership) -> bool {
        let another = |kvs: &[(String, Vec<u8>)]| {
            kvs.iter()
                .filter(|(k, _)| *k == self.key)
                .filter_map(|(_, v)| serde_json::from_slice::<Holder>(v).ok())
                .any(|h| h.gateway != self.node_id)
        };
        if !another(&membership.list(&self.key)) {
            return false;
        }
        match membership.read(&self.key).await {
            Ok((kvs, _)) => another(&kvs),
            Err(e) => {
                tracing::debug!("federation: reading the active gateway: {e}");
                false
            }
        }
    }

    /// One turn: claims the key if this gateway is not active yet, and keeps the dialed
    /// addresses current.
    pub async fn turn(
        &mut self,
        membership: &Membership,
        state: &FederationLinks,
        links: &Arc<LinkManager>,
    ) {
        let lost = state.is_active() && !membership.registered();
        if lost || (state.is_active() && self.taken_by_another(membership).await) {
            // Our key went while this gateway stalled past its lease (a frozen process, a
            // paused machine) and another gateway claimed it: that one carries the federation
            // now. Or this gateway lost its lease (etcd out of reach), so its key is gone or
            // going and another gateway may claim it. Dialing on would replace that one's link
            // with the peer, and it ours, for good. The key is disowned, not deleted (another
            // may hold it): after a re-registration it is claimed again like a free key, never
            // written back for a gateway on standby.
            if lost {
                tracing::warn!(gateway = %self.node_id, "the registry lease is lost: this one steps down");
            } else {
                tracing::warn!(gateway = %self.node_id, "another gateway carries the federation now: this one steps down");
            }
            membership.disown(self.key.clone());
            state.set_active(false);
            links.set_peers(&[]);
            state.close_links();
            self.dialing.clear();
            self.started = false;
        }
        if !state.is_active() {
            self.remember_linked(membership);
            let record = ActiveRecord {
                gateway: &self.node_id,
            };
            match membership.claim(self.key.clone(), &record).await {
                Ok(true) => {
                    tracing::info!(gateway = %self.node_id, "this gateway carries the federation now");
                    state.set_active(true);
                }
                Ok(false) => return,
                Err(e) => {
                    tracing::debug!("federation: claiming the active gateway: {e}");
                    return;
                }
            }
        }
        let linked = state.linked();
        let now = Instant::now();
        // The first turn as the active gateway hands the link manager the whole list.
        let mut changed = !self.started;
        self.started = true;
        for (name, addrs) in &self.peers {
            let (index, since) = self.dialing.entry(name.clone()).or_insert((0, None));
            if linked.contains(name) {
                *since = None;
                continue;
            }
            let unlinked = *since.get_or_insert(now);
            if addrs.len() > 1 && now.duration_since(unlinked) >= ROTATE_AFTER {
                *index = (*index + 1) % addrs.len();
                *since = Some(now);
                changed = true;
            }
        }
        if changed {
            let peers: Vec<(NodeId, SocketAddr)> = self
                .peers
                .iter()
                .map(|(name, addrs)| {
                    let i = self.dialing.get(name).map_or(0, |d| d.0);
                    (NodeId::from(name.as_str()), addrs[i % addrs.len()])
                })
                .collect();
            links.set_peers(&peers);
        }
    }
}
