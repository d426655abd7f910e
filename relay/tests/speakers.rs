//! Active speakers across two nodes, in virtual time: publishers on both nodes send synthetic
//! audio levels (RFC 6464); each node shares the levels of its own tracks over the relay link;
//! both rank the same speakers, and a subscriber hears only the K loudest (top-K), wherever
//! they are published. Audio that is not among them is not even pulled over the link.

use bytes::Bytes;
use sfu_core::{
    Codec, MediaKind, Output as RoomOutput, Packet, Room, RoomConfig, SinkId, SubscriptionId,
    SubscriptionParams, TrackId, TrackInfo, WallClock,
};
use sfu_proto::relay::{AudioLevel, Frame};
use sfu_relay::core::{NodeId, Output, Relay, RelayConfig};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROOM: &str = "town-hall";
const LEVEL_EXT: u8 = 1;

struct Node {
    id: NodeId,
    relay: Relay,
    room: Room,
    /// Speaker events clients of this node got, latest last.
    speakers: Vec<Vec<String>>,
}

struct Cluster {
    now: Instant,
    nodes: Vec<Node>,
    /// Frames on the wire: (to, from, frame).
    wire: VecDeque<(usize, NodeId, Frame)>,
}

/// Publishers: (track, participant, node).
const PUBLISHERS: [(u64, &str, usize); 6] = [
    (1, "p1", 0),
    (2, "p2", 0),
    (3, "p3", 0),
    (4, "p4", 0),
    (5, "p5", 1),
    (6, "p6", 1),
];

impl Cluster {
    fn new() -> Self {
        let now = Instant::now();
        let mut nodes: Vec<Node> = ["node-a", "node-b"]
            .iter()
            .enumerate()
            .map(|(i, id)| Node {
                id: (*id).into(),
                relay: Relay::new(
                    (*id).into(),
                    RelayConfig {
                        flow_base: (i as u32) << 20,
                        ..Default::default()
                    },
                ),
                room: Room::new(WallClock::new(now, Duration::ZERO), RoomConfig::default()),
                speakers: Vec::new(),
            })
            .collect();
        let (a, b) = (nodes[0].id.clone(), nodes[1].id.clone());
        nodes[0].relay.handle_link_up(now, b);
        nodes[1].relay.handle_link_up(now, a);
        // Every track is known on both nodes: locally where published, as a remote track with
        // levels (from the registry) elsewhere.
        for (track, participant, home) in PUBLISHERS {
            for (i, n) in nodes.iter_mut().enumerate() {
                let mut info =
                    TrackInfo::new(TrackId(track), MediaKind::Audio, Codec::Opus, 48_000, 1);
                info.participant = participant.into();
                info.audio_levels = true;
                info.local = i == home;
                info.audio_level_ext = (i == home).then_some(LEVEL_EXT);
                n.room.add_track(now, info).unwrap();
                if i != home {
                    n.room
                        .add_remote_speaker(TrackId(track), participant.into());
                }
            }
        }
        let mut c = Cluster {
            now,
            nodes,
            wire: VecDeque::new(),
        };
        c.pump();
        c
    }

    fn pump(&mut self) {
        loop {
            let mut busy = false;
            let ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id.clone()).collect();
            for i in 0..self.nodes.len() {
                let others: Vec<NodeId> = ids.iter().filter(|id| **id != ids[i]).cloned().collect();
                while let Some(o) = self.nodes[i].room.poll_output() {
                    busy = true;
                    match o {
                        RoomOutput::SharedLevels(levels) => {
                            let levels: Vec<AudioLevel> = levels
                                .into_iter()
                                .map(|(t, p, l)| AudioLevel {
                                    track: t.0,
                                    participant: p.to_string(),
                                    level: l as u32,
                                })
                                .collect();
                            self.nodes[i].relay.share_levels(ROOM, &others, &levels);
                        }
                        RoomOutput::Speakers(s) => self.nodes[i]
                            .speakers
                            .push(s.iter().map(|s| s.participant.to_string()).collect()),
                        _ => {}
                    }
                }
                while let Some(o) = self.nodes[i].relay.poll_output() {
                    busy = true;
                    match o {
                        Output::Send { to, frame } => {
                            let to = ids.iter().position(|id| *id == to).unwrap();
                            self.wire.push_back((to, ids[i].clone(), frame));
                        }
                        Output::Levels { levels, .. } => {
                            let now = self.now;
                            for l in levels {
                                let p: Arc<str> = l.participant.as_str().into();
                                self.nodes[i].room.handle_shared_level(
                                    now,
                                    TrackId(l.track),
                                    p,
                                    l.level as u8,
                                );
                            }
                        }
                        _ => {}
                    }
                }
            }
            while let Some((to, from, frame)) = self.wire.pop_front() {
                busy = true;
                let now = self.now;
                self.nodes[to].relay.handle_frame(now, &from, frame);
            }
            if !busy {
                return;
            }
        }
    }

    /// Runs for `secs`, each publisher sending a packet every 20 ms at its level (-dBov;
    /// 127 is silence).
    fn run(&mut self, secs: f64, levels: &HashMap<u64, u8>) {
        let end = self.now + Duration::from_secs_f64(secs);
        let mut seq = 0u16;
        while self.now < end {
            self.now += Duration::from_millis(20);
            seq = seq.wrapping_add(1);
            for (track, _, home) in PUBLISHERS {
                let level = levels.get(&track).copied().unwrap_or(127);
                let mut p = Packet {
                    payload: Bytes::from_static(&[0xfc; 60]),
                    ..Default::default()
                };
                p.header.version = 2;
                p.header.sequence_number = seq;
                p.header.timestamp = seq as u32 * 960;
                p.header.ssrc = track as u32;
                p.header.extension = true;
                p.header.extension_profile = 0xBEDE;
                p.header
                    .set_extension(LEVEL_EXT, Bytes::from(vec![0x80 | level]))
                    .unwrap();
                let now = self.now;
                self.nodes[home].room.handle_rtp(now, TrackId(track), 0, p);
            }
            let now = self.now;
            for n in &mut self.nodes {
                while n.room.poll_timeout().is_some_and(|t| t <= now) {
                    n.room.handle_timeout(now);
                }
                if n.relay.poll_timeout().is_some_and(|t| t <= now) {
                    n.relay.handle_timeout(now);
                }
            }
            self.pump();
        }
    }
}

/// A subscriber on `node` to every audio track but its own.
fn subscribe_all(
    c: &mut Cluster,
    node: usize,
    sink: u64,
    own: u64,
) -> HashMap<u64, SubscriptionId> {
    let now = c.now;
    let mut subs = HashMap::new();
    for (track, _, _) in PUBLISHERS.iter().filter(|(t, _, _)| *t != own) {
        let id = c.nodes[node]
            .room
            .subscribe(
                now,
                TrackId(*track),
                SinkId(sink),
                SubscriptionParams {
                    ssrc: 100 + *track as u32,
                    payload_type: 111,
                    max_layer: 0,
                    rtx: None,
                    red_payload_type: None,
                },
            )
            .unwrap();
        subs.insert(*track, id);
    }
    subs
}

/// The tracks a subscriber receives (its allocated audio).
fn heard(c: &Cluster, node: usize, subs: &HashMap<u64, SubscriptionId>) -> Vec<u64> {
    let mut v: Vec<u64> = subs
        .iter()
        .filter(|(_, s)| {
            c.nodes[node]
                .room
                .subscription(**s)
                .is_some_and(|s| s.desired_layer().is_some())
        })
        .map(|(t, _)| *t)
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn both_nodes_rank_the_same_speakers_and_subscribers_hear_the_top_three() {
    let mut c = Cluster::new();
    // p6 (on node b) listens to everyone else; so does p1 (on node a).
    let on_b = subscribe_all(&mut c, 1, 1, 6);
    let on_a = subscribe_all(&mut c, 0, 1, 1);
    // p2 (a) loudest, then p5 (b), then p3 (a); p4 (a) whispers below speech; p1 silent.
    let levels = HashMap::from([(2, 15), (5, 25), (3, 35), (4, 70), (6, 40)]);
    c.run(3.0, &levels);
    for n in &c.nodes {
        let latest = n.speakers.last().expect("speaker events");
        assert_eq!(latest[..3], ["p2", "p5", "p3"], "{}: {latest:?}", n.id);
    }
    assert_eq!(
        heard(&c, 1, &on_b),
        vec![2, 3, 5],
        "b's subscriber hears the three loudest"
    );
    assert_eq!(heard(&c, 0, &on_a), vec![2, 3, 5]);
    // Node b would pull from node a only the audio that is heard.
    assert!(c.nodes[1].room.audible(TrackId(2)) && c.nodes[1].room.audible(TrackId(3)));
    assert!(
        !c.nodes[1].room.audible(TrackId(4)),
        "a whisper is not pulled"
    );
    assert!(
        !c.nodes[1].room.audible(TrackId(1)),
        "silence is not pulled"
    );

    // p4 starts shouting and p3 falls silent: within a second p4 takes p3's place.
    let levels = HashMap::from([(2, 15), (5, 25), (4, 5), (6, 40)]);
    c.run(2.5, &levels);
    assert_eq!(heard(&c, 1, &on_b), vec![2, 4, 5]);
    assert_eq!(c.nodes[1].speakers.last().unwrap()[0], "p4");
    assert!(c.nodes[1].room.audible(TrackId(4)));
}
