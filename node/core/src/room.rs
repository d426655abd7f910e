//! A room's media plane: tracks, their subscriptions, and the packets that flow between them.
//!
//! **Contract.** A [`Room`] is a plain state machine. Feed it with the `handle_*` methods,
//! always passing the current time; drain [`Room::poll_output`] after each call; call
//! [`Room::handle_timeout`] when [`Room::poll_timeout`] says so. It reads no clock, performs no
//! I/O and never panics on packet contents.
//!
//! Packets are fanned out without copying payloads: every output packet shares the `Bytes`
//! payload of the input packet and gets a freshly built header (no extensions, no CSRCs, so no
//! allocation). The input packet itself ends up in the layer's retransmission cache.

use crate::clock::WallClock;
use crate::codec::MediaKind;
use crate::forwarder::{DropReason, Forwarder, ForwarderConfig};
use crate::ids::{LayerIndex, SinkId, SubscriptionId, TrackId};
use crate::subscription::{SenderReport, Subscription, SubscriptionParams};
use crate::track::{PublisherReport, RelaySink, Track, TrackInfo};
use rtp::packet::Packet;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Tunables of a room.
#[derive(Clone, Copy, Debug)]
pub struct RoomConfig {
    /// Packets kept per layer for retransmission.
    pub cache_size: usize,
    /// Period of the housekeeping tick (sender reports, held keyframe requests, layer choice).
    pub tick: Duration,
    /// A subscriber still waiting for a keyframe asks again after this long.
    pub keyframe_retry: Duration,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            // About 2 s of 2.5 Mbps video in 1,200-byte packets.
            cache_size: 512,
            tick: Duration::from_millis(50),
            keyframe_retry: Duration::from_secs(1),
        }
    }
}

/// Something the room wants done.
#[derive(Debug)]
pub enum Output {
    /// Send an RTP packet (already rewritten for the subscriber) to a sink.
    Rtp {
        sink: SinkId,
        subscription: SubscriptionId,
        packet: Packet,
    },
    /// Send an RTP packet, as the publisher sent it (minus header extensions), over a relay
    /// link.
    Relay {
        sink: SinkId,
        subscription: SubscriptionId,
        packet: Packet,
    },
    /// Send an RTCP sender report to a sink.
    SenderReport {
        sink: SinkId,
        subscription: SubscriptionId,
        report: SenderReport,
    },
    /// Ask the track's publisher (or upstream node) for a keyframe on a layer.
    KeyframeRequest { track: TrackId, layer: LayerIndex },
}

/// Errors of room operations. None of them is caused by packet contents.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoomError {
    /// The track is not (or no longer) in the room.
    #[error("unknown track {0}")]
    UnknownTrack(TrackId),
    /// A track with this id is already in the room.
    #[error("track {0} already exists")]
    DuplicateTrack(TrackId),
    /// The subscription does not exist.
    #[error("unknown subscription")]
    UnknownSubscription,
    /// A subscription cannot move to a track of another kind or codec.
    #[error("track {0} has another kind or codec")]
    Incompatible(TrackId),
}

/// Counters, cumulative since the room was created.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Indexed like [`DropReason::ALL`].
    pub dropped: [u64; DropReason::ALL.len()],
    /// Packets for unknown tracks or layers.
    pub dropped_unknown: u64,
    pub nacks_received: u64,
    pub retransmitted: u64,
    pub nack_misses: u64,
    pub keyframe_requests_received: u64,
    pub keyframe_requests_sent: u64,
    /// Packets sent over relay links (one per link, however many subscribers are behind it).
    pub relayed: u64,
    /// Packets of muted tracks, not forwarded.
    pub dropped_muted: u64,
}

/// See the module documentation.
pub struct Room {
    clock: WallClock,
    config: RoomConfig,
    tracks: HashMap<TrackId, Track>,
    /// Which track owns each subscription.
    index: HashMap<SubscriptionId, TrackId>,
    next_subscription: u64,
    outputs: VecDeque<Output>,
    next_tick: Option<Instant>,
    stats: RoomStats,
}

impl Room {
    pub fn new(clock: WallClock, config: RoomConfig) -> Self {
        Self {
            clock,
            config,
            tracks: HashMap::new(),
            index: HashMap::new(),
            next_subscription: 1,
            outputs: VecDeque::new(),
            next_tick: None,
            stats: RoomStats::default(),
        }
    }

    pub fn stats(&self) -> &RoomStats {
        &self.stats
    }

    pub fn track(&self, id: TrackId) -> Option<&Track> {
        self.tracks.get(&id)
    }

    pub fn tracks(&self) -> impl Iterator<Item = &Track> {
        self.tracks.values()
    }

    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    /// Adds a published track.
    pub fn add_track(&mut self, now: Instant, info: TrackInfo) -> Result<(), RoomError> {
        if self.tracks.contains_key(&info.id) {
            return Err(RoomError::DuplicateTrack(info.id));
        }
        self.tracks
            .insert(info.id, Track::new(info, self.config.cache_size));
        self.next_tick.get_or_insert(now + self.config.tick);
        Ok(())
    }

    /// Removes a track and every subscription to it; returns those subscriptions and their
    /// sinks so the caller can tell the subscribers.
    pub fn remove_track(&mut self, id: TrackId) -> Vec<(SubscriptionId, SinkId)> {
        let Some(track) = self.tracks.remove(&id) else {
            return Vec::new();
        };
        let subscribers = track.subscriptions.iter().map(|s| (s.id, s.sink));
        let relays = track.relays.iter().map(|r| (r.id, r.sink));
        let ended: Vec<_> = subscribers.chain(relays).collect();
        for (id, _) in &ended {
            self.index.remove(id);
        }
        ended
    }

    /// Subscribes `sink` to a track. A keyframe is requested at once for video, so the
    /// subscriber sees a picture as soon as possible.
    pub fn subscribe(
        &mut self,
        now: Instant,
        track_id: TrackId,
        sink: SinkId,
        params: SubscriptionParams,
    ) -> Result<SubscriptionId, RoomError> {
        let track = self
            .tracks
            .get_mut(&track_id)
            .ok_or(RoomError::UnknownTrack(track_id))?;
        let id = SubscriptionId(self.next_subscription);
        self.next_subscription += 1;
        let target = track.select_layer(now, params.max_layer);
        let forwarder = Forwarder::new(
            ForwarderConfig {
                kind: track.info.kind,
                ssrc: params.ssrc,
                payload_type: params.payload_type,
                clock_rate: track.info.clock_rate,
            },
            Some(target),
        );
        track.subscriptions.push(Subscription {
            id,
            sink,
            forwarder,
            max_layer: params.max_layer,
            next_report: None,
        });
        self.index.insert(id, track_id);
        if track.info.kind == MediaKind::Video {
            request_keyframe(track, target, now, &mut self.outputs, &mut self.stats);
        }
        Ok(id)
    }

    /// Ends a subscription or relay subscription; returns its sink.
    pub fn unsubscribe(&mut self, id: SubscriptionId) -> Option<SinkId> {
        let track_id = self.index.remove(&id)?;
        let track = self.tracks.get_mut(&track_id)?;
        if let Some(pos) = track.subscriptions.iter().position(|s| s.id == id) {
            return Some(track.subscriptions.swap_remove(pos).sink);
        }
        let pos = track.relays.iter().position(|r| r.id == id)?;
        Some(track.relays.swap_remove(pos).sink)
    }

    /// Feeds one layer of a track, untouched, to a relay link. Video gets a keyframe request
    /// at once: the other node subscribes because it has subscribers waiting.
    pub fn subscribe_relay(
        &mut self,
        now: Instant,
        track_id: TrackId,
        layer: LayerIndex,
        sink: SinkId,
    ) -> Result<SubscriptionId, RoomError> {
        let track = self
            .tracks
            .get_mut(&track_id)
            .ok_or(RoomError::UnknownTrack(track_id))?;
        if layer >= track.layers.len() {
            return Err(RoomError::UnknownTrack(track_id));
        }
        let id = SubscriptionId(self.next_subscription);
        self.next_subscription += 1;
        track.relays.push(RelaySink { id, sink, layer });
        self.index.insert(id, track_id);
        if track.info.kind == MediaKind::Video {
            request_keyframe(track, layer, now, &mut self.outputs, &mut self.stats);
        }
        Ok(id)
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
        for &seq in lost {
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

    /// Feeds a subscription from another track of the same kind and codec. The subscriber's
    /// stream stays continuous: it resumes at the new track's next keyframe, with sequence
    /// numbers and timestamps following on from the last packet it got.
    pub fn move_subscription(
        &mut self,
        now: Instant,
        id: SubscriptionId,
        to: TrackId,
    ) -> Result<(), RoomError> {
        let from = *self.index.get(&id).ok_or(RoomError::UnknownSubscription)?;
        if from == to {
            return Ok(());
        }
        let from_track = self
            .tracks
            .get(&from)
            .ok_or(RoomError::UnknownTrack(from))?;
        let to_track = self.tracks.get(&to).ok_or(RoomError::UnknownTrack(to))?;
        if (from_track.info.kind, from_track.info.codec)
            != (to_track.info.kind, to_track.info.codec)
        {
            return Err(RoomError::Incompatible(to));
        }
        let from_track = self
            .tracks
            .get_mut(&from)
            .ok_or(RoomError::UnknownTrack(from))?;
        let pos = from_track
            .subscriptions
            .iter()
            .position(|s| s.id == id)
            .ok_or(RoomError::UnknownSubscription)?;
        let mut sub = from_track.subscriptions.swap_remove(pos);
        sub.forwarder.reset_source();
        let to_track = self
            .tracks
            .get_mut(&to)
            .ok_or(RoomError::UnknownTrack(to))?;
        let target = to_track.select_layer(now, sub.max_layer);
        sub.forwarder.set_target_layer(Some(target));
        let kind = to_track.info.kind;
        to_track.subscriptions.push(sub);
        self.index.insert(id, to);
        if kind == MediaKind::Video {
            request_keyframe(to_track, target, now, &mut self.outputs, &mut self.stats);
        }
        Ok(())
    }

    /// The layers a track's local subscriptions need: each one's target layer if that layer is
    /// flowing here, otherwise every layer up to its maximum (so the best available can be
    /// found). Used to pull only those layers of a track relayed from another node.
    pub fn wanted_layers(&self, now: Instant, track_id: TrackId) -> Vec<LayerIndex> {
        let Some(track) = self.tracks.get(&track_id) else {
            return Vec::new();
        };
        let top = track.layers.len() - 1;
        let mut wanted = vec![false; track.layers.len()];
        for sub in &track.subscriptions {
            match sub.forwarder.target_layer() {
                Some(t) if track.layers.get(t).is_some_and(|l| l.is_live(now)) => wanted[t] = true,
                Some(_) => wanted[..=sub.max_layer.min(top)]
                    .iter_mut()
                    .for_each(|w| *w = true),
                None => {}
            }
        }
        (0..wanted.len()).filter(|&l| wanted[l]).collect()
    }

    /// Sets the highest layer a subscription may receive (`None` pauses it).
    pub fn set_max_layer(
        &mut self,
        now: Instant,
        id: SubscriptionId,
        max_layer: Option<LayerIndex>,
    ) -> Result<(), RoomError> {
        let track_id = *self.index.get(&id).ok_or(RoomError::UnknownSubscription)?;
        let track = self
            .tracks
            .get_mut(&track_id)
            .ok_or(RoomError::UnknownTrack(track_id))?;
        let target = max_layer.map(|m| track.select_layer(now, m));
        let sub = track
            .subscriptions
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or(RoomError::UnknownSubscription)?;
        if let Some(m) = max_layer {
            sub.max_layer = m;
        }
        if sub.forwarder.set_target_layer(target)
            && let Some(layer) = target
        {
            request_keyframe(track, layer, now, &mut self.outputs, &mut self.stats);
        }
        Ok(())
    }

    /// One RTP packet of a track's layer, as received from the publisher (or upstream node).
    pub fn handle_rtp(
        &mut self,
        now: Instant,
        track_id: TrackId,
        layer: LayerIndex,
        mut packet: Packet,
    ) {
        let Some(track) = self.tracks.get_mut(&track_id) else {
            self.stats.dropped_unknown += 1;
            return;
        };
        if track.muted {
            self.stats.dropped_muted += 1;
            return;
        }
        let Some(l) = track.layers.get_mut(layer) else {
            self.stats.dropped_unknown += 1;
            return;
        };
        // Extensions and CSRCs are negotiated per peer connection; none survive forwarding.
        packet.header.extensions.clear();
        packet.header.extension = false;
        packet.header.csrc.clear();
        let payload_len = packet.payload.len();
        self.stats.packets_in += 1;
        self.stats.bytes_in += payload_len as u64;
        let keyframe = payload_len > 0
            && track
                .info
                .codec
                .is_keyframe(track.info.kind, &packet.payload);
        let (ext_seq, _) = l.unwrapper.unwrap(packet.header.sequence_number);
        if payload_len > 0 {
            l.last_packet_at = Some(now);
        }
        if keyframe {
            l.keyframes.on_keyframe();
        }
        for sub in &mut track.subscriptions {
            match sub
                .forwarder
                .forward(now, layer, &packet.header, payload_len, keyframe)
            {
                Ok(rewrite) => {
                    self.stats.packets_out += 1;
                    self.stats.bytes_out += payload_len as u64;
                    self.outputs.push_back(Output::Rtp {
                        sink: sub.sink,
                        subscription: sub.id,
                        packet: Packet {
                            header: rewrite.header(&packet.header),
                            payload: packet.payload.clone(),
                        },
                    });
                }
                Err(reason) => self.stats.dropped[reason as usize] += 1,
            }
        }
        for relay in track.relays.iter().filter(|r| r.layer == layer) {
            self.stats.relayed += 1;
            self.outputs.push_back(Output::Relay {
                sink: relay.sink,
                subscription: relay.id,
                packet: Packet {
                    header: packet.header.clone(),
                    payload: packet.payload.clone(),
                },
            });
        }
        l.cache.insert(ext_seq, packet, now, keyframe);
    }

    /// Mutes or unmutes a track. Muted, nothing of it is forwarded; unmuted, video layers
    /// that anyone receives get a keyframe request so pictures come back at once.
    pub fn set_track_muted(
        &mut self,
        now: Instant,
        track_id: TrackId,
        muted: bool,
    ) -> Result<(), RoomError> {
        let track = self
            .tracks
            .get_mut(&track_id)
            .ok_or(RoomError::UnknownTrack(track_id))?;
        let was = std::mem::replace(&mut track.muted, muted);
        if was && !muted && track.info.kind == MediaKind::Video {
            let mut layers: Vec<LayerIndex> = track
                .subscriptions
                .iter()
                .filter_map(|s| s.forwarder.target_layer())
                .chain(track.relays.iter().map(|r| r.layer))
                .collect();
            layers.sort_unstable();
            layers.dedup();
            for layer in layers {
                request_keyframe(track, layer, now, &mut self.outputs, &mut self.stats);
            }
        }
        Ok(())
    }

    /// The publisher's RTCP sender report for a layer.
    pub fn handle_sender_report(
        &mut self,
        now: Instant,
        track_id: TrackId,
        layer: LayerIndex,
        ntp: u64,
        rtp_time: u32,
    ) {
        if let Some(l) = self
            .tracks
            .get_mut(&track_id)
            .and_then(|t| t.layers.get_mut(layer))
        {
            l.report = Some(PublisherReport {
                ntp,
                rtp_time,
                received_at: now,
            });
        }
    }

    /// A subscriber asked for a keyframe (PLI or FIR).
    pub fn handle_keyframe_request(&mut self, now: Instant, id: SubscriptionId) {
        self.stats.keyframe_requests_received += 1;
        let Some(track) = self.index.get(&id).and_then(|t| self.tracks.get_mut(t)) else {
            return;
        };
        let Some(layer) = track
            .subscriptions
            .iter()
            .find(|s| s.id == id)
            .and_then(|s| s.forwarder.current_layer().or(s.forwarder.target_layer()))
        else {
            return;
        };
        request_keyframe(track, layer, now, &mut self.outputs, &mut self.stats);
    }

    /// A subscriber reported lost packets (sequence numbers as it received them). Answered from
    /// the retransmission cache; nothing goes to the publisher.
    pub fn handle_nack(&mut self, now: Instant, id: SubscriptionId, lost: &[u16]) {
        self.stats.nacks_received += lost.len() as u64;
        let Some(track) = self.index.get(&id).and_then(|t| self.tracks.get_mut(t)) else {
            self.stats.nack_misses += lost.len() as u64;
            return;
        };
        let Track {
            layers,
            subscriptions,
            ..
        } = track;
        let Some(sub) = subscriptions.iter().find(|s| s.id == id) else {
            return;
        };
        for &out_seq in lost {
            let cached = sub.forwarder.map_nack(out_seq).and_then(|(layer, in_seq)| {
                let packet = layers.get(layer)?.cache.get(in_seq, now)?.packet;
                let rewrite = sub
                    .forwarder
                    .rewrite_retransmission(out_seq, &packet.header)?;
                Some(Packet {
                    header: rewrite.header(&packet.header),
                    payload: packet.payload.clone(),
                })
            });
            match cached {
                Some(packet) => {
                    self.stats.retransmitted += 1;
                    self.outputs.push_back(Output::Rtp {
                        sink: sub.sink,
                        subscription: sub.id,
                        packet,
                    });
                }
                None => self.stats.nack_misses += 1,
            }
        }
    }

    /// Housekeeping: sender reports, held keyframe requests, layer choice.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(due) = self.next_tick else { return };
        if now < due {
            return;
        }
        self.next_tick = (!self.tracks.is_empty()).then(|| now + self.config.tick);
        for (&track_id, track) in &mut self.tracks {
            for (layer, l) in track.layers.iter_mut().enumerate() {
                if l.keyframes.poll(now) {
                    self.stats.keyframe_requests_sent += 1;
                    self.outputs.push_back(Output::KeyframeRequest {
                        track: track_id,
                        layer,
                    });
                }
            }
            let simulcast = track.layers.len() > 1;
            // Bit sets of layers: a switch asks at once (coalesced); a subscriber that is still
            // waiting asks again only after `keyframe_retry`.
            let (mut switching, mut waiting): (u32, u32) = (0, 0);
            for i in 0..track.subscriptions.len() {
                if simulcast && track.subscriptions[i].forwarder.target_layer().is_some() {
                    let best = track.select_layer(now, track.subscriptions[i].max_layer);
                    if track.subscriptions[i]
                        .forwarder
                        .set_target_layer(Some(best))
                    {
                        switching |= layer_bit(best);
                    }
                }
                let sub = &mut track.subscriptions[i];
                if let Some(layer) = sub.forwarder.awaiting_keyframe() {
                    waiting |= layer_bit(layer);
                }
                let report = sub
                    .forwarder
                    .current_layer()
                    .and_then(|l| track.layers[l].report);
                if let Some(report) = sub.poll_report(now, &self.clock, report.as_ref()) {
                    self.outputs.push_back(Output::SenderReport {
                        sink: sub.sink,
                        subscription: sub.id,
                        report,
                    });
                }
            }
            for (layer, l) in track.layers.iter_mut().enumerate() {
                let bit = layer_bit(layer);
                let send = if switching & bit != 0 {
                    l.keyframes.request(now)
                } else {
                    waiting & bit != 0
                        && l.keyframes.request_if_idle(now, self.config.keyframe_retry)
                };
                if send {
                    self.stats.keyframe_requests_sent += 1;
                    self.outputs.push_back(Output::KeyframeRequest {
                        track: track_id,
                        layer,
                    });
                }
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_tick
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }
}

fn layer_bit(layer: LayerIndex) -> u32 {
    1 << layer.min(31)
}

fn request_keyframe(
    track: &mut Track,
    layer: LayerIndex,
    now: Instant,
    outputs: &mut VecDeque<Output>,
    stats: &mut RoomStats,
) {
    let Some(l) = track.layers.get_mut(layer) else {
        return;
    };
    if l.keyframes.request(now) {
        stats.keyframe_requests_sent += 1;
        outputs.push_back(Output::KeyframeRequest {
            track: track.info.id,
            layer,
        });
    }
}
