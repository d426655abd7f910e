//! Only nodes that take joins and reported recently.

use super::{NodeView, Policy};
use crate::records::NodeState;

pub fn usable<'a>(policy: &Policy, now_ms: u64, nodes: &'a [NodeView]) -> Vec<&'a NodeView> {
    nodes
        .iter()
        .filter(|n| n.state == NodeState::Active)
        .filter(|n| now_ms.saturating_sub(n.updated_ms) <= policy.stale_after_ms)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::node;

    #[test]
    fn drops_draining_and_stale_nodes() {
        let mut draining = node("d", 0, 0);
        draining.state = NodeState::Draining;
        let mut stale = node("s", 0, 0);
        stale.updated_ms = 0;
        let fresh = node("f", 0, 0);
        let nodes = [draining, stale, fresh];
        let u = usable(&Policy::default(), 7_000, &nodes);
        assert_eq!(u.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["f"]);
    }
}
