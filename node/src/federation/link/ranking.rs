//! Audio levels through the gateway, for speaker ranking on both sides (see
//! [`crate::federation::levels`]): ours passed on to each peer a room is mapped with, the
//! peers' shared with our nodes hosting the room, as the node a track is published on shares
//! its levels over relay links.

use super::{FederationLinks, Peer};
use crate::federation::levels;
use crate::federation::roster::is_federated;
use sfu_proto::relay::frame::Body;
use sfu_proto::relay::{AudioLevels, Frame};
use sfu_relay::NodeId;
use sfu_relay::quic::LinkHandler;
use std::collections::HashMap;
use std::sync::MutexGuard;

impl FederationLinks {
    /// Levels one of our nodes shared with this gateway (as with any node hosting the room:
    /// a peer's participants are on `gateway~peer`): passed on to each peer the room is mapped
    /// with, for the tracks announced to it, the room named as the peer names it.
    pub fn levels_from_cluster(&self, l: &AudioLevels) {
        let peers = self.peers();
        for (name, p) in peers.iter() {
            let Some(theirs) = p.active.get(&l.room) else {
                continue;
            };
            let kept = levels::pass(&l.levels, p.announced.get(&l.room)).kept;
            if kept.is_empty() {
                continue;
            }
            tracing::trace!(peer = %name, room = %l.room, n = kept.len(), "audio levels to the peer");
            p.counters.frames_out.inc();
            p.raw.send_frame(Frame {
                body: Some(Body::AudioLevels(AudioLevels {
                    room: theirs.clone(),
                    levels: kept,
                })),
            });
        }
    }

    /// Levels from a peer about our `room` (mapped by both sides, within the peer's rate):
    /// those of its tracks in our registry go to this gateway's workers and to every other
    /// node of ours hosting the room.
    pub(super) fn levels_in(
        &self,
        mut peers: MutexGuard<'_, HashMap<String, Peer>>,
        from: &NodeId,
        room: String,
        l: AudioLevels,
    ) {
        let Some(p) = peers.get_mut(&**from) else {
            return;
        };
        let passed = levels::pass(&l.levels, p.heard.get(&room));
        if passed.refused > 0 {
            p.counters.levels_refused.inc_by(passed.refused as u64);
            if let Some(more) = p.refusals_log.pass(std::time::Instant::now()) {
                tracing::info!(peer = %from, %room, n = passed.refused, more, "federation audio levels of tracks the peer did not announce dropped");
            }
        }
        if passed.kept.is_empty() {
            return;
        }
        p.counters.frames_in.inc();
        let link = p.link_name.clone();
        drop(peers);
        let nodes = self.hosting_nodes(&room);
        if !nodes.is_empty() {
            self.router.share_levels(&room, nodes, passed.kept.clone());
        }
        let frame = Frame {
            body: Some(Body::AudioLevels(AudioLevels {
                room,
                levels: passed.kept,
            })),
        };
        self.router.frame(&link, frame);
    }

    /// The nodes of our cluster other than this one hosting part of `room`: those of its
    /// announced participants and of its counted audience, from the registry (this gateway
    /// may host no one of the room).
    fn hosting_nodes(&self, room: &str) -> Vec<NodeId> {
        let (participants, _) = self.membership.room(room);
        let audience = self.membership.audience(room);
        let mut nodes: Vec<&str> = participants
            .iter()
            .map(|p| p.node.as_str())
            .chain(
                audience
                    .iter()
                    .map(|(k, _)| sfu_control::records::node_of(k)),
            )
            .filter(|n| !is_federated(n) && *n != self.node_id)
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes.into_iter().map(NodeId::from).collect()
    }
}
