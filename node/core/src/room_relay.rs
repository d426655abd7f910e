//! Feeding other nodes: relay sinks of a [`Room`]'s tracks, their NACKs and keyframe requests,
//! and the layers of relayed tracks this node's subscribers need (demand sent upstream).

use crate::codec::MediaKind;
use crate::ids::{LayerIndex, SinkId, SubscriptionId, TrackId};
use crate::room::{Output, Room, RoomError};
use crate::room_media::request_keyframe;
use crate::track::RelaySink;
use std::time::Instant;

impl Room {
    /// Feeds one layer of a track, untouched, to a relay link. Video gets a keyframe request
    /// at once: the other node subscribes because it has subscribers waiting.
    ///
    /// A track the room does not know yet gets the sink when it is added: a federation
    /// gateway's relay feeds a peer's track as soon as the peer accepts it, which can be
    /// before the gateway's rooms have read the track's registry record (the gateway wrote
    /// it, and the subscriber's node, which read it first, asked for the track). A sink
    /// dropped then was never attached again, and the subscriber's node got a flow that
    /// carried nothing, for good.
    pub fn subscribe_relay(
        &mut self,
        now: Instant,
        track_id: TrackId,
        layer: LayerIndex,
        sink: SinkId,
    ) -> Result<SubscriptionId, RoomError> {
        let id = SubscriptionId(self.next_subscription);
        let relay = RelaySink { id, sink, layer };
        let Some(track) = self.tracks.get_mut(&track_id) else {
            self.next_subscription += 1;
            self.pending_relays.entry(track_id).or_default().push(relay);
            self.index.insert(id, track_id);
            return Ok(id);
        };
        if layer >= track.layers.len() {
            return Err(RoomError::UnknownTrack(track_id));
        }
        self.next_subscription += 1;
        track.relays.push(relay);
        self.index.insert(id, track_id);
        if track.info.kind == MediaKind::Video {
            request_keyframe(track, layer, now, &mut self.outputs, &mut self.stats);
        }
        Ok(id)
    }

    /// Attaches the relay sinks that waited for `track_id` (see [`Room::subscribe_relay`]);
    /// those of a layer the track does not have are dropped.
    pub(crate) fn attach_pending_relays(&mut self, now: Instant, track_id: TrackId) {
        let Some(waiting) = self.pending_relays.remove(&track_id) else {
            return;
        };
        let Some(track) = self.tracks.get_mut(&track_id) else {
            return;
        };
        for relay in waiting {
            if relay.layer >= track.layers.len() {
                self.index.remove(&relay.id);
                continue;
            }
            track.relays.push(relay);
            if track.info.kind == MediaKind::Video {
                request_keyframe(track, relay.layer, now, &mut self.outputs, &mut self.stats);
            }
        }
    }

    /// Forgets a relay sink still waiting for its track; its sink if it was one.
    pub(crate) fn drop_pending_relay(
        &mut self,
        track_id: TrackId,
        id: SubscriptionId,
    ) -> Option<SinkId> {
        let waiting = self.pending_relays.get_mut(&track_id)?;
        let pos = waiting.iter().position(|r| r.id == id)?;
        let sink = waiting.swap_remove(pos).sink;
        if waiting.is_empty() {
            self.pending_relays.remove(&track_id);
        }
        Some(sink)
    }

    /// A relay link reported lost packets of the layer it is fed (source sequence numbers).
    pub fn handle_relay_nack(&mut self, now: Instant, id: SubscriptionId, lost: &[u16]) {
        self.stats.nacks_received += lost.len() as u64;
        let Some(track) = self.index.get(&id).and_then(|t| self.tracks.get(t)) else {
            self.stats.nack_misses += lost.len() as u64;
            return;
        };
        let Some(relay) = track.relays.iter().find(|r| r.id == id) else {
            return;
        };
        let Some(layer) = track.layers.get(relay.layer) else {
            return;
        };
        // Links are between this cluster's nodes, but a bug should not make one resend a
        // whole cache either.
        let answered = lost.len().min(crate::resend::MAX_RESENT_PER_NACK);
        self.stats.nack_over_budget += (lost.len() - answered) as u64;
        for &seq in &lost[..answered] {
            match layer.cache.get(seq, now) {
                Some(cached) => {
                    self.stats.retransmitted += 1;
                    self.outputs.push_back(Output::Relay {
                        sink: relay.sink,
                        subscription: id,
                        packet: cached.packet.clone(),
                    });
                }
                None => self.stats.nack_misses += 1,
            }
        }
    }

    /// A relay link asked for a keyframe on a layer (coalesced like any other request).
    pub fn handle_relay_keyframe_request(
        &mut self,
        now: Instant,
        track_id: TrackId,
        layer: LayerIndex,
    ) {
        self.stats.keyframe_requests_received += 1;
        if let Some(track) = self.tracks.get_mut(&track_id) {
            request_keyframe(track, layer, now, &mut self.outputs, &mut self.stats);
        }
    }

    /// The layers a track's local subscriptions need, to pull only those of a track relayed
    /// from another node: each one's allocated layer if that layer flows here, otherwise every
    /// layer up to it (so that something can be shown until it arrives). Paused and disabled
    /// subscriptions need nothing.
    pub fn wanted_layers(&self, now: Instant, track_id: TrackId) -> Vec<LayerIndex> {
        let Some(track) = self.tracks.get(&track_id) else {
            return Vec::new();
        };
        let top = track.layers.len() - 1;
        let mut wanted = vec![false; track.layers.len()];
        for sub in &track.subscriptions {
            match sub.desired {
                Some(d) if track.layers.get(d).is_some_and(|l| l.is_live(now)) => wanted[d] = true,
                Some(d) => wanted[..=d.min(top)].iter_mut().for_each(|w| *w = true),
                None => {}
            }
            // Keep what is being forwarded until the switch to the wanted layer happened.
            if let Some(c) = sub.forwarder.current_layer()
                && sub.desired.is_some()
            {
                wanted[c.min(top)] = true;
            }
        }
        (0..wanted.len()).filter(|&l| wanted[l]).collect()
    }

    /// Whether a relayed audio track would be heard here: it ranks within the top-K (plus one,
    /// since no subscriber hears itself), or has no levels to rank by. Used to pull only the
    /// audio that matters from other nodes.
    pub fn audible(&self, track: TrackId) -> bool {
        let k = self.config.speakers.top_k;
        k == 0 || self.speakers.rank(track).is_none_or(|r| r <= k)
    }
}
