//! Spread a large room's audience: fill the nodes already hosting it up to
//! [`Policy::fill_to`] (the nodes its stage publishes on only to [`Policy::stage_fill_to`]),
//! most populated first so that as few nodes as possible relay its tracks; when all are that
//! full, open the least loaded other node as a new edge, one that is not a stage node if
//! there is one. A node is never filled to saturation while another has room.

use super::load::{least_loaded, utilisation};
use super::{NodeView, Policy};

fn limit(policy: &Policy, n: &NodeView) -> f32 {
    if n.stage_here {
        policy.stage_fill_to
    } else {
        policy.fill_to
    }
}

pub fn pick<'a>(policy: &Policy, nodes: &[&'a NodeView]) -> Option<&'a NodeView> {
    let below = |n: &&NodeView| utilisation(policy, n) < limit(policy, n);
    let host = nodes
        .iter()
        .copied()
        .filter(|n| n.room_participants > 0)
        .filter(below)
        .max_by_key(|n| (n.room_participants, std::cmp::Reverse(n.id.clone())));
    if host.is_some() {
        return host;
    }
    let fresh: Vec<&NodeView> = nodes
        .iter()
        .copied()
        .filter(|n| n.room_participants == 0)
        .filter(below)
        .collect();
    let edges: Vec<&NodeView> = fresh.iter().copied().filter(|n| !n.stage_here).collect();
    least_loaded(policy, &edges).or_else(|| least_loaded(policy, &fresh))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::node;

    #[test]
    fn fills_hosts_then_opens_an_edge_and_then_nothing() {
        let p = Policy::default();
        let mut a = node("a", 6, 6);
        a.capacity = 10;
        let mut b = node("b", 0, 0);
        b.capacity = 10;
        assert_eq!(pick(&p, &[&a, &b]).unwrap().id, "a", "60 % < 70 %");
        a.participants = 7;
        assert_eq!(pick(&p, &[&a, &b]).unwrap().id, "b", "a new edge");
        b.participants = 9;
        assert!(
            pick(&p, &[&a, &b]).is_none(),
            "all full: the least loaded decides"
        );
    }
}
