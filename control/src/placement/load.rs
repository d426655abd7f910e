//! How full a node is, from its measured load against its capacity, and the least loaded.

use super::{NodeView, Policy};

/// The highest of the node's ratios (participants to participant capacity, media workers'
/// CPU to their cores, egress to egress capacity), counting the joins placed on it since its
/// last report: a join storm would otherwise land entirely on the node that looked emptiest
/// two seconds ago.
pub fn utilisation(policy: &Policy, n: &NodeView) -> f32 {
    let capacity = if n.capacity > 0 {
        n.capacity
    } else {
        policy.default_capacity
    };
    let placed = n.placed_since_report as f32;
    let mut u: f32 = 0.0;
    if capacity > 0 {
        u = u.max((n.participants as f32 + placed) / capacity as f32);
    }
    // What one more participant costs in a measured ratio: measured too, once the node has
    // enough participants to divide by.
    let grown = |ratio: f32| {
        let per_participant = if n.participants >= 20 && ratio > 0.0 {
            ratio / n.participants as f32
        } else {
            policy.participant_cost
        };
        ratio + placed * per_participant
    };
    if n.media_cores > 0.0 {
        u = u.max(grown(n.media_cpu / n.media_cores));
    }
    if n.egress_capacity_bps > 0 {
        u = u.max(grown(n.egress_bps as f32 / n.egress_capacity_bps as f32));
    }
    u
}

/// The node with the lowest utilisation (then fewest participants, then by id).
pub fn least_loaded<'a>(policy: &Policy, nodes: &[&'a NodeView]) -> Option<&'a NodeView> {
    nodes.iter().copied().min_by(|a, b| {
        utilisation(policy, a)
            .total_cmp(&utilisation(policy, b))
            .then(a.participants.cmp(&b.participants))
            .then(a.cpu.total_cmp(&b.cpu))
            .then(a.id.cmp(&b.id))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::node;

    #[test]
    fn the_highest_ratio_counts() {
        let p = Policy::default();
        let mut n = node("a", 1, 0);
        n.capacity = 10;
        n.media_cores = 2.0;
        n.media_cpu = 1.0;
        n.egress_capacity_bps = 1_000;
        n.egress_bps = 800;
        assert!(
            (utilisation(&p, &n) - 0.8).abs() < 1e-6,
            "egress is the bottleneck"
        );
        let (a, b) = (node("a", 3, 0), node("b", 1, 0));
        assert_eq!(least_loaded(&p, &[&a, &b]).unwrap().id, "b");
        assert!(least_loaded(&p, &[]).is_none());
    }
}
