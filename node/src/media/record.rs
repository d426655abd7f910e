//! Recordings on the media plane: which worker feeds a recording (the room's home worker,
//! which also pulls the room's tracks from other nodes), the commands it is given, and who
//! is told that a recording runs.
//!
//! Participants on every node are told when a recording of their room starts and ends, and
//! a participant who joins while one runs is told at its join. The recording node tells its
//! own workers directly and writes a registry key per running recording,
//! `rooms/{room}/recordings/{id}`, bound to its lease; other nodes tell their participants
//! when the key appears and goes, and a joining participant is told the keys of its room.
//! The registry rather than a relay frame to the room's other nodes: a node that opens the
//! room later (its first participant joins after the recording started) has nothing to ask a
//! frame from, while the registry holds the state; and a recording node that dies takes its
//! keys with it, so everyone is told its recordings ended.

use super::plane::MediaPlane;
use super::worker::WorkerCore;
use super::{Command, RecordCommand};
use crate::recording::{RecordingInfo, RecordingState, Recordings, TrackSpec};
use crate::signaling::protocol::{ErrorCode, SignalError};
use sfu_control::{ClusterEvent, Membership};
use std::time::Instant;

impl MediaPlane {
    /// Records a track of a room into a new file on this node; answers once it runs. The
    /// recording is listed (failed, with the reason) if it could not start.
    pub async fn record_track(&self, spec: TrackSpec) -> Result<RecordingInfo, SignalError> {
        let worker = self.worker_for(&spec.room);
        let (room, track) = (spec.room.clone(), spec.track.clone());
        let (info, recorder) =
            self.recordings()
                .start(spec, worker)
                .await
                .map_err(|e| match e {
                    crate::recording::RecordingError::Unsupported(m) => {
                        SignalError::new(ErrorCode::BadRequest, m)
                    }
                    crate::recording::RecordingError::Pipeline(m) => {
                        SignalError::new(ErrorCode::Internal, m)
                    }
                })?;
        self.request_to(worker, |reply| {
            Command::Record(RecordCommand::Start {
                room,
                track,
                recorder,
                reply,
            })
        })
        .await?;
        Ok(self.recordings().get(&info.id).unwrap_or(info))
    }

    /// Records a room into a new file on this node (see [`crate::recording::program`]),
    /// streamed live to `streams` (RTMP URLs) and as HLS if `hls`. Answers once it runs.
    pub async fn record_room(
        &self,
        room: &str,
        streams: Vec<String>,
        hls: bool,
    ) -> Result<RecordingInfo, SignalError> {
        let worker = self.worker_for(room);
        let (info, recorder) = self
            .recordings()
            .start_room(room, streams, hls, worker)
            .await
            .map_err(|e| SignalError::new(ErrorCode::Internal, e.to_string()))?;
        let room = room.to_owned();
        self.request_to(worker, |reply| {
            Command::Record(RecordCommand::StartRoom {
                room,
                recorder,
                reply,
            })
        })
        .await?;
        Ok(self.recordings().get(&info.id).unwrap_or(info))
    }

    /// Stops a recording of this node and waits until its file is finalised.
    pub async fn stop_recording(&self, id: &str) -> Result<RecordingInfo, SignalError> {
        let recordings = self.recordings();
        let (room, worker) = recordings.route(id).ok_or_else(|| {
            SignalError::new(
                ErrorCode::NotFound,
                format!("no recording {id} on this node"),
            )
        })?;
        if recordings.get(id).is_some_and(|i| !i.state.finished()) {
            // Not found there: it ended by itself meanwhile (its track went away).
            let _ = self
                .request_to(worker, |reply| {
                    Command::Record(RecordCommand::Stop {
                        room,
                        id: id.to_owned(),
                        reply,
                    })
                })
                .await;
        }
        recordings.finished(id).await.ok_or_else(|| {
            SignalError::new(
                ErrorCode::NotFound,
                format!("no recording {id} on this node"),
            )
        })
    }

    /// Stops every running recording (a node draining or stopping) and waits for their files.
    pub async fn stop_all_recordings(&self) {
        let running = self.recordings().running();
        if !running.is_empty() {
            tracing::info!(count = running.len(), "stopping recordings");
        }
        let stops = running.iter().map(|id| self.stop_recording(id));
        futures_util::future::join_all(stops).await;
    }

    pub fn recordings(&self) -> &Recordings {
        &self.recordings
    }

    /// A recording started or ended on another node (the registry says so): the room's
    /// participants on this node are told. This node's own are told when they start and end
    /// (see [`crate::recording::Notify`]), not again from the registry.
    pub fn recording_event(&self, me: &str, e: &ClusterEvent) {
        let (room, record, active) = match e {
            ClusterEvent::Recording { room, record } => (room, record, true),
            ClusterEvent::RecordingGone { room, record } => (room, record, false),
            _ => return,
        };
        if record.node == me {
            return;
        }
        for i in 0..self.worker_count() {
            let _ = self.send_to(
                i,
                Command::Record(RecordCommand::Notice {
                    room: room.clone(),
                    id: record.id.clone(),
                    kind: kind_name(&record.kind),
                    active,
                }),
            );
        }
    }

    /// The recordings of `room` running anywhere in the cluster: the registry's, and this
    /// node's own (whose key may not have reached the registry yet).
    pub fn running_recordings(
        &self,
        room: &str,
        membership: &Membership,
    ) -> Vec<(String, &'static str)> {
        let mut running: Vec<(String, &'static str)> = membership
            .recordings(room)
            .into_iter()
            .map(|r| (r.id, kind_name(&r.kind)))
            .collect();
        for r in self.recordings().list() {
            if r.room == room
                && r.state == RecordingState::Active
                && !running.iter().any(|(id, _)| *id == r.id)
            {
                running.push((r.id, r.kind));
            }
        }
        running
    }
}

/// A recording's kind as the signaling protocol names it.
fn kind_name(kind: &str) -> &'static str {
    if kind == "room" { "room" } else { "track" }
}

impl WorkerCore {
    pub(super) fn handle_record(&mut self, now: Instant, command: RecordCommand) {
        match command {
            RecordCommand::Start {
                room,
                track,
                recorder,
                reply,
            } => {
                // Opened here if no participant of this node is in it: what the rest of the
                // cluster has in the room comes from the registry.
                let Some(idx) = self.room_index(now, &room, true) else {
                    recorder.fail("the room could not be opened on this node");
                    let _ = reply.send(Err(SignalError::new(
                        ErrorCode::Internal,
                        "the room could not be opened on this node",
                    )));
                    return;
                };
                let result = self.rooms[idx].start_recording(now, &track, recorder, &mut self.out);
                self.after_room(now, idx);
                let _ = reply.send(result);
            }
            RecordCommand::StartRoom {
                room,
                recorder,
                reply,
            } => {
                let Some(idx) = self.room_index(now, &room, true) else {
                    let why = "the room could not be opened on this node";
                    let _ = reply.send(Err(super::room::program::refuse(recorder, why)));
                    return;
                };
                let result = self.rooms[idx].start_program(now, recorder, &mut self.out);
                self.after_room(now, idx);
                let _ = reply.send(result);
            }
            RecordCommand::Notice {
                room,
                id,
                kind,
                active,
            } => {
                if let Some(idx) = self.room_index(now, &room, false) {
                    self.rooms[idx].tell_recording(&id, kind, active);
                }
            }
            RecordCommand::Stop { room, id, reply } => {
                let result = match self.room_index(now, &room, false) {
                    Some(idx) => {
                        let r = self.rooms[idx].stop_recording(now, &id, &mut self.out);
                        self.after_room(now, idx);
                        r
                    }
                    None => Err(SignalError::new(
                        ErrorCode::NotFound,
                        format!("no recording {id}"),
                    )),
                };
                let _ = reply.send(result);
            }
        }
    }
}
