#![allow(dead_code)]
//! The relay core and forwarding core of several nodes, connected by a simulated network
//! (latency, per link if wanted; datagram loss, seeded), in virtual time. Shared by the relay's
//! simulation tests.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
pub use sfu_core::{
    Codec, MediaKind, Output as RoomOutput, Packet, Room, RoomConfig, SinkId, SubscriptionId,
    SubscriptionParams, TrackId, TrackInfo, WallClock,
};
// Not every test file that shares this module uses every name.
#[allow(unused_imports)]
pub use sfu_proto::relay::{Frame, Subscribe, frame::Body};
pub use sfu_relay::core::{NodeId, Output, Relay, RelayConfig, TrackKey};
use sfu_relay::glue::{Outbox, SinkTable};
use sfu_relay::wire::records;
use std::cmp::Reverse;
pub use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
pub use std::time::{Duration, Instant};

pub const ROOM: &str = "sim";
pub const TRACK: TrackId = TrackId(0x7);

pub enum Msg {
    Frame(Frame),
    Datagram(Bytes),
}

pub struct Node {
    pub id: NodeId,
    pub relay: Relay,
    pub room: Room,
    pub sinks: SinkTable,
    /// Packets for relay links, packed into datagrams after each round of outputs (as a
    /// node's worker packs them after each turn of its loop).
    pub outbox: Outbox,
    /// Packets that arrived over relay links, by layer (source payload ids; only while
    /// payload ids are kept).
    pub relayed: HashMap<usize, Vec<u32>>,
    /// Local subscribers: sink -> packets received (source payload ids).
    pub received: HashMap<SinkId, Vec<u32>>,
    pub subscriptions: HashMap<SinkId, SubscriptionId>,
    /// Keyframe requests that reached this node's publisher (origin only).
    pub plis: Vec<Instant>,
    /// Packets received per local subscriber, indexed by sink id (local sinks are small
    /// integers); kept even when payload ids are not.
    pub delivered: Vec<u64>,
    /// When a local subscriber first got a frame published after [`Sim::set_mark`] (recovery
    /// timing: frames already on their way when the mark was set do not count).
    pub first_since_mark: Option<Instant>,
}

impl Node {
    /// Takes the outputs of the relay and the room, in order. Packets to local subscribers,
    /// the bulk of a large room's outputs, are recorded here rather than queued as work.
    fn drain(&mut self, now: Instant, keep_ids: bool, mark: Option<u32>, work: &mut Vec<Work>) {
        while let Some(o) = self.relay.poll_output() {
            work.push(Work::Relay(o));
        }
        while let Some(o) = self.room.poll_output() {
            match o {
                RoomOutput::Rtp {
                    sink,
                    packet,
                    edits,
                    ..
                } => self.deliver_locally(now, sink, &edits.applied(&packet), keep_ids, mark),
                o => work.push(Work::Room(o)),
            }
        }
    }

    /// A packet the room sent to a local subscriber.
    fn deliver_locally(
        &mut self,
        now: Instant,
        sink: SinkId,
        packet: &Packet,
        keep_id: bool,
        mark: Option<u32>,
    ) {
        if keep_id {
            self.received
                .entry(sink)
                .or_default()
                .push(payload_id(packet));
        }
        let i = sink.0 as usize;
        if self.delivered.len() <= i {
            self.delivered.resize(i + 1, 0);
        }
        self.delivered[i] += 1;
        let fresh = packet.payload.len() >= 6 && mark.is_some_and(|m| payload_id(packet) > m);
        if fresh && self.first_since_mark.is_none() {
            self.first_since_mark = Some(now);
        }
    }
}

pub struct Sim {
    pub now: Instant,
    pub nodes: BTreeMap<NodeId, Node>,
    pub queue: BinaryHeap<Reverse<(Instant, u64, NodeId, NodeId)>>,
    pub in_flight: HashMap<u64, Msg>,
    pub seq: u64,
    pub latency: Duration,
    pub loss: f64,
    pub rng: StdRng,
    pub down: HashSet<NodeId>,
    /// Datagrams put on the wire, by (from, to).
    pub datagrams: HashMap<(NodeId, NodeId), u64>,
    /// Packets in them, by (from, to).
    pub packets: HashMap<(NodeId, NodeId), u64>,
    /// Largest datagram a link takes (the relay packs packets up to it).
    pub max_datagram: usize,
    /// Layers seen in datagrams per (from, to).
    pub layers_seen: HashMap<(NodeId, NodeId), HashSet<u32>>,
    pub pending_key: bool,
    pub next_seq: [u16; 3],
    pub payload_id: u32,
    /// Layers the origin's publisher was last told to send (dynacast); it sends only those.
    pub publisher_layers: Vec<bool>,
    /// (time, from, to, layer) of every media datagram put on a link.
    pub layer_datagrams: Vec<(Instant, NodeId, NodeId, u32)>,
    /// Nodes whose demand follows their room's wanted layers (as a node's does).
    pub auto_demand: HashSet<NodeId>,
    /// The demand last set for each of those nodes.
    pub demand: HashMap<NodeId, Vec<usize>>,
    /// One-way latency of a link (either direction) where it differs from `latency`: a
    /// cluster spread over regions is not one LAN.
    pub link_latency: HashMap<(NodeId, NodeId), Duration>,
    /// Whether `Node::received` keeps every payload id. Ten thousand subscribers times
    /// thousands of packets is too much memory; large simulations only count (`delivered`).
    pub keep_payload_ids: bool,
    /// See [`Sim::set_mark`]: the last frame published before it.
    pub mark: Option<u32>,
    /// When [`Sim::run_on`] publishes the next frame.
    pub next_frame: Option<Instant>,
}

pub fn key() -> TrackKey {
    TrackKey {
        room: ROOM.into(),
        track: TRACK,
    }
}

pub fn info(layers: usize, local: bool) -> TrackInfo {
    let mut info = TrackInfo::new(TRACK, MediaKind::Video, Codec::Vp8, 90_000, layers);
    info.local = local;
    info
}

impl Sim {
    pub fn new(names: &[&str], fanout: usize, latency: Duration, loss: f64, layers: usize) -> Self {
        let now = Instant::now();
        let mut nodes = BTreeMap::new();
        for (i, n) in names.iter().enumerate() {
            let id: NodeId = (*n).into();
            let config = RelayConfig {
                fanout,
                flow_base: (i as u32) << 20,
                ..Default::default()
            };
            nodes.insert(
                id.clone(),
                Node {
                    relay: Relay::new(id.clone(), config),
                    room: Room::new(WallClock::new(now, Duration::ZERO), RoomConfig::default()),
                    sinks: SinkTable::default(),
                    outbox: Outbox::default(),
                    relayed: HashMap::new(),
                    received: HashMap::new(),
                    subscriptions: HashMap::new(),
                    plis: Vec::new(),
                    delivered: Vec::new(),
                    first_since_mark: None,
                    id,
                },
            );
        }
        let mut sim = Sim {
            now,
            nodes,
            queue: BinaryHeap::new(),
            in_flight: HashMap::new(),
            seq: 0,
            latency,
            loss,
            rng: StdRng::seed_from_u64(7),
            down: HashSet::new(),
            datagrams: HashMap::new(),
            packets: HashMap::new(),
            max_datagram: 1200,
            layers_seen: HashMap::new(),
            pending_key: true,
            next_seq: [100, 20_000, 40_000],
            payload_id: 0,
            publisher_layers: Vec::new(),
            layer_datagrams: Vec::new(),
            auto_demand: HashSet::new(),
            demand: HashMap::new(),
            link_latency: HashMap::new(),
            keep_payload_ids: true,
            mark: None,
            next_frame: None,
        };
        // Full mesh of links, as the node's link manager keeps.
        let ids: Vec<NodeId> = sim.nodes.keys().cloned().collect();
        for a in &ids {
            for b in &ids {
                if a != b {
                    sim.nodes
                        .get_mut(a)
                        .unwrap()
                        .relay
                        .handle_link_up(now, b.clone());
                }
            }
        }
        // The first node publishes the track.
        let origin = ids[0].clone();
        let o = sim.nodes.get_mut(&origin).unwrap();
        o.room.add_track(now, info(layers, true)).unwrap();
        o.relay.add_local_track(
            key(),
            sfu_proto::relay::TrackInfo {
                kind: "video".into(),
                codec_mime: "video/VP8".into(),
                clock_rate: 90_000,
                layers: layers as u32,
            },
        );
        sim.pump();
        sim
    }

    pub fn origin(&self) -> NodeId {
        self.nodes.keys().next().unwrap().clone()
    }

    pub fn send(&mut self, from: &NodeId, to: &NodeId, msg: Msg) {
        if self.down.contains(from) || self.down.contains(to) {
            return;
        }
        if let Msg::Datagram(d) = &msg {
            *self
                .datagrams
                .entry((from.clone(), to.clone()))
                .or_default() += 1;
            for (flow, rtp) in records(d.clone()).map_while(Result::ok) {
                *self.packets.entry((from.clone(), to.clone())).or_default() += 1;
                self.layers_seen
                    .entry((from.clone(), to.clone()))
                    .or_default()
                    .insert(flow);
                if rtp.len() >= 12 {
                    let ssrc = u32::from_be_bytes([rtp[8], rtp[9], rtp[10], rtp[11]]);
                    self.layer_datagrams
                        .push((self.now, from.clone(), to.clone(), ssrc - 1000));
                }
            }
            if self.rng.random::<f64>() < self.loss {
                return;
            }
        }
        self.seq += 1;
        self.in_flight.insert(self.seq, msg);
        let latency = self.latency_between(from, to);
        self.queue.push(Reverse((
            self.now + latency,
            self.seq,
            from.clone(),
            to.clone(),
        )));
    }

    /// One-way latency from `from` to `to`.
    pub fn latency_between(&self, from: &NodeId, to: &NodeId) -> Duration {
        self.link_latency
            .get(&(from.clone(), to.clone()))
            .or_else(|| self.link_latency.get(&(to.clone(), from.clone())))
            .copied()
            .unwrap_or(self.latency)
    }

    /// From now on, each node notes when its local subscribers first get a frame published
    /// after this moment (`Node::first_since_mark`).
    pub fn set_mark(&mut self) {
        self.mark = Some(self.payload_id);
        for n in self.nodes.values_mut() {
            n.first_since_mark = None;
        }
    }

    /// Handles every output of every node until nothing more is produced.
    pub fn pump(&mut self) {
        let (now, keep, mark) = (self.now, self.keep_payload_ids, self.mark);
        loop {
            let (mut work, mut mine) = (Vec::new(), Vec::new());
            for (id, n) in &mut self.nodes {
                n.drain(now, keep, mark, &mut mine);
                work.extend(mine.drain(..).map(|w| (id.clone(), w)));
            }
            if work.is_empty() {
                return;
            }
            for (id, w) in work {
                self.handle(&id, w);
            }
            let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
            for id in &ids {
                self.send_relayed(id);
            }
        }
    }

    /// Puts what a node relayed in the last round on the wire, packed into datagrams.
    pub fn send_relayed(&mut self, id: &NodeId) {
        let n = self.nodes.get_mut(id).unwrap();
        if n.outbox.is_empty() {
            return;
        }
        let mut out = Vec::new();
        let max = self.max_datagram;
        n.outbox.flush(|_| max, |link, d| out.push((link, d)));
        for (link, d) in out {
            let to = self.nodes[id].relay.node_of_link(link).unwrap().clone();
            self.send(id, &to, Msg::Datagram(d));
        }
    }

    /// Handles the outputs of one node until it is quiet. After a delivery only the receiving
    /// node has work (what it sends is queued), and with a hundred nodes visiting each one
    /// after every datagram would cost more than the cores being simulated.
    pub fn pump_node(&mut self, id: &NodeId) {
        let (now, keep, mark) = (self.now, self.keep_payload_ids, self.mark);
        loop {
            let mut work = Vec::new();
            self.nodes
                .get_mut(id)
                .unwrap()
                .drain(now, keep, mark, &mut work);
            if work.is_empty() {
                return;
            }
            for w in work {
                self.handle(id, w);
            }
            self.send_relayed(id);
        }
    }

    /// Carries out one output of a node's relay or room. The relay's outputs reach the
    /// forwarding core in the order they were made, as on a node: a track's `Feeding` is
    /// handled before the `Attach` of the nodes that waited for it.
    pub fn handle(&mut self, id: &NodeId, w: Work) {
        let now = self.now;
        let w = match w {
            Work::Relay(o) => {
                let n = self.nodes.get_mut(id).unwrap();
                match n.sinks.apply(now, o, &mut n.room) {
                    Some(o) => Work::Relay(o),
                    None => return,
                }
            }
            w => w,
        };
        match w {
            Work::Relay(Output::Send { to, frame }) => self.send(id, &to, Msg::Frame(frame)),
            Work::Relay(Output::Feeding { key: _, info: i }) => {
                let n = self.nodes.get_mut(id).unwrap();
                if n.room.track(TRACK).is_none() {
                    n.room
                        .add_track(now, info(i.layers as usize, false))
                        .unwrap();
                    // Local subscribers that wait for the track attach now.
                    let waiting: Vec<SinkId> = n
                        .received
                        .keys()
                        .filter(|s| !n.subscriptions.contains_key(s))
                        .copied()
                        .collect();
                    for s in waiting {
                        let sub = n.room.subscribe(now, TRACK, s, params(s)).unwrap();
                        n.subscriptions.insert(s, sub);
                    }
                }
            }
            Work::Relay(Output::Unfed { .. }) => {
                let n = self.nodes.get_mut(id).unwrap();
                n.room.remove_track(TRACK);
                n.subscriptions.clear();
            }
            Work::Relay(other) => panic!("unexpected relay output {other:?}"),
            Work::Room(RoomOutput::Rtp {
                sink,
                packet,
                edits,
                ..
            }) => {
                let (keep, mark) = (self.keep_payload_ids, self.mark);
                let n = self.nodes.get_mut(id).unwrap();
                n.deliver_locally(now, sink, &edits.applied(&packet), keep, mark);
            }
            Work::Room(RoomOutput::Relay { sink, packet, .. }) => {
                assert!(self.nodes.get_mut(id).unwrap().outbox.push(sink, packet));
            }
            Work::Room(RoomOutput::KeyframeRequest { layer, .. }) => {
                let n = self.nodes.get_mut(id).unwrap();
                if n.relay.is_remote(&key()) {
                    n.relay.request_keyframe(&key(), layer);
                } else {
                    n.plis.push(now);
                    self.pending_key = true;
                }
            }
            Work::Room(RoomOutput::SenderReport { .. } | RoomOutput::Speakers(_)) => {}
            Work::Room(RoomOutput::SharedLevels(_)) => {}
            Work::Room(RoomOutput::PublisherLayers { active, .. }) => {
                self.publisher_layers = active;
            }
        }
    }

    pub fn deliver(&mut self, seq: u64, from: NodeId, to: NodeId) {
        let Some(msg) = self.in_flight.remove(&seq) else {
            return;
        };
        if self.down.contains(&to) || self.down.contains(&from) {
            return;
        }
        let now = self.now;
        let n = self.nodes.get_mut(&to).unwrap();
        match msg {
            Msg::Frame(f) => n.relay.handle_frame(now, &from, f),
            Msg::Datagram(d) => {
                let link = n.relay.link_id(&from);
                for record in records(d) {
                    let (flow, rtp) = record.unwrap();
                    if let Ok(del) = n.relay.handle_datagram(now, link, flow, rtp) {
                        let (track, layer, packet) = (del.key.track, del.layer, del.packet);
                        if self.keep_payload_ids {
                            n.relayed
                                .entry(layer)
                                .or_default()
                                .push(payload_id(&packet));
                        }
                        n.room.handle_rtp(now, track, layer, packet);
                    }
                }
            }
        }
    }

    /// The publisher sends one frame (one packet per layer) to the origin's room.
    pub fn publish_frame(&mut self, layers: usize) {
        let key_frame = std::mem::take(&mut self.pending_key);
        self.payload_id += 1;
        let origin = self.origin();
        let now = self.now;
        for layer in 0..layers {
            if self.publisher_layers.get(layer) == Some(&false) {
                continue;
            }
            self.next_seq[layer] = self.next_seq[layer].wrapping_add(1);
            let mut payload = vec![0x10, if key_frame { 0 } else { 1 }];
            payload.extend_from_slice(&self.payload_id.to_be_bytes());
            payload.push(layer as u8);
            let mut p = Packet {
                payload: Bytes::from(payload),
                ..Default::default()
            };
            p.header.version = 2;
            p.header.ssrc = 1000 + layer as u32;
            p.header.sequence_number = self.next_seq[layer];
            p.header.timestamp = self.payload_id * 3000;
            p.header.payload_type = 96;
            p.header.marker = true;
            self.nodes
                .get_mut(&origin)
                .unwrap()
                .room
                .handle_rtp(now, TRACK, layer, p);
        }
        self.pump();
    }

    /// Runs until `until`, publishing a frame every `frame` (if any).
    pub fn run(&mut self, until: Duration, frame: Option<(Duration, usize)>) {
        let mut next_frame = self.now;
        self.advance(self.now + until, frame, &mut next_frame);
    }

    /// Like [`Sim::run`] with frames, but the publisher's clock carries over from the last
    /// call, so a test can act between short runs without changing the frame rate.
    pub fn run_on(&mut self, until: Duration, frame: (Duration, usize)) {
        let mut next_frame = self.next_frame.unwrap_or(self.now).max(self.now);
        self.advance(self.now + until, Some(frame), &mut next_frame);
        self.next_frame = Some(next_frame);
    }

    fn advance(
        &mut self,
        end: Instant,
        frame: Option<(Duration, usize)>,
        next_frame: &mut Instant,
    ) {
        // Whatever a test did to a node directly before this run.
        self.pump();
        while self.now < end {
            let mut next = end;
            if let Some(Reverse((t, ..))) = self.queue.peek() {
                next = next.min(*t);
            }
            for n in self.nodes.values_mut() {
                for t in [n.relay.poll_timeout(), n.room.poll_timeout()]
                    .into_iter()
                    .flatten()
                {
                    next = next.min(t);
                }
            }
            if frame.is_some() {
                next = next.min(*next_frame);
            }
            self.now = next.max(self.now);
            while let Some(Reverse((t, seq, from, to))) = self.queue.peek().cloned() {
                if t > self.now {
                    break;
                }
                self.queue.pop();
                self.deliver(seq, from, to.clone());
                self.pump_node(&to);
            }
            let now = self.now;
            let mut woken = Vec::new();
            for (id, n) in &mut self.nodes {
                let relay_due = n.relay.poll_timeout().is_some_and(|t| t <= now);
                let room_due = n.room.poll_timeout().is_some_and(|t| t <= now);
                if relay_due {
                    n.relay.handle_timeout(now);
                }
                if room_due {
                    n.room.handle_timeout(now);
                }
                if relay_due || room_due {
                    woken.push(id.clone());
                }
            }
            for id in woken {
                self.pump_node(&id);
            }
            self.follow_demand();
            if let Some((interval, layers)) = frame
                && self.now >= *next_frame
            {
                self.publish_frame(layers);
                *next_frame += interval;
            }
            if self.now >= end {
                break;
            }
        }
    }

    /// The track is announced to `node` (as the registry does): its room knows it before it is
    /// fed, so subscriptions exist and the allocator decides what to pull.
    pub fn announce(&mut self, node: &str, layers: usize) {
        let now = self.now;
        let n = self.nodes.get_mut(node).unwrap();
        n.room.add_track(now, info(layers, false)).unwrap();
        self.auto_demand.insert(node.into());
    }

    /// A subscriber on `node` that may receive up to `max_layer` (the track was announced).
    pub fn subscribe_up_to(&mut self, node: &str, sink: u64, max_layer: usize) {
        let now = self.now;
        let n = self.nodes.get_mut(node).unwrap();
        let s = SinkId(sink);
        n.received.entry(s).or_default();
        let params = SubscriptionParams {
            max_layer,
            ..params(s)
        };
        let sub = n.room.subscribe(now, TRACK, s, params).unwrap();
        n.subscriptions.insert(s, sub);
        self.follow_demand();
        self.pump();
    }

    /// Nodes in `auto_demand` ask the relay for what their room's subscriptions want.
    pub fn follow_demand(&mut self) {
        let now = self.now;
        let origin = self.origin();
        for id in self.auto_demand.clone() {
            let n = self.nodes.get_mut(&id).unwrap();
            let wanted = n.room.wanted_layers(now, TRACK);
            if self.demand.get(&id) != Some(&wanted) {
                self.demand.insert(id.clone(), wanted.clone());
                n.relay.set_demand(now, key(), origin.clone(), wanted);
                self.pump_node(&id);
            }
        }
    }

    /// Layers sent from `from` to `to` between two times.
    pub fn layers_sent(&self, from: &str, to: &str, since: Instant, until: Instant) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .layer_datagrams
            .iter()
            .filter(|(t, f, d, _)| *t >= since && *t < until && &**f == from && &**d == to)
            .map(|(_, _, _, l)| *l)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// A local subscriber on `node` (sink ids are small integers on every node).
    pub fn subscribe(&mut self, node: &str, sink: u64, layers: Vec<usize>) {
        let now = self.now;
        let origin = self.origin();
        let n = self.nodes.get_mut(node).unwrap();
        let s = SinkId(sink);
        n.received.entry(s).or_default();
        if n.room.track(TRACK).is_some() {
            let sub = n.room.subscribe(now, TRACK, s, params(s)).unwrap();
            n.subscriptions.insert(s, sub);
        }
        if n.id != origin {
            n.relay.set_demand(now, key(), origin, layers);
        }
        self.pump();
    }

    pub fn unsubscribe_all(&mut self, node: &str) {
        let now = self.now;
        let origin = self.origin();
        let n = self.nodes.get_mut(node).unwrap();
        for (_, sub) in n.subscriptions.drain() {
            n.room.unsubscribe(sub);
        }
        n.received.clear();
        n.delivered.clear();
        n.relay.set_demand(now, key(), origin, vec![]);
        self.pump();
    }

    pub fn received(&self, node: &str) -> usize {
        self.nodes[node].delivered.iter().sum::<u64>() as usize
    }

    /// Takes a node off the network: every link to it goes down.
    pub fn kill(&mut self, node: &str) {
        self.partition(node);
        self.notice_down(node);
    }

    /// The node goes silent (it crashed, or its network did) but nobody has noticed yet:
    /// whatever it sends or is sent is lost.
    pub fn partition(&mut self, node: &str) {
        self.down.insert(node.into());
    }

    /// The other nodes notice that `node` is gone (its lease expired or its QUIC link timed
    /// out): their links to it go down.
    pub fn notice_down(&mut self, node: &str) {
        let dead: NodeId = node.into();
        let now = self.now;
        for (id, n) in &mut self.nodes {
            if *id != dead {
                n.relay.handle_link_down(now, &dead);
            }
        }
        self.pump();
    }
}

pub enum Work {
    Relay(Output),
    Room(RoomOutput),
}

pub fn params(s: SinkId) -> SubscriptionParams {
    SubscriptionParams {
        ssrc: 5000 + s.0 as u32,
        payload_type: 96,
        max_layer: 0,
        rtx: None,
        red_payload_type: None,
    }
}

pub fn payload_id(p: &Packet) -> u32 {
    u32::from_be_bytes(p.payload[2..6].try_into().unwrap())
}
