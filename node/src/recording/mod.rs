//! Track recording: a published track written to a file as it arrives, without decoding.
//!
//! A recording is an internal subscriber of the track on the node that records it. The room's
//! home worker subscribes it in the forwarding core like any subscriber (so a track published
//! on another node is pulled over the relay link as for a remote subscriber, and video starts
//! at a keyframe the subscription asks for); the worker hands each forwarded packet to the
//! recording's own thread with one bounded, non-blocking channel send, and never waits for
//! it. That thread runs a GStreamer pipeline (appsrc → rtpjitterbuffer → depayloader → muxer →
//! filesink), so the container is written by a well-kept library:
//!
//! | codec | container |
//! |---|---|
//! | Opus, VP8, VP9 | WebM |
//! | AV1 | Matroska (needs `rtpav1depay`, from gst-plugins-rs) |
//! | H.264 | MP4, fragmented (needs `h264parse`, from gst-plugins-bad) |
//!
//! Matroska and WebM are written cluster by cluster and MP4 fragment by fragment, so a node
//! killed mid-recording leaves a file that plays up to its last second or so; a recording
//! stopped properly (by the API, when its track ends, or when the node drains or stops) is
//! finalised with its duration and index.
//!
//! - [`Recordings`] (this file): the node's recordings, their state, and the webhooks
//!   `egress_started` / `egress_ended`.
//! - [`disk`]: free space, checked before a recording starts and while it runs.
//! - [`pipeline`]: which GStreamer elements record which codec.
//! - [`writer`]: the recording thread, and the handle a media worker feeds.
//! - [`upload`]: finished files uploaded to S3-compatible storage, when configured.
//! - [`program`], [`program_writer`]: room recordings, one file for the whole room (the
//!   active speaker's video, switched by the forwarder without decoding, and every
//!   participant's audio mixed).
//! - [`inspect`]: counters and graphs of a running room recording's pipeline, for
//!   diagnosing stalls (off unless `SFU_RECORDING_INSPECT` is set).

pub mod disk;
pub mod inspect;
pub mod live;
pub mod pipeline;
pub mod program;
pub mod program_writer;
pub mod upload;
pub mod video_gate;
pub mod writer;

use crate::webhook::{EgressRef, Event, Webhooks};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

pub use program_writer::ProgramRecorder;
pub use writer::Recorder;

/// How long a stop waits for the file to be finalised before it answers anyway.
const FINALISE_WAIT: Duration = Duration::from_secs(10);

/// Where a recording is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    /// The pipeline is being built.
    Starting,
    /// Packets are being written.
    Active,
    /// Stopped; the file is being finalised.
    Ending,
    /// Finalised.
    Complete,
    /// Failed: see `error`.
    Failed,
}

impl RecordingState {
    pub fn finished(self) -> bool {
        matches!(self, Self::Complete | Self::Failed)
    }
}

/// A recording as the admin API lists it.
#[derive(Clone, Debug, Serialize)]
pub struct RecordingInfo {
    pub id: String,
    pub room: String,
    /// `track`, or `room` (the speaker's video and every participant's audio, mixed).
    pub kind: &'static str,
    pub track: String,
    /// The track's MIME type (`video/VP8`...).
    pub codec: String,
    pub state: RecordingState,
    pub node: String,
    pub file: String,
    /// Media time written so far (from the packets' RTP timestamps), in milliseconds.
    pub duration_ms: u64,
    pub size_bytes: u64,
    pub started_ms: u64,
    /// 0 while it runs.
    pub ended_ms: u64,
    /// Why it failed, or why it ended if not by request (the track was unpublished...).
    pub error: String,
    /// Room recordings: the RTMP destinations it streams to, each with its own state.
    pub streams: Vec<StreamInfo>,
    /// Room recordings with HLS: the playlist's path on this node's HTTP server.
    pub hls: String,
    /// With `[recording.s3]`: the uploaded file's URL, once uploaded.
    pub url: String,
    /// With `[recording.s3]`: `uploading`, `uploaded` or `failed` (see `upload_error`) once
    /// the file is finalised; empty before, and without S3.
    pub upload: &'static str,
    pub upload_error: String,
}

/// One RTMP destination of a room recording.
#[derive(Clone, Debug, Serialize)]
pub struct StreamInfo {
    pub url: String,
    /// `active`, `failed` (see `error`; the recording goes on without it) or `ended`.
    pub state: &'static str,
    pub error: String,
}

/// Why a recording could not start.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The track's codec has no depayloader and container here.
    #[error("{0}")]
    Unsupported(String),
    /// GStreamer could not build or start the pipeline (a missing plugin, an unwritable
    /// directory...).
    #[error("{0}")]
    Pipeline(String),
}

/// What a new recording is of.
#[derive(Clone, Debug)]
pub struct TrackSpec {
    pub room: String,
    pub track: String,
    pub codec_mime: String,
    pub clock_rate: u32,
}

struct Entry {
    info: RecordingInfo,
    /// Turns true once the recording is finished (complete or failed).
    done: watch::Sender<bool>,
    /// The worker that feeds it (a stop goes there).
    worker: usize,
}

/// The recordings of this node (see the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct Recordings {
    inner: Arc<Inner>,
}

/// Told when a recording starts (`true`) or ends: the media plane passes it on to the room's
/// participants on every worker.
pub type Notify = Box<dyn Fn(&RecordingInfo, bool) + Send + Sync>;

struct Inner {
    dir: PathBuf,
    /// Free bytes the recordings' filesystem must keep (see [`disk`]).
    min_free: AtomicU64,
    /// Where finished files are uploaded, and the runtime that does it (see [`upload`]).
    uploader: Mutex<Option<(upload::Uploader, tokio::runtime::Handle)>>,
    node: Arc<str>,
    webhooks: Webhooks,
    notify: Notify,
    entries: Mutex<HashMap<String, Entry>>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A file name part made of safe characters only: a room name cannot leave the directory.
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

impl Recordings {
    /// Recordings written under `dir` (created when the first one starts).
    pub fn new(dir: PathBuf, node: Arc<str>, webhooks: Webhooks, notify: Notify) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir,
                min_free: AtomicU64::new(0),
                uploader: Mutex::default(),
                node,
                webhooks,
                notify,
                entries: Mutex::default(),
            }),
        }
    }

    /// Free space the recordings' filesystem must keep: new recordings are refused below it,
    /// and running ones stop (0: not checked).
    pub fn set_min_free_mb(&self, mb: u64) {
        self.inner
            .min_free
            .store(mb.saturating_mul(1024 * 1024), Ordering::Relaxed);
    }

    /// Uploads every file finalised from now on (on the current tokio runtime).
    pub fn set_uploader(&self, uploader: upload::Uploader) {
        let handle = tokio::runtime::Handle::current();
        *self
            .inner
            .uploader
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((uploader, handle));
    }

    /// `Err` with the reason ("disk full: ...") if the recordings' filesystem has less free
    /// space than the minimum.
    pub fn check_space(&self) -> Result<(), String> {
        disk::check(&self.inner.dir, self.inner.min_free.load(Ordering::Relaxed))
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves plain data behind: still usable.
        self.inner.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts writing a track to a new file: builds the pipeline on the recording's thread and
    /// waits until it runs. The returned [`Recorder`] is what the media worker feeds; the
    /// recording is listed (as failed, with the reason) even if it could not start.
    pub async fn start(
        &self,
        spec: TrackSpec,
        worker: usize,
    ) -> Result<(RecordingInfo, Recorder), RecordingError> {
        let id = format!("EG_{:012x}", rand::random::<u64>() >> 16);
        let started_ms = now_ms();
        let plan = pipeline::plan(&spec.codec_mime, spec.clock_rate);
        let ext = plan.as_ref().map(|p| p.extension).unwrap_or("mkv");
        let file = self.inner.dir.join(format!(
            "{}-{}-{}.{ext}",
            safe(&spec.room),
            safe(&spec.track),
            id
        ));
        let info = RecordingInfo {
            id: id.clone(),
            room: spec.room.clone(),
            kind: "track",
            track: spec.track.clone(),
            codec: spec.codec_mime.clone(),
            state: RecordingState::Starting,
            node: self.inner.node.to_string(),
            file: file.display().to_string(),
            duration_ms: 0,
            size_bytes: 0,
            started_ms,
            ended_ms: 0,
            error: String::new(),
            streams: Vec::new(),
            hls: String::new(),
            url: String::new(),
            upload: "",
            upload_error: String::new(),
        };
        let (done, _) = watch::channel(false);
        self.entries().insert(
            id.clone(),
            Entry {
                info: info.clone(),
                done,
                worker,
            },
        );
        let started = match plan {
            Ok(plan) => std::fs::create_dir_all(&self.inner.dir)
                .map_err(|e| {
                    RecordingError::Pipeline(format!(
                        "creating the recordings directory {}: {e}",
                        self.inner.dir.display()
                    ))
                })
                .map(|()| writer::spawn(id.clone(), plan, file, self.clone())),
            Err(e) => Err(e),
        };
        let recorder = match started {
            Ok(pending) => pending.await,
            Err(e) => Err(e),
        };
        match recorder {
            Ok(recorder) => {
                let info = self.update(&id, |i| i.state = RecordingState::Active);
                if let Some(info) = &info {
                    self.webhook("egress_started", info);
                    (self.inner.notify)(info, true);
                }
                Ok((info.unwrap_or_else(|| info_fallback(&id)), recorder))
            }
            Err(e) => {
                self.finish(&id, RecordingState::Failed, &e.to_string());
                Err(e)
            }
        }
    }

    /// Changes a recording's listed state; returns it changed.
    pub(crate) fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut RecordingInfo),
    ) -> Option<RecordingInfo> {
        let mut entries = self.entries();
        let e = entries.get_mut(id)?;
        change(&mut e.info);
        Some(e.info.clone())
    }

    /// A recording is finished: its final state, sizes and the `egress_ended` webhook (after
    /// its upload, if the file is uploaded). A reason given earlier (why it ended) is kept
    /// unless this one says more.
    pub(crate) fn finish(&self, id: &str, state: RecordingState, error: &str) {
        let uploader = self
            .inner
            .uploader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let info = {
            let mut entries = self.entries();
            let Some(e) = entries.get_mut(id) else { return };
            if e.info.state.finished() {
                return;
            }
            e.info.state = state;
            e.info.ended_ms = now_ms();
            for s in &mut e.info.streams {
                if s.state == "active" {
                    s.state = "ended";
                }
            }
            if !error.is_empty() {
                e.info.error = error.to_owned();
            }
            if let Ok(m) = std::fs::metadata(&e.info.file) {
                e.info.size_bytes = m.len();
            }
            if uploader.is_some() && e.info.size_bytes > 0 {
                e.info.upload = "uploading";
            }
            // Kept even with no one waiting now: a later stop finds it finished.
            e.done.send_replace(true);
            e.info.clone()
        };
        tracing::info!(
            recording = id,
            state = ?info.state,
            file = info.file,
            duration_ms = info.duration_ms,
            size = info.size_bytes,
            error = info.error,
            "recording finished"
        );
        (self.inner.notify)(&info, false);
        match uploader {
            Some((uploader, runtime)) if info.upload == "uploading" => {
                let me = self.clone();
                runtime.spawn(async move { me.upload(uploader, info).await });
            }
            _ => self.webhook("egress_ended", &info),
        }
    }

    /// Uploads a finished recording's file, then sends its `egress_ended` webhook with the
    /// object's URL (or why the upload failed). The local file is kept either way.
    async fn upload(self, uploader: upload::Uploader, info: RecordingInfo) {
        let file = std::path::PathBuf::from(&info.file);
        let result = uploader.upload(&file).await;
        match &result {
            Ok(url) => tracing::info!(recording = info.id, url, "recording uploaded"),
            Err(e) => tracing::warn!(recording = info.id, "recording not uploaded: {e}"),
        }
        let info = self
            .update(&info.id, |i| match result {
                Ok(url) => {
                    i.upload = "uploaded";
                    i.url = url;
                }
                Err(e) => {
                    i.upload = "failed";
                    i.upload_error = e.to_string();
                }
            })
            .unwrap_or(info);
        self.webhook("egress_ended", &info);
    }

    fn webhook(&self, event: &'static str, info: &RecordingInfo) {
        let mut e = Event::new(event, &info.node, &info.room);
        e.egress = Some(EgressRef::from(info));
        self.inner.webhooks.send(e);
    }

    /// Every recording of this node, oldest first.
    pub fn list(&self) -> Vec<RecordingInfo> {
        let mut all: Vec<RecordingInfo> = self
            .entries()
            .values()
            .map(|e| {
                let mut info = e.info.clone();
                if !info.state.finished()
                    && let Ok(m) = std::fs::metadata(&info.file)
                {
                    info.size_bytes = m.len();
                }
                info
            })
            .collect();
        all.sort_by(|a, b| (a.started_ms, &a.id).cmp(&(b.started_ms, &b.id)));
        all
    }

    /// The directory recordings are written to.
    pub fn dir(&self) -> &std::path::Path {
        &self.inner.dir
    }

    pub fn get(&self, id: &str) -> Option<RecordingInfo> {
        self.entries().get(id).map(|e| e.info.clone())
    }

    /// The room and worker of a running recording.
    pub fn route(&self, id: &str) -> Option<(String, usize)> {
        self.entries()
            .get(id)
            .map(|e| (e.info.room.clone(), e.worker))
    }

    /// Waits until a recording is finished (at most [`FINALISE_WAIT`]); returns it as it is.
    pub async fn finished(&self, id: &str) -> Option<RecordingInfo> {
        let rx = self.entries().get(id).map(|e| e.done.subscribe());
        if let Some(mut rx) = rx {
            let _ = tokio::time::timeout(FINALISE_WAIT, rx.wait_for(|d| *d)).await;
        }
        self.get(id)
    }

    /// Ids of the recordings still running.
    pub fn running(&self) -> Vec<String> {
        self.entries()
            .values()
            .filter(|e| !e.info.state.finished())
            .map(|e| e.info.id.clone())
            .collect()
    }
}

fn info_fallback(id: &str) -> RecordingInfo {
    RecordingInfo {
        id: id.to_owned(),
        room: String::new(),
        kind: "track",
        track: String::new(),
        codec: String::new(),
        state: RecordingState::Active,
        node: String::new(),
        file: String::new(),
        duration_ms: 0,
        size_bytes: 0,
        started_ms: 0,
        ended_ms: 0,
        error: String::new(),
        streams: Vec::new(),
        hls: String::new(),
        url: String::new(),
        upload: "",
        upload_error: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_stay_in_the_directory() {
        assert_eq!(safe("../etc/passwd"), "___etc_passwd");
        assert_eq!(safe("room-1_a"), "room-1_a");
    }
}
