//! A room's media plane: tracks, their subscriptions, the subscribers' downlinks, and the
//! packets that flow between them.
//!
//! **Contract.** A [`Room`] is a plain state machine. Feed it with the `handle_*` methods,
//! always passing the current time; drain [`Room::poll_output`] after each call; call
//! [`Room::handle_timeout`] when [`Room::poll_timeout`] says so. It reads no clock, performs no
//! I/O and never panics on packet contents.
//!
//! Packets are fanned out without copying payloads: every output packet shares the `Bytes`
//! payload of the input packet and gets a freshly built header. The only per-subscriber copy
//! is the rare VP8 renumbering after a source change (see [`crate::vp8`]). The input packet
//! itself ends up in the layer's retransmission cache.
//!
//! The methods are split by concern: this file (tracks, subscriptions, sinks), `room_media`
//! (the packet path, NACKs, keyframe requests, feedback, probes), `room_tick` (housekeeping:
//! bandwidth allocation, speakers, dynacast, sender reports) and `room_relay` (feeding other
//! nodes).

use crate::bandwidth::EstimatorConfig;
use crate::clock::WallClock;
use crate::codec::MediaKind;
use crate::downlink::{Downlink, SinkParams};
use crate::forwarder::{DropReason, Forwarder, ForwarderConfig};
use crate::ids::{IdMap, LayerIndex, SinkId, SubscriptionId, TrackId};
use crate::resend::RecentResends;
use crate::speakers::{Speaker, SpeakerConfig, Speakers};
use crate::subscription::{
    Rtx, SenderReport, Subscription, SubscriptionParams, SubscriptionSettings,
};
use crate::track::{RelaySink, Track, TrackInfo};
use rtp::packet::Packet;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tunables of a room.
#[derive(Clone, Copy, Debug)]
pub struct RoomConfig {
    /// Packets kept per layer for retransmission.
    pub cache_size: usize,
    /// Period of the housekeeping tick (sender reports, held keyframe requests, allocation).
    pub tick: Duration,
    /// A subscriber still waiting for a keyframe asks again after this long.
    pub keyframe_retry: Duration,
    /// Audio top-K and video last-N.
    pub speakers: SpeakerConfig,
    /// Limits of each subscriber's bandwidth estimate.
    pub estimator: EstimatorConfig,
    /// A simulcast layer nobody needs for this long is paused at its publisher.
    pub dynacast_delay: Duration,
    /// How often layers are re-allocated (also at once when a subscriber changes settings).
    pub allocation_period: Duration,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            // About 2 s of 2.5 Mbps video in 1,200-byte packets.
            cache_size: crate::retransmit::DEFAULT_CACHE_SIZE,
            tick: Duration::from_millis(50),
            keyframe_retry: Duration::from_secs(1),
            speakers: SpeakerConfig::default(),
            estimator: EstimatorConfig::default(),
            dynacast_delay: Duration::from_secs(2),
            allocation_period: Duration::from_millis(200),
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
        /// What to write into it as it is sent (see [`crate::edits`]).
        edits: crate::edits::PacketEdits,
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
    /// The active speakers changed (loudest first): tell the room's clients.
    Speakers(Vec<Speaker>),
    /// Levels (-dBov) of tracks published here, for the room's other nodes.
    SharedLevels(Vec<(TrackId, Arc<str>, u8)>),
    /// Dynacast: the simulcast layers of a local track anyone needs changed; the publisher
    /// should send only those (`true` per layer, lowest first).
    PublisherLayers { track: TrackId, active: Vec<bool> },
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
    /// Malformed payloads (a RED packet whose blocks do not add up), per subscriber.
    pub dropped_malformed: u64,
    /// Duplicates sent to probe subscribers' bandwidth.
    pub probe_packets: u64,
    /// Layer switches made by the stream allocator (up and down).
    pub layer_switches: u64,
    /// Congestion feedback reports (TWCC, REMB) received from subscribers.
    pub congestion_feedback: u64,
    /// RED (redundant audio) packets received.
    pub red_packets: u64,
    /// NACKs not answered because the packet was resent to that subscription moments ago.
    pub nack_repeats: u64,
    /// NACKs not answered because the subscriber's retransmission budget was spent, or the
    /// NACK named more packets than one may have resent.
    pub nack_over_budget: u64,
}

/// See the module documentation.
pub struct Room {
    pub(crate) clock: WallClock,
    pub(crate) config: RoomConfig,
    pub(crate) tracks: IdMap<TrackId, Track>,
    /// Which track owns each subscription.
    pub(crate) index: IdMap<SubscriptionId, TrackId>,
    /// Subscribers' downlinks, by sink (local subscribers only; relay sinks have none).
    pub(crate) downlinks: IdMap<SinkId, Downlink>,
    pub(crate) speakers: Speakers,
    pub(crate) next_subscription: u64,
    pub(crate) outputs: VecDeque<Output>,
    pub(crate) next_tick: Option<Instant>,
    /// While a probe runs, duplicates go out more often than the tick.
    pub(crate) next_probe_step: Option<Instant>,
    pub(crate) next_allocation: Option<Instant>,
    pub(crate) stats: RoomStats,
    /// Relay sinks attached to a track before the room knew it, attached when it is added
    /// (see [`Room::subscribe_relay`]).
    pub(crate) pending_relays: IdMap<TrackId, Vec<RelaySink>>,
}

impl Room {
    pub fn new(clock: WallClock, config: RoomConfig) -> Self {
        Self {
            clock,
            config,
            tracks: IdMap::default(),
            index: IdMap::default(),
            downlinks: IdMap::default(),
            speakers: Speakers::default(),
            next_subscription: 1,
            outputs: VecDeque::new(),
            next_tick: None,
            next_probe_step: None,
            next_allocation: None,
            stats: RoomStats::default(),
            pending_relays: IdMap::default(),
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

    /// A subscription, if it exists (local subscribers only).
    pub fn subscription(&self, id: SubscriptionId) -> Option<&Subscription> {
        let track = self.tracks.get(self.index.get(&id)?)?;
        track.subscriptions.iter().find(|s| s.id == id)
    }

    /// A subscriber's current bandwidth estimate, if it gives congestion feedback.
    pub fn estimate(&self, now: Instant, sink: SinkId) -> Option<u64> {
        self.downlinks.get(&sink)?.budget(now)
    }

    /// Adds a published track (local, or relayed from another node).
    pub fn add_track(&mut self, now: Instant, info: TrackInfo) -> Result<(), RoomError> {
        if self.tracks.contains_key(&info.id) {
            return Err(RoomError::DuplicateTrack(info.id));
        }
        if info.kind == MediaKind::Audio && info.audio_levels {
            self.speakers
                .add_track(info.id, info.participant.clone(), info.local);
        }
        let id = info.id;
        self.tracks
            .insert(id, Track::new(info, self.config.cache_size));
        self.next_tick.get_or_insert(now + self.config.tick);
        self.attach_pending_relays(now, id);
        Ok(())
    }

    /// Removes a track and every subscription to it; returns those subscriptions and their
    /// sinks so the caller can tell the subscribers.
    pub fn remove_track(&mut self, id: TrackId) -> Vec<(SubscriptionId, SinkId)> {
        let Some(track) = self.tracks.remove(&id) else {
            return Vec::new();
        };
        // A relayed track's levels keep coming from its origin while it is published there,
        // even when this node stops pulling it.
        if track.info.local {
            self.speakers.remove_track(id);
        }
        let subscribers = track.subscriptions.iter().map(|s| (s.id, s.sink));
        let relays = track.relays.iter().map(|r| (r.id, r.sink));
        let ended: Vec<_> = subscribers.chain(relays).collect();
        for (id, _) in &ended {
            self.index.remove(id);
        }
        ended
    }

    /// What a subscriber negotiated for congestion control. Call when its connection is set
    /// up (and again if it renegotiates); sinks never declared get no bandwidth management.
    pub fn set_sink(&mut self, sink: SinkId, params: SinkParams) {
        match self.downlinks.get_mut(&sink) {
            Some(d) => d.set_params(params),
            None => {
                self.downlinks
                    .insert(sink, Downlink::new(params, self.config.estimator));
            }
        }
    }

    /// The subscriber is gone.
    pub fn remove_sink(&mut self, sink: SinkId) {
        self.downlinks.remove(&sink);
    }

    /// Subscribes `sink` to a track. A keyframe is requested at once for video, so the
    /// subscriber sees a picture as soon as possible. A subscriber under bandwidth management
    /// starts at the lowest layer; the allocator raises it as its estimate allows.
    pub fn subscribe(
        &mut self,
        now: Instant,
        track_id: TrackId,
        sink: SinkId,
        params: SubscriptionParams,
    ) -> Result<SubscriptionId, RoomError> {
        let budgeted = self
            .downlinks
            .get(&sink)
            .is_some_and(|d| d.budget(now).is_some());
        let track = self
            .tracks
            .get_mut(&track_id)
            .ok_or(RoomError::UnknownTrack(track_id))?;
        let id = SubscriptionId(self.next_subscription);
        self.next_subscription += 1;
        let start = if budgeted { 0 } else { params.max_layer };
        let target = track.select_layer(now, start);
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
            enabled: true,
            pinned: false,
            desired: Some(target),
            rtx: params.rtx.map(|params| Rtx {
                params,
                seq: (params.ssrc >> 16) as u16,
            }),
            red_payload_type: params.red_payload_type,
            next_report: None,
            resent: RecentResends::default(),
        });
        self.index.insert(id, track_id);
        if track.info.kind == MediaKind::Video {
            crate::room_media::request_keyframe(
                track,
                target,
                now,
                &mut self.outputs,
                &mut self.stats,
            );
        }
        Ok(id)
    }

    /// Ends a subscription or relay subscription; returns its sink.
    pub fn unsubscribe(&mut self, id: SubscriptionId) -> Option<SinkId> {
        let track_id = self.index.remove(&id)?;
        let Some(track) = self.tracks.get_mut(&track_id) else {
            return self.drop_pending_relay(track_id, id);
        };
        if let Some(pos) = track.subscriptions.iter().position(|s| s.id == id) {
            return Some(track.subscriptions.swap_remove(pos).sink);
        }
        let pos = track.relays.iter().position(|r| r.id == id)?;
        Some(track.relays.swap_remove(pos).sink)
    }

    /// Feeds a subscription from another track of the same kind and codec. The subscriber's
    /// stream stays continuous: it resumes at the new track's next keyframe, with sequence
    /// numbers, timestamps and VP8 picture ids following on from the last packet it got.
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
        let target = to_track.select_layer(now, sub.desired.unwrap_or(0).min(sub.max_layer));
        sub.forwarder.set_target_layer(Some(target));
        sub.desired = Some(target);
        let kind = to_track.info.kind;
        to_track.subscriptions.push(sub);
        self.index.insert(id, to);
        if kind == MediaKind::Video {
            crate::room_media::request_keyframe(
                to_track,
                target,
                now,
                &mut self.outputs,
                &mut self.stats,
            );
        }
        Ok(())
    }

    /// Sets the highest layer a subscription may receive (`None` pauses it).
    pub fn set_max_layer(
        &mut self,
        now: Instant,
        id: SubscriptionId,
        max_layer: Option<LayerIndex>,
    ) -> Result<(), RoomError> {
        let pinned = self
            .subscription(id)
            .ok_or(RoomError::UnknownSubscription)?
            .pinned;
        self.update_subscription(now, id, SubscriptionSettings { max_layer, pinned })
    }

    /// Applies what the subscriber says about a subscription (rendered size, shown or not,
    /// pinned). Takes effect at once for pausing; layer choices follow at the next tick.
    pub fn update_subscription(
        &mut self,
        now: Instant,
        id: SubscriptionId,
        settings: SubscriptionSettings,
    ) -> Result<(), RoomError> {
        let track_id = *self.index.get(&id).ok_or(RoomError::UnknownSubscription)?;
        let track = self
            .tracks
            .get_mut(&track_id)
            .ok_or(RoomError::UnknownTrack(track_id))?;
        let top = track.layers.len() - 1;
        let sub = track
            .subscriptions
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or(RoomError::UnknownSubscription)?;
        let sink = sub.sink;
        sub.pinned = settings.pinned;
        match settings.max_layer {
            Some(m) => {
                sub.max_layer = m.min(top);
                sub.enabled = true;
                if let Some(d) = sub.desired {
                    sub.desired = Some(d.min(sub.max_layer));
                }
            }
            None => {
                sub.enabled = false;
                sub.desired = None;
                sub.forwarder.set_target_layer(None);
            }
        }
        // Choose this subscriber's layers now rather than at the next tick, so a resize shows
        // at once.
        self.allocate(now, Some(sink));
        Ok(())
    }

    /// The room's active speakers, loudest first (as last reported).
    pub fn active_speakers(&self) -> Vec<TrackId> {
        let mut v: Vec<(usize, TrackId)> = self
            .tracks
            .keys()
            .filter(|t| self.speakers.is_active(**t))
            .filter_map(|t| Some((self.speakers.rank(*t)?, *t)))
            .collect();
        v.sort();
        v.into_iter().map(|(_, t)| t).collect()
    }

    /// A track published on another node with known levels: ranked (as silent) until its
    /// origin shares its levels.
    pub fn add_remote_speaker(&mut self, track: TrackId, participant: Arc<str>) {
        self.speakers.add_track(track, participant, false);
    }

    /// A track published on another node is gone: forget its levels.
    pub fn remove_remote_speaker(&mut self, track: TrackId) {
        if !self.tracks.get(&track).is_some_and(|t| t.info.local) {
            self.speakers.remove_track(track);
        }
    }

    /// A level shared by the node a track is published on (see [`Output::SharedLevels`]).
    pub fn handle_shared_level(
        &mut self,
        now: Instant,
        track: TrackId,
        participant: Arc<str>,
        level: u8,
    ) {
        self.speakers
            .on_shared_level(now, track, participant, level);
    }

    /// A track's place in the speaker ranking (0 is the best), for tracks with levels.
    pub fn speaker_rank(&self, track: TrackId) -> Option<usize> {
        self.speakers.rank(track)
    }

    pub fn speaker_config(&self) -> SpeakerConfig {
        self.config.speakers
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.next_tick, self.next_probe_step) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }
}
