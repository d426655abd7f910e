//! Room recordings in a room: the program (see [`crate::recording::program`]) is fed by
//! subscriptions of the forwarding core whose sinks are a [`ProgramRecorder`]:
//!
//! - one video subscription, moved by [`LocalRoom::steer_programs`] to the track to show: a
//!   screen share first, else the camera of the best-ranked speaker. The forwarder switches
//!   at the new track's next keyframe (asked for at once) with continuous sequence numbers,
//!   timestamps and picture ids, so the file gets one VP8 stream and nothing is decoded;
//! - one subscription per Opus track of the room, each a branch of the recording's mixer.
//!
//! Steering runs when the speaker ranking changes and once a second (tracks published or
//! unpublished meanwhile); tracks published on other nodes are pulled like for any local
//! subscriber ([`LocalRoom::refresh_demand`] counts them).

use crate::media::egress::Egress;
use crate::media::room::LocalRoom;
use crate::media::room::record::{LossWatch, Recordings};
use crate::recording::ProgramRecorder;
use crate::recording::program::{AUDIO_PT, VIDEO_PT};
use crate::signaling::protocol::{ErrorCode, SignalError, TrackSourceName};
use sfu_core::{
    MediaKind, Packet, PacketEdits, SinkId, SubscriptionId, SubscriptionSettings, TrackId,
};
use std::time::{Duration, Instant};

/// The video stays on a track at least this long (unless the track goes): each switch costs
/// a keyframe from the new speaker, and a cough must not flip the picture.
const MIN_HOLD: Duration = Duration::from_millis(1500);

/// One subscription feeding a program.
struct Feed {
    sink: SinkId,
    subscription: SubscriptionId,
    track: TrackId,
    loss: LossWatch,
}

/// A room recording fed by this room.
pub(super) struct RoomProgram {
    recorder: ProgramRecorder,
    video: Option<Feed>,
    /// When the video last switched.
    switched_at: Option<Instant>,
    audio: Vec<Feed>,
}

fn codec_is(p: &crate::media::room::Published, codec: &str) -> bool {
    p.rtc_codec
        .mime_type
        .rsplit('/')
        .next()
        .is_some_and(|c| c.eq_ignore_ascii_case(codec))
}

impl LocalRoom {
    /// Starts feeding a room recording: every audio track now, the video to show.
    pub fn start_program(
        &mut self,
        now: Instant,
        recorder: ProgramRecorder,
        out: &mut Egress,
    ) -> Result<(), SignalError> {
        tracing::info!(room = %self.name, recording = recorder.id(), "room recording started");
        self.recordings.programs.push(RoomProgram {
            recorder,
            video: None,
            switched_at: None,
            audio: Vec::new(),
        });
        self.steer_programs(now, out);
        Ok(())
    }

    /// Subscribes a program's sink to a track, pinned to its best layer.
    fn subscribe_program(
        &mut self,
        now: Instant,
        track: TrackId,
        sink: SinkId,
        payload_type: u8,
    ) -> Option<SubscriptionId> {
        let top = self.publications.get(&track)?.rids.len().max(1) - 1;
        let params = sfu_core::SubscriptionParams {
            ssrc: rand::random(),
            payload_type,
            max_layer: top,
            rtx: None,
            red_payload_type: None,
        };
        let subscription = self
            .core
            .subscribe(now, track, sink, params)
            .map_err(|e| tracing::debug!(room = %self.name, "room recording: {e}"))
            .ok()?;
        self.pin_best(now, subscription, top);
        Some(subscription)
    }

    fn pin_best(&mut self, now: Instant, subscription: SubscriptionId, top: usize) {
        let pinned = SubscriptionSettings {
            max_layer: Some(top),
            pinned: true,
        };
        if let Err(e) = self.core.update_subscription(now, subscription, pinned) {
            tracing::debug!(room = %self.name, "room recording subscription: {e}");
        }
    }

    /// The video track a room recording should show: a screen share, else the camera of the
    /// best-ranked speaker that has one, else what it shows now, else any.
    /// `except` is a track about to go.
    fn program_video_choice(
        &self,
        current: Option<TrackId>,
        except: Option<TrackId>,
    ) -> Option<TrackId> {
        let videos: Vec<&crate::media::room::Published> = {
            let mut v: Vec<_> = self
                .publications
                .iter()
                .filter(|t| t.kind == MediaKind::Video && codec_is(t, "VP8"))
                .filter(|t| Some(t.id) != except)
                .filter(|t| self.core.track(t.id).is_some())
                .collect();
            // A stable order (by id) when nothing else decides.
            v.sort_by_key(|t| t.id.0);
            v
        };
        if let Some(screen) = videos
            .iter()
            .find(|t| t.source == TrackSourceName::ScreenShare)
        {
            return Some(screen.id);
        }
        let speaker = self
            .publications
            .iter()
            .filter(|t| t.kind == MediaKind::Audio)
            .filter_map(|t| Some((self.core.speaker_rank(t.id)?, &t.owner)))
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, owner)| owner);
        if let Some(owner) = speaker
            && let Some(camera) = videos.iter().find(|t| &t.owner == owner)
        {
            return Some(camera.id);
        }
        current
            .filter(|c| videos.iter().any(|t| t.id == *c))
            .or_else(|| videos.first().map(|t| t.id))
    }

    /// Brings every room recording in line with the room: its video on the track to show,
    /// one audio branch per Opus track.
    pub(super) fn steer_programs(&mut self, now: Instant, out: &mut Egress) {
        if self.recordings.programs.is_empty() {
            return;
        }
        let audio_tracks: Vec<TrackId> = self
            .publications
            .iter()
            .filter(|t| t.kind == MediaKind::Audio && codec_is(t, "opus"))
            .filter(|t| self.core.track(t.id).is_some())
            .map(|t| t.id)
            .collect();
        let mut changed = false;
        for i in 0..self.recordings.programs.len() {
            // Audio: tracks gone leave the mix, new ones join.
            let mut p = std::mem::take(&mut self.recordings.programs[i].audio);
            p.retain(|f| {
                let keep = audio_tracks.contains(&f.track);
                if !keep {
                    self.core.unsubscribe(f.subscription);
                    self.recordings.programs[i].recorder.audio_gone(f.sink.0);
                    changed = true;
                }
                keep
            });
            for track in &audio_tracks {
                if p.iter().any(|f| f.track == *track) {
                    continue;
                }
                let sink = self.recordings.new_sink();
                if let Some(subscription) = self.subscribe_program(now, *track, sink, AUDIO_PT) {
                    p.push(Feed {
                        sink,
                        subscription,
                        track: *track,
                        loss: LossWatch::default(),
                    });
                    changed = true;
                }
            }
            self.recordings.programs[i].audio = p;

            // Video: to the track to show, not more often than MIN_HOLD.
            let current = self.recordings.programs[i].video.as_ref().map(|f| f.track);
            let held = self.recordings.programs[i]
                .switched_at
                .is_some_and(|t| now.saturating_duration_since(t) < MIN_HOLD);
            if held && current.is_some_and(|c| self.core.track(c).is_some()) {
                continue;
            }
            let Some(target) = self.program_video_choice(current, None) else {
                continue;
            };
            if current == Some(target) {
                continue;
            }
            let top = self
                .publications
                .get(&target)
                .map_or(0, |t| t.rids.len().max(1) - 1);
            let moved = match &self.recordings.programs[i].video {
                Some(f) => match self.core.move_subscription(now, f.subscription, target) {
                    Ok(()) => {
                        let subscription = f.subscription;
                        self.pin_best(now, subscription, top);
                        true
                    }
                    Err(e) => {
                        tracing::debug!(room = %self.name, "room recording: {e}");
                        self.core.unsubscribe(f.subscription);
                        self.recordings.programs[i].video = None;
                        false
                    }
                },
                None => false,
            };
            if moved {
                if let Some(f) = &mut self.recordings.programs[i].video {
                    f.track = target;
                }
            } else {
                let sink = self.recordings.new_sink();
                if let Some(subscription) = self.subscribe_program(now, target, sink, VIDEO_PT) {
                    self.recordings.programs[i].video = Some(Feed {
                        sink,
                        subscription,
                        track: target,
                        loss: LossWatch::default(),
                    });
                }
            }
            tracing::debug!(room = %self.name, recording = self.recordings.programs[i].recorder.id(), track = %target, "room recording shows another track");
            self.recordings.programs[i].switched_at = Some(now);
            changed = true;
        }
        if changed {
            self.refresh_demand(now, out);
        }
    }

    /// A track is about to be unpublished: room recordings showing it move to another now,
    /// while their subscription still exists, so the file's video stream goes on with
    /// continuous sequence numbers and timestamps (a new subscription would start another).
    pub(super) fn release_program_track(&mut self, now: Instant, track: TrackId) {
        for i in 0..self.recordings.programs.len() {
            let Some(f) = &self.recordings.programs[i].video else {
                continue;
            };
            if f.track != track {
                continue;
            }
            let subscription = f.subscription;
            let Some(target) = self.program_video_choice(Some(track), Some(track)) else {
                continue;
            };
            if self
                .core
                .move_subscription(now, subscription, target)
                .is_ok()
            {
                let top = self
                    .publications
                    .get(&target)
                    .map_or(0, |t| t.rids.len().max(1) - 1);
                self.pin_best(now, subscription, top);
                if let Some(f) = &mut self.recordings.programs[i].video {
                    f.track = target;
                }
                self.recordings.programs[i].switched_at = Some(now);
            }
        }
    }

    /// Stops a room recording fed here; false if there is none with this id.
    pub(super) fn stop_program(&mut self, now: Instant, id: &str, out: &mut Egress) -> bool {
        let Some(i) = self
            .recordings
            .programs
            .iter()
            .position(|p| p.recorder.id() == id)
        else {
            return false;
        };
        let p = self.recordings.programs.swap_remove(i);
        self.end_program(p, "");
        self.refresh_demand(now, out);
        true
    }

    fn end_program(&mut self, p: RoomProgram, reason: &str) {
        for f in p.video.iter().chain(&p.audio) {
            self.core.unsubscribe(f.subscription);
        }
        p.recorder.end(reason);
    }

    /// A packet the core forwarded to a sink of a room recording. True if it was one.
    pub(super) fn record_program(
        &mut self,
        now: Instant,
        sink: SinkId,
        packet: &Packet,
        edits: &PacketEdits,
    ) -> bool {
        let seq = packet.header.sequence_number;
        for (i, p) in self.recordings.programs.iter_mut().enumerate() {
            let (alive, loss) = if let Some(f) = p.video.as_mut().filter(|f| f.sink == sink) {
                // A gap, or a keyframe the pipeline asked for (its depayloader, a live
                // output's decoder, the picture after a placeholder).
                let loss = match f.loss.on_packet(now, seq, true) {
                    None if p.recorder.keyframes.take() => f.loss.keyframe_wanted(now),
                    loss => loss,
                };
                let loss = loss.map(|l| (f.subscription, l));
                (p.recorder.push_video(packet, edits), loss)
            } else if let Some(f) = p.audio.iter_mut().find(|f| f.sink == sink) {
                let loss = f
                    .loss
                    .on_packet(now, seq, false)
                    .map(|l| (f.subscription, l));
                (p.recorder.push_audio(sink.0, packet, edits), loss)
            } else {
                continue;
            };
            if let Some((subscription, loss)) = loss {
                self.repair(now, subscription, loss);
            }
            if !alive {
                // Its thread is gone (the recording failed): it stops being fed.
                let p = self.recordings.programs.swap_remove(i);
                self.end_program(p, "");
            }
            return true;
        }
        false
    }

    /// A track feeding a room recording went away: its branch leaves the mix, or the video
    /// waits for the next steering. True if the sink was one of a room recording.
    pub(super) fn program_track_ended(&mut self, sink: SinkId) -> bool {
        for p in &mut self.recordings.programs {
            if p.video.as_ref().is_some_and(|f| f.sink == sink) {
                p.video = None;
                p.switched_at = None;
                return true;
            }
            if let Some(j) = p.audio.iter().position(|f| f.sink == sink) {
                p.audio.swap_remove(j);
                p.recorder.audio_gone(sink.0);
                return true;
            }
        }
        false
    }
}

impl LocalRoom {
    /// Tells the room's participants here that a recording started or ended (every worker
    /// of the recording node is told; see [`crate::recording::Notify`]).
    pub(in crate::media) fn tell_recording(&self, id: &str, kind: &'static str, active: bool) {
        self.broadcast(
            "",
            &crate::signaling::protocol::ServerMessage::Recording {
                id: id.to_owned(),
                kind,
                active,
            },
        );
    }
}

/// A room recording that cannot start in this room.
pub(in crate::media) fn refuse(recorder: ProgramRecorder, why: &str) -> SignalError {
    recorder.fail(why);
    SignalError::new(ErrorCode::Internal, why)
}

impl Recordings {
    /// Tracks fed to room recordings, for the demand on remote tracks.
    pub(super) fn program_tracks(&self) -> impl Iterator<Item = TrackId> + '_ {
        self.programs
            .iter()
            .flat_map(|p| p.video.iter().chain(&p.audio).map(|f| f.track))
    }
}
