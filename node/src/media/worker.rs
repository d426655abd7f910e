//! A media worker: one thread, one UDP socket, the rooms hashed to it, and the relay state of
//! those rooms.
//!
//! The loop waits for whichever comes first: datagrams on the socket, a command (signaling,
//! relay links, registry changes), or the earliest deadline (a room's or the relay's). After
//! each, it sends what was produced: the UDP batch with `sendmmsg`, relay datagrams on their
//! QUIC links, and the cluster effects to the registry and the relay. Datagrams are routed to
//! rooms by [`demux`](super::demux); one that matches no peer is dropped and counted, and can
//! never reach another room. Relayed media from other nodes' workers arrives on the same
//! socket ([`worker_direct`](super::worker_direct)), told apart by its first byte.

use super::demux::{PacketClass, classify, stun_local_ufrag};
use super::egress::Egress;
use super::plane::Shared;
use super::room::{DemuxUpdate, LocalRoom, RoomContext};
use super::udp::{self, BATCH, RecvBatch};
use super::worker_links::LinkHandle;
use super::worker_metrics::{add_edge_drops, add_room_stats};
use super::{Command, WorkerSnapshot};
use crate::metrics::Metrics;
use sfu_control::records::worker_key;
use sfu_control::{ClusterEvent, Membership};
use sfu_core::Room;
use sfu_relay::glue::{Rooms, SinkTable};
use sfu_relay::{NodeId, Relay, RelayConfig};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// How often a worker adds its counters to the metrics.
const METRICS_PERIOD: Duration = Duration::from_secs(1);
/// Receive batches handled before the send queue is flushed and timers and commands get a
/// turn. Bounds the send queue (and latency) when datagrams arrive faster than they can be
/// forwarded: the excess then waits in (and overflows from) the kernel's receive buffer.
const BATCHES_PER_TURN: usize = 4;
/// Commands handled in one turn at most (a burst of relayed packets from a sibling, of
/// signaling), before the socket and deadlines get their turn.
const COMMANDS_PER_TURN: usize = 64;
/// Flow ids a worker allocates carry its index in the top byte, so that a NACK for a flow
/// reaches the worker that sends it.
pub const FLOW_WORKER_SHIFT: u32 = 24;
/// How long a registry deletion about a node that is still linked to us waits before it is
/// believed. A node that lost its lease (etcd was unreachable) has its keys deleted when etcd
/// returns and writes them again within a few seconds; its media must not be cut meanwhile.
/// Real unpublishes also arrive over the relay link at once.
pub(super) const LINKED_GRACE: Duration = Duration::from_secs(10);

/// Settings of the media workers.
#[derive(Clone)]
pub struct WorkerConfig {
    pub workers: usize,
    pub bind_ip: IpAddr,
    /// Port of worker 0; worker `i` binds `first_port + i`. 0 lets the kernel choose.
    pub first_port: u16,
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
pub(super) struct PeerRef {
    pub(super) room: usize,
    pub(super) peer: usize,
}

/// Relay datagrams sent to other nodes, by path.
#[derive(Default)]
pub(super) struct RelaySent {
    pub(super) direct: u64,
    pub(super) quic: u64,
}

/// Datagrams dropped before reaching any room.
#[derive(Default)]
pub(super) struct WorkerDrops {
    /// Not STUN, from an address no peer has used.
    pub(super) unknown_source: u64,
    /// STUN without a USERNAME of ours.
    pub(super) unknown_ufrag: u64,
    /// Refused by the kernel on send.
    pub(super) send_failed: u64,
    /// Relay datagrams for unknown flows or with malformed RTP.
    pub(super) relay_rejected: u64,
}

pub(super) struct Worker {
    /// This worker's index among its node's workers.
    pub(super) index: usize,
    /// The room the input being handled reached into, if any: the one a panic closes (see
    /// [`super::worker_guard`]).
    pub(super) touching: Option<usize>,
    pub(super) shared: Arc<Shared>,
    pub(super) socket: UdpSocket,
    pub(super) ctx: Arc<RoomContext>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) membership: Membership,
    pub(super) webhooks: crate::webhook::Webhooks,
    pub(super) rooms: slab::Slab<LocalRoom>,
    pub(super) room_by_name: HashMap<String, usize>,
    pub(super) by_ufrag: HashMap<String, PeerRef>,
    pub(super) by_addr: HashMap<SocketAddr, PeerRef>,
    pub(super) deadlines: BinaryHeap<Reverse<(Instant, usize)>>,
    pub(super) relay: Relay,
    pub(super) links: HashMap<NodeId, LinkHandle>,
    /// The command queues of the node's workers (this one's too), by index.
    pub(super) siblings: Vec<mpsc::UnboundedSender<Command>>,
    /// Links' direct paths by the channel this node named them with.
    pub(super) direct_in: HashMap<u32, super::worker_direct::DirectIn>,
    pub(super) direct_drops: super::worker_direct::DirectDrops,
    /// Relay datagrams sent to other nodes since the last metrics report, by path.
    pub(super) relay_sent: RelaySent,
    pub(super) sinks: SinkTable,
    /// Registry deletions about linked nodes, held for [`LINKED_GRACE`].
    pub(super) deferred: Vec<(Instant, ClusterEvent)>,
    pub(super) out: Egress,
    pub(super) drops: WorkerDrops,
    pub(super) reported_gauges: WorkerSnapshot,
}

/// The forwarding cores of a worker's rooms, by name, for the relay glue.
pub(super) struct CoreRooms<'a> {
    pub(super) rooms: &'a mut slab::Slab<LocalRoom>,
    pub(super) by_name: &'a HashMap<String, usize>,
}

impl Rooms for CoreRooms<'_> {
    fn room_mut(&mut self, name: &str) -> Option<&mut Room> {
        let idx = *self.by_name.get(name)?;
        self.rooms.get_mut(idx).map(|r| &mut r.core)
    }
}

/// Starts worker `index`; returns its command channel and socket address.
pub(super) fn spawn(
    index: usize,
    config: &WorkerConfig,
    metrics: Arc<Metrics>,
    commands: mpsc::UnboundedReceiver<Command>,
    siblings: Vec<mpsc::UnboundedSender<Command>>,
    shared: Arc<Shared>,
) -> anyhow::Result<SocketAddr> {
    let port = if config.first_port == 0 {
        0
    } else {
        config.first_port + index as u16
    };
    let bind = SocketAddr::new(config.bind_ip, port);
    let std_socket = udp::bind(bind).map_err(|e| anyhow::anyhow!("binding UDP {bind}: {e}"))?;
    let local = std_socket.local_addr()?;
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
    let membership = config.membership.clone();
    let webhooks = config.webhooks.clone();
    let mut links = HashMap::new();
    let queues = siblings.clone();
    for (j, to) in siblings
        .into_iter()
        .enumerate()
        .filter(|(j, _)| *j != index)
    {
        let name: NodeId = worker_key(&config.node_id, j as u16).as_str().into();
        links.insert(name, LinkHandle::Sibling { me: me.clone(), to });
    }
    std::thread::Builder::new()
        .name(format!("media-{index}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("media worker {index}: {e}");
                    return;
                }
            };
            runtime.block_on(async move {
                let socket = match UdpSocket::from_std(std_socket) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!("media worker {index}: {e}");
                        return;
                    }
                };
                let mut worker = Worker {
                    index,
                    touching: None,
                    shared,
                    socket,
                    ctx,
                    metrics,
                    membership,
                    webhooks,
                    rooms: slab::Slab::new(),
                    room_by_name: HashMap::new(),
                    by_ufrag: HashMap::new(),
                    by_addr: HashMap::new(),
                    deadlines: BinaryHeap::new(),
                    relay,
                    links,
                    siblings: queues,
                    direct_in: HashMap::new(),
                    direct_drops: Default::default(),
                    relay_sent: RelaySent::default(),
                    sinks: SinkTable::default(),
                    deferred: Vec::new(),
                    out: Egress::default(),
                    drops: WorkerDrops::default(),
                    reported_gauges: WorkerSnapshot::default(),
                };
                let now = Instant::now();
                let siblings: Vec<NodeId> = worker.links.keys().cloned().collect();
                for name in siblings {
                    worker.relay.handle_link_up(now, name);
                }
                worker.drain_relay(now);
                worker.run(commands).await;
            });
        })?;
    Ok(local)
}

impl Worker {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut batch = RecvBatch::new();
        let mut metrics_tick = tokio::time::interval(METRICS_PERIOD);
        loop {
            // Due deadlines first, so that a busy socket cannot starve them.
            self.handle_deadlines(Instant::now());
            let deadline = self
                .deadlines
                .peek()
                .map(|Reverse((t, _))| *t)
                .into_iter()
                .chain(self.relay.poll_timeout())
                .chain(self.deferred.iter().map(|(t, _)| *t))
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                ready = self.socket.readable() => {
                    if ready.is_ok() {
                        self.read_datagrams(&mut batch);
                    }
                }
                command = commands.recv() => match command {
                    Some(c) => {
                        self.guarded(|w| w.handle_command(c));
                        // What else is queued is handled in this turn too, so that its relayed
                        // packets share datagrams and the socket is flushed once.
                        for _ in 1..COMMANDS_PER_TURN {
                            let Ok(c) = commands.try_recv() else { break };
                            self.guarded(|w| w.handle_command(c));
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.into()) => self.handle_deadlines(Instant::now()),
                _ = metrics_tick.tick() => self.report_metrics(),
            }
            self.send_relay_datagrams();
            if !self.out.udp.is_empty() {
                self.drops.send_failed += self.out.udp.flush(&self.socket).await as u64;
            }
        }
        self.membership_cleanup();
    }

    /// Forgets this worker's rooms in the registry when the node stops.
    pub(super) fn membership_cleanup(&mut self) {
        for (_, room) in &self.rooms {
            self.membership
                .remove(self.membership.keys().room_node(&room.name, &self.name()));
        }
    }

    pub(super) fn read_datagrams(&mut self, batch: &mut RecvBatch) {
        for _ in 0..BATCHES_PER_TURN {
            let n = match batch.recv(&self.socket) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("UDP receive: {e}");
                    return;
                }
            };
            let now = Instant::now();
            for (from, data) in batch.iter() {
                self.guarded(|w| w.handle_datagram(now, from, data));
            }
            if n < BATCH {
                return;
            }
        }
    }

    pub(super) fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
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
        self.after_room(target.room);
    }

    pub(super) fn handle_deadlines(&mut self, now: Instant) {
        if self.deferred.iter().any(|(t, _)| *t <= now) {
            let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
                .into_iter()
                .partition(|(t, _)| *t <= now);
            self.deferred = later;
            for (_, e) in due {
                if !self.reappeared(&e) {
                    self.apply_cluster_event(now, e);
                }
            }
        }
        if self.relay.poll_timeout().is_some_and(|t| t <= now) {
            self.relay.handle_timeout(now);
            self.drain_relay(now);
        }
        while let Some(&Reverse((t, idx))) = self.deadlines.peek() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            self.guarded(|w| w.room_deadline(now, t, idx));
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
        self.after_room(idx);
    }

    /// Applies a room's routing changes and effects, re-arms its deadline, and closes it
    /// once nothing needs it.
    pub(super) fn after_room(&mut self, idx: usize) {
        let now = Instant::now();
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
        if room.is_empty() && !room.has_demand() && !self.relay.has_room(&room.name) {
            let room = self.rooms.remove(idx);
            self.room_by_name.remove(&room.name);
            self.sinks.forget_room(&room.name);
            self.membership
                .remove(self.membership.keys().room_node(&room.name, &self.name()));
            add_room_stats(&self.metrics, room.core_stats(), &room.reported);
            add_edge_drops(&self.metrics, &room.drops, &room.reported_drops);
            tracing::info!(room = %room.name, "room closed on this node");
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

    pub(super) fn room_index(&mut self, name: &str, create: bool) -> Option<usize> {
        if let Some(&idx) = self.room_by_name.get(name) {
            self.touching = Some(idx);
            return Some(idx);
        }
        if !create {
            return None;
        }
        let now = Instant::now();
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
    pub(super) fn name(&self) -> String {
        worker_key(&self.ctx.node_id, self.index as u16)
    }

    /// Above how many participants `room` is large: its configuration's, or the node's.
    pub(super) fn large_room_threshold(&self, room: &str) -> u32 {
        self.membership
            .room_config(room)
            .map(|c| c.large_room_threshold)
            .filter(|t| *t > 0)
            .unwrap_or(self.ctx.large_room_threshold)
    }

    pub(super) fn snapshot(&self) -> WorkerSnapshot {
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
