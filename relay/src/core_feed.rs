//! The upstream half of the relay protocol: a node that has a track feeds the nodes that
//! subscribe to it, at most `fanout` directly, redirecting the rest so the track spreads as a
//! tree; a subscriber on the announced path is refused (no loops).

use crate::core::*;
use sfu_core::{LayerIndex, TrackId};
use sfu_proto::relay::{
    Accepted, FlowClose, FlowOpen, Redirect, Refused, Subscribe, TrackEnded, TrackInfo,
    frame::Body, refused::Reason,
};
use std::time::Instant;

impl Relay {
    // ---- feeds (upstream) ----------------------------------------------------------------

    pub(crate) fn on_subscribe(&mut self, now: Instant, from: &NodeId, s: Subscribe) {
        let key = TrackKey {
            room: s.room.as_str().into(),
            track: TrackId(s.track),
        };
        let layers: Vec<LayerIndex> = s.layers.iter().map(|l| *l as LayerIndex).collect();
        let refuse = |reason: Reason, detail: &str| {
            Body::Refused(Refused {
                room: s.room.clone(),
                track: s.track,
                reason: reason as i32,
                detail: detail.to_owned(),
            })
        };
        if layers.is_empty() {
            self.drop_child(&key, from);
            if let Some(f) = self.feeds.get_mut(&key) {
                f.pending.retain(|(n, _)| n != from);
            }
            self.release_if_unused(&key);
            if let Some(w) = self.wants.get(&key).map(|w| w.state)
                && w != WantState::Idle
            {
                self.update_want(now, &key);
            }
            return;
        }
        // A node upstream of us asking for the track through us would close a loop.
        if self
            .wants
            .get(&key)
            .is_some_and(|w| w.path.contains(from) || &w.via == from)
        {
            self.send(
                from,
                refuse(Reason::Loop, "the requester is upstream of this node"),
            );
            return;
        }
        if !self.feeds.contains_key(&key) {
            let origin: NodeId = s.origin.as_str().into();
            if origin.is_empty() || origin == self.me || &origin == from {
                self.send(from, refuse(Reason::NotFound, "no such track here"));
                return;
            }
            // Feed it on behalf of the requester; pull it ourselves first unless we already
            // receive it.
            let (info, path) = match self.wants.get(&key) {
                Some(w) if w.state == WantState::Active => {
                    let mut p = w.path.clone();
                    p.push(self.me.clone());
                    (w.info.clone().unwrap_or_default(), p)
                }
                _ => (TrackInfo::default(), Vec::new()),
            };
            self.feeds.insert(
                key.clone(),
                Feed {
                    info,
                    path,
                    children: Vec::new(),
                    pending: Vec::new(),
                    next_redirect: 0,
                    local: false,
                },
            );
            if !self.wants.contains_key(&key) {
                self.wants.insert(
                    key.clone(),
                    Want {
                        via: origin.clone(),
                        start: origin.clone(),
                        origin,
                        local_layers: Vec::new(),
                        redirects: 0,
                        state: WantState::Idle,
                        requested: Vec::new(),
                        path: Vec::new(),
                        info: None,
                    },
                );
            }
        }
        let feed = self.feeds.get_mut(&key).expect("inserted above");
        let known = feed.children.iter().any(|c| &c.node == from)
            || feed.pending.iter().any(|(n, _)| n == from);
        // Nodes waiting for us to be fed count against the fan-out as much as those we feed:
        // all of them become children the moment the track arrives.
        let taken = feed.children.len() + feed.pending.len();
        if !known && taken >= self.config.fanout {
            // Full: send the requester to one of the nodes we feed (or are about to).
            let candidates: Vec<&NodeId> = feed
                .children
                .iter()
                .map(|c| &c.node)
                .chain(feed.pending.iter().map(|(n, _)| n))
                .collect();
            let via = candidates[feed.next_redirect % candidates.len()].clone();
            feed.next_redirect = feed.next_redirect.wrapping_add(1);
            self.send(
                from,
                Body::Redirect(Redirect {
                    room: s.room,
                    track: s.track,
                    via: via.to_string(),
                }),
            );
            return;
        }
        let ready = feed.local
            || self
                .wants
                .get(&key)
                .is_some_and(|w| w.state == WantState::Active);
        if ready {
            self.accept_child(&key, from, &layers);
        } else {
            let feed = self.feeds.get_mut(&key).expect("inserted above");
            feed.pending.retain(|(n, _)| n != from);
            feed.pending.push((from.clone(), layers));
        }
        if self.wants.contains_key(&key) {
            self.update_want(now, &key);
        }
    }

    /// Starts (or adjusts) feeding `node` with `layers`.
    pub(crate) fn accept_child(&mut self, key: &TrackKey, node: &NodeId, layers: &[LayerIndex]) {
        let link = self.link_id(node);
        let Some(feed) = self.feeds.get_mut(key) else {
            return;
        };
        let max_layer = feed.info.layers.max(1) as LayerIndex;
        let layers: Vec<LayerIndex> = layers.iter().copied().filter(|l| *l < max_layer).collect();
        let is_new = !feed.children.iter().any(|c| &c.node == node);
        if is_new {
            feed.children.push(Child {
                node: node.clone(),
                flows: Vec::new(),
            });
        }
        let (path, info) = (feed.path.clone(), feed.info.clone());
        let child = feed
            .children
            .iter_mut()
            .find(|c| &c.node == node)
            .expect("inserted above");
        let removed: Vec<(LayerIndex, u32)> = child
            .flows
            .iter()
            .filter(|(l, _)| !layers.contains(l))
            .copied()
            .collect();
        child.flows.retain(|(l, _)| layers.contains(l));
        let added: Vec<LayerIndex> = layers
            .iter()
            .filter(|l| !child.flows.iter().any(|(have, _)| have == *l))
            .copied()
            .collect();
        let mut opened = Vec::new();
        for layer in added {
            let flow = self.next_flow;
            self.next_flow = self.next_flow.wrapping_add(1);
            child.flows.push((layer, flow));
            opened.push((layer, flow));
        }
        if is_new {
            self.send(
                node,
                Body::Accepted(Accepted {
                    room: key.room.to_string(),
                    track: key.track.0,
                    path: path.iter().map(|n| n.to_string()).collect(),
                    info: Some(info),
                }),
            );
        }
        for (_, flow) in removed {
            self.send(node, Body::FlowClose(FlowClose { flow }));
            self.outputs.push_back(Output::Detach {
                key: key.clone(),
                sink: sink(link, flow),
            });
        }
        for (layer, flow) in opened {
            self.send(
                node,
                Body::FlowOpen(FlowOpen {
                    flow,
                    room: key.room.to_string(),
                    track: key.track.0,
                    layer: layer as u32,
                }),
            );
            self.outputs.push_back(Output::Attach {
                key: key.clone(),
                layer,
                sink: sink(link, flow),
            });
        }
    }

    pub(crate) fn drop_child(&mut self, key: &TrackKey, node: &NodeId) {
        let link = self.link_id(node);
        let Some(feed) = self.feeds.get_mut(key) else {
            return;
        };
        let Some(i) = feed.children.iter().position(|c| &c.node == node) else {
            return;
        };
        let child = feed.children.swap_remove(i);
        for (_, flow) in child.flows {
            self.outputs.push_back(Output::Detach {
                key: key.clone(),
                sink: sink(link, flow),
            });
        }
    }

    /// Drops a feed that feeds nobody, unless the track is local.
    pub(crate) fn release_if_unused(&mut self, key: &TrackKey) {
        if self
            .feeds
            .get(key)
            .is_some_and(|f| !f.local && f.children.is_empty() && f.pending.is_empty())
        {
            self.feeds.remove(key);
        }
    }

    pub(crate) fn end_feed(&mut self, key: &TrackKey) {
        let Some(feed) = self.feeds.remove(key) else {
            return;
        };
        let nodes: Vec<NodeId> = feed
            .children
            .iter()
            .map(|c| c.node.clone())
            .chain(feed.pending.iter().map(|(n, _)| n.clone()))
            .collect();
        for child in &feed.children {
            let link = self.link_id(&child.node);
            for (_, flow) in &child.flows {
                self.outputs.push_back(Output::Detach {
                    key: key.clone(),
                    sink: sink(link, *flow),
                });
            }
        }
        for node in nodes {
            if self.is_up(&node) {
                self.send(
                    &node,
                    Body::TrackEnded(TrackEnded {
                        room: key.room.to_string(),
                        track: key.track.0,
                    }),
                );
            }
        }
    }
}
