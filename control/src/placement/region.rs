//! The client's region, when the cluster has usable nodes there.

use super::NodeView;

pub fn prefer<'a>(nodes: &[&'a NodeView], region: Option<&str>) -> Vec<&'a NodeView> {
    let Some(region) = region.filter(|r| !r.is_empty()) else {
        return nodes.to_vec();
    };
    let local: Vec<&NodeView> = nodes
        .iter()
        .copied()
        .filter(|n| n.region == region)
        .collect();
    if local.is_empty() {
        nodes.to_vec()
    } else {
        local
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::node;

    #[test]
    fn keeps_the_region_or_everything_if_it_has_no_node() {
        let mut eu = node("eu", 0, 0);
        eu.region = "eu".into();
        let us = node("us", 0, 0);
        let all = [&eu, &us];
        assert_eq!(prefer(&all, Some("eu")).len(), 1);
        assert_eq!(prefer(&all, Some("ap")).len(), 2);
        assert_eq!(prefer(&all, None).len(), 2);
    }
}
