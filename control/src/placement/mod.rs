//! Placement: choosing the node a joining participant should connect to.
//!
//! Pure functions over a snapshot of the cluster, composed from one small policy per file
//! (as LiveKit's selectors are):
//!
//! - [`freshness`] drops nodes whose load report is stale or which are draining;
//! - [`region`] keeps the client's region when it has nodes;
//! - [`load`] says how full a node is: the highest of its measured ratios (media workers'
//!   CPU to their cores, egress to its capacity, participants to its participant capacity),
//!   plus what the joins sent to it since its last report will add;
//! - [`affinity`] keeps a meeting (a room below its large-room threshold) on the node that
//!   already hosts most of it while that node is below [`Policy::meeting_fill_to`]: fewer
//!   relay links, lower latency;
//! - [`spread`] fills a large room's nodes up to [`Policy::fill_to`] (the nodes its stage
//!   publishes on only up to [`Policy::stage_fill_to`], keeping their headroom for ingest and
//!   the fan-out to other nodes), then opens the least loaded node as a new edge.
//!
//! Otherwise the least loaded node wins. The defaults and why are in `docs/placement.md`.

pub mod affinity;
pub mod freshness;
pub mod load;
pub mod region;
pub mod spread;

use crate::records::{NodeRecord, NodeState};

/// What placement knows about a node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    pub id: String,
    pub http_url: String,
    pub region: String,
    pub state: NodeState,
    /// Participants the node takes before others are preferred (0: not stated).
    pub capacity: u32,
    /// Participants on the node, all rooms.
    pub participants: u32,
    /// CPU use of the node's process and of its media workers, in cores, and the cores its
    /// media workers may use (0: unknown).
    pub cpu: f32,
    pub media_cpu: f32,
    pub media_cores: f32,
    /// Media sent, and what the node may send, in bits per second (0: unknown).
    pub egress_bps: u64,
    pub egress_capacity_bps: u64,
    /// When the node last reported (ms since the Unix epoch).
    pub updated_ms: u64,
    /// Participants of the joining room on the node.
    pub room_participants: u32,
    /// The joining room's stage publishes on this node.
    pub stage_here: bool,
    /// Joins placed on this node since its last load report (they are not in its load yet).
    pub placed_since_report: u32,
}

impl NodeView {
    /// A node as its record describes it, with nothing known of the joining room.
    pub fn from_record(n: &NodeRecord) -> Self {
        Self {
            id: n.id.clone(),
            http_url: n.http_url.clone(),
            region: n.region.clone(),
            state: n.state,
            capacity: n.capacity,
            participants: n.load.participants,
            cpu: n.load.cpu,
            media_cpu: n.load.media_cpu,
            media_cores: n.limits.media_cores,
            egress_bps: n.load.egress_bps,
            egress_capacity_bps: n.limits.egress_bps,
            updated_ms: n.updated_ms,
            room_participants: 0,
            stage_here: false,
            placed_since_report: 0,
        }
    }
}

/// What placement knows about the joining room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RoomView {
    /// Participants over the whole cluster.
    pub size: u32,
    /// Above this size the room is large (0: the default, 50).
    pub large_threshold: u32,
}

impl RoomView {
    pub fn is_large(&self) -> bool {
        let threshold = if self.large_threshold > 0 {
            self.large_threshold
        } else {
            50
        };
        self.size >= threshold
    }
}

/// Tunables of placement.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Participant capacity of nodes that do not state one (0: none; only measured load
    /// counts).
    pub default_capacity: u32,
    /// A node whose last report is older than this is not considered.
    pub stale_after_ms: u64,
    /// How full a node hosting a meeting may get before the meeting spills to another node.
    pub meeting_fill_to: f32,
    /// How full a node may get with a large room's audience before another node opens.
    pub fill_to: f32,
    /// The same for the nodes a large room's stage publishes on.
    pub stage_fill_to: f32,
    /// What one participant adds to a node's utilisation while its load tells nothing yet
    /// (too few participants to divide by).
    pub participant_cost: f32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            default_capacity: 0,
            // Nodes report every 2 s; three missed reports mean trouble.
            stale_after_ms: 6_000,
            meeting_fill_to: 0.9,
            fill_to: 0.7,
            stage_fill_to: 0.5,
            // An audio-and-video audience member costs a media worker about 0.2 % of a core
            // (BENCHMARKS.md); assume twice that until measured.
            participant_cost: 0.004,
        }
    }
}

/// Why no node could be chosen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlacementError {
    /// No node is active with a fresh load report.
    #[error("no node is available")]
    NoNode,
}

/// Chooses a node for a participant joining `room`, from the client's `region` if given.
pub fn place<'a>(
    policy: &Policy,
    now_ms: u64,
    nodes: &'a [NodeView],
    room: &RoomView,
    region: Option<&str>,
) -> Result<&'a NodeView, PlacementError> {
    let usable = freshness::usable(policy, now_ms, nodes);
    let usable = region::prefer(&usable, region);
    let chosen = if room.is_large() {
        spread::pick(policy, &usable)
    } else {
        affinity::fill(policy, &usable)
    };
    chosen
        .or_else(|| load::least_loaded(policy, &usable))
        .ok_or(PlacementError::NoNode)
}

#[cfg(test)]
pub(crate) fn node(id: &str, participants: u32, room: u32) -> NodeView {
    NodeView {
        id: id.into(),
        http_url: format!("http://{id}"),
        region: String::new(),
        state: NodeState::Active,
        capacity: 5,
        participants,
        cpu: 0.0,
        media_cpu: 0.0,
        media_cores: 0.0,
        egress_bps: 0,
        egress_capacity_bps: 0,
        updated_ms: 1_000,
        room_participants: room,
        stage_here: false,
        placed_since_report: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEETING: RoomView = RoomView {
        size: 4,
        large_threshold: 0,
    };

    #[test]
    fn fills_the_room_host_then_spills_to_the_least_loaded() {
        let p = Policy::default();
        let nodes = [node("a", 4, 4), node("b", 1, 0), node("c", 3, 0)];
        assert_eq!(
            place(&p, 1_000, &nodes, &MEETING, None).unwrap().id,
            "a",
            "the host has room"
        );
        let nodes = [node("a", 5, 5), node("b", 1, 0), node("c", 3, 0)];
        assert_eq!(
            place(&p, 1_000, &nodes, &MEETING, None).unwrap().id,
            "b",
            "full: spill"
        );
    }

    #[test]
    fn nothing_usable_is_an_error() {
        let mut n = node("a", 0, 0);
        n.state = NodeState::Draining;
        assert_eq!(
            place(&Policy::default(), 1_000, &[n], &MEETING, None),
            Err(PlacementError::NoNode)
        );
    }

    #[test]
    fn a_large_room_spreads_before_a_node_saturates_and_spares_its_stage_nodes() {
        let p = Policy::default();
        let large = RoomView {
            size: 400,
            large_threshold: 50,
        };
        let cpu = |id: &str, used: f32, room: u32, stage: bool| {
            let mut n = node(id, room, room);
            n.capacity = 0;
            n.media_cores = 1.0;
            n.media_cpu = used;
            n.stage_here = stage;
            n
        };
        // The stage node is at 55 %: past its share; the edge at 60 % still takes more.
        let nodes = [
            cpu("stage", 0.55, 200, true),
            cpu("edge", 0.6, 150, false),
            cpu("idle", 0.0, 0, false),
        ];
        assert_eq!(place(&p, 1_000, &nodes, &large, None).unwrap().id, "edge");
        // The edge reaches 70 %: a new edge opens before it saturates.
        let nodes = [
            cpu("stage", 0.55, 200, true),
            cpu("edge", 0.72, 180, false),
            cpu("idle", 0.0, 0, false),
        ];
        assert_eq!(place(&p, 1_000, &nodes, &large, None).unwrap().id, "idle");
        // The same load in a meeting keeps it together.
        let nodes = [cpu("host", 0.72, 30, false), cpu("idle", 0.0, 0, false)];
        assert_eq!(place(&p, 1_000, &nodes, &MEETING, None).unwrap().id, "host");
    }

    #[test]
    fn joins_placed_since_the_last_report_count_as_load() {
        let p = Policy::default();
        let large = RoomView {
            size: 100,
            large_threshold: 50,
        };
        let mut a = node("a", 100, 100);
        a.capacity = 200;
        let b = {
            let mut b = node("b", 0, 0);
            b.capacity = 200;
            b
        };
        // 100 of 200: half full, fills on.
        assert_eq!(
            place(&p, 1_000, &[a.clone(), b.clone()], &large, None)
                .unwrap()
                .id,
            "a"
        );
        // 45 more sent to it since it reported: 145 of 200 is past 70 %.
        a.placed_since_report = 45;
        assert_eq!(place(&p, 1_000, &[a, b], &large, None).unwrap().id, "b");
    }
}
