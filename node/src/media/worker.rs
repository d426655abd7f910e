//! A media worker: one thread, one UDP socket, the rooms hashed to it.
//!
//! The loop waits for whichever comes first: datagrams on the socket, a command from
//! signaling, or the earliest room deadline. Whatever it handled, it then flushes the send
//! batch with `sendmmsg`. Datagrams are routed to rooms by [`demux`](super::demux); one that
//! matches no peer is dropped and counted, and can never reach another room.

use super::demux::{PacketClass, classify, stun_local_ufrag};
use super::room::{DemuxUpdate, LocalRoom, RoomContext};
use super::room_drive::EdgeDrops;
use super::udp::{self, BATCH, RecvBatch, SendQueue};
use super::{Command, WorkerSnapshot};
use crate::metrics::Metrics;
use sfu_core::{DropReason, RoomStats};
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

/// Settings of the media workers.
#[derive(Clone, Debug)]
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
}

struct Worker {
    socket: UdpSocket,
    ctx: Arc<RoomContext>,
    metrics: Arc<Metrics>,
    rooms: slab::Slab<LocalRoom>,
    room_by_name: HashMap<String, usize>,
    by_ufrag: HashMap<String, PeerRef>,
    by_addr: HashMap<SocketAddr, PeerRef>,
    deadlines: BinaryHeap<Reverse<(Instant, usize)>>,
    send: SendQueue,
    drops: WorkerDrops,
    reported_gauges: WorkerSnapshot,
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
        candidates,
        max_participants: config.max_participants,
        default_max_layer: config.default_max_layer,
        core: config.core,
    });
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
                Worker::new(socket, ctx, metrics).run(rx).await;
            });
        })?;
    Ok((tx, local))
}

impl Worker {
    fn new(socket: UdpSocket, ctx: Arc<RoomContext>, metrics: Arc<Metrics>) -> Self {
        Self {
            socket,
            ctx,
            metrics,
            rooms: slab::Slab::new(),
            room_by_name: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            deadlines: BinaryHeap::new(),
            send: SendQueue::default(),
            drops: WorkerDrops::default(),
            reported_gauges: WorkerSnapshot::default(),
        }
    }

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
            if !self.send.is_empty() {
                self.drops.send_failed += self.send.flush(&self.socket).await as u64;
            }
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
        room.handle_datagram(now, target.peer, from, data, &mut self.send);
        self.after_room(target.room);
    }

    fn handle_deadlines(&mut self, now: Instant) {
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
            room.handle_timeout(now, &mut self.send);
            self.after_room(idx);
        }
    }

    /// Applies a room's routing changes, re-arms its deadline, and closes it once empty.
    fn after_room(&mut self, idx: usize) {
        let Some(room) = self.rooms.get_mut(idx) else {
            return;
        };
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
        if room.is_empty() {
            let room = self.rooms.remove(idx);
            self.room_by_name.remove(&room.name);
            let stats = room.core_stats();
            add_room_stats(&self.metrics, stats, &room.reported);
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

    fn room_index(&mut self, name: &str, create: bool) -> Option<usize> {
        if let Some(&idx) = self.room_by_name.get(name) {
            return Some(idx);
        }
        if !create {
            return None;
        }
        let idx = self.rooms.insert(LocalRoom::new(
            name.to_owned(),
            self.ctx.clone(),
            Instant::now(),
        ));
        self.room_by_name.insert(name.to_owned(), idx);
        tracing::info!(room = name, "room opened on this node");
        Some(idx)
    }

    fn handle_command(&mut self, command: Command) {
        use crate::signaling::protocol::{ErrorCode, SignalError};
        let now = Instant::now();
        let not_found = || SignalError::new(ErrorCode::NotFound, "no such session in this room");
        let room_of = |w: &mut Self, name: &str| w.room_index(name, false);
        match command {
            Command::Join(request, reply) => {
                let Some(idx) = self.room_index(&request.room, true) else {
                    return;
                };
                let sid_later = request.auto_subscribe;
                let room = &mut self.rooms[idx];
                let result = room.join(now, request, &mut self.send);
                if let (Ok(joined), true) = (&result, sid_later) {
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
                if let Some(idx) = room_of(self, &room) {
                    self.rooms[idx].leave(now, &participant, &reason, &mut self.send);
                    self.after_room(idx);
                }
            }
            Command::Publish {
                room,
                participant,
                sdp,
                reply,
            } => {
                let result = match room_of(self, &room) {
                    Some(idx) => {
                        let r = self.rooms[idx].publish(now, &participant, sdp, &mut self.send);
                        self.after_room(idx);
                        r
                    }
                    None => Err(not_found()),
                };
                let _ = reply.send(result);
            }
            Command::Unpublish {
                room,
                participant,
                track,
                reply,
            } => {
                let result = match room_of(self, &room) {
                    Some(idx) => {
                        let r =
                            self.rooms[idx].unpublish(now, &participant, &track, &mut self.send);
                        self.after_room(idx);
                        r
                    }
                    None => Err(not_found()),
                };
                let _ = reply.send(result);
            }
            Command::Subscribe {
                room,
                participant,
                tracks,
                subscribe,
                reply,
            } => {
                let result = match room_of(self, &room) {
                    Some(idx) => {
                        let r = self.rooms[idx].subscribe(now, &participant, &tracks, subscribe);
                        self.after_room(idx);
                        r
                    }
                    None => Err(not_found()),
                };
                let _ = reply.send(result);
            }
            Command::SubscriberAnswer {
                room,
                participant,
                sdp,
                reply,
            } => {
                let result = match room_of(self, &room) {
                    Some(idx) => {
                        let r = self.rooms[idx].subscriber_answer(
                            now,
                            &participant,
                            sdp,
                            &mut self.send,
                        );
                        self.after_room(idx);
                        r
                    }
                    None => Err(not_found()),
                };
                let _ = reply.send(result);
            }
            Command::Play {
                room,
                participant,
                sdp,
                reply,
            } => {
                let result = match room_of(self, &room) {
                    Some(idx) => {
                        let r = self.rooms[idx].play(now, &participant, sdp, &mut self.send);
                        self.after_room(idx);
                        r
                    }
                    None => Err(not_found()),
                };
                let _ = reply.send(result);
            }
            Command::Trickle {
                room,
                participant,
                target,
                candidate,
                sdp_mid,
                reply,
            } => {
                let result = match room_of(self, &room) {
                    Some(idx) => {
                        let r = self.rooms[idx].trickle(&participant, target, candidate, sdp_mid);
                        self.after_room(idx);
                        r
                    }
                    None => Err(not_found()),
                };
                let _ = reply.send(result);
            }
            Command::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
        }
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
    }
}

fn add_room_stats(m: &Metrics, now: &RoomStats, before: &RoomStats) {
    m.packets_in.inc_by(now.packets_in - before.packets_in);
    m.bytes_in.inc_by(now.bytes_in - before.bytes_in);
    m.packets_out.inc_by(now.packets_out - before.packets_out);
    m.bytes_out.inc_by(now.bytes_out - before.bytes_out);
    m.nacks_received
        .inc_by(now.nacks_received - before.nacks_received);
    m.retransmitted
        .inc_by(now.retransmitted - before.retransmitted);
    m.keyframe_requests_received
        .inc_by(now.keyframe_requests_received - before.keyframe_requests_received);
    m.keyframe_requests_sent
        .inc_by(now.keyframe_requests_sent - before.keyframe_requests_sent);
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
