//! What the registry holds: the key layout and the records stored under it (JSON).
//!
//! ```text
//! {prefix}nodes/{node}                       NodeRecord      (the node's lease)
//! {prefix}rooms/{room}/nodes/{node}          RoomNodeRecord  (the node hosts part of the room)
//! {prefix}rooms/{room}/participants/{sid}    ParticipantRecord (stage, or announced audience)
//! {prefix}rooms/{room}/participants/audience/{node}  AudienceRecord (the node's audience, counted)
//! {prefix}rooms/{room}/hands/{sid}           HandRecord      (a raised hand)
//! {prefix}rooms/{room}/tracks/{track}        TrackRecord     (the track directory)
//! {prefix}rooms/{room}/reserved/{node}       ReservationRecord (places a node holds in a limited room)
//! {prefix}rooms/{room}/config                RoomConfig      (no lease: set by the API)
//! {prefix}rooms/{room}/recordings/{id}       RecordingRecord (a recording running, by its node)
//! ```
//!
//! Every key is written by the node it describes and bound to that node's lease, so a node
//! that dies takes its entries with it when the lease expires.
//!
//! What a room costs the registry grows with its stage and its nodes, not with its audience:
//! a stage participant (and, in a room below its large-room threshold, anyone) has a record
//! of its own, while the audience of a large room is one count per node, rewritten every few
//! seconds. The count lives under the participants prefix so that "the room's first
//! participant" and "its last" stay one transaction over one prefix, whoever they are.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Whether a node takes new participants.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    #[default]
    Active,
    Draining,
}

/// A node's load, as it last reported it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Load {
    pub rooms: u32,
    pub participants: u32,
    pub tracks: u32,
    /// CPU use of the node process, in cores.
    pub cpu: f32,
    /// CPU use of the node's media workers, in cores (the part that grows with media).
    #[serde(default)]
    pub media_cpu: f32,
    /// Media the node sends, in bits per second (to participants and to other nodes).
    #[serde(default)]
    pub egress_bps: u64,
}

/// What a node can take before placement prefers others. Defaults come from the machine
/// (see the node's configuration); placement compares a node's [`Load`] with these.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Capacity {
    /// Cores its media workers may use (0: unknown, not considered).
    #[serde(default)]
    pub media_cores: f32,
    /// Media it may send, in bits per second (0: unknown, not considered).
    #[serde(default)]
    pub egress_bps: u64,
    /// Joins per second it admits; more are answered `429` (0: unknown, not considered).
    #[serde(default)]
    pub joins_per_sec: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    pub id: String,
    #[serde(default)]
    pub region: String,
    /// Base URL for clients (`http://host:port`).
    pub http_url: String,
    /// Where other nodes reach its relay endpoint.
    pub relay_addr: Option<SocketAddr>,
    #[serde(default)]
    pub state: NodeState,
    /// Participants it accepts before placement prefers other nodes (0: no limit).
    #[serde(default)]
    pub capacity: u32,
    /// The rest of what it can take.
    #[serde(default)]
    pub limits: Capacity,
    #[serde(default)]
    pub load: Load,
    /// When the record was written (milliseconds since the Unix epoch).
    #[serde(default)]
    pub updated_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct RoomNodeRecord {
    pub participants: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ParticipantRecord {
    pub sid: String,
    pub identity: String,
    pub name: String,
    pub node: String,
    /// How it is connected: `client` (signaling), `whip` or `whep`. Empty in records of
    /// nodes that predate it.
    #[serde(default)]
    pub kind: String,
    /// When the session joined, in Unix milliseconds, and later than any other session with
    /// its identity and kind that its node knew of: of two such sessions on different nodes,
    /// the one with the later (`joined_ms`, `sid`) stays.
    #[serde(default)]
    pub joined_ms: u64,
    /// May publish (stage) or not (audience, announced because the room was small when it
    /// joined). Records of nodes that predate roles are stage.
    #[serde(default = "yes")]
    pub stage: bool,
    /// The media worker of `node` the session is on (a room spans a node's workers).
    #[serde(default)]
    pub worker: u16,
    /// What its application says about it (LiveKit's participant metadata and attributes),
    /// so that participants on every node see it and its changes. Bounded by the node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// Its connection quality as its node last scored it, so that clients on every node hear
    /// it; rewritten when it changes, at most every 10 s. Absent until scored, and in
    /// records of nodes that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualityRecord>,
}

/// A participant's connection quality (LiveKit's `ConnectionQualityInfo`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QualityRecord {
    /// `excellent`, `good`, `poor` or `lost`.
    pub quality: String,
    /// Mean opinion score, 1 to 4.5.
    pub score: f32,
}

fn yes() -> bool {
    true
}

/// The audience of a room on one node that is counted, not announced one by one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct AudienceRecord {
    pub count: u32,
}

/// A raised hand: an audience member asking to be let on stage. Admins see these in order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HandRecord {
    pub sid: String,
    pub identity: String,
    pub name: String,
    pub node: String,
    /// When it was raised (Unix milliseconds): the queue's order.
    pub raised_ms: u64,
}

/// The places a node holds in a room with a participant limit: `reserved` in all, of which
/// `used` by its sessions. Nodes reserve in blocks, each block one transaction that holds
/// only if no node changed its reservation since the sum was read, so the sum of all nodes'
/// `reserved` never exceeds the limit however many join at once.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct ReservationRecord {
    pub reserved: u32,
    pub used: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrackRecord {
    /// `TR_…`
    pub track: String,
    pub participant: String,
    /// `audio` or `video`.
    pub kind: String,
    pub codec_mime: String,
    pub clock_rate: u32,
    /// Simulcast RIDs, lowest quality first; empty for a single stream.
    pub rids: Vec<String>,
    pub name: String,
    /// The node the track is published on.
    pub origin: String,
    #[serde(default)]
    pub muted: bool,
    /// `camera`, `microphone` or `screen_share`.
    #[serde(default)]
    pub source: String,
    /// The origin measures its audio levels (RFC 6464) and shares them with the room's nodes.
    #[serde(default)]
    pub audio_levels: bool,
    /// Payload type of RED in its packets, if its publisher may send RED.
    #[serde(default)]
    pub red_payload_type: Option<u8>,
    /// The media worker of `origin` the track is published on.
    #[serde(default)]
    pub worker: u16,
}

/// A recording of the room running on `node` (written by that node while it runs, so
/// participants on every node can be told, and told at their join).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RecordingRecord {
    /// `EG_…`
    pub id: String,
    /// `track` or `room`.
    pub kind: String,
    pub node: String,
    pub started_ms: u64,
}

/// A room created through the API: its limits. Not bound to a lease.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct RoomConfig {
    pub name: String,
    /// 0: no limit.
    pub max_participants: u32,
    /// Seconds an empty room is kept before its configuration is dropped (0: default).
    pub empty_timeout: u32,
    pub created_ms: u64,
    /// When the room was first seen empty (set by the control plane's sweeper).
    #[serde(default)]
    pub empty_since_ms: Option<u64>,
    /// Above this many participants the room is large: its audience is counted, not
    /// announced one by one (0: the nodes' default, 50).
    #[serde(default)]
    pub large_room_threshold: u32,
}

/// The name under which one media worker of a node writes its per-node keys (its room's
/// counted audience, its hosting of the room): `node#wN`. A room spans the workers of a node,
/// and each keeps its own.
pub fn worker_key(node: &str, worker: u16) -> String {
    format!("{node}#w{worker}")
}

/// The node of a name written by [`worker_key`] (or of a plain node id).
pub fn node_of(name: &str) -> &str {
    name.split('#').next().unwrap_or(name)
}

/// A parsed key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Node(String),
    RoomNode { room: String, node: String },
    Participant { room: String, sid: String },
    Audience { room: String, node: String },
    Hand { room: String, sid: String },
    Track { room: String, track: String },
    Reservation { room: String, node: String },
    RoomConfig { room: String },
    Recording { room: String, id: String },
}

/// The key layout under a cluster's prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `/sfu/{cluster}/`.
    pub fn new(cluster: &str) -> Self {
        Self {
            prefix: format!("/sfu/{cluster}/"),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn node(&self, id: &str) -> String {
        format!("{}nodes/{id}", self.prefix)
    }

    pub fn room_node(&self, room: &str, node: &str) -> String {
        format!("{}rooms/{room}/nodes/{node}", self.prefix)
    }

    pub fn participant(&self, room: &str, sid: &str) -> String {
        format!("{}rooms/{room}/participants/{sid}", self.prefix)
    }

    pub fn participants_prefix(&self, room: &str) -> String {
        format!("{}rooms/{room}/participants/", self.prefix)
    }

    pub fn track(&self, room: &str, track: &str) -> String {
        format!("{}rooms/{room}/tracks/{track}", self.prefix)
    }

    pub fn audience(&self, room: &str, node: &str) -> String {
        format!("{}rooms/{room}/participants/audience/{node}", self.prefix)
    }

    pub fn hand(&self, room: &str, sid: &str) -> String {
        format!("{}rooms/{room}/hands/{sid}", self.prefix)
    }

    pub fn hands_prefix(&self, room: &str) -> String {
        format!("{}rooms/{room}/hands/", self.prefix)
    }

    pub fn reservation(&self, room: &str, node: &str) -> String {
        format!("{}rooms/{room}/reserved/{node}", self.prefix)
    }

    pub fn reservations_prefix(&self, room: &str) -> String {
        format!("{}rooms/{room}/reserved/", self.prefix)
    }

    pub fn room_nodes_prefix(&self, room: &str) -> String {
        format!("{}rooms/{room}/nodes/", self.prefix)
    }

    pub fn room_config(&self, room: &str) -> String {
        format!("{}rooms/{room}/config", self.prefix)
    }

    pub fn recording(&self, room: &str, id: &str) -> String {
        format!("{}rooms/{room}/recordings/{id}", self.prefix)
    }

    pub fn recordings_prefix(&self, room: &str) -> String {
        format!("{}rooms/{room}/recordings/", self.prefix)
    }

    pub fn rooms_prefix(&self) -> String {
        format!("{}rooms/", self.prefix)
    }

    pub fn parse(&self, key: &str) -> Option<Key> {
        let rest = key.strip_prefix(&self.prefix)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["nodes", id] => Some(Key::Node((*id).to_owned())),
            ["rooms", room, "nodes", node] => Some(Key::RoomNode {
                room: (*room).to_owned(),
                node: (*node).to_owned(),
            }),
            ["rooms", room, "participants", "audience", node] => Some(Key::Audience {
                room: (*room).to_owned(),
                node: (*node).to_owned(),
            }),
            ["rooms", room, "participants", sid] => Some(Key::Participant {
                room: (*room).to_owned(),
                sid: (*sid).to_owned(),
            }),
            ["rooms", room, "hands", sid] => Some(Key::Hand {
                room: (*room).to_owned(),
                sid: (*sid).to_owned(),
            }),
            ["rooms", room, "tracks", track] => Some(Key::Track {
                room: (*room).to_owned(),
                track: (*track).to_owned(),
            }),
            ["rooms", room, "reserved", node] => Some(Key::Reservation {
                room: (*room).to_owned(),
                node: (*node).to_owned(),
            }),
            ["rooms", room, "config"] => Some(Key::RoomConfig {
                room: (*room).to_owned(),
            }),
            ["rooms", room, "recordings", id] => Some(Key::Recording {
                room: (*room).to_owned(),
                id: (*id).to_owned(),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_name_says_its_node() {
        assert_eq!(node_of(&worker_key("node-1", 3)), "node-1");
        assert_eq!(node_of("node-1"), "node-1");
    }

    #[test]
    fn keys_round_trip() {
        let k = Keys::new("c1");
        assert_eq!(k.parse(&k.node("n1")), Some(Key::Node("n1".into())));
        assert_eq!(
            k.parse(&k.track("demo room", "TR_1")),
            Some(Key::Track {
                room: "demo room".into(),
                track: "TR_1".into()
            })
        );
        assert_eq!(
            k.parse(&k.audience("r", "n1")),
            Some(Key::Audience {
                room: "r".into(),
                node: "n1".into()
            })
        );
        assert!(
            k.audience("r", "n1")
                .starts_with(&k.participants_prefix("r")),
            "audience counts share the participants prefix (first and last participant)"
        );
        assert_eq!(
            k.parse(&k.hand("r", "PA_1")),
            Some(Key::Hand {
                room: "r".into(),
                sid: "PA_1".into()
            })
        );
        assert_eq!(
            k.parse(&k.recording("r", "EG_1")),
            Some(Key::Recording {
                room: "r".into(),
                id: "EG_1".into()
            })
        );
        assert_eq!(k.parse("/sfu/other/nodes/n1"), None);
        assert_eq!(k.parse(&format!("{}rooms/x/weird", k.prefix())), None);
    }
}
