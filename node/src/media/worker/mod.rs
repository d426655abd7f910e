//! A media worker: the rooms hashed to one thread, their peer connections, and the relay
//! state of those rooms, as a sans-IO state machine ([`WorkerCore`]) driven by a thread that
//! owns the worker's UDP socket ([`io`]).
//!
//! **The contract.** The core reads no clock and owns no socket, task or timer: every input
//! comes with the time it is handled at, `now`. The inputs are a datagram
//! ([`WorkerCore::handle_datagram`]), a command from signaling or the cluster
//! ([`WorkerCore::handle_command`]) and the passing of time ([`WorkerCore::handle_timeout`],
//! due at [`WorkerCore::poll_timeout`]). Each is drained at once to its outputs: datagrams for
//! the socket ([`WorkerCore::transmits`], sent in `sendmmsg` batches by the caller after a turn
//! of inputs and [`WorkerCore::end_turn`], which packs the turn's relayed packets into link
//! datagrams), replies on the commands' reply channels, and effects on the rest of the node
//! through handles that never block: registry writes queued to the membership task (whose
//! local view of the registry the core also reads), webhooks queued to theirs, frames and
//! datagrams queued to QUIC links and to the command queues of sibling workers, counters.
//! A simulation or test drives the core as the thread does, in virtual time (see the tests).
//!
//! Datagrams are routed to rooms by [`demux`](super::demux); one that matches no peer is
//! dropped and counted, and can never reach another room. Relayed media from other nodes'
//! workers arrives on the same socket ([`direct`]), told apart by its first byte.

mod cluster;
mod commands;
mod direct;
mod guard;
pub(super) mod io;
mod links;
mod metrics;
#[cfg(test)]
mod tests;

use super::demux::{PacketClass, classify, stun_local_ufrag};
use super::plane::Shared;
use super::room::{DemuxUpdate, LocalRoom, RoomContext};
use super::{Command, WorkerSnapshot};
use crate::media::egress::Egress;
use crate::media::udp::SendQueue;
use crate::metrics::Metrics;
use links::LinkHandle;
use metrics::{add_edge_drops, add_room_stats};
use sfu_control::records::worker_key;
use sfu_control::{ClusterEvent, Membership};
use sfu_core::Room;
use sfu_relay::glue::{Rooms, SinkTable};
use sfu_relay::{NodeId, Relay, RelayConfig};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Flow ids a worker allocates carry its index in the top byte, so that a NACK for a flow
/// reaches the worker that sends it.
pub const FLOW_WORKER_SHIFT: u32 = 24;
/// How long a registry deletion about a node that is still linked to us waits before it is
/// believed. A node that lost its lease (etcd was unreachable) has its keys deleted when etcd
/// returns and writes them again within a few seconds; its media must not be cut meanwhile.
/// Real unpublishes also arrive over the relay link at once.
pub(in crate::media) const LINKED_GRACE: Duration = Duration::from_secs(10);

/// Settings of the media workers.
#[derive(Clone)]
pub struct WorkerConfig {
    pub workers: usize,
    pub bind_ip: IpAddr,
    /// Port of worker 0; worker `i` binds `first_port + i`. 0 lets the kernel choose.
    pub first_port: u16,
    /// Whether sends may use UDP segmentation offload (`rtc.udp_gso`).
    pub udp_gso: bool,
    /// Addresses announced as ICE host candidates.
    pub announced_ips: Vec<IpAddr>,
    pub max_participants: usize,
    pub default_max_layer: usize,
    /// Above this many participants a room is large (unless its configuration says).
    pub large_room_threshold: u32,
    pub core: sfu_core::RoomConfig,
    pub node_id: Arc<str>,
    /// Nodes a track is fed to directly before others are redirected.
    pub fanout: usize,
    pub membership: Membership,
    pub webhooks: crate::webhook::Webhooks,
    /// Where recordings are written.
    pub recordings_dir: std::path::PathBuf,
}

/// Where datagrams from an address or with a ufrag go.
#[derive(Clone, Copy, Debug)]
pub(in crate::media) struct PeerRef {
    pub(in crate::media) room: usize,
    pub(in crate::media) peer: usize,
}

/// Relay datagrams sent to other nodes, by path.
#[derive(Default)]
pub(in crate::media) struct RelaySent {
    pub(in crate::media) direct: u64,
    pub(in crate::media) quic: u64,
}

/// Datagrams dropped before reaching any room.
#[derive(Default)]
pub(in crate::media) struct WorkerDrops {
    /// Not STUN, from an address no peer has used.
    pub(in crate::media) unknown_source: u64,
    /// STUN without a USERNAME of ours.
    pub(in crate::media) unknown_ufrag: u64,
    /// Refused by the kernel on send.
    pub(in crate::media) send_failed: u64,
    /// Relay datagrams for unknown flows or with malformed RTP.
    pub(in crate::media) relay_rejected: u64,
}

/// See the module documentation.
pub(in crate::media) struct WorkerCore {
    /// This worker's index among its node's workers.
    pub(in crate::media) index: usize,
    /// The room the input being handled reached into, if any: the one a panic closes (see
    /// [`guard`]).
    pub(in crate::media) touching: Option<usize>,
    pub(in crate::media) shared: Arc<Shared>,
    pub(in crate::media) ctx: Arc<RoomContext>,
    pub(in crate::media) metrics: Arc<Metrics>,
    pub(in crate::media) membership: Membership,
    pub(in crate::media) webhooks: crate::webhook::Webhooks,
    pub(in crate::media) rooms: slab::Slab<LocalRoom>,
    pub(in crate::media) room_by_name: HashMap<String, usize>,
    pub(in crate::media) by_ufrag: HashMap<String, PeerRef>,
    pub(in crate::media) by_addr: HashMap<SocketAddr, PeerRef>,
    pub(in crate::media) deadlines: BinaryHeap<Reverse<(Instant, usize)>>,
    pub(in crate::media) relay: Relay,
    pub(in crate::media) links: HashMap<NodeId, LinkHandle>,
    /// The command queues of the node's workers (this one's too), by index.
    pub(in crate::media) siblings: Vec<mpsc::UnboundedSender<Command>>,
    /// Links' direct paths by the channel this node named them with.
    pub(in crate::media) direct_in: HashMap<u32, direct::DirectIn>,
    pub(in crate::media) direct_drops: direct::DirectDrops,
    /// Relay datagrams sent to other nodes since the last metrics report, by path.
    pub(in crate::media) relay_sent: RelaySent,
    pub(in crate::media) sinks: SinkTable,
    /// Registry deletions about linked nodes, held for [`LINKED_GRACE`].
    pub(in crate::media) deferred: Vec<(Instant, ClusterEvent)>,
    pub(in crate::media) out: Egress,
    pub(in crate::media) drops: WorkerDrops,
    pub(in crate::media) reported_gauges: WorkerSnapshot,
}

/// The forwarding cores of a worker's rooms, by name, for the relay glue.
pub(in crate::media) struct CoreRooms<'a> {
    pub(in crate::media) rooms: &'a mut slab::Slab<LocalRoom>,
    pub(in crate::media) by_name: &'a HashMap<String, usize>,
}

impl Rooms for CoreRooms<'_> {
    fn room_mut(&mut self, name: &str) -> Option<&mut Room> {
        let idx = *self.by_name.get(name)?;
        self.rooms.get_mut(idx).map(|r| r.core_mut())
    }
}

impl WorkerCore {
    /// Worker `index` of its node, whose socket is bound at `local`, linked to its siblings
    /// (the command queues of all the node's workers, this one's too).
    pub(in crate::media) fn new(
        now: Instant,
        index: usize,
        config: &WorkerConfig,
        local: SocketAddr,
        metrics: Arc<Metrics>,
        siblings: Vec<mpsc::UnboundedSender<Command>>,
        shared: Arc<Shared>,
    ) -> anyhow::Result<Self> {
        let candidates: Vec<SocketAddr> = config
            .announced_ips
            .iter()
            .map(|ip| SocketAddr::new(*ip, local.port()))
            .collect();
        anyhow::ensure!(!candidates.is_empty(), "no address to announce for media");
        let ctx = Arc::new(RoomContext {
            node_id: config.node_id.clone(),
            candidates,
            max_participants: config.max_participants,
            default_max_layer: config.default_max_layer,
            large_room_threshold: config.large_room_threshold,
            certificate: super::peer::worker_certificate()
                .map_err(|e| anyhow::anyhow!("making the DTLS certificate: {e}"))?,
            crypto: rtc::crypto::default_provider()
                .map_err(|e| anyhow::anyhow!("cryptography provider: {e}"))?,
            worker: index,
            workers: siblings.len(),
            core: config.core,
            repair: metrics.repair.clone(),
        });
        // The relay core names this worker `node#wN`: the other workers of the node link to it
        // under that name (other nodes know only the node).
        let me: NodeId = worker_key(&config.node_id, index as u16).as_str().into();
        let relay = Relay::new(
            me.clone(),
            RelayConfig {
                fanout: config.fanout,
                flow_base: (index as u32) << FLOW_WORKER_SHIFT,
                ..Default::default()
            },
        );
        let mut links = HashMap::new();
        for (j, to) in siblings.iter().enumerate().filter(|(j, _)| *j != index) {
            let name: NodeId = worker_key(&config.node_id, j as u16).as_str().into();
            let (me, to) = (me.clone(), to.clone());
            links.insert(name, LinkHandle::Sibling { me, to });
        }
        let mut core = WorkerCore {
            index,
            touching: None,
            shared,
            ctx,
            metrics,
            membership: config.membership.clone(),
            webhooks: config.webhooks.clone(),
            rooms: slab::Slab::new(),
            room_by_name: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            deadlines: BinaryHeap::new(),
            relay,
            links,
            siblings,
            direct_in: HashMap::new(),
            direct_drops: Default::default(),
            relay_sent: RelaySent::default(),
            sinks: SinkTable::default(),
            deferred: Vec::new(),
            out: Egress::default(),
            drops: WorkerDrops::default(),
            reported_gauges: WorkerSnapshot::default(),
        };
        let names: Vec<NodeId> = core.links.keys().cloned().collect();
        for name in names {
            core.relay.handle_link_up(now, name);
        }
        core.drain_relay(now);
        Ok(core)
    }

    /// A datagram arrived on the worker's socket.
    pub(in crate::media) fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) {
        self.guarded(now, |w| w.route_datagram(now, from, data));
    }

    /// Signaling, the cluster or the node asks something of the worker.
    pub(in crate::media) fn handle_command(&mut self, now: Instant, command: Command) {
        self.guarded(now, |w| w.apply_command(now, command));
    }

    /// When [`WorkerCore::handle_timeout`] is next due, if anything waits.
    pub(in crate::media) fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines
            .peek()
            .map(|Reverse((t, _))| *t)
            .into_iter()
            .chain(self.relay.poll_timeout())
            .chain(self.deferred.iter().map(|(t, _)| *t))
            .min()
    }

    /// Datagrams for the worker's socket, in the order they were produced; the caller sends
    /// them (and empties the queue) after [`WorkerCore::end_turn`].
    pub(in crate::media) fn transmits(&mut self) -> &mut SendQueue {
        &mut self.out.udp
    }

    /// A turn of inputs is over: packs the packets relayed during it into datagrams per link,
    /// so that packets of many inputs share datagrams.
    pub(in crate::media) fn end_turn(&mut self, now: Instant) {
        self.send_relay_datagrams(now);
    }

    /// Forgets this worker's rooms in the registry when the node stops.
    pub(in crate::media) fn close(&mut self) {
        for (_, room) in &self.rooms {
            self.membership
                .remove(self.membership.keys().room_node(room.name(), &self.name()));
        }
    }

    fn route_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if data.first() == Some(&sfu_relay::direct::MAGIC) {
            self.handle_direct(now, data);
            return;
        }
        let target = match self.by_addr.get(&from) {
            Some(t) => *t,
            None => {
                if classify(data) != PacketClass::Stun {
                    self.drops.unknown_source += 1;
                    return;
                }
                // Routed by its username, but the address is bound to the peer only once the
                // room found the check authentic (`DemuxUpdate::Bind`).
                let Some(t) = stun_local_ufrag(data)
                    .and_then(|u| self.by_ufrag.get(u))
                    .copied()
                else {
                    self.drops.unknown_ufrag += 1;
                    return;
                };
                t
            }
        };
        let Some(room) = self.rooms.get_mut(target.room) else {
            return;
        };
        self.touching = Some(target.room);
        room.handle_datagram(now, target.peer, from, data, &mut self.out);
        self.after_room(now, target.room);
    }

    /// Time passed: registry deletions held back, the relay's timers, rooms' deadlines.
    pub(in crate::media) fn handle_timeout(&mut self, now: Instant) {
        if self.deferred.iter().any(|(t, _)| *t <= now) {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
                .into_iter()
                .partition(|(t, _)| *t <= now);
            self.deferred = later;
            for (_, e) in due {
                if !self.reappeared(&e) {
                    self.guarded(now, |w| w.apply_cluster_event(now, e));
                }
            }
        }
        if self.relay.poll_timeout().is_some_and(|t| t <= now) {
            self.guarded(now, |w| {
                w.relay.handle_timeout(now);
                w.drain_relay(now);
            });
        }
        while let Some(&Reverse((t, idx))) = self.deadlines.peek() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            self.guarded(now, |w| w.room_deadline(now, t, idx));
        }
    }

    /// A room's deadline `t` is due.
    fn room_deadline(&mut self, now: Instant, t: Instant, idx: usize) {
        let Some(room) = self.rooms.get_mut(idx) else {
            return;
        };
        if room.armed != Some(t) {
            return;
        }
        self.touching = Some(idx);
        room.armed = None;
        room.handle_timeout(now, &mut self.out);
        room.refresh_demand_periodic(now, &mut self.out);
        self.after_room(now, idx);
    }

    /// Applies a room's routing changes and effects, re-arms its deadline, and closes it
    /// once nothing needs it.
    pub(in crate::media) fn after_room(&mut self, now: Instant, idx: usize) {
        if let Some(room) = self.rooms.get_mut(idx) {
            for update in room.take_demux_updates() {
                match update {
                    DemuxUpdate::Add { ufrag, peer } => {
                        self.by_ufrag.insert(ufrag, PeerRef { room: idx, peer });
                    }
                    DemuxUpdate::Bind { addr, peer } => {
                        self.by_addr.insert(addr, PeerRef { room: idx, peer });
                    }
                    DemuxUpdate::Remove { ufrag, addrs } => {
                        self.by_ufrag.remove(&ufrag);
                        for a in addrs {
                            self.by_addr.remove(&a);
                        }
                    }
                }
            }
        }
        self.apply_effects(now);
        let Some(room) = self.rooms.get_mut(idx) else {
            return;
        };
        if room.is_empty() && !room.has_demand() && !self.relay.has_room(room.name()) {
            let room = self.rooms.remove(idx);
            self.room_by_name.remove(room.name());
            self.sinks.forget_room(room.name());
            self.membership
                .remove(self.membership.keys().room_node(room.name(), &self.name()));
            add_room_stats(&self.metrics, room.core_stats(), &room.reported);
            add_edge_drops(&self.metrics, &room.drops, &room.reported_drops);
            tracing::info!(room = %room.name(), "room closed on this node");
            return;
        }
        let next = room.poll_timeout();
        if next != room.armed {
            room.armed = next;
            if let Some(t) = next {
                self.deadlines.push(Reverse((t, idx)));
            }
        }
    }

    pub(in crate::media) fn room_index(
        &mut self,
        now: Instant,
        name: &str,
        create: bool,
    ) -> Option<usize> {
        if let Some(&idx) = self.room_by_name.get(name) {
            self.touching = Some(idx);
            return Some(idx);
        }
        if !create {
            return None;
        }
        let idx = self.rooms.insert(LocalRoom::new(
            name.to_owned(),
            self.ctx.clone(),
            now,
            self.large_room_threshold(name),
        ));
        self.room_by_name.insert(name.to_owned(), idx);
        self.touching = Some(idx);
        self.membership.set_json(
            self.membership.keys().room_node(name, &self.name()),
            &sfu_control::records::RoomNodeRecord::default(),
        );
        // What the rest of the cluster already has in this room.
        let (participants, tracks) = self.membership.room(name);
        let room = &mut self.rooms[idx];
        for p in participants {
            room.on_remote_participant(now, p, &mut self.out);
        }
        for t in tracks {
            room.on_remote_track(now, t, &mut self.out);
        }
        for (node, count) in self.membership.audience(name) {
            room.on_remote_audience(&node, count);
        }
        for hand in self.membership.hands(name) {
            room.on_hand(hand);
        }
        tracing::info!(room = name, "room opened on this node");
        Some(idx)
    }

    /// This worker's name in per-worker registry keys and to its relay core (`node#wN`).
    pub(in crate::media) fn name(&self) -> String {
        worker_key(&self.ctx.node_id, self.index as u16)
    }

    /// Above how many participants `room` is large: its configuration's, or the node's.
    pub(in crate::media) fn large_room_threshold(&self, room: &str) -> u32 {
        self.membership
            .room_config(room)
            .map(|c| c.large_room_threshold)
            .filter(|t| *t > 0)
            .unwrap_or(self.ctx.large_room_threshold)
    }

    pub(in crate::media) fn snapshot(&self) -> WorkerSnapshot {
        let mut s = WorkerSnapshot {
            rooms: self.rooms.len(),
            ..Default::default()
        };
        for (_, r) in &self.rooms {
            s.participants += r.participant_count();
            s.tracks += r.track_count();
            s.peers += r.peer_count();
        }
        s
    }
}
