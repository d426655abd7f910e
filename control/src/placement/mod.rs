//! Placement: choosing the node a joining participant should connect to.
//!
//! Pure functions over a snapshot of the cluster, composed from one small policy per file
//! (as LiveKit's selectors are): [`freshness`] drops nodes whose load report is stale or
//! which are draining, [`region`] keeps the client's region when it has nodes, [`affinity`]
//! fills nodes already hosting the room up to their capacity, and [`least_loaded`] spills to
//! the least loaded node otherwise.

pub mod affinity;
pub mod freshness;
pub mod least_loaded;
pub mod region;

use crate::records::NodeState;

/// What placement knows about a node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    pub id: String,
    pub http_url: String,
    pub region: String,
    pub state: NodeState,
    /// Participants the node takes before others are preferred (0: the policy default).
    pub capacity: u32,
    /// Participants on the node, all rooms.
    pub participants: u32,
    /// Participants of the joining room on the node.
    pub room_participants: u32,
    /// CPU use in cores, from the last load report.
    pub cpu: f32,
    /// When the node last reported (ms since the Unix epoch).
    pub updated_ms: u64,
}

/// Tunables of placement.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Capacity of nodes that do not state one (0: unlimited).
    pub default_capacity: u32,
    /// A node whose last report is older than this is not considered.
    pub stale_after_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            default_capacity: 0,
            // Nodes report every 2 s; three missed reports mean trouble.
            stale_after_ms: 6_000,
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

/// Chooses a node for a participant joining a room, from the client's `region` if given.
pub fn place<'a>(
    policy: &Policy,
    now_ms: u64,
    nodes: &'a [NodeView],
    region: Option<&str>,
) -> Result<&'a NodeView, PlacementError> {
    let usable = freshness::usable(policy, now_ms, nodes);
    let usable = region::prefer(&usable, region);
    affinity::fill(policy, &usable)
        .or_else(|| least_loaded::pick(&usable))
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
        room_participants: room,
        cpu: 0.0,
        updated_ms: 1_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_the_room_host_then_spills_to_the_least_loaded() {
        let p = Policy::default();
        let nodes = [node("a", 4, 4), node("b", 1, 0), node("c", 3, 0)];
        assert_eq!(
            place(&p, 1_000, &nodes, None).unwrap().id,
            "a",
            "the host has room"
        );
        let nodes = [node("a", 5, 5), node("b", 1, 0), node("c", 3, 0)];
        assert_eq!(
            place(&p, 1_000, &nodes, None).unwrap().id,
            "b",
            "full: spill"
        );
    }

    #[test]
    fn nothing_usable_is_an_error() {
        let mut n = node("a", 0, 0);
        n.state = NodeState::Draining;
        assert_eq!(
            place(&Policy::default(), 1_000, &[n], None),
            Err(PlacementError::NoNode)
        );
    }
}
