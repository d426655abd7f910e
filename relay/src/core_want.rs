//! The downstream half of the relay protocol: a node that wants a track published elsewhere
//! subscribes to its origin (or where the origin redirects it) for exactly the layers it needs.

use crate::core::*;
use sfu_core::{LayerIndex, TrackId};
use sfu_proto::relay::{
    Accepted, Redirect, Refused, Subscribe, TrackEnded, frame::Body, refused::Reason,
};
use std::time::Instant;

impl Relay {
    // ---- wants (downstream) ------------------------------------------------------------------

    /// Layers to ask upstream for: what local subscribers and fed nodes need together.
    pub(crate) fn needed(&self, key: &TrackKey) -> Vec<LayerIndex> {
        let Some(w) = self.wants.get(key) else {
            return Vec::new();
        };
        let mut layers = w.local_layers.clone();
        if let Some(f) = self.feeds.get(key) {
            for c in &f.children {
                layers = union(
                    &layers,
                    &c.flows.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
                );
            }
            for (_, l) in &f.pending {
                layers = union(&layers, l);
            }
        }
        layers.sort_unstable();
        layers.dedup();
        layers
    }

    /// Stops wanting a track: forgets the want and the flows it was fed by, and tells the node
    /// feeding it (an empty subscription) if one was asked. Returns the want, if there was one.
    pub(crate) fn drop_want(&mut self, key: &TrackKey) -> Option<Want> {
        let w = self.wants.remove(key)?;
        self.inbound.retain(|_, f| &f.key != key);
        if w.state != WantState::Idle && self.is_up(&w.via) {
            self.send(
                &w.via,
                Body::Subscribe(Subscribe {
                    room: key.room.to_string(),
                    track: key.track.0,
                    layers: vec![],
                    origin: w.origin.to_string(),
                }),
            );
        }
        Some(w)
    }

    pub(crate) fn update_want(&mut self, now: Instant, key: &TrackKey) {
        let needed = self.needed(key);
        let Some(w) = self.wants.get(key) else { return };
        if needed.is_empty() {
            let w = self.drop_want(key).expect("checked above");
            if w.state == WantState::Active {
                self.outputs.push_back(Output::Unfed {
                    key: key.clone(),
                    ended: false,
                });
            }
            return;
        }
        if w.state == WantState::Idle || needed != w.requested {
            self.request(now, key);
        }
    }

    /// (Re)sends the subscription of a want to its current target, if the link is up.
    pub(crate) fn request(&mut self, now: Instant, key: &TrackKey) {
        let needed = self.needed(key);
        let Some(w) = self.wants.get_mut(key) else {
            return;
        };
        if !self.links_up.contains_key(&w.via) {
            w.state = WantState::Idle;
            return;
        }
        if w.state != WantState::Active {
            w.state = WantState::Requested { at: now };
        }
        w.requested = needed.clone();
        let (via, origin) = (w.via.clone(), w.origin.clone());
        self.send(
            &via,
            Body::Subscribe(Subscribe {
                room: key.room.to_string(),
                track: key.track.0,
                layers: needed.iter().map(|l| *l as u32).collect(),
                origin: origin.to_string(),
            }),
        );
    }

    pub(crate) fn on_accepted(&mut self, now: Instant, from: &NodeId, a: Accepted) {
        let key = TrackKey {
            room: a.room.as_str().into(),
            track: TrackId(a.track),
        };
        let path: Vec<NodeId> = a.path.iter().map(|n| NodeId::from(n.as_str())).collect();
        let me = self.me.clone();
        let Some(w) = self.wants.get_mut(&key) else {
            // Not wanted (any more): undo.
            self.send(
                from,
                Body::Subscribe(Subscribe {
                    room: a.room,
                    track: a.track,
                    layers: vec![],
                    origin: String::new(),
                }),
            );
            return;
        };
        if &w.via != from {
            return;
        }
        if path.contains(&me) {
            // A loop: the offered feed passes through us. Go back to where we started.
            let (via, origin) = (w.via.clone(), w.origin.clone());
            w.via = w.start.clone();
            w.redirects = 0;
            w.state = WantState::Idle;
            self.send(
                &via,
                Body::Subscribe(Subscribe {
                    room: key.room.to_string(),
                    track: key.track.0,
                    layers: vec![],
                    origin: origin.to_string(),
                }),
            );
            self.request(now, &key);
            return;
        }
        let fresh = w.state != WantState::Active;
        w.state = WantState::Active;
        w.path = path;
        let info = a.info.unwrap_or_default();
        w.info = Some(info.clone());
        if fresh {
            self.outputs.push_back(Output::Feeding {
                key: key.clone(),
                info: info.clone(),
            });
        }
        // Nodes waiting on us can be fed now.
        let mut path = self.wants[&key].path.clone();
        path.push(self.me.clone());
        if let Some(f) = self.feeds.get_mut(&key) {
            f.path = path;
            f.info = info;
            let pending = std::mem::take(&mut f.pending);
            for (node, layers) in pending {
                self.accept_child(&key, &node, &layers);
            }
        }
    }

    pub(crate) fn on_redirect(&mut self, now: Instant, from: &NodeId, r: Redirect) {
        let key = TrackKey {
            room: r.room.as_str().into(),
            track: TrackId(r.track),
        };
        let me = self.me.clone();
        let max = self.config.max_redirects;
        let Some(w) = self.wants.get_mut(&key) else {
            return;
        };
        if &w.via != from {
            return;
        }
        let via: NodeId = r.via.as_str().into();
        w.redirects += 1;
        w.via = if via == me || w.redirects > max {
            w.redirects = 0;
            w.start.clone()
        } else {
            via
        };
        w.state = WantState::Idle;
        self.request(now, &key);
    }

    pub(crate) fn on_refused(&mut self, now: Instant, from: &NodeId, r: Refused) {
        let key = TrackKey {
            room: r.room.as_str().into(),
            track: TrackId(r.track),
        };
        let Some(w) = self.wants.get_mut(&key) else {
            return;
        };
        if &w.via != from {
            return;
        }
        if w.via != w.start && r.reason() == Reason::Loop {
            w.via = w.start.clone();
            w.redirects = 0;
            w.state = WantState::Idle;
            self.request(now, &key);
        } else if r.reason() == Reason::NotFound && w.via == w.start {
            // The origin no longer has it (or the home worker we pull it through says so).
            self.wants.remove(&key);
            self.end_feed(&key);
            self.outputs.push_back(Output::Unfed { key, ended: true });
        } else {
            // Try again later (the timeout resends).
            w.state = WantState::Requested { at: now };
        }
    }

    pub(crate) fn on_track_ended(&mut self, from: &NodeId, e: TrackEnded) {
        let key = TrackKey {
            room: e.room.as_str().into(),
            track: TrackId(e.track),
        };
        if self.wants.get(&key).is_some_and(|w| &w.via == from) {
            self.wants.remove(&key);
            self.inbound.retain(|_, f| f.key != key);
            self.end_feed(&key);
            self.outputs.push_back(Output::Unfed { key, ended: true });
        }
    }
}
