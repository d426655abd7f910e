//! A media worker: one thread, one UDP socket, the rooms hashed to it, and the relay state of
//! those rooms.
//!
//! The loop waits for whichever comes first: datagrams on the socket, a command (signaling,
//! relay links, registry changes), or the earliest deadline (a room's or the relay's). After
//! each, it sends what was produced: the UDP batch with `sendmmsg`, relay datagrams on their
//! QUIC links, and the cluster effects to the registry and the relay. Datagrams are routed to
//! rooms by [`demux`](super::demux); one that matches no peer is dropped and counted, and can
//! never reach another room.

use super::demux::{PacketClass, classify, stun_local_ufrag};
use super::egress::{Effect, Egress};
use super::room::{DemuxUpdate, LocalRoom, RoomContext};
use super::room_drive::EdgeDrops;
use super::udp::{self, BATCH, RecvBatch};
use super::{AdminOp, ClusterInput, Command, WorkerSnapshot};
use crate::metrics::Metrics;
use sfu_control::{ClusterEvent, Membership};
use sfu_core::{DropReason, Room, RoomStats};
use sfu_relay::core::{Output as RelayOutput, TrackKey};
use sfu_relay::glue::{Rooms, SinkTable};
use sfu_relay::quic::Link;
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
/// Flow ids a worker allocates carry its index in the top byte, so that a NACK for a flow
/// reaches the worker that sends it.
pub const FLOW_WORKER_SHIFT: u32 = 24;
/// How long a registry deletion about a node that is still linked to us waits before it is
/// believed. A node that lost its lease (etcd was unreachable) has its keys deleted when etcd
/// returns and writes them again within a few seconds; its media must not be cut meanwhile.
/// Real unpublishes also arrive over the relay link at once.
const LINKED_GRACE: Duration = Duration::from_secs(10);

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
    pub core: sfu_core::RoomConfig,
    pub node_id: Arc<str>,
    /// Nodes a track is fed to directly before others are redirected.
    pub fanout: usize,
    pub membership: Membership,
    pub webhooks: crate::webhook::Webhooks,
}

/// Where datagrams from an address or with a ufrag go.
#[derive(Clone, Copy, Debug)]
struct PeerRef {
    room: usize,
    peer: usize,
}

/// Datagrams dropped before reaching any room.
#[derive(Default)]
struct WorkerDrops {
    /// Not STUN, from an address no peer has used.
    unknown_source: u64,
    /// STUN without a USERNAME of ours.
    unknown_ufrag: u64,
    /// Refused by the kernel on send.
    send_failed: u64,
    /// Relay datagrams for unknown flows or with malformed RTP.
    relay_rejected: u64,
}

struct Worker {
    socket: UdpSocket,
    ctx: Arc<RoomContext>,
    metrics: Arc<Metrics>,
    membership: Membership,
    webhooks: crate::webhook::Webhooks,
    rooms: slab::Slab<LocalRoom>,
    room_by_name: HashMap<String, usize>,
    by_ufrag: HashMap<String, PeerRef>,
    by_addr: HashMap<SocketAddr, PeerRef>,
    deadlines: BinaryHeap<Reverse<(Instant, usize)>>,
    relay: Relay,
    links: HashMap<NodeId, Link>,
    sinks: SinkTable,
    /// Registry deletions about linked nodes, held for [`LINKED_GRACE`].
    deferred: Vec<(Instant, ClusterEvent)>,
    out: Egress,
    drops: WorkerDrops,
    reported_gauges: WorkerSnapshot,
}

/// The forwarding cores of a worker's rooms, by name, for the relay glue.
struct CoreRooms<'a> {
    rooms: &'a mut slab::Slab<LocalRoom>,
    by_name: &'a HashMap<String, usize>,
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
) -> anyhow::Result<(mpsc::UnboundedSender<Command>, SocketAddr)> {
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
        core: config.core,
    });
    let relay = Relay::new(
        config.node_id.clone(),
        RelayConfig {
            fanout: config.fanout,
            flow_base: (index as u32) << FLOW_WORKER_SHIFT,
            ..Default::default()
        },
    );
    let membership = config.membership.clone();
    let webhooks = config.webhooks.clone();
    let (tx, rx) = mpsc::unbounded_channel();
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
                let worker = Worker {
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
                    links: HashMap::new(),
                    sinks: SinkTable::default(),
                    deferred: Vec::new(),
                    out: Egress::default(),
                    drops: WorkerDrops::default(),
                    reported_gauges: WorkerSnapshot::default(),
                };
                worker.run(rx).await;
            });
        })?;
    Ok((tx, local))
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
                    Some(c) => self.handle_command(c),
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
    fn membership_cleanup(&mut self) {
        for (_, room) in &self.rooms {
            self.membership.remove(
                self.membership
                    .keys()
                    .room_node(&room.name, &self.ctx.node_id),
            );
        }
    }

    fn read_datagrams(&mut self, batch: &mut RecvBatch) {
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
                self.handle_datagram(now, from, data);
            }
            if n < BATCH {
                return;
            }
        }
    }

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let target = match self.by_addr.get(&from) {
            Some(t) => *t,
            None => {
                if classify(data) != PacketClass::Stun {
                    self.drops.unknown_source += 1;
                    return;
                }
                let Some(t) = stun_local_ufrag(data)
                    .and_then(|u| self.by_ufrag.get(u))
                    .copied()
                else {
                    self.drops.unknown_ufrag += 1;
                    return;
                };
                self.by_addr.insert(from, t);
                if let Some(room) = self.rooms.get_mut(t.room) {
                    room.note_peer_addr(t.peer, from);
                }
                t
            }
        };
        let Some(room) = self.rooms.get_mut(target.room) else {
            return;
        };
        room.handle_datagram(now, target.peer, from, data, &mut self.out);
        self.after_room(target.room);
    }

    fn handle_deadlines(&mut self, now: Instant) {
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
            let Some(room) = self.rooms.get_mut(idx) else {
                continue;
            };
            if room.armed != Some(t) {
                continue;
            }
            room.armed = None;
            room.handle_timeout(now, &mut self.out);
            room.refresh_demand(now, &mut self.out);
            self.after_room(idx);
        }
    }

    /// Applies a room's routing changes and effects, re-arms its deadline, and closes it
    /// once nothing needs it.
    fn after_room(&mut self, idx: usize) {
        let now = Instant::now();
        if let Some(room) = self.rooms.get_mut(idx) {
            for update in room.take_demux_updates() {
                match update {
                    DemuxUpdate::Add { ufrag, peer } => {
                        self.by_ufrag.insert(ufrag, PeerRef { room: idx, peer });
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
            self.membership.remove(
                self.membership
                    .keys()
                    .room_node(&room.name, &self.ctx.node_id),
            );
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

    /// Registry records and relay changes that rooms asked for.
    fn apply_effects(&mut self, now: Instant) {
        let effects = std::mem::take(&mut self.out.effects);
        if effects.is_empty() {
            return;
        }
        let keys = self.membership.keys().clone();
        let node = self.ctx.node_id.clone();
        let hook = |event, room: &str| crate::webhook::Event::new(event, &node, room);
        for e in effects {
            match e {
                Effect::RoomStarted { room } => self.webhooks.send(hook("room_started", &room)),
                Effect::RoomFinished { room } => self.webhooks.send(hook("room_finished", &room)),
                Effect::ParticipantJoined { room, record } => {
                    self.membership
                        .set_json(keys.participant(&room, &record.sid), &record);
                    let mut e = hook("participant_joined", &room);
                    e.participant = Some(crate::webhook::ParticipantRef {
                        sid: record.sid,
                        identity: record.identity,
                        name: record.name,
                    });
                    self.webhooks.send(e);
                }
                Effect::ParticipantLeft {
                    room,
                    sid,
                    identity,
                    name,
                    slot,
                } => {
                    self.membership.remove(keys.participant(&room, &sid));
                    if let Some(slot) = slot {
                        self.membership.remove(slot);
                    }
                    let mut e = hook("participant_left", &room);
                    e.participant = Some(crate::webhook::ParticipantRef {
                        sid,
                        identity,
                        name,
                    });
                    self.webhooks.send(e);
                }
                Effect::TrackPublished { room, record, info } => {
                    let key = TrackKey {
                        room: room.as_str().into(),
                        track: record.track.parse().unwrap_or(sfu_core::TrackId(0)),
                    };
                    self.membership
                        .set_json(keys.track(&room, &record.track), &record);
                    self.relay.add_local_track(key, info);
                    let mut e = hook("track_published", &room);
                    e.track = Some(crate::webhook::TrackRef {
                        sid: record.track,
                        kind: record.kind,
                        participant: record.participant,
                    });
                    self.webhooks.send(e);
                }
                Effect::TrackUpdated { room, record } => {
                    self.membership
                        .set_json(keys.track(&room, &record.track), &record);
                }
                Effect::TrackUnpublished {
                    room,
                    track,
                    kind,
                    participant,
                } => {
                    self.membership
                        .remove(keys.track(&room, &track.to_string()));
                    self.relay.remove_local_track(&TrackKey {
                        room: room.as_str().into(),
                        track,
                    });
                    let mut e = hook("track_unpublished", &room);
                    e.track = Some(crate::webhook::TrackRef {
                        sid: track.to_string(),
                        kind: kind.to_owned(),
                        participant,
                    });
                    self.webhooks.send(e);
                }
                Effect::Demand {
                    room,
                    track,
                    origin,
                    layers,
                } => {
                    let key = TrackKey {
                        room: room.as_str().into(),
                        track,
                    };
                    self.relay
                        .set_demand(now, key, origin.as_str().into(), layers);
                }
                Effect::UpstreamKeyframe { room, track, layer } => {
                    self.relay.request_keyframe(
                        &TrackKey {
                            room: room.as_str().into(),
                            track,
                        },
                        layer,
                    );
                }
                Effect::Forget { room, track } => {
                    self.relay.forget(&TrackKey {
                        room: room.as_str().into(),
                        track,
                    });
                }
                Effect::SharedLevels {
                    room,
                    nodes,
                    levels,
                } => {
                    let nodes: Vec<NodeId> =
                        nodes.iter().map(|n| NodeId::from(n.as_str())).collect();
                    let levels: Vec<sfu_proto::relay::AudioLevel> = levels
                        .into_iter()
                        .map(|(track, participant, level)| sfu_proto::relay::AudioLevel {
                            track: track.0,
                            participant: participant.to_string(),
                            level: level as u32,
                        })
                        .collect();
                    self.relay.share_levels(&room, &nodes, &levels);
                }
            }
        }
        self.drain_relay(now);
    }

    /// Carries out the relay's outputs.
    fn drain_relay(&mut self, now: Instant) {
        while let Some(output) = self.relay.poll_output() {
            let room = output.room().map(str::to_owned);
            let mut rooms = CoreRooms {
                rooms: &mut self.rooms,
                by_name: &self.room_by_name,
            };
            let rest = self.sinks.apply(now, output, &mut rooms);
            match rest {
                Some(RelayOutput::Send { to, frame }) => {
                    if let Some(link) = self.links.get(&to) {
                        link.send_frame(frame);
                    }
                }
                Some(RelayOutput::Feeding { key, .. }) => {
                    if let Some(idx) = self.room_index(&key.room, true) {
                        self.rooms[idx].on_feeding(now, key.track, &mut self.out);
                        self.after_room(idx);
                    }
                }
                Some(RelayOutput::Unfed { key, ended }) => {
                    if let Some(idx) = self.room_index(&key.room, false) {
                        self.rooms[idx].on_unfed(now, key.track, ended, &mut self.out);
                        self.after_room(idx);
                    }
                }
                Some(RelayOutput::Levels { room, levels }) => {
                    if let Some(idx) = self.room_index(&room, false) {
                        self.rooms[idx].on_shared_levels(now, &levels);
                        self.after_room(idx);
                    }
                }
                _ => {}
            }
            // Attaching a relay sink makes the room ask for a keyframe, a NACK makes it resend.
            if let Some(idx) = room.and_then(|r| self.room_by_name.get(&r).copied())
                && let Some(room) = self.rooms.get_mut(idx)
            {
                room.route_core_outputs(now, &mut self.out);
            }
        }
        self.send_relay_datagrams();
    }

    fn send_relay_datagrams(&mut self) {
        for (link, d) in self.out.relay.drain(..) {
            let sent = self
                .relay
                .node_of_link(link)
                .and_then(|n| self.links.get(n))
                .is_some_and(|l| l.send_datagram(d));
            if !sent {
                self.drops.relay_rejected += 1;
            }
        }
    }

    fn room_index(&mut self, name: &str, create: bool) -> Option<usize> {
        if let Some(&idx) = self.room_by_name.get(name) {
            return Some(idx);
        }
        if !create {
            return None;
        }
        let now = Instant::now();
        let idx = self
            .rooms
            .insert(LocalRoom::new(name.to_owned(), self.ctx.clone(), now));
        self.room_by_name.insert(name.to_owned(), idx);
        self.membership.set_json(
            self.membership.keys().room_node(name, &self.ctx.node_id),
            &sfu_control::records::RoomNodeRecord::default(),
        );
        // What the rest of the cluster already has in this room.
        let (participants, tracks) = self.membership.room(name);
        let room = &mut self.rooms[idx];
        for p in participants {
            room.on_remote_participant(p);
        }
        for t in tracks {
            room.on_remote_track(now, t, &mut self.out);
        }
        tracing::info!(room = name, "room opened on this node");
        Some(idx)
    }

    fn handle_cluster(&mut self, input: ClusterInput) {
        let now = Instant::now();
        match input {
            ClusterInput::LinkUp(link) => {
                let node = link.node.clone();
                self.links.insert(node.clone(), link);
                self.relay.handle_link_up(now, node);
                self.drain_relay(now);
            }
            ClusterInput::LinkDown(node) => {
                self.links.remove(&node);
                // Deletions held because the node was linked are believed at once now.
                let (now_due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
                    .into_iter()
                    .partition(|(_, e)| matches!(e, ClusterEvent::NodeGone(n) if **n == *node));
                self.deferred = keep;
                for (_, e) in now_due {
                    self.apply_cluster_event(now, e);
                }
                self.relay.handle_link_down(now, &node);
                self.drain_relay(now);
            }
            ClusterInput::Frame { from, frame } => {
                self.relay.handle_frame(now, &from, frame);
                self.drain_relay(now);
            }
            ClusterInput::Datagram { from, flow, rtp } => {
                let link = self.relay.link_id(&from);
                match self.relay.handle_datagram(now, link, flow, rtp) {
                    Ok(d) => {
                        let (track, layer, packet) = (d.key.track, d.layer, d.packet);
                        if let Some(&idx) = self.room_by_name.get(&*d.key.room) {
                            self.rooms[idx].handle_relayed_rtp(
                                now,
                                track,
                                layer,
                                packet,
                                &mut self.out,
                            );
                            self.after_room(idx);
                        }
                    }
                    Err(_) => self.drops.relay_rejected += 1,
                }
            }
            ClusterInput::Event(e) => self.handle_cluster_event(now, e),
        }
    }

    /// The node a deletion is about, if it is one we hold a link to.
    fn linked_node(&self, e: &ClusterEvent) -> Option<String> {
        let node = match e {
            ClusterEvent::NodeGone(node) => Some(node.clone()),
            ClusterEvent::TrackGone { room, track } => {
                let idx = *self.room_by_name.get(room)?;
                self.rooms[idx].track_origin(track)
            }
            ClusterEvent::ParticipantGone { room, sid } => {
                let idx = *self.room_by_name.get(room)?;
                self.rooms[idx].participant_node(sid)
            }
            _ => None,
        }?;
        self.links.contains_key(node.as_str()).then_some(node)
    }

    /// Whether a deferred deletion was undone by the node writing its keys again.
    fn reappeared(&self, e: &ClusterEvent) -> bool {
        match e {
            ClusterEvent::NodeGone(node) => self.membership.nodes().iter().any(|n| &n.id == node),
            ClusterEvent::TrackGone { room, track } => self
                .membership
                .room(room)
                .1
                .iter()
                .any(|t| &t.track == track),
            ClusterEvent::ParticipantGone { room, sid } => {
                self.membership.room(room).0.iter().any(|p| &p.sid == sid)
            }
            _ => false,
        }
    }

    fn handle_cluster_event(&mut self, now: Instant, e: ClusterEvent) {
        if let Some(node) = self.linked_node(&e) {
            tracing::debug!(%node, "registry deletion about a linked node deferred: {e:?}");
            self.deferred.push((now + LINKED_GRACE, e));
            return;
        }
        self.apply_cluster_event(now, e);
    }

    fn apply_cluster_event(&mut self, now: Instant, e: ClusterEvent) {
        let room_of = |e: &ClusterEvent| match e {
            ClusterEvent::Participant { room, .. }
            | ClusterEvent::ParticipantGone { room, .. }
            | ClusterEvent::Track { room, .. }
            | ClusterEvent::TrackGone { room, .. } => Some(room.clone()),
            _ => None,
        };
        if let ClusterEvent::NodeGone(node) = &e {
            let rooms: Vec<usize> = self.rooms.iter().map(|(i, _)| i).collect();
            for idx in rooms {
                self.rooms[idx].on_node_gone(now, node, &mut self.out);
                self.after_room(idx);
            }
            return;
        }
        let Some(room) = room_of(&e) else { return };
        let Some(idx) = self.room_index(&room, false) else {
            return;
        };
        let r = &mut self.rooms[idx];
        match e {
            ClusterEvent::Participant { record, .. } => r.on_remote_participant(record),
            ClusterEvent::ParticipantGone { sid, .. } => {
                r.on_remote_participant_gone(now, &sid, &mut self.out)
            }
            ClusterEvent::Track { record, .. } => r.on_remote_track(now, record, &mut self.out),
            ClusterEvent::TrackGone { track, .. } => {
                r.on_remote_track_gone(now, &track, &mut self.out)
            }
            _ => {}
        }
        self.after_room(idx);
    }

    fn handle_command(&mut self, command: Command) {
        use crate::signaling::protocol::{ErrorCode, SignalError};
        let now = Instant::now();
        let not_found = || SignalError::new(ErrorCode::NotFound, "no such session in this room");
        macro_rules! in_room {
            ($room:expr, $reply:expr, |$r:ident, $out:ident| $body:expr) => {{
                let result = match self.room_index(&$room, false) {
                    Some(idx) => {
                        let $r = &mut self.rooms[idx];
                        let $out = &mut self.out;
                        let result = $body;
                        self.after_room(idx);
                        result
                    }
                    None => Err(not_found()),
                };
                let _ = $reply.send(result);
            }};
        }
        match command {
            Command::Join(request, reply) => {
                let Some(idx) = self.room_index(&request.room, true) else {
                    return;
                };
                let auto = request.auto_subscribe;
                let room = &mut self.rooms[idx];
                let result = room.join(now, request, &mut self.out);
                if let (Ok(joined), true) = (&result, auto) {
                    room.subscribe_existing(now, &joined.participant.sid);
                }
                let _ = reply.send(result);
                self.after_room(idx);
            }
            Command::Leave {
                room,
                participant,
                reason,
            } => {
                if let Some(idx) = self.room_index(&room, false) {
                    self.rooms[idx].leave(now, &participant, &reason, &mut self.out);
                    self.after_room(idx);
                }
            }
            Command::Publish {
                room,
                participant,
                sdp,
                sources,
                reply,
            } => in_room!(room, reply, |r, out| r.publish(
                now,
                &participant,
                sdp,
                sources,
                out
            )),
            Command::TrackSettings {
                room,
                participant,
                track,
                settings,
                reply,
            } => in_room!(room, reply, |r, out| {
                let result = r.track_settings(now, &participant, &track, settings);
                r.refresh_demand(now, out);
                result
            }),
            Command::Unpublish {
                room,
                participant,
                track,
                reply,
            } => in_room!(room, reply, |r, out| r.unpublish(
                now,
                &participant,
                &track,
                out
            )),
            Command::Subscribe {
                room,
                participant,
                tracks,
                subscribe,
                reply,
            } => in_room!(room, reply, |r, out| {
                let result = r.subscribe(now, &participant, &tracks, subscribe);
                r.refresh_demand(now, out);
                result
            }),
            Command::SubscriberAnswer {
                room,
                participant,
                sdp,
                reply,
            } => in_room!(room, reply, |r, out| r.subscriber_answer(
                now,
                &participant,
                sdp,
                out
            )),
            Command::Play {
                room,
                participant,
                sdp,
                reply,
            } => in_room!(room, reply, |r, out| r.play(now, &participant, sdp, out)),
            Command::Trickle {
                room,
                participant,
                target,
                candidate,
                sdp_mid,
                reply,
            } => in_room!(room, reply, |r, _out| r.trickle(
                &participant,
                target,
                candidate,
                sdp_mid
            )),
            Command::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Command::Admin { op, reply } => {
                let _ = reply.send(self.admin(now, op));
            }
            Command::Cluster(input) => self.handle_cluster(input),
        }
    }

    fn admin(
        &mut self,
        now: Instant,
        op: AdminOp,
    ) -> Result<(), crate::signaling::protocol::SignalError> {
        use crate::signaling::protocol::{ErrorCode, SignalError};
        let room_name = match &op {
            AdminOp::Migrate { url } => {
                for (_, room) in &self.rooms {
                    room.migrate(url);
                }
                return Ok(());
            }
            AdminOp::RemoveParticipant { room, .. }
            | AdminOp::DeleteRoom { room }
            | AdminOp::Mute { room, .. }
            | AdminOp::Subscriptions { room, .. } => room.clone(),
        };
        let idx = self
            .room_index(&room_name, false)
            .ok_or_else(|| SignalError::new(ErrorCode::NotFound, "room not on this node"))?;
        let room = &mut self.rooms[idx];
        let out = &mut self.out;
        let result = match op {
            AdminOp::RemoveParticipant { identity, .. } => {
                room.remove_identity(now, &identity, "removed by an administrator", out)
            }
            AdminOp::DeleteRoom { .. } => {
                room.remove_all(now, "the room was deleted", out);
                Ok(())
            }
            AdminOp::Mute {
                identity,
                track,
                muted,
                ..
            } => room
                .sid_of(&identity)
                .and_then(|sid| room.mute(now, &sid, &track, muted, out)),
            AdminOp::Subscriptions {
                identity,
                tracks,
                subscribe,
                ..
            } => room.sid_of(&identity).and_then(|sid| {
                let r = room.subscribe(now, &sid, &tracks, subscribe);
                room.refresh_demand(now, out);
                r
            }),
            AdminOp::Migrate { .. } => Ok(()),
        };
        self.after_room(idx);
        result
    }

    fn snapshot(&self) -> WorkerSnapshot {
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

    fn report_metrics(&mut self) {
        let m = &self.metrics;
        let now = self.snapshot();
        let delta = |gauge: &prometheus_client::metrics::gauge::Gauge, new: usize, old: usize| {
            gauge.inc_by(new as i64 - old as i64);
        };
        delta(&m.rooms, now.rooms, self.reported_gauges.rooms);
        delta(
            &m.participants,
            now.participants,
            self.reported_gauges.participants,
        );
        delta(&m.tracks, now.tracks, self.reported_gauges.tracks);
        delta(&m.peer_connections, now.peers, self.reported_gauges.peers);
        self.reported_gauges = now;
        for (_, room) in &mut self.rooms {
            add_room_stats(m, room.core_stats(), &room.reported);
            room.reported = room.core_stats().clone();
            add_edge_drops(m, &room.drops, &room.reported_drops);
            room.reported_drops = room.drops;
        }
        let d = std::mem::take(&mut self.drops);
        m.count_drop("unknown_source", d.unknown_source);
        m.count_drop("unknown_ufrag", d.unknown_ufrag);
        m.count_drop("socket_send_failed", d.send_failed);
        m.count_drop("relay_rejected", d.relay_rejected);
    }
}

fn add_room_stats(m: &Metrics, now: &RoomStats, before: &RoomStats) {
    m.packets_in.inc_by(now.packets_in - before.packets_in);
    m.bytes_in.inc_by(now.bytes_in - before.bytes_in);
    m.packets_out.inc_by(now.packets_out - before.packets_out);
    m.bytes_out.inc_by(now.bytes_out - before.bytes_out);
    m.relayed.inc_by(now.relayed - before.relayed);
    m.nacks_received
        .inc_by(now.nacks_received - before.nacks_received);
    m.retransmitted
        .inc_by(now.retransmitted - before.retransmitted);
    m.keyframe_requests_received
        .inc_by(now.keyframe_requests_received - before.keyframe_requests_received);
    m.keyframe_requests_sent
        .inc_by(now.keyframe_requests_sent - before.keyframe_requests_sent);
    m.probe_packets
        .inc_by(now.probe_packets - before.probe_packets);
    m.layer_switches
        .inc_by(now.layer_switches - before.layer_switches);
    m.congestion_feedback
        .inc_by(now.congestion_feedback - before.congestion_feedback);
    m.red_packets.inc_by(now.red_packets - before.red_packets);
    m.count_drop(
        "malformed_payload",
        now.dropped_malformed - before.dropped_malformed,
    );
    for (i, reason) in DropReason::ALL.iter().enumerate() {
        m.count_drop(reason.as_str(), now.dropped[i] - before.dropped[i]);
    }
    m.count_drop(
        "unknown_track",
        now.dropped_unknown - before.dropped_unknown,
    );
    m.count_drop("nack_miss", now.nack_misses - before.nack_misses);
}

fn add_edge_drops(m: &Metrics, now: &EdgeDrops, before: &EdgeDrops) {
    m.count_drop("rejected_by_peer", now.rejected - before.rejected);
    m.count_drop("unknown_track", now.unknown_track - before.unknown_track);
    m.count_drop("send_failed", now.send_failed - before.send_failed);
}
