//! The relay core and forwarding core of several nodes, connected by a simulated network
//! (latency, datagram loss, seeded), in virtual time.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sfu_core::{
    Codec, MediaKind, Output as RoomOutput, Packet, Room, RoomConfig, SinkId, SubscriptionId,
    SubscriptionParams, TrackId, TrackInfo, WallClock,
};
use sfu_proto::relay::frame::Body;
use sfu_proto::relay::{Frame, Subscribe};
use sfu_relay::core::{NodeId, Output, Relay, RelayConfig, TrackKey};
use sfu_relay::glue::{SinkTable, datagram};
use sfu_relay::wire::decode_datagram;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

const ROOM: &str = "sim";
const TRACK: TrackId = TrackId(0x7);

enum Msg {
    Frame(Frame),
    Datagram(Bytes),
}

struct Node {
    id: NodeId,
    relay: Relay,
    room: Room,
    sinks: SinkTable,
    /// Local subscribers: sink -> packets received (source payload ids).
    received: HashMap<SinkId, Vec<u32>>,
    subscriptions: HashMap<SinkId, SubscriptionId>,
    /// Keyframe requests that reached this node's publisher (origin only).
    plis: Vec<Instant>,
}

struct Sim {
    now: Instant,
    nodes: BTreeMap<NodeId, Node>,
    queue: BinaryHeap<Reverse<(Instant, u64, NodeId, NodeId)>>,
    in_flight: HashMap<u64, Msg>,
    seq: u64,
    latency: Duration,
    loss: f64,
    rng: StdRng,
    down: HashSet<NodeId>,
    /// Datagrams put on the wire, by (from, to).
    datagrams: HashMap<(NodeId, NodeId), u64>,
    /// Layers seen in datagrams per (from, to).
    layers_seen: HashMap<(NodeId, NodeId), HashSet<u32>>,
    pending_key: bool,
    next_seq: [u16; 3],
    payload_id: u32,
    /// Layers the origin's publisher was last told to send (dynacast).
    publisher_layers: Vec<bool>,
}

fn key() -> TrackKey {
    TrackKey {
        room: ROOM.into(),
        track: TRACK,
    }
}

fn info(layers: usize, local: bool) -> TrackInfo {
    let mut info = TrackInfo::new(TRACK, MediaKind::Video, Codec::Vp8, 90_000, layers);
    info.local = local;
    info
}

impl Sim {
    fn new(names: &[&str], fanout: usize, latency: Duration, loss: f64, layers: usize) -> Self {
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
                    received: HashMap::new(),
                    subscriptions: HashMap::new(),
                    plis: Vec::new(),
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
            layers_seen: HashMap::new(),
            pending_key: true,
            next_seq: [100, 20_000, 40_000],
            payload_id: 0,
            publisher_layers: Vec::new(),
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

    fn origin(&self) -> NodeId {
        self.nodes.keys().next().unwrap().clone()
    }

    fn send(&mut self, from: &NodeId, to: &NodeId, msg: Msg) {
        if self.down.contains(from) || self.down.contains(to) {
            return;
        }
        if let Msg::Datagram(d) = &msg {
            *self
                .datagrams
                .entry((from.clone(), to.clone()))
                .or_default() += 1;
            if let Ok((flow, _)) = decode_datagram(d.clone()) {
                self.layers_seen
                    .entry((from.clone(), to.clone()))
                    .or_default()
                    .insert(flow);
            }
            if self.rng.random::<f64>() < self.loss {
                return;
            }
        }
        self.seq += 1;
        self.in_flight.insert(self.seq, msg);
        self.queue.push(Reverse((
            self.now + self.latency,
            self.seq,
            from.clone(),
            to.clone(),
        )));
    }

    /// Handles every output of every node until nothing more is produced.
    fn pump(&mut self) {
        loop {
            let mut work = Vec::new();
            for (id, n) in &mut self.nodes {
                while let Some(o) = n.relay.poll_output() {
                    if let Some(o) = n.sinks.apply(self.now, o, &mut n.room) {
                        work.push((id.clone(), Work::Relay(o)));
                    }
                }
                while let Some(o) = n.room.poll_output() {
                    work.push((id.clone(), Work::Room(o)));
                }
            }
            if work.is_empty() {
                return;
            }
            for (id, w) in work {
                self.handle(&id, w);
            }
        }
    }

    fn handle(&mut self, id: &NodeId, w: Work) {
        let now = self.now;
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
            Work::Room(RoomOutput::Rtp { sink, packet, .. }) => {
                let n = self.nodes.get_mut(id).unwrap();
                n.received
                    .entry(sink)
                    .or_default()
                    .push(payload_id(&packet));
            }
            Work::Room(RoomOutput::Relay { sink, packet, .. }) => {
                let (link, bytes) = datagram(sink, &packet).unwrap();
                let to = self.nodes[id].relay.node_of_link(link).unwrap().clone();
                self.send(id, &to, Msg::Datagram(bytes));
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

    fn deliver(&mut self, seq: u64, from: NodeId, to: NodeId) {
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
                let (flow, rtp) = decode_datagram(d).unwrap();
                if let Ok(del) = n.relay.handle_datagram(now, link, flow, rtp) {
                    let (track, layer, packet) = (del.key.track, del.layer, del.packet);
                    n.room.handle_rtp(now, track, layer, packet);
                }
            }
        }
    }

    /// The publisher sends one frame (one packet per layer) to the origin's room.
    fn publish_frame(&mut self, layers: usize) {
        let key_frame = std::mem::take(&mut self.pending_key);
        self.payload_id += 1;
        let origin = self.origin();
        let now = self.now;
        for layer in 0..layers {
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
    fn run(&mut self, until: Duration, frame: Option<(Duration, usize)>) {
        let end = self.now + until;
        let mut next_frame = self.now;
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
                next = next.min(next_frame);
            }
            self.now = next.max(self.now);
            while let Some(Reverse((t, seq, from, to))) = self.queue.peek().cloned() {
                if t > self.now {
                    break;
                }
                self.queue.pop();
                self.deliver(seq, from, to);
                self.pump();
            }
            let now = self.now;
            for n in self.nodes.values_mut() {
                if n.relay.poll_timeout().is_some_and(|t| t <= now) {
                    n.relay.handle_timeout(now);
                }
                if n.room.poll_timeout().is_some_and(|t| t <= now) {
                    n.room.handle_timeout(now);
                }
            }
            self.pump();
            if let Some((interval, layers)) = frame
                && self.now >= next_frame
            {
                self.publish_frame(layers);
                next_frame += interval;
            }
            if self.now >= end {
                break;
            }
        }
    }

    /// A local subscriber on `node` (sink ids are small integers on every node).
    fn subscribe(&mut self, node: &str, sink: u64, layers: Vec<usize>) {
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

    fn unsubscribe_all(&mut self, node: &str) {
        let now = self.now;
        let origin = self.origin();
        let n = self.nodes.get_mut(node).unwrap();
        for (_, sub) in n.subscriptions.drain() {
            n.room.unsubscribe(sub);
        }
        n.received.clear();
        n.relay.set_demand(now, key(), origin, vec![]);
        self.pump();
    }

    fn received(&self, node: &str) -> usize {
        self.nodes[node].received.values().map(|v| v.len()).sum()
    }

    /// Takes a node off the network: every link to it goes down.
    fn kill(&mut self, node: &str) {
        let dead: NodeId = node.into();
        self.down.insert(dead.clone());
        let now = self.now;
        for (id, n) in &mut self.nodes {
            if *id != dead {
                n.relay.handle_link_down(now, &dead);
            }
        }
        self.pump();
    }
}

enum Work {
    Relay(Output),
    Room(RoomOutput),
}

fn params(s: SinkId) -> SubscriptionParams {
    SubscriptionParams {
        ssrc: 5000 + s.0 as u32,
        payload_type: 96,
        max_layer: 0,
    }
}

fn payload_id(p: &Packet) -> u32 {
    u32::from_be_bytes(p.payload[2..6].try_into().unwrap())
}

#[test]
fn loss_on_a_link_is_recovered_by_nacks_to_the_sender() {
    let mut sim = Sim::new(&["a", "b"], 4, Duration::from_millis(20), 0.10, 1);
    sim.subscribe("b", 1, vec![0]);
    sim.run(Duration::from_millis(200), None);
    sim.run(Duration::from_secs(5), Some((Duration::from_millis(10), 1)));
    // Let the last retransmissions arrive.
    sim.run(Duration::from_secs(1), None);
    let got: HashSet<u32> = sim.nodes["b"].received[&SinkId(1)]
        .iter()
        .copied()
        .collect();
    let first = *got.iter().min().unwrap();
    let expected = sim.payload_id - first + 1;
    let missing = expected as usize - got.len();
    assert!(
        missing == 0,
        "10% datagram loss, every packet recovered: {missing} of {expected} missing"
    );
    let sent_a_to_b = sim.datagrams[&("a".into(), "b".into())];
    assert!(
        sent_a_to_b > expected as u64 + expected as u64 / 20,
        "retransmissions were sent: {sent_a_to_b} datagrams for {expected} packets"
    );
}

#[test]
fn ten_edges_asking_for_keyframes_reach_the_publisher_as_one() {
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"];
    let mut sim = Sim::new(&names, 4, Duration::from_millis(5), 0.0, 1);
    sim.run(Duration::from_secs(1), Some((Duration::from_millis(33), 1)));
    let before = sim.nodes["a"].plis.len();
    // Ten edge nodes get a subscriber each at the same instant: each wants a keyframe.
    for n in &names[1..] {
        sim.subscribe(n, 1, vec![0]);
    }
    sim.run(
        Duration::from_millis(300),
        Some((Duration::from_millis(33), 1)),
    );
    let plis: Vec<Instant> = sim.nodes["a"].plis[before..].to_vec();
    assert_eq!(plis.len(), 1, "one PLI for ten edges: {plis:?}");
    sim.run(Duration::from_secs(2), Some((Duration::from_millis(33), 1)));
    for n in &names[1..] {
        assert!(sim.received(n) > 30, "{n} receives: {}", sim.received(n));
    }
}

#[test]
fn tracks_are_pulled_only_while_wanted_and_only_the_wanted_layers() {
    let mut sim = Sim::new(&["a", "b"], 4, Duration::from_millis(5), 0.0, 3);
    let ab = ("a".into(), "b".into());
    sim.run(Duration::from_secs(1), Some((Duration::from_millis(33), 3)));
    assert_eq!(
        sim.datagrams.get(&ab),
        None,
        "nothing flows without a subscriber"
    );

    sim.subscribe("b", 1, vec![0]);
    sim.run(Duration::from_secs(1), Some((Duration::from_millis(33), 3)));
    let flowing = sim.datagrams[&ab];
    assert!(flowing > 20, "{flowing}");
    assert_eq!(
        sim.layers_seen[&ab].len(),
        1,
        "only the wanted layer crosses the link"
    );
    assert!(sim.received("b") > 20);

    sim.unsubscribe_all("b");
    sim.run(
        Duration::from_millis(200),
        Some((Duration::from_millis(33), 3)),
    );
    let after_stop = sim.datagrams[&ab];
    sim.run(Duration::from_secs(1), Some((Duration::from_millis(33), 3)));
    assert_eq!(
        sim.datagrams[&ab], after_stop,
        "the flow stops with the last subscriber"
    );
    assert!(!sim.nodes["b"].relay.is_remote(&key()));
}

#[test]
fn many_subscribers_behind_a_link_cost_one_copy() {
    let mut sim = Sim::new(&["a", "b"], 4, Duration::from_millis(5), 0.0, 1);
    for s in 1..=50 {
        sim.subscribe("b", s, vec![0]);
    }
    sim.run(Duration::from_secs(1), Some((Duration::from_millis(10), 1)));
    let frames = sim.payload_id as u64;
    let datagrams = sim.datagrams[&("a".into(), "b".into())];
    assert!(
        datagrams <= frames,
        "{datagrams} datagrams for {frames} packets"
    );
    assert!(sim.received("b") as u64 > 50 * (frames - 10));
}

#[test]
fn the_origin_feeds_fanout_nodes_and_the_tree_repairs_itself() {
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    let mut sim = Sim::new(&names, 2, Duration::from_millis(5), 0.0, 1);
    for n in &names[1..] {
        sim.subscribe(n, 1, vec![0]);
        sim.run(
            Duration::from_millis(100),
            Some((Duration::from_millis(33), 1)),
        );
    }
    sim.run(Duration::from_secs(2), Some((Duration::from_millis(33), 1)));
    let direct = sim.nodes["a"].relay.children(&key());
    assert_eq!(
        direct.len(),
        2,
        "the origin feeds exactly `fanout` nodes: {direct:?}"
    );
    for n in &names[1..] {
        let path = sim.nodes[*n]
            .relay
            .path(&key())
            .expect("receiving")
            .to_vec();
        assert_eq!(&*path[0], "a", "{n}: {path:?}");
        assert!(!path.contains(&NodeId::from(*n)), "{n}: no loop {path:?}");
        assert!(sim.nodes[*n].relay.children(&key()).len() <= 2);
        assert!(sim.received(n) > 30, "{n} receives");
    }
    // Take out an interior node that feeds others.
    let interior = direct
        .iter()
        .find(|d| !sim.nodes[&**d].relay.children(&key()).is_empty())
        .expect("an interior node")
        .clone();
    let orphans: Vec<NodeId> = sim.nodes[&interior].relay.children(&key());
    sim.kill(&interior);
    let before: HashMap<NodeId, usize> = orphans
        .iter()
        .map(|o| (o.clone(), sim.received(o)))
        .collect();
    sim.run(Duration::from_secs(3), Some((Duration::from_millis(33), 1)));
    for o in &orphans {
        assert!(
            sim.received(o) > before[o] + 50,
            "{o} resumed after {interior} left: {} -> {}",
            before[o],
            sim.received(o)
        );
        let path = sim.nodes[o].relay.path(&key()).unwrap().to_vec();
        assert!(
            !path.contains(&interior),
            "{o} no longer goes through {interior}: {path:?}"
        );
    }
}

#[test]
fn a_subscription_that_would_close_a_loop_is_refused() {
    // b receives the track through c (path a, c). c now asks b for it: refused.
    let mut sim = Sim::new(&["a", "b", "c"], 1, Duration::from_millis(5), 0.0, 1);
    sim.subscribe("c", 1, vec![0]);
    sim.run(
        Duration::from_millis(300),
        Some((Duration::from_millis(33), 1)),
    );
    sim.subscribe("b", 1, vec![0]);
    sim.run(
        Duration::from_millis(500),
        Some((Duration::from_millis(33), 1)),
    );
    let path_b = sim.nodes["b"].relay.path(&key()).unwrap().to_vec();
    assert_eq!(path_b, vec![NodeId::from("a"), NodeId::from("c")]);
    let now = sim.now;
    let b = sim.nodes.get_mut("b").unwrap();
    b.relay.handle_frame(
        now,
        &"c".into(),
        Frame {
            body: Some(Body::Subscribe(Subscribe {
                room: ROOM.into(),
                track: TRACK.0,
                layers: vec![0],
                origin: "a".into(),
            })),
        },
    );
    let refused = std::iter::from_fn(|| b.relay.poll_output()).any(|o| {
        matches!(o, Output::Send { ref to, frame: Frame { body: Some(Body::Refused(ref r)) } }
            if &**to == "c" && r.reason == sfu_proto::relay::refused::Reason::Loop as i32)
    });
    assert!(refused, "b refuses to feed its own upstream");
}

#[test]
fn an_offered_feed_through_the_receiver_is_declined() {
    let now = Instant::now();
    let mut b = Relay::new("b".into(), RelayConfig::default());
    b.handle_link_up(now, "a".into());
    b.handle_link_up(now, "c".into());
    b.set_demand(now, key(), "a".into(), vec![0]);
    while b.poll_output().is_some() {}
    // The origin redirects b to c; c answers with a path that contains b.
    b.handle_frame(
        now,
        &"a".into(),
        Frame {
            body: Some(Body::Redirect(sfu_proto::relay::Redirect {
                room: ROOM.into(),
                track: TRACK.0,
                via: "c".into(),
            })),
        },
    );
    while b.poll_output().is_some() {}
    b.handle_frame(
        now,
        &"c".into(),
        Frame {
            body: Some(Body::Accepted(sfu_proto::relay::Accepted {
                room: ROOM.into(),
                track: TRACK.0,
                path: vec!["a".into(), "b".into(), "c".into()],
                info: None,
            })),
        },
    );
    let outs: Vec<Output> = std::iter::from_fn(|| b.poll_output()).collect();
    assert!(b.path(&key()).is_none(), "the looping feed is not taken");
    let unsubscribed_c = outs.iter().any(|o| matches!(o, Output::Send { to, frame: Frame { body: Some(Body::Subscribe(s)) } } if &**to == "c" && s.layers.is_empty()));
    let asked_a = outs.iter().any(|o| matches!(o, Output::Send { to, frame: Frame { body: Some(Body::Subscribe(s)) } } if &**to == "a" && !s.layers.is_empty()));
    assert!(unsubscribed_c && asked_a, "{outs:?}");
}
