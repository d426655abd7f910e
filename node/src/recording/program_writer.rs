//! The thread of a room recording, and the [`ProgramRecorder`] handle the room's media worker
//! feeds it through.
//!
//! As for a track recording (see [`super::writer`]), the worker's part per packet is one
//! serialisation and one non-blocking bounded send. Packets say which stream they belong to:
//! the program's video, or one participant's audio (a branch of the mix, created by its first
//! packet and removed when the worker says its track is gone).

use super::live::{HLS_PLAYLIST, LiveSpec, hls_dir};
use super::program::{AudioBranch, Program};
use super::video_gate::KeyframeRequests;
use super::writer::{bus_error, init, serialize};
use super::{
    Entry, RecordingError, RecordingInfo, RecordingState, Recordings, StreamInfo, now_ms, safe,
};
use gstreamer as gst;
use gstreamer::prelude::*;
use sfu_core::PacketEdits;
use std::collections::HashMap;
use std::collections::hash_map::Entry as Slot;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Messages waiting for the thread before packets are dropped (about 3 s of one video and a
/// few audio tracks).
const CHANNEL: usize = 2048;
/// How often the thread looks at the bus and updates the listed duration while idle.
const POLL: Duration = Duration::from_millis(250);
/// How long the muxer gets to finalise the file after the end.
const EOS_WAIT: Duration = Duration::from_secs(5);

enum Message {
    Video(Vec<u8>),
    /// A packet of the audio track with this branch number.
    Audio(u64, Vec<u8>),
    /// That track is gone: its branch leaves the mix.
    AudioGone(u64),
}

/// What a media worker holds for a room recording; dropping it (or [`end`](Self::end)) ends
/// the recording and finalises the file.
pub struct ProgramRecorder {
    id: Arc<str>,
    tx: SyncSender<Message>,
    recordings: Recordings,
    /// Keyframes the pipeline asks for (the worker asks the shown track's publisher).
    pub keyframes: KeyframeRequests,
    /// Packets dropped because the thread was behind.
    pub dropped: u64,
}

impl ProgramRecorder {
    pub fn id(&self) -> &str {
        &self.id
    }

    fn send(&mut self, message: Message) -> bool {
        match self.tx.try_send(message) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// A packet of the program's video (the forwarder already switched it to the speaker).
    /// False once the thread is gone (the recording failed).
    pub fn push_video(&mut self, packet: &sfu_core::Packet, edits: &PacketEdits) -> bool {
        match serialize(packet, edits) {
            Some(buf) => self.send(Message::Video(buf)),
            None => true,
        }
    }

    /// A packet of one participant's audio (`branch` numbers the track in this recording).
    pub fn push_audio(
        &mut self,
        branch: u64,
        packet: &sfu_core::Packet,
        edits: &PacketEdits,
    ) -> bool {
        match serialize(packet, edits) {
            Some(buf) => self.send(Message::Audio(branch, buf)),
            None => true,
        }
    }

    /// An audio track of the mix went away.
    pub fn audio_gone(&mut self, branch: u64) {
        // Blocking would stall the worker; a lost message leaves an idle branch, which the
        // mixer mixes as silence.
        let _ = self.send(Message::AudioGone(branch));
    }

    /// Ends the recording, saying why when it was not asked for.
    pub fn end(self, reason: &str) {
        self.recordings.update(&self.id, |i| {
            if !i.state.finished() {
                i.state = RecordingState::Ending;
                if !reason.is_empty() {
                    i.error = reason.to_owned();
                }
            }
        });
        if self.dropped > 0 {
            tracing::warn!(recording = %self.id, dropped = self.dropped, "room recording fell behind and lost packets");
        }
    }

    /// The recording could not start in the room: listed as failed with `reason`.
    pub fn fail(self, reason: &str) {
        self.recordings
            .finish(&self.id, RecordingState::Failed, reason);
    }
}

impl Recordings {
    /// Starts a room recording (see [`super::program`]) in a new file, streamed live to
    /// `streams` (RTMP URLs) and as HLS if `hls`: builds its pipeline on its own thread and
    /// waits until it runs. Listed (failed, with the reason) even if it could not start.
    pub async fn start_room(
        &self,
        room: &str,
        streams: Vec<String>,
        hls: bool,
        worker: usize,
    ) -> Result<(RecordingInfo, ProgramRecorder), RecordingError> {
        let id = format!("EG_{:012x}", rand::random::<u64>() >> 16);
        let live = LiveSpec {
            streams: streams.clone(),
            hls_dir: hls.then(|| hls_dir(&self.inner.dir, &id)),
        };
        let file = self
            .inner
            .dir
            .join(format!("{}-room-{}.webm", safe(room), id));
        let info = RecordingInfo {
            id: id.clone(),
            room: room.to_owned(),
            kind: "room",
            track: String::new(),
            codec: "video/VP8+audio/opus".into(),
            state: RecordingState::Starting,
            node: self.inner.node.to_string(),
            file: file.display().to_string(),
            duration_ms: 0,
            size_bytes: 0,
            started_ms: now_ms(),
            ended_ms: 0,
            error: String::new(),
            streams: streams
                .into_iter()
                .map(|url| StreamInfo {
                    url,
                    state: "active",
                    error: String::new(),
                })
                .collect(),
            hls: if hls {
                format!("/recordings/{id}/hls/{HLS_PLAYLIST}")
            } else {
                String::new()
            },
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
        let started = std::fs::create_dir_all(&self.inner.dir).map_err(|e| {
            RecordingError::Pipeline(format!(
                "creating the recordings directory {}: {e}",
                self.inner.dir.display()
            ))
        });
        let recorder = match started {
            Ok(()) => spawn(id.clone(), live, file, self.clone()).await,
            Err(e) => Err(e),
        };
        match recorder {
            Ok(recorder) => {
                let info = self
                    .update(&id, |i| i.state = RecordingState::Active)
                    .unwrap_or(info);
                self.webhook("egress_started", &info);
                (self.inner.notify)(&info, true);
                Ok((info, recorder))
            }
            Err(e) => {
                self.finish(&id, RecordingState::Failed, &e.to_string());
                Err(e)
            }
        }
    }
}

/// Starts the thread; resolves once its pipeline runs (or could not start).
async fn spawn(
    id: String,
    live: LiveSpec,
    file: PathBuf,
    recordings: Recordings,
) -> Result<ProgramRecorder, RecordingError> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let (tx, rx) = sync_channel::<Message>(CHANNEL);
    let keyframes = KeyframeRequests::default();
    let recorder = ProgramRecorder {
        id: Arc::from(id.as_str()),
        tx,
        recordings: recordings.clone(),
        keyframes: keyframes.clone(),
        dropped: 0,
    };
    std::thread::Builder::new()
        .name(format!("room-{}", &id[id.len().saturating_sub(6)..]))
        .spawn(move || run(id, keyframes, live, file, recordings, rx, ready_tx))
        .map_err(|e| RecordingError::Pipeline(format!("starting its thread: {e}")))?;
    match ready_rx.await {
        Ok(Ok(())) => Ok(recorder),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(RecordingError::Pipeline(
            "the recording thread ended at start".into(),
        )),
    }
}

fn run(
    id: String,
    keyframes: KeyframeRequests,
    live: LiveSpec,
    file: PathBuf,
    recordings: Recordings,
    rx: Receiver<Message>,
    ready: oneshot::Sender<Result<(), RecordingError>>,
) {
    let built = init().and_then(|()| Program::build(&file, &live, keyframes));
    let built = built.and_then(|p| {
        p.pipeline.set_state(gst::State::Playing).map_err(|_| {
            let bus = p.pipeline.bus();
            RecordingError::Pipeline(
                bus.and_then(|b| bus_error(&b))
                    .unwrap_or_else(|| format!("could not start writing {}", file.display())),
            )
        })?;
        Ok(p)
    });
    let program = match built {
        Ok(p) => p,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let Some(bus) = program.pipeline.bus() else {
        return;
    };
    let started = Instant::now();
    let mut branches: HashMap<u64, AudioBranch> = HashMap::new();
    let mut last_update = Instant::now();
    let mut failure: Option<String> = None;
    // Why it stops by itself with a finalised file (the disk is full).
    let mut stopped: Option<String> = None;
    let mut space = super::disk::SpaceWatch::new();
    let mut inspect = super::inspect::Inspect::from_env(&id);
    loop {
        let pushed = match rx.recv_timeout(POLL) {
            Ok(Message::Video(packet)) => program
                .video
                .push_buffer(gst::Buffer::from_mut_slice(packet))
                .err(),
            Ok(Message::Audio(branch, packet)) => {
                let b = match branches.entry(branch) {
                    Slot::Occupied(b) => b.into_mut(),
                    Slot::Vacant(v) => match program.add_audio() {
                        Ok(b) => {
                            tracing::debug!(recording = id, branch, "audio joins the mix");
                            v.insert(b)
                        }
                        Err(e) => {
                            failure = Some(e.to_string());
                            break;
                        }
                    },
                };
                b.src.push_buffer(gst::Buffer::from_mut_slice(packet)).err()
            }
            Ok(Message::AudioGone(branch)) => {
                if let Some(b) = branches.remove(&branch) {
                    tracing::debug!(recording = id, branch, "audio leaves the mix");
                    program.remove_audio(b);
                }
                None
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some(e) = pushed {
            failure = Some(format!("the pipeline refused data: {e:?}"));
            break;
        }
        // The placeholder picture while there is no video, live programs too. Their RTMP
        // stream lost its video in runs where the placeholder came before the first real
        // picture, until a repeated segment at the funnel no longer sent the live branch's
        // times back (`video_gate`). The stall seen later under load, with or without it,
        // was a failed RTMP destination's (`live::cut_off`, `Live::remove_stream`).
        program
            .gate
            .fill(Instant::now(), program.pipeline.current_running_time());
        if let Some(i) = inspect.as_mut() {
            i.tick(&program.pipeline);
        }
        if let Some(e) = errors(&program, &bus, &id, &recordings) {
            failure = Some(e);
            break;
        }
        if let Some(why) = space.full(&recordings) {
            tracing::warn!(recording = id, "{why}; stopping");
            stopped = Some(why);
            break;
        }
        if last_update.elapsed() >= POLL {
            last_update = Instant::now();
            let ms = started.elapsed().as_millis() as u64;
            recordings.update(&id, |i| i.duration_ms = ms);
        }
    }
    drop(rx);
    let ms = started.elapsed().as_millis() as u64;
    // Every source ends (the live silence too), so the mixer and the muxer finish the file.
    program.pipeline.send_event(gst::event::Eos::new());
    if failure.is_none() {
        let end = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(EOS_WAIT.as_millis() as u64),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        match end.as_ref().map(|m| m.view()) {
            Some(gst::MessageView::Error(e)) => failure = Some(e.error().to_string()),
            Some(_) => {}
            None => tracing::warn!(recording = id, "the muxer did not finish in time"),
        }
    }
    let _ = program.pipeline.set_state(gst::State::Null);
    recordings.update(&id, |i| i.duration_ms = ms);
    match failure.or(stopped) {
        Some(e) => recordings.finish(&id, RecordingState::Failed, &e),
        None => recordings.finish(&id, RecordingState::Complete, ""),
    }
}

/// Errors posted by the pipeline: a failed RTMP destination is taken out (listed failed with
/// its reason; the recording goes on); any other error ends the recording (returned).
fn errors(program: &Program, bus: &gst::Bus, id: &str, recordings: &Recordings) -> Option<String> {
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        let gst::MessageView::Error(e) = msg.view() else {
            continue;
        };
        let reason = match e.debug() {
            Some(d) => format!("{} ({d})", e.error()),
            None => e.error().to_string(),
        };
        let stream = program
            .live
            .as_ref()
            .zip(msg.src())
            .and_then(|(live, src)| Some((live, live.stream_of(src)?)));
        match stream {
            Some((live, index)) => {
                tracing::warn!(
                    recording = id,
                    stream = index,
                    "live stream failed: {reason}"
                );
                live.remove_stream(&program.pipeline, index);
                recordings.update(id, |i| {
                    if let Some(s) = i.streams.get_mut(index)
                        && s.state == "active"
                    {
                        s.state = "failed";
                        s.error = reason.clone();
                    }
                });
            }
            None => return Some(reason),
        }
    }
    None
}
