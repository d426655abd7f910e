//! The recording thread, and the [`Recorder`] handle a media worker feeds it through.
//!
//! The worker's part per packet is one serialisation of the forwarded packet into a buffer the
//! thread then owns, and one `try_send` on a bounded channel: it never blocks and never waits
//! for GStreamer. A full channel (a stuck disk) drops the packet and counts it. GStreamer's
//! own threads (the appsrc's, the jitter buffer's) take it from there.

use super::pipeline::{self, Plan};
use super::video_gate::KeyframeRequests;
use super::{RecordingError, RecordingState, Recordings};
use gstreamer as gst;
use gstreamer::prelude::*;
use rtc::shared::marshal::{Marshal, MarshalSize};
use sfu_core::PacketEdits;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Packets waiting for the recording thread before new ones are dropped (about 4 s of video).
const CHANNEL: usize = 1024;
/// How often the thread looks at the bus and updates the listed duration while idle.
const POLL: Duration = Duration::from_millis(250);
/// How long the muxer gets to finalise the file after the last packet.
const EOS_WAIT: Duration = Duration::from_secs(5);

/// What a media worker holds for a recording: feed it with [`Recorder::push`]; dropping it
/// ends the recording (the file is finalised).
pub struct Recorder {
    id: Arc<str>,
    tx: SyncSender<Vec<u8>>,
    recordings: Recordings,
    /// The payload type its subscription is given.
    pub payload_type: u8,
    /// Keyframes the pipeline asks for (its depayloader after a loss): the worker asks the
    /// publisher.
    pub keyframes: KeyframeRequests,
    /// Packets dropped because the recording thread was behind.
    pub dropped: u64,
}

impl Recorder {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Hands one forwarded packet (with the subscriber's edits applied) to the recording
    /// thread. False once that thread is gone (the recording failed): drop the recorder.
    pub fn push(&mut self, packet: &sfu_core::Packet, edits: &PacketEdits) -> bool {
        let Some(buf) = serialize(packet, edits) else {
            return true;
        };
        match self.tx.try_send(buf) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// The recording could not start: it is listed as failed with `reason`.
    pub fn fail(self, reason: &str) {
        self.recordings
            .finish(&self.id, RecordingState::Failed, reason);
    }

    /// Ends the recording, saying why when it was not asked for (the track went away).
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
            tracing::warn!(recording = %self.id, dropped = self.dropped, "recording fell behind and lost packets");
        }
        // Dropping the sender tells the thread to finish.
    }
}

/// A forwarded packet as the subscriber would get it (edits applied), in a buffer of its own.
pub(super) fn serialize(packet: &sfu_core::Packet, edits: &PacketEdits) -> Option<Vec<u8>> {
    let header = &packet.header;
    let fixed = header.marshal_size();
    let mut buf = vec![0u8; fixed + packet.payload.len()];
    header.marshal_to(&mut buf[..fixed]).ok()?;
    buf[fixed..].copy_from_slice(&packet.payload);
    if let Some(vp8) = &edits.vp8 {
        vp8.apply(&mut buf[fixed..]);
    }
    Some(buf)
}

pub(super) fn init() -> Result<(), RecordingError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| gst::init().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| RecordingError::Pipeline(format!("GStreamer: {e}")))
}

/// Starts the recording thread; resolves once its pipeline runs (or could not start).
pub(super) fn spawn(
    id: String,
    plan: Plan,
    file: PathBuf,
    recordings: Recordings,
) -> impl std::future::Future<Output = Result<Recorder, RecordingError>> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let (tx, rx) = sync_channel::<Vec<u8>>(CHANNEL);
    let keyframes = KeyframeRequests::default();
    let recorder = Recorder {
        id: Arc::from(id.as_str()),
        tx,
        recordings: recordings.clone(),
        payload_type: plan.payload_type,
        keyframes: keyframes.clone(),
        dropped: 0,
    };
    let spawned = std::thread::Builder::new()
        .name(format!("rec-{}", &id[id.len().saturating_sub(6)..]))
        .spawn(move || run(id, plan, file, keyframes, recordings, rx, ready_tx));
    async move {
        spawned.map_err(|e| RecordingError::Pipeline(format!("starting its thread: {e}")))?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(recorder),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(RecordingError::Pipeline(
                "the recording thread ended at start".into(),
            )),
        }
    }
}

/// RTP timestamps, unwrapped, to tell how much media was written.
#[derive(Default)]
struct MediaClock {
    first: Option<i64>,
    last: i64,
    highest: i64,
}

impl MediaClock {
    fn on_packet(&mut self, rtp: &[u8]) {
        let Some(ts) = rtp.get(4..8) else { return };
        let ts = u32::from_be_bytes([ts[0], ts[1], ts[2], ts[3]]);
        match self.first {
            None => {
                self.first = Some(ts as i64);
                self.last = ts as i64;
                self.highest = ts as i64;
            }
            Some(_) => {
                let step = ts.wrapping_sub(self.last as u32) as i32 as i64;
                self.last += step;
                self.highest = self.highest.max(self.last);
            }
        }
    }

    fn millis(&self, clock_rate: u32) -> u64 {
        let span = self.first.map_or(0, |f| self.highest - f).max(0);
        (span as u64 * 1000) / u64::from(clock_rate.max(1))
    }
}

fn run(
    id: String,
    plan: Plan,
    file: PathBuf,
    keyframes: KeyframeRequests,
    recordings: Recordings,
    rx: Receiver<Vec<u8>>,
    ready: oneshot::Sender<Result<(), RecordingError>>,
) {
    let built = init().and_then(|()| pipeline::build(&plan, &file, &keyframes));
    // Paused until the first packet (the file is opened now, so a failure is reported at
    // once). The jitter buffer times packets from their RTP timestamps counted from time 0,
    // and waits for a missing one until its time plus its latency on the pipeline's clock:
    // started before the first packet (the keyframe asked for comes a second or so later),
    // the clock would be past every packet's time by that much, and a gap would be declared
    // lost at once, before the publisher's retransmission came (measured: 5 to 60 ms after
    // the gap, while the depayloader dropped what followed until the next keyframe).
    let built = built.and_then(|b| {
        b.pipeline
            .set_state(gst::State::Paused)
            .map_err(|_| RecordingError::Pipeline(first_error(&b.pipeline, &file)))?;
        Ok(b)
    });
    let b = match built {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let Some(bus) = b.pipeline.bus() else {
        return;
    };
    let mut clock = MediaClock::default();
    let mut last_update = Instant::now();
    let mut failure: Option<String> = None;
    // Why it stops by itself with a finalised file (the disk is full).
    let mut stopped: Option<String> = None;
    let mut space = super::disk::SpaceWatch::new();
    loop {
        match rx.recv_timeout(POLL) {
            Ok(packet) => {
                if clock.first.is_none() && b.pipeline.set_state(gst::State::Playing).is_err() {
                    failure = Some(first_error(&b.pipeline, &file));
                    break;
                }
                clock.on_packet(&packet);
                if let Err(e) = b.src.push_buffer(gst::Buffer::from_mut_slice(packet)) {
                    failure = Some(format!("the pipeline refused data: {e:?}"));
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if let Some(e) = bus_error(&bus) {
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
            let ms = clock.millis(plan.clock_rate);
            recordings.update(&id, |i| i.duration_ms = ms);
        }
    }
    // Whatever ended it, the muxer finishes the file: duration and cues on a clean stop.
    drop(rx);
    if clock.first.is_none() {
        // Never started: the end of stream flows only when playing.
        let _ = b.pipeline.set_state(gst::State::Playing);
    }
    let _ = b.src.end_of_stream();
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
    let _ = b.pipeline.set_state(gst::State::Null);
    let ms = clock.millis(plan.clock_rate);
    recordings.update(&id, |i| i.duration_ms = ms);
    match failure.or(stopped) {
        Some(e) => recordings.finish(&id, RecordingState::Failed, &e),
        None => recordings.finish(&id, RecordingState::Complete, ""),
    }
}

/// The first error the pipeline posted, with its detail (why a state change failed).
fn first_error(pipeline: &gst::Pipeline, file: &std::path::Path) -> String {
    pipeline
        .bus()
        .and_then(|bus| bus_error(&bus))
        .unwrap_or_else(|| format!("could not start writing {}", file.display()))
}

pub(super) fn bus_error(bus: &gst::Bus) -> Option<String> {
    let msg = bus.pop_filtered(&[gst::MessageType::Error])?;
    match msg.view() {
        gst::MessageView::Error(e) => Some(match e.debug() {
            Some(d) => format!("{} ({d})", e.error()),
            None => e.error().to_string(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_time_survives_timestamp_wraparound() {
        let mut c = MediaClock::default();
        let rtp = |ts: u32| {
            let mut p = vec![0x80, 96, 0, 0];
            p.extend_from_slice(&ts.to_be_bytes());
            p
        };
        for ts in [u32::MAX - 90_000, u32::MAX - 45_000, 44_999, 30_000] {
            c.on_packet(&rtp(ts));
        }
        // From MAX-90000 to 44999 is 135000 ticks: 1.5 s at 90 kHz (the late packet at
        // 30000 changes nothing).
        assert_eq!(c.millis(90_000), 1500);
    }
}
