//! The relay protocol as a sans-IO state machine: who feeds which track to whom.
//!
//! **Contract.** A [`Relay`] reads no clock, owns no socket and spawns nothing. Feed it link
//! events, control frames and datagrams with the `handle_*` methods (always with the current
//! time), tell it about local demand and local tracks, drain [`Relay::poll_output`] after each
//! call and call [`Relay::handle_timeout`] when [`Relay::poll_timeout`] says so.
//!
//! For each track (by room and track id) a node plays up to two parts:
//!
//! - **Want** (downstream): the node has local subscribers, or feeds other nodes, and the track
//!   is published elsewhere. It subscribes to the origin, or to the node the origin redirected
//!   it to, for exactly the layers it needs. Loss on the flows is repaired with NACKs to that
//!   node; if the link to it breaks, the node goes back to where it started (the origin, or
//!   the worker of its node that pulls the track from other nodes for it).
//! - **Feed** (upstream): the node has the track (it is the origin, or it receives it) and
//!   other nodes subscribe to it. It feeds at most `fanout` nodes directly, one copy per link;
//!   further nodes are redirected to those it feeds, so the track spreads as a tree. A feed
//!   announces its path (origin first); a node finding itself on the path of a feed offered to
//!   it refuses it, so no loop can form.
//!
//! Media itself flows outside this state machine: the node's forwarding core sends each
//! layer of a fed track to a relay sink (see [`sink`]); inbound datagrams pass through
//! [`Relay::handle_datagram`] only for loss detection and routing.

use crate::nack::{NackConfig, NackGenerator};
use bytes::Bytes;
use sfu_core::{LayerIndex, SinkId, TrackId};
use sfu_proto::relay::{
    AudioLevel, AudioLevels, Frame, KeyframeRequest, Nack, TrackInfo, frame::Body,
};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A node's identifier.
pub type NodeId = Arc<str>;

/// A track, by room and id.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TrackKey {
    pub room: Arc<str>,
    pub track: TrackId,
}

/// Bit marking a [`SinkId`] as a relay sink (local subscriber sinks are small integers).
const RELAY_BIT: u64 = 1 << 63;

/// The sink the forwarding core feeds for one flow on one link.
pub fn sink(link: u32, flow: u32) -> SinkId {
    SinkId(RELAY_BIT | (link as u64) << 32 | flow as u64)
}

/// The link and flow of a relay sink, or `None` for other sinks.
pub fn decode_sink(s: SinkId) -> Option<(u32, u32)> {
    (s.0 & RELAY_BIT != 0).then_some((((s.0 & !RELAY_BIT) >> 32) as u32, s.0 as u32))
}

/// Tunables.
#[derive(Clone, Copy, Debug)]
pub struct RelayConfig {
    /// Nodes a track is fed to directly before further nodes are redirected.
    pub fanout: usize,
    /// A subscription not answered within this time is tried again.
    pub subscribe_timeout: Duration,
    /// Redirects followed before going back to the origin.
    pub max_redirects: u32,
    pub nack: NackConfig,
    /// Flow ids this relay allocates start here (so several relays of one node, one per
    /// worker thread, never collide on a link).
    pub flow_base: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            fanout: 4,
            subscribe_timeout: Duration::from_secs(2),
            max_redirects: 8,
            nack: NackConfig::default(),
            flow_base: 0,
        }
    }
}

/// What the relay wants done.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Send a control frame to a node.
    Send { to: NodeId, frame: Frame },
    /// Feed one layer of the track to a relay sink (`Room::subscribe_relay`).
    Attach {
        key: TrackKey,
        layer: LayerIndex,
        sink: SinkId,
    },
    /// Stop feeding a relay sink.
    Detach { key: TrackKey, sink: SinkId },
    /// Resend these source sequence numbers to a relay sink from the cache.
    Retransmit {
        key: TrackKey,
        sink: SinkId,
        seqs: Vec<u16>,
    },
    /// A downstream node asks for a keyframe on a layer.
    KeyframeRequest { key: TrackKey, layer: LayerIndex },
    /// The track is fed from upstream now: the room should have it (created if missing).
    Feeding { key: TrackKey, info: TrackInfo },
    /// The track is no longer fed: `ended` if it ended upstream, otherwise nobody here wants
    /// it any more. The room should drop it.
    Unfed { key: TrackKey, ended: bool },
    /// Audio levels of tracks published on another node of a room.
    Levels {
        room: Arc<str>,
        levels: Vec<AudioLevel>,
    },
}

impl Output {
    /// The room an output concerns (all but control frames concern one).
    pub fn room(&self) -> Option<&str> {
        match self {
            Output::Send { .. } => None,
            Output::Attach { key, .. }
            | Output::Detach { key, .. }
            | Output::Retransmit { key, .. }
            | Output::KeyframeRequest { key, .. }
            | Output::Feeding { key, .. }
            | Output::Unfed { key, .. } => Some(&key.room),
            Output::Levels { room, .. } => Some(room),
        }
    }
}

/// A packet delivered by a flow.
#[derive(Debug)]
pub struct Delivery<'a> {
    pub key: &'a TrackKey,
    pub layer: LayerIndex,
    pub packet: rtp::packet::Packet,
}

/// Why a datagram was dropped.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum DatagramDrop {
    UnknownFlow,
    MalformedRtp,
}

pub(crate) struct Child {
    pub(crate) node: NodeId,
    /// (layer, flow) pairs being sent.
    pub(crate) flows: Vec<(LayerIndex, u32)>,
}

pub(crate) struct Feed {
    pub(crate) info: TrackInfo,
    /// Origin first, this node last.
    pub(crate) path: Vec<NodeId>,
    pub(crate) children: Vec<Child>,
    /// Children accepted in principle but waiting for our own upstream (interior nodes).
    pub(crate) pending: Vec<(NodeId, Vec<LayerIndex>)>,
    pub(crate) next_redirect: usize,
    /// Whether this node publishes the track.
    pub(crate) local: bool,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) enum WantState {
    /// Nothing sent (no link to the target yet).
    Idle,
    Requested {
        at: Instant,
    },
    Active,
}

pub(crate) struct Want {
    pub(crate) origin: NodeId,
    /// Where to ask first, and again whenever a route fails (no answer, link down, loop,
    /// too many redirects): the origin, or the node `set_demand_via` named. A worker that
    /// pulls through its node's home worker must never go around it to the origin: the
    /// origin feeds a node once per link, so it would take the worker's subscription for the
    /// home worker's, answer nothing, and the worker would wait for good.
    pub(crate) start: NodeId,
    /// Layers local subscribers need.
    pub(crate) local_layers: Vec<LayerIndex>,
    /// The node asked (the origin, or where it redirected us).
    pub(crate) via: NodeId,
    pub(crate) redirects: u32,
    pub(crate) state: WantState,
    /// Layers asked of `via`.
    pub(crate) requested: Vec<LayerIndex>,
    /// Upstream path once accepted.
    pub(crate) path: Vec<NodeId>,
    pub(crate) info: Option<TrackInfo>,
}

pub(crate) struct InFlow {
    pub(crate) key: TrackKey,
    pub(crate) layer: LayerIndex,
    pub(crate) from: NodeId,
    pub(crate) nack: NackGenerator,
}

/// See the module documentation.
pub struct Relay {
    pub(crate) me: NodeId,
    pub(crate) config: RelayConfig,
    pub(crate) links_up: HashMap<NodeId, u32>,
    pub(crate) link_ids: HashMap<NodeId, u32>,
    pub(crate) link_names: Vec<NodeId>,
    pub(crate) feeds: HashMap<TrackKey, Feed>,
    pub(crate) wants: HashMap<TrackKey, Want>,
    pub(crate) inbound: HashMap<(u32, u32), InFlow>,
    pub(crate) next_flow: u32,
    pub(crate) outputs: VecDeque<Output>,
}

pub(crate) fn frame(body: Body) -> Frame {
    Frame { body: Some(body) }
}

pub(crate) fn union(a: &[LayerIndex], b: &[LayerIndex]) -> Vec<LayerIndex> {
    let mut v: Vec<LayerIndex> = a.iter().chain(b).copied().collect();
    v.sort_unstable();
    v.dedup();
    v
}

impl Relay {
    pub fn new(me: NodeId, config: RelayConfig) -> Self {
        Self {
            me,
            next_flow: config.flow_base,
            config,
            links_up: HashMap::new(),
            link_ids: HashMap::new(),
            link_names: Vec::new(),
            feeds: HashMap::new(),
            wants: HashMap::new(),
            inbound: HashMap::new(),
            outputs: VecDeque::new(),
        }
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// A stable small number for a node, used in sink ids and datagram routing.
    pub fn link_id(&mut self, node: &NodeId) -> u32 {
        if let Some(&id) = self.link_ids.get(node) {
            return id;
        }
        let id = self.link_names.len() as u32;
        self.link_names.push(node.clone());
        self.link_ids.insert(node.clone(), id);
        id
    }

    pub fn node_of_link(&self, link: u32) -> Option<&NodeId> {
        self.link_names.get(link as usize)
    }

    pub fn is_up(&self, node: &NodeId) -> bool {
        self.links_up.contains_key(node)
    }

    /// Layers the node receives for a track (empty if it does not).
    pub fn receiving(&self, key: &TrackKey) -> Vec<LayerIndex> {
        match self.wants.get(key) {
            Some(w) if w.state == WantState::Active => w.requested.clone(),
            _ => Vec::new(),
        }
    }

    /// The upstream path of a received track (origin first).
    pub fn path(&self, key: &TrackKey) -> Option<&[NodeId]> {
        self.wants
            .get(key)
            .filter(|w| w.state == WantState::Active)
            .map(|w| w.path.as_slice())
    }

    /// Nodes fed directly with a track.
    pub fn children(&self, key: &TrackKey) -> Vec<NodeId> {
        self.feeds
            .get(key)
            .map(|f| f.children.iter().map(|c| c.node.clone()).collect())
            .unwrap_or_default()
    }

    pub(crate) fn send(&mut self, to: &NodeId, body: Body) {
        self.outputs.push_back(Output::Send {
            to: to.clone(),
            frame: frame(body),
        });
    }

    // ---- links -------------------------------------------------------------------------

    /// A link to `node` is up.
    pub fn handle_link_up(&mut self, now: Instant, node: NodeId) {
        let id = self.link_id(&node);
        self.links_up.insert(node.clone(), id);
        let keys: Vec<TrackKey> = self
            .wants
            .iter()
            .filter(|(_, w)| w.state == WantState::Idle && (w.via == node || w.start == node))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(w) = self.wants.get_mut(&key)
                && w.via != node
            {
                // Only where it starts came up: start over there.
                w.via = w.start.clone();
                w.redirects = 0;
            }
            self.request(now, &key);
        }
    }

    /// The link to `node` is down: stop feeding it, and find other ways to what came from it.
    pub fn handle_link_down(&mut self, now: Instant, node: &NodeId) {
        let Some(link) = self.links_up.remove(node) else {
            return;
        };
        self.inbound.retain(|(l, _), _| *l != link);
        let fed: Vec<TrackKey> = self
            .feeds
            .iter()
            .filter(|(_, f)| {
                f.children.iter().any(|c| &c.node == node)
                    || f.pending.iter().any(|(n, _)| n == node)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in fed {
            self.drop_child(&key, node);
            if let Some(f) = self.feeds.get_mut(&key) {
                f.pending.retain(|(n, _)| n != node);
            }
            self.release_if_unused(&key);
        }
        let wanted: Vec<TrackKey> = self
            .wants
            .iter()
            .filter(|(_, w)| &w.via == node)
            .map(|(k, _)| k.clone())
            .collect();
        for key in wanted {
            let Some(w) = self.wants.get_mut(&key) else {
                continue;
            };
            w.state = WantState::Idle;
            w.requested.clear();
            w.path.clear();
            // Tree repair: an interior node left; the origin takes us back (or redirects us
            // to another of its children), through our home worker if we pull through it.
            w.via = w.start.clone();
            w.redirects = 0;
            self.request(now, &key);
        }
    }

    // ---- local state ----------------------------------------------------------------------

    /// A track published on this node.
    pub fn add_local_track(&mut self, key: TrackKey, info: TrackInfo) {
        let path = vec![self.me.clone()];
        self.feeds.insert(
            key,
            Feed {
                info,
                path,
                children: Vec::new(),
                pending: Vec::new(),
                next_redirect: 0,
                local: true,
            },
        );
    }

    /// A track published on this node ended: tell every node fed with it.
    pub fn remove_local_track(&mut self, key: &TrackKey) {
        self.end_feed(key);
    }

    /// The layers local subscribers need of a track published on `origin` (empty: none).
    pub fn set_demand(
        &mut self,
        now: Instant,
        key: TrackKey,
        origin: NodeId,
        layers: Vec<LayerIndex>,
    ) {
        let via = origin.clone();
        self.set_demand_via(now, key, origin, via, layers);
    }

    /// [`Relay::set_demand`], asking `via` (which pulls it from `origin` if it does not have
    /// it) rather than the origin itself: the workers of a node other than a room's home worker
    /// pull other nodes' tracks through it, so that each crosses to the node once.
    pub fn set_demand_via(
        &mut self,
        now: Instant,
        key: TrackKey,
        origin: NodeId,
        via: NodeId,
        layers: Vec<LayerIndex>,
    ) {
        if origin == self.me {
            return;
        }
        if self.wants.get(&key).is_some_and(|w| w.origin != origin) {
            // The track is published elsewhere now (a federation gateway failed over to
            // another, say): what came through the old way will not come again, and a want
            // that kept its old route stayed silent for good (it asked the old way for
            // keyframes). Start over at the new origin.
            self.drop_want(&key);
        }
        match self.wants.get_mut(&key) {
            Some(w) => {
                w.local_layers = layers;
            }
            None if layers.is_empty() => return,
            None => {
                self.wants.insert(
                    key.clone(),
                    Want {
                        start: via.clone(),
                        via,
                        origin,
                        local_layers: layers,
                        redirects: 0,
                        state: WantState::Idle,
                        requested: Vec::new(),
                        path: Vec::new(),
                        info: None,
                    },
                );
            }
        }
        self.update_want(now, &key);
    }

    /// Forgets a remote track (its origin unpublished it, or the origin node is gone).
    pub fn forget(&mut self, key: &TrackKey) {
        self.drop_want(key);
        if self.feeds.get(key).is_some_and(|f| !f.local) {
            self.end_feed(key);
        }
    }

    /// Asks upstream for a keyframe on a received track.
    pub fn request_keyframe(&mut self, key: &TrackKey, layer: LayerIndex) {
        let Some(w) = self.wants.get(key) else { return };
        if w.state != WantState::Active {
            return;
        }
        let via = w.via.clone();
        self.send(
            &via,
            Body::KeyframeRequest(KeyframeRequest {
                room: key.room.to_string(),
                track: key.track.0,
                layer: layer as u32,
            }),
        );
    }

    /// Whether the relay feeds or pulls any track of `room` (so its forwarding core must stay).
    /// Shares audio levels of tracks published here with the nodes `to` (those hosting the
    /// room); nodes without a link up are skipped.
    pub fn share_levels(&mut self, room: &str, to: &[NodeId], levels: &[AudioLevel]) {
        for node in to {
            if self.is_up(node) {
                self.send(
                    node,
                    Body::AudioLevels(AudioLevels {
                        room: room.to_owned(),
                        levels: levels.to_vec(),
                    }),
                );
            }
        }
    }

    pub fn has_room(&self, room: &str) -> bool {
        self.feeds
            .keys()
            .chain(self.wants.keys())
            .any(|k| &*k.room == room)
    }

    /// Whether a track is received from another node (rather than published here).
    pub fn is_remote(&self, key: &TrackKey) -> bool {
        self.wants.contains_key(key)
    }

    // ---- input ------------------------------------------------------------------------------

    /// A control frame from `from`.
    pub fn handle_frame(&mut self, now: Instant, from: &NodeId, frame: Frame) {
        let Some(body) = frame.body else { return };
        match body {
            Body::Hello(_) | Body::DirectConfirmed(_) => {}
            Body::Subscribe(s) => self.on_subscribe(now, from, s),
            Body::Accepted(a) => self.on_accepted(now, from, a),
            Body::Redirect(r) => self.on_redirect(now, from, r),
            Body::Refused(r) => self.on_refused(now, from, r),
            Body::FlowOpen(f) => {
                let key = TrackKey {
                    room: f.room.as_str().into(),
                    track: TrackId(f.track),
                };
                let ours = self.wants.get(&key).is_some_and(|w| &w.via == from);
                if ours {
                    let link = self.link_id(from);
                    self.inbound.insert(
                        (link, f.flow),
                        InFlow {
                            key,
                            layer: f.layer as LayerIndex,
                            from: from.clone(),
                            nack: NackGenerator::new(self.config.nack),
                        },
                    );
                }
            }
            Body::FlowClose(f) => {
                let link = self.link_id(from);
                self.inbound.remove(&(link, f.flow));
            }
            Body::Nack(n) => {
                let link = self.link_id(from);
                let s = sink(link, n.flow);
                let key = self.feeds.iter().find_map(|(k, f)| {
                    f.children
                        .iter()
                        .any(|c| &c.node == from && c.flows.iter().any(|(_, fl)| *fl == n.flow))
                        .then(|| k.clone())
                });
                if let Some(key) = key {
                    self.outputs.push_back(Output::Retransmit {
                        key,
                        sink: s,
                        seqs: n.seqs.iter().map(|s| *s as u16).collect(),
                    });
                }
            }
            Body::KeyframeRequest(k) => {
                let key = TrackKey {
                    room: k.room.as_str().into(),
                    track: TrackId(k.track),
                };
                let fed = self
                    .feeds
                    .get(&key)
                    .is_some_and(|f| f.children.iter().any(|c| &c.node == from));
                if fed {
                    self.outputs.push_back(Output::KeyframeRequest {
                        key,
                        layer: k.layer as LayerIndex,
                    });
                }
            }
            Body::TrackEnded(e) => self.on_track_ended(from, e),
            // Participants' data is delivered by the node's rooms, not relayed.
            Body::UserData(_) => {}
            Body::AudioLevels(l) => {
                if !l.levels.is_empty() {
                    self.outputs.push_back(Output::Levels {
                        room: l.room.as_str().into(),
                        levels: l.levels,
                    });
                }
            }
        }
    }

    /// A media datagram (already split into flow id and RTP bytes) from link `link`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        link: u32,
        flow: u32,
        rtp: Bytes,
    ) -> Result<Delivery<'_>, DatagramDrop> {
        let f = self
            .inbound
            .get_mut(&(link, flow))
            .ok_or(DatagramDrop::UnknownFlow)?;
        let mut buf = rtp;
        let packet = <rtp::packet::Packet as rtc_shared::marshal::Unmarshal>::unmarshal(&mut buf)
            .map_err(|_| DatagramDrop::MalformedRtp)?;
        f.nack.on_packet(now, packet.header.sequence_number);
        Ok(Delivery {
            key: &f.key,
            layer: f.layer,
            packet,
        })
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let mut nacks = Vec::new();
        for ((_, flow), f) in &mut self.inbound {
            let seqs = f.nack.poll(now);
            if !seqs.is_empty() {
                nacks.push((f.from.clone(), *flow, seqs));
            }
        }
        for (to, flow, seqs) in nacks {
            self.send(
                &to,
                Body::Nack(Nack {
                    flow,
                    seqs: seqs.into_iter().map(u32::from).collect(),
                }),
            );
        }
        let timeout = self.config.subscribe_timeout;
        let stale: Vec<TrackKey> = self
            .wants
            .iter()
            .filter(|(_, w)| matches!(w.state, WantState::Requested { at } if now.saturating_duration_since(at) >= timeout))
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            if let Some(w) = self.wants.get_mut(&key) {
                // No answer: the node asked may be overloaded or gone; the origin decides
                // (asked through our home worker, if we pull through it: see `Want::start`).
                w.via = w.start.clone();
                w.redirects = 0;
                w.state = WantState::Idle;
            }
            self.request(now, &key);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let nacks = self
            .inbound
            .values()
            .filter_map(|f| f.nack.poll_timeout())
            .min();
        let subs = self
            .wants
            .values()
            .filter_map(|w| match w.state {
                WantState::Requested { at } => Some(at + self.config.subscribe_timeout),
                _ => None,
            })
            .min();
        [nacks, subs].into_iter().flatten().min()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_sinks_round_trip_and_do_not_collide_with_local_sinks() {
        let s = sink(7, 0xdead_beef);
        assert_eq!(decode_sink(s), Some((7, 0xdead_beef)));
        assert_eq!(decode_sink(SinkId(42)), None);
    }
}
