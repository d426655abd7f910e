//! Recordings in a room: each is a subscription of the forwarding core whose sink is a
//! [`Recorder`] rather than a peer connection (see [`crate::recording`]).
//!
//! A recording subscribes to the track's best layer, pinned (so last-N never pauses it) and
//! without bandwidth management (its sink has no downlink); a track published elsewhere is
//! pulled for it like for any local subscriber ([`LocalRoom::refresh_demand`] counts it). The
//! packet path adds one check of a bit in the sink id for ordinary subscribers.

use crate::media::egress::Egress;
use crate::media::room::LocalRoom;
use crate::recording::Recorder;
use crate::signaling::protocol::{ErrorCode, SignalError};
use sfu_core::{Packet, PacketEdits, SinkId, SubscriptionId, SubscriptionSettings, TrackId};
use std::time::{Duration, Instant};

/// Sink ids of recordings carry this bit (peer connections' are slab keys; relay links'
/// carry the top bit).
const RECORDER_BIT: u64 = 1 << 62;

/// Whether a sink is a recording.
pub(super) fn is_recorder(sink: SinkId) -> bool {
    sink.0 & RECORDER_BIT != 0 && sfu_relay::core::decode_sink(sink).is_none()
}

/// The recordings this room feeds on this worker: track recordings and room recordings
/// (programs). They keep the room open; each has sinks of its own in the forwarding core, whose
/// ids are unique in the room (see [`Recordings::new_sink`]).
#[derive(Default)]
pub(super) struct Recordings {
    pub(super) tracks: Vec<TrackRecorder>,
    pub(super) programs: Vec<super::program::RoomProgram>,
    /// The last sink id handed out (without [`RECORDER_BIT`]).
    last_sink: u64,
}

impl Recordings {
    /// A sink id no other sink of the room has.
    pub(super) fn new_sink(&mut self) -> SinkId {
        self.last_sink += 1;
        SinkId(RECORDER_BIT | self.last_sink)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.tracks.is_empty() && self.programs.is_empty()
    }

    /// Recorded tracks (one entry per recording), for the demand on remote tracks.
    pub(super) fn recorded_tracks(&self) -> impl Iterator<Item = TrackId> + '_ {
        self.tracks
            .iter()
            .map(|r| r.track)
            .chain(self.program_tracks())
    }
}

/// A recording fed by this room.
pub(super) struct TrackRecorder {
    sink: SinkId,
    pub(super) track: TrackId,
    subscription: SubscriptionId,
    recorder: Recorder,
    video: bool,
    loss: LossWatch,
}

/// Lost packets asked for again at most this many at once (the retransmission cache holds
/// about a second of video).
const MAX_NACK: u16 = 64;
/// A recording's video asks for a keyframe after a loss at most this often: each one costs
/// the publisher a large frame, for every subscriber.
const KEYFRAME_EVERY: Duration = Duration::from_secs(2);

/// Losses in what a recording is fed. Its subscription has no receiver to send NACKs or
/// PLIs as a browser does, so the room does it for it: a gap in the (forwarder-rewritten,
/// continuous) sequence numbers is asked for again from the node's retransmission cache,
/// which the jitter buffer (300 ms) can still put in place, and for video a keyframe is
/// asked for too, so a loss the cache cannot repair damages the picture for a moment rather
/// than until the publisher's next keyframe. Per packet: a few comparisons.
#[derive(Default)]
pub(super) struct LossWatch {
    next: Option<u16>,
    keyframe_asked: Option<Instant>,
}

/// What to ask for after a gap.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Loss {
    pub(super) lost: Vec<u16>,
    pub(super) keyframe: bool,
}

impl LossWatch {
    /// A packet with sequence number `seq` was forwarded: the packets it shows missing.
    /// Late and retransmitted packets (behind the next expected) are no news.
    pub(super) fn on_packet(&mut self, now: Instant, seq: u16, video: bool) -> Option<Loss> {
        let Some(next) = self.next else {
            self.next = Some(seq.wrapping_add(1));
            return None;
        };
        let ahead = seq.wrapping_sub(next);
        if ahead >= 0x8000 {
            return None;
        }
        self.next = Some(seq.wrapping_add(1));
        if ahead == 0 {
            return None;
        }
        let lost = (0..ahead.min(MAX_NACK))
            .map(|i| next.wrapping_add(i))
            .collect();
        let keyframe = video
            && self
                .keyframe_asked
                .is_none_or(|t| now.duration_since(t) >= KEYFRAME_EVERY);
        if keyframe {
            self.keyframe_asked = Some(now);
        }
        Some(Loss { lost, keyframe })
    }

    /// The recording's pipeline asked for a keyframe (its depayloader after a loss, or a
    /// live output's decoder): asked of the publisher, paced as after a gap.
    pub(super) fn keyframe_wanted(&mut self, now: Instant) -> Option<Loss> {
        let due = self
            .keyframe_asked
            .is_none_or(|t| now.duration_since(t) >= KEYFRAME_EVERY);
        if !due {
            return None;
        }
        self.keyframe_asked = Some(now);
        Some(Loss {
            lost: Vec::new(),
            keyframe: true,
        })
    }
}

impl LocalRoom {
    /// Starts feeding `recorder` with `track` (published here or elsewhere in the room). A
    /// recording that cannot start is failed with the reason.
    pub fn start_recording(
        &mut self,
        now: Instant,
        track: &str,
        recorder: Recorder,
        out: &mut Egress,
    ) -> Result<(), SignalError> {
        let found: Option<(TrackId, usize)> = track
            .parse::<TrackId>()
            .ok()
            .and_then(|id| Some((id, self.publications.get(&id)?.rids.len())))
            .filter(|(id, _)| self.core.track(*id).is_some());
        let Some((id, layers)) = found else {
            let e = SignalError::new(
                ErrorCode::NotFound,
                format!("no track {track} in room {}", self.name),
            );
            recorder.fail(&e.message);
            return Err(e);
        };
        let top = layers.max(1) - 1;
        let sink = self.recordings.new_sink();
        let params = sfu_core::SubscriptionParams {
            ssrc: rand::random(),
            payload_type: recorder.payload_type,
            max_layer: top,
            rtx: None,
            red_payload_type: None,
        };
        let subscription = match self.core.subscribe(now, id, sink, params) {
            Ok(s) => s,
            Err(e) => {
                let e = SignalError::new(ErrorCode::NotFound, e.to_string());
                recorder.fail(&e.message);
                return Err(e);
            }
        };
        let pinned = SubscriptionSettings {
            max_layer: Some(top),
            pinned: true,
        };
        if let Err(e) = self.core.update_subscription(now, subscription, pinned) {
            tracing::debug!(room = %self.name, "recording subscription: {e}");
        }
        tracing::info!(room = %self.name, %track, recording = recorder.id(), "recording started");
        let video = self
            .publications
            .get(&id)
            .is_some_and(|t| t.kind == sfu_core::MediaKind::Video);
        self.recordings.tracks.push(TrackRecorder {
            sink,
            track: id,
            subscription,
            recorder,
            video,
            loss: LossWatch::default(),
        });
        self.refresh_demand(now, out);
        Ok(())
    }

    /// Stops a recording fed here (its file is then finalised).
    pub fn stop_recording(
        &mut self,
        now: Instant,
        id: &str,
        out: &mut Egress,
    ) -> Result<(), SignalError> {
        if self.stop_program(now, id, out) {
            return Ok(());
        }
        let i = self
            .recordings
            .tracks
            .iter()
            .position(|r| r.recorder.id() == id)
            .ok_or_else(|| SignalError::new(ErrorCode::NotFound, format!("no recording {id}")))?;
        let r = self.recordings.tracks.swap_remove(i);
        self.core.unsubscribe(r.subscription);
        r.recorder.end("");
        self.refresh_demand(now, out);
        Ok(())
    }

    /// A packet the core forwarded to a recording: handed to its thread. A recording whose
    /// thread is gone (it failed) stops being fed.
    pub(super) fn record(
        &mut self,
        now: Instant,
        sink: SinkId,
        packet: &Packet,
        edits: &PacketEdits,
    ) {
        let Some(i) = self.recordings.tracks.iter().position(|r| r.sink == sink) else {
            self.record_program(now, sink, packet, edits);
            return;
        };
        let r = &mut self.recordings.tracks[i];
        let seq = packet.header.sequence_number;
        let loss = match r.loss.on_packet(now, seq, r.video) {
            None if r.video && r.recorder.keyframes.take() => r.loss.keyframe_wanted(now),
            loss => loss,
        };
        if let Some(loss) = loss {
            let subscription = r.subscription;
            self.repair(now, subscription, loss);
        }
        if !self.recordings.tracks[i].recorder.push(packet, edits) {
            let r = self.recordings.tracks.swap_remove(i);
            self.core.unsubscribe(r.subscription);
            r.recorder.end("");
        }
    }

    /// Asks the forwarding core for what a recording's subscription lost (see [`LossWatch`]).
    pub(super) fn repair(&mut self, now: Instant, subscription: SubscriptionId, loss: Loss) {
        tracing::debug!(room = %self.name, lost = loss.lost.len(), keyframe = loss.keyframe, "a recording lost packets");
        if !loss.lost.is_empty() {
            self.core.handle_nack(now, subscription, &loss.lost);
        }
        if loss.keyframe {
            self.core.handle_keyframe_request(now, subscription);
        }
    }

    /// The track of a recording went away (unpublished, or its node left): it ends.
    pub(super) fn recording_ended(&mut self, sink: SinkId) {
        if let Some(i) = self.recordings.tracks.iter().position(|r| r.sink == sink) {
            let r = self.recordings.tracks.swap_remove(i);
            r.recorder.end("the track was unpublished");
        } else {
            self.program_track_ended(sink);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_asked_for_again_and_video_asks_a_keyframe_now_and_then() {
        let t0 = Instant::now();
        let mut w = LossWatch::default();
        assert_eq!(w.on_packet(t0, 65534, true), None);
        assert_eq!(w.on_packet(t0, 65535, true), None);
        // 0 and 1 lost, across the wrap.
        let loss = w.on_packet(t0, 2, true).unwrap();
        assert_eq!(
            loss,
            Loss {
                lost: vec![0, 1],
                keyframe: true
            }
        );
        // A retransmission or a late packet is no news.
        assert_eq!(w.on_packet(t0, 1, true), None);
        assert_eq!(w.on_packet(t0, 3, true), None);
        // Another loss soon after: asked for again, no second keyframe yet.
        let soon = t0 + Duration::from_millis(500);
        let loss = w.on_packet(soon, 5, true).unwrap();
        assert_eq!(
            loss,
            Loss {
                lost: vec![4],
                keyframe: false
            }
        );
        let later = t0 + KEYFRAME_EVERY;
        assert!(w.on_packet(later, 7, true).unwrap().keyframe);
        // A long gap asks for the first MAX_NACK; audio never asks for keyframes.
        let mut a = LossWatch::default();
        a.on_packet(t0, 10, false);
        let loss = a.on_packet(t0, 1000, false).unwrap();
        assert_eq!((loss.lost.len(), loss.keyframe), (MAX_NACK as usize, false));
    }
}
