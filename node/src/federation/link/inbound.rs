//! What a peer sends on the link once its mappings are known (see `Peer::early` for what
//! comes before): each frame within its kind's rate, about a room both sides map, translated
//! to our names and handed to the mesh router (levels to [`super::ranking`]).

use super::{FederationLinks, MAX_FED_TRACKS, bump, refused, room_of};
use crate::federation::{guard, roster};
use sfu_proto::relay::Frame;
use sfu_proto::relay::frame::Body;
use sfu_relay::NodeId;
use sfu_relay::quic::LinkHandler;

impl FederationLinks {
    /// A frame from a peer whose mappings are known.
    pub(super) fn handle_frame(&self, from: &NodeId, frame: Frame) {
        let Some(mut body) = frame.body else { return };
        let mut peers = self.peers();
        let Some(p) = peers.get_mut(&**from) else {
            return;
        };
        let now = std::time::Instant::now();
        if matches!(body, Body::Subscribe(_)) && !p.subscriptions.take(now) {
            bump(&self.stats.flood);
            p.counters.flood.inc();
            if let Some(more) = p.refusals_log.pass(now) {
                tracing::warn!(peer = %from, more, "federation peer sends subscriptions faster than {} a second: dropped", guard::SUBSCRIBE_RATE);
            }
            return;
        }
        if matches!(body, Body::AudioLevels(_)) && !p.levels.take(now) {
            bump(&self.stats.levels_flood);
            p.counters.levels_flood.inc();
            if let Some(more) = p.levels_log.pass(now) {
                tracing::warn!(peer = %from, more, "federation peer sends audio levels faster than {} frames a second: dropped", guard::LEVELS_RATE);
            }
            return;
        }
        let mut ours = None;
        let Ok(named) = room_of(&mut body) else {
            self.metrics.refuse("unknown_frame");
            return;
        };
        if let Some(room) = named {
            // The peer names our rooms as we do (each side translates what it sends).
            let Some(local) = p.active.contains_key(room.as_str()).then(|| room.clone()) else {
                bump(&self.stats.frames_unmapped);
                self.metrics.refuse("unmapped_room");
                if let Body::Subscribe(s) = &body
                    && !s.layers.is_empty()
                {
                    bump(&self.stats.subscriptions_refused);
                    if let Some(more) = p.refusals_log.pass(now) {
                        tracing::info!(peer = %from, room = %s.room, more, "federation subscription to a room not mapped by both sides refused");
                    }
                    p.raw
                        .send_frame(refused(s.room.clone(), s.track, "room not mapped"));
                }
                return;
            };
            ours = Some(local);
        }
        let room = ours.unwrap_or_default();
        if let Body::AudioLevels(l) = body {
            return self.levels_in(peers, from, room, l);
        }
        match &mut body {
            Body::Subscribe(s) if s.layers.is_empty() => {
                p.fed.remove(&(room, s.track));
            }
            Body::Subscribe(s) => {
                let peer_room = p.active.get(&room).cloned().unwrap_or_default();
                let (_, tracks) = self.membership.room(&room);
                let origin = tracks
                    .iter()
                    .find(|t| {
                        t.track
                            .parse::<sfu_core::TrackId>()
                            .is_ok_and(|id| id.0 == s.track)
                    })
                    .filter(|t| !roster::is_federated(&t.origin))
                    .map(|t| t.origin.clone());
                let full =
                    p.fed.len() >= MAX_FED_TRACKS && !p.fed.contains(&(room.clone(), s.track));
                match origin {
                    Some(origin) if !full => {
                        s.origin = origin;
                        p.fed.insert((room, s.track));
                    }
                    _ => {
                        bump(&self.stats.subscriptions_refused);
                        self.metrics.refuse("subscription");
                        let detail = if full {
                            "too many subscriptions"
                        } else {
                            "no such track"
                        };
                        if let Some(more) = p.refusals_log.pass(now) {
                            tracing::info!(peer = %from, %room, track = s.track, more, "federation subscription refused: {detail}");
                        }
                        p.raw.send_frame(refused(peer_room, s.track, detail));
                        return;
                    }
                }
            }
            Body::Accepted(a) => a.path = vec![p.link_name.to_string()],
            Body::FlowOpen(f) => {
                if p.flows.len() >= MAX_FED_TRACKS && !p.flows.contains_key(&f.flow) {
                    bump(&self.stats.frames_unmapped);
                    return;
                }
                p.flows.insert(f.flow, room);
            }
            // Only flows it opened (in mapped rooms).
            Body::FlowClose(f) if p.flows.remove(&f.flow).is_none() => return,
            // A peer is fed directly, never sent to our other nodes.
            Body::Redirect(_) | Body::Hello(_) => return,
            _ => {}
        }
        let link = p.link_name.clone();
        tracing::trace!(peer = %from, ?body, "federation frame in");
        p.counters.frames_in.inc();
        drop(peers);
        self.router.frame(&link, Frame { body: Some(body) });
    }
}
