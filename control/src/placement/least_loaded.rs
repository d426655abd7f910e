//! The least loaded node: fewest participants, then least CPU.

use super::NodeView;

pub fn pick<'a>(nodes: &[&'a NodeView]) -> Option<&'a NodeView> {
    nodes.iter().copied().min_by(|a, b| {
        a.participants
            .cmp(&b.participants)
            .then(a.cpu.total_cmp(&b.cpu))
            .then(a.id.cmp(&b.id))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::node;

    #[test]
    fn fewest_participants_then_cpu() {
        let (a, b) = (node("a", 3, 0), node("b", 1, 0));
        assert_eq!(pick(&[&a, &b]).unwrap().id, "b");
        let (mut c, mut d) = (node("c", 1, 0), node("d", 1, 0));
        c.cpu = 0.9;
        d.cpu = 0.2;
        assert_eq!(pick(&[&c, &d]).unwrap().id, "d");
        assert!(pick(&[]).is_none());
    }
}
