//! Keep a meeting together: the node already hosting most of the room, while it is below
//! [`Policy::meeting_fill_to`]. Fewer nodes per room means fewer relay links and lower latency
//! between its participants.

use super::load::utilisation;
use super::{NodeView, Policy};

pub fn fill<'a>(policy: &Policy, nodes: &[&'a NodeView]) -> Option<&'a NodeView> {
    nodes
        .iter()
        .copied()
        .filter(|n| n.room_participants > 0)
        .filter(|n| utilisation(policy, n) < policy.meeting_fill_to)
        .max_by_key(|n| (n.room_participants, std::cmp::Reverse(n.participants)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::node;

    #[test]
    fn prefers_the_biggest_host_with_room_left() {
        let (a, b, c) = (node("a", 4, 3), node("b", 2, 2), node("c", 0, 0));
        assert_eq!(fill(&Policy::default(), &[&a, &b, &c]).unwrap().id, "a");
        let full = node("a", 5, 5);
        assert_eq!(fill(&Policy::default(), &[&full, &b, &c]).unwrap().id, "b");
        assert!(fill(&Policy::default(), &[&c]).is_none(), "no host yet");
        let mut unlimited = node("u", 500, 500);
        unlimited.capacity = 0;
        assert_eq!(fill(&Policy::default(), &[&unlimited]).unwrap().id, "u");
    }
}
