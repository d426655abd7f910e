//! Recordings in a room: each is a subscription of the forwarding core whose sink is a
//! [`Recorder`] rather than a peer connection (see [`crate::recording`]).
//!
//! A recording subscribes to the track's best layer, pinned (so last-N never pauses it) and
//! without bandwidth management (its sink has no downlink); a track published elsewhere is
//! pulled for it like for any local subscriber ([`LocalRoom::refresh_demand`] counts it). The
//! packet path adds one check of a bit in the sink id for ordinary subscribers.

use super::egress::Egress;
use super::room::LocalRoom;
use crate::recording::Recorder;
use crate::signaling::protocol::{ErrorCode, SignalError};
use sfu_core::{Packet, PacketEdits, SinkId, SubscriptionId, SubscriptionSettings, TrackId};
use std::time::Instant;

/// Sink ids of recordings carry this bit (peer connections' are slab keys; relay links'
/// carry the top bit).
pub(super) const RECORDER_BIT: u64 = 1 << 62;

/// Whether a sink is a recording.
pub(super) fn is_recorder(sink: SinkId) -> bool {
    sink.0 & RECORDER_BIT != 0 && sfu_relay::core::decode_sink(sink).is_none()
}

/// A recording fed by this room.
pub(super) struct TrackRecorder {
    sink: SinkId,
    pub(super) track: TrackId,
    subscription: SubscriptionId,
    recorder: Recorder,
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
            .and_then(|id| Some((id, self.tracks.get(&id)?.rids.len())))
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
        self.next_recorder += 1;
        let sink = SinkId(RECORDER_BIT | self.next_recorder);
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
        self.recorders.push(TrackRecorder {
            sink,
            track: id,
            subscription,
            recorder,
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
            .recorders
            .iter()
            .position(|r| r.recorder.id() == id)
            .ok_or_else(|| SignalError::new(ErrorCode::NotFound, format!("no recording {id}")))?;
        let r = self.recorders.swap_remove(i);
        self.core.unsubscribe(r.subscription);
        r.recorder.end("");
        self.refresh_demand(now, out);
        Ok(())
    }

    /// A packet the core forwarded to a recording: handed to its thread. A recording whose
    /// thread is gone (it failed) stops being fed.
    pub(super) fn record(&mut self, sink: SinkId, packet: &Packet, edits: &PacketEdits) {
        let Some(i) = self.recorders.iter().position(|r| r.sink == sink) else {
            self.record_program(sink, packet, edits);
            return;
        };
        if !self.recorders[i].recorder.push(packet, edits) {
            let r = self.recorders.swap_remove(i);
            self.core.unsubscribe(r.subscription);
            r.recorder.end("");
        }
    }

    /// The track of a recording went away (unpublished, or its node left): it ends.
    pub(super) fn recording_ended(&mut self, sink: SinkId) {
        if let Some(i) = self.recorders.iter().position(|r| r.sink == sink) {
            let r = self.recorders.swap_remove(i);
            r.recorder.end("the track was unpublished");
        } else {
            self.program_track_ended(sink);
        }
    }

    /// Recorded tracks (one entry per recording), for the demand on remote tracks.
    pub(super) fn recorded_tracks(&self) -> impl Iterator<Item = TrackId> + '_ {
        self.recorders
            .iter()
            .map(|r| r.track)
            .chain(self.program_tracks())
    }
}
