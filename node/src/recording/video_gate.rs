//! What keeps a recording's video stream whole when the picture it copies is missing or
//! broken, without decoding it:
//!
//! - [`KeyframeRequests`]: GStreamer elements that lose their reference picture (a
//!   depayloader after a loss, a transcoder's decoder that got no keyframe) ask upstream for
//!   one with a `GstForceKeyUnit` event, which an appsrc would drop: the flag carries it to
//!   the recording's media worker, which asks the publisher (a PLI) as a subscriber's
//!   receiver would.
//! - [`VideoGate`]: a room recording's file declares its video stream from the start, and a
//!   Matroska muxer writes nothing until every stream has data. While no speaker's video
//!   comes (the recording started before any camera, or every camera left), a black
//!   placeholder keyframe (encoded once per process, by `vp8enc`) goes in every
//!   [`PLACEHOLDER_EVERY`], so audio is written on time and the picture follows as soon as
//!   video comes; the real video then resumes at a keyframe (inter frames that would refer to
//!   the placeholder are dropped and a keyframe asked for), and times never go backwards.

use super::RecordingError;
use super::pipeline::element;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a room recording waits for its first video before the placeholder (a room with
/// video gets its first keyframe well within this: it is asked for at once). Longer than
/// needed on purpose: the live outputs misbehaved in runs where a placeholder came first and
/// the real video a second later (see docs/recording.md, "Not yet").
pub const FIRST_WAIT: Duration = Duration::from_secs(3);
/// How long without real video counts as none (a speaker switch takes a keyframe, a few
/// hundred milliseconds; a camera that stalls longer shows black until it comes back).
pub const GAP: Duration = Duration::from_secs(3);
/// How often the placeholder is repeated while there is no video: the muxer holds audio
/// until video is as far, so this is also the most audio waits.
pub const PLACEHOLDER_EVERY: Duration = Duration::from_secs(1);
/// The placeholder picture (16:9, as the live outputs).
const PLACEHOLDER_WIDTH: i32 = 640;
const PLACEHOLDER_HEIGHT: i32 = 360;

/// Keyframe requests raised inside a recording's pipeline, for its media worker to pass on.
/// The worker reads it with one atomic load per video packet.
#[derive(Clone, Default)]
pub struct KeyframeRequests(Arc<AtomicBool>);

impl KeyframeRequests {
    /// Whether a keyframe was asked for since the last call (and clears it).
    pub fn take(&self) -> bool {
        self.0.load(Ordering::Relaxed) && self.0.swap(false, Ordering::Relaxed)
    }

    pub(super) fn ask(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Catches the upstream `GstForceKeyUnit` events that reach `pad` (an appsrc's source
    /// pad, where every request of the elements after it ends).
    pub(super) fn watch(&self, pad: &gst::Pad) {
        let requests = self.clone();
        pad.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
            if info
                .event()
                .and_then(|e| e.structure())
                .is_some_and(|s| s.name() == "GstForceKeyUnit")
            {
                tracing::debug!("a recording's pipeline asks for a keyframe");
                requests.ask();
            }
            gst::PadProbeReturn::Ok
        });
    }
}

/// One black VP8 keyframe, encoded once per process.
fn placeholder_frame() -> Result<gst::Buffer, RecordingError> {
    static FRAME: OnceLock<Result<gst::Buffer, String>> = OnceLock::new();
    FRAME
        .get_or_init(|| encode_black().map_err(|e| e.to_string()))
        .clone()
        .map_err(RecordingError::Pipeline)
}

fn encode_black() -> Result<gst::Buffer, RecordingError> {
    let pipeline = gst::Pipeline::new();
    let src = element("videotestsrc")?;
    src.set_property("num-buffers", 1i32);
    src.set_property_from_str("pattern", "black");
    let caps = element("capsfilter")?;
    caps.set_property(
        "caps",
        gst::Caps::builder("video/x-raw")
            .field("format", "I420")
            .field("width", PLACEHOLDER_WIDTH)
            .field("height", PLACEHOLDER_HEIGHT)
            .field("framerate", gst::Fraction::new(1, 1))
            .build(),
    );
    let encode = element("vp8enc")?;
    let sink = gst_app::AppSink::builder().sync(false).build();
    let chain = [&src, &caps, &encode, sink.upcast_ref()];
    pipeline
        .add_many(chain)
        .and_then(|()| gst::Element::link_many(chain))
        .map_err(|e| RecordingError::Pipeline(format!("the placeholder picture: {e}")))?;
    let failed = |what: &str| RecordingError::Pipeline(format!("the placeholder picture: {what}"));
    pipeline
        .set_state(gst::State::Playing)
        .map_err(|_| failed("its encoder did not start"))?;
    let sample = sink.try_pull_sample(gst::ClockTime::from_seconds(10));
    let _ = pipeline.set_state(gst::State::Null);
    let mut buffer = sample
        .and_then(|s| s.buffer_owned())
        .ok_or_else(|| failed("vp8enc gave no frame"))?;
    let b = buffer.make_mut();
    b.set_pts(gst::ClockTime::NONE);
    b.set_dts(gst::ClockTime::NONE);
    b.set_duration(gst::ClockTime::NONE);
    b.unset_flags(gst::BufferFlags::DELTA_UNIT);
    Ok(buffer)
}

/// One timeline after the funnel. When its input changes (placeholder to real video or
/// back) the funnel sends on the new input's stream start and segment: the same times
/// (both inputs are timed on the pipeline's clock, see `GateState::offset`), but a new
/// segment resets what follows. The live outputs' `videorate` then started its frames
/// again from the segment's start, seconds behind the placeholder's, and the FLV
/// muxer got video going back in time: nginx's recording had frames on the same
/// millisecond, or no video after the placeholder's (docs/recording.md). Only the
/// first of each goes on; caps changes (a new picture size) still do.
fn one_timeline(out: &gst::Pad) {
    let seen = Arc::new(Mutex::new((false, false)));
    out.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        let Some(gst::PadProbeData::Event(e)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        let Ok(mut seen) = seen.lock() else {
            return gst::PadProbeReturn::Ok;
        };
        let again = match e.type_() {
            gst::EventType::StreamStart => std::mem::replace(&mut seen.0, true),
            gst::EventType::Segment => std::mem::replace(&mut seen.1, true),
            _ => false,
        };
        if again {
            // Handled rather than dropped: a sticky event dropped by a probe is sent again
            // before every buffer.
            info.data.take();
            return gst::PadProbeReturn::Handled;
        }
        gst::PadProbeReturn::Ok
    });
}

/// The least time between two frames of the file: its declared frame duration (the program's
/// 500 fps, a Matroska DefaultDuration of 2 ms), else a millisecond (Matroska's resolution).
/// Readers that tick at the declared rate (ffmpeg) put two frames closer than that on one
/// tick: a placeholder and the real keyframe after it 1 ms apart once made ffmpeg report "non
/// monotonically increasing dts" for a room recording.
fn tick(caps: &gst::Caps) -> gst::ClockTime {
    caps.structure(0)
        .and_then(|s| s.get::<gst::Fraction>("framerate").ok())
        .filter(|f| f.numer() > 0 && f.denom() > 0)
        .map(|f| {
            gst::ClockTime::from_nseconds(1_000_000_000u64 * f.denom() as u64 / f.numer() as u64)
        })
        .unwrap_or(gst::ClockTime::from_mseconds(1))
        .max(gst::ClockTime::from_mseconds(1))
}

/// The time a frame timed `pts` goes out at, after one that went out at `last`: its own, or
/// `step` after the last if that is later.
fn forward(
    last: Option<gst::ClockTime>,
    pts: gst::ClockTime,
    step: gst::ClockTime,
) -> gst::ClockTime {
    match last.map(|l| l + step) {
        Some(min) if pts < min => min,
        _ => pts,
    }
}

/// The caps of the placeholder: those of the depayloaded video (with the framerate the
/// program sets) but for the size, the only field a Matroska muxer lets change.
pub fn placeholder_caps(framerate: gst::Fraction) -> gst::Caps {
    gst::Caps::builder("video/x-vp8")
        .field("framerate", framerate)
        .field("width", PLACEHOLDER_WIDTH)
        .field("height", PLACEHOLDER_HEIGHT)
        .build()
}

#[derive(Default)]
struct GateState {
    /// When the last real frame passed.
    last_real: Option<Instant>,
    /// When the last placeholder went in.
    last_placeholder: Option<Instant>,
    /// A placeholder went in since the last real keyframe: real inter frames are dropped.
    need_key: bool,
    /// The highest time that went out to the muxer.
    last_pts: Option<gst::ClockTime>,
    /// What is added to the real video's times (nanoseconds). The jitter buffer times
    /// frames from their RTP timestamps, counted from the first packet it saw, while the
    /// placeholder and the audio mix are timed on the pipeline's clock: each time real video
    /// starts (or comes back after a placeholder) its keyframe is put on the clock's time
    /// now, and the frames after it keep their RTP spacing from there.
    offset: Option<i64>,
}

/// The placeholder source and the probes around the program's video (see the module).
pub struct VideoGate {
    started: Instant,
    state: Arc<Mutex<GateState>>,
    src: gst_app::AppSrc,
    frame: gst::Buffer,
    requests: KeyframeRequests,
}

impl VideoGate {
    /// The placeholder's source (to be linked beside the real video into a funnel), watching
    /// the real video leaving `real` and what leaves `out` (the funnel's source pad).
    pub fn new(
        caps: gst::Caps,
        real: &gst::Pad,
        out: &gst::Pad,
        requests: KeyframeRequests,
    ) -> Result<VideoGate, RecordingError> {
        let frame = placeholder_frame()?;
        let src = gst_app::AppSrc::builder()
            .caps(&caps)
            .is_live(true)
            .format(gst::Format::Time)
            .build();
        let state = Arc::new(Mutex::new(GateState {
            need_key: true,
            ..GateState::default()
        }));
        // Real frames: noted, inter frames dropped until a keyframe after a placeholder, and
        // timed on the pipeline's clock (see `GateState::offset`).
        let s = state.clone();
        let r = requests.clone();
        real.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let running = pad.parent_element().and_then(|e| e.current_running_time());
            let Some(b) = info.buffer_mut() else {
                return gst::PadProbeReturn::Ok;
            };
            let Ok(mut s) = s.lock() else {
                return gst::PadProbeReturn::Ok;
            };
            let key = !b.flags().contains(gst::BufferFlags::DELTA_UNIT);
            if s.need_key && !key {
                r.ask();
                // Taken and handled: a `Drop` of data the binding already took makes
                // GStreamer unref a null pointer (a critical warning per frame).
                info.data.take();
                return gst::PadProbeReturn::Handled;
            }
            let Some(pts) = b.pts() else {
                return gst::PadProbeReturn::Ok;
            };
            if (s.need_key || s.offset.is_none())
                && let Some(now) = running
            {
                s.offset = Some(now.nseconds() as i64 - pts.nseconds() as i64);
            }
            s.need_key = false;
            s.last_real = Some(Instant::now());
            let shift = |t: gst::ClockTime, by: i64| {
                gst::ClockTime::from_nseconds((t.nseconds() as i64).saturating_add(by).max(0) as u64)
            };
            if let Some(by) = s.offset {
                let dts = b.dts();
                let b = b.make_mut();
                b.set_pts(shift(pts, by));
                if let Some(dts) = dts {
                    b.set_dts(shift(dts, by));
                }
            }
            gst::PadProbeReturn::Ok
        });
        one_timeline(out);
        // Whatever goes to the muxer: times only go forward (a real frame timed from its
        // capture may come a few milliseconds before a placeholder timed at its push), by at
        // least the stream's declared frame duration (see `tick`).
        let step = tick(&caps);
        let s = state.clone();
        out.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            let Some(b) = info.buffer_mut() else {
                return gst::PadProbeReturn::Ok;
            };
            let Ok(mut s) = s.lock() else {
                return gst::PadProbeReturn::Ok;
            };
            if let Some(pts) = b.pts() {
                let at = forward(s.last_pts, pts, step);
                if at != pts {
                    let b = b.make_mut();
                    b.set_pts(at);
                    b.set_dts(at);
                }
                s.last_pts = Some(at);
            }
            gst::PadProbeReturn::Ok
        });
        Ok(VideoGate {
            started: Instant::now(),
            state,
            src,
            frame,
            requests,
        })
    }

    pub fn src(&self) -> &gst_app::AppSrc {
        &self.src
    }

    pub fn requests(&self) -> &KeyframeRequests {
        &self.requests
    }

    /// Puts a placeholder in if there has been no real video for a while (see the module);
    /// `running` is the pipeline's running time now. Called often by the recording thread.
    pub fn fill(&self, now: Instant, running: Option<gst::ClockTime>) {
        let Some(running) = running else {
            return;
        };
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        let quiet = match s.last_real {
            Some(t) => now.saturating_duration_since(t) >= GAP,
            None => now.saturating_duration_since(self.started) >= FIRST_WAIT,
        };
        let due = s
            .last_placeholder
            .is_none_or(|t| now.saturating_duration_since(t) >= PLACEHOLDER_EVERY);
        if !quiet || !due {
            return;
        }
        if s.last_placeholder.is_none() || s.last_real.is_some_and(|r| s.last_placeholder < Some(r))
        {
            tracing::debug!("no video for the room recording: a placeholder picture");
        }
        s.last_placeholder = Some(now);
        s.need_key = true;
        drop(s);
        let mut frame = self.frame.copy();
        {
            let b = frame.make_mut();
            b.set_pts(running);
            b.set_dts(running);
        }
        // The next real video must start at a keyframe: asked for now.
        self.requests.ask();
        let _ = self.src.push_buffer(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_go_out_at_least_one_declared_frame_duration_apart() {
        gst::init().unwrap();
        let ms = gst::ClockTime::from_mseconds;
        let step = tick(&placeholder_caps(gst::Fraction::new(500, 1)));
        assert_eq!(step, ms(2), "500 fps: 2 ms");
        assert_eq!(tick(&gst::Caps::builder("video/x-vp8").build()), ms(1));
        // The placeholder at 6,013.6 ms, then a real keyframe captured 3 ms earlier, then the
        // real frames 33 ms apart.
        let placeholder = ms(6_013) + gst::ClockTime::from_useconds(600);
        let mut last = Some(forward(None, placeholder, step));
        let mut ticks = vec![];
        for pts in [ms(6_010), ms(6_043), ms(6_076)] {
            let at = forward(last, pts, step);
            last = Some(at);
            ticks.push(at);
        }
        assert_eq!(ticks[0], placeholder + ms(2), "moved past the placeholder");
        assert_eq!(&ticks[1..], [ms(6_043), ms(6_076)], "then their own times");
        // As Matroska stores them (whole milliseconds) and ffmpeg reads them at 500 fps: no
        // two on one tick.
        let mut all = vec![placeholder];
        all.extend(&ticks);
        let at_500fps: Vec<u64> = all
            .iter()
            .map(|t| ((t.mseconds() as f64) / 2.0).round() as u64)
            .collect();
        assert!(
            at_500fps.windows(2).all(|w| w[1] > w[0]),
            "{all:?} -> {at_500fps:?}"
        );
    }

    /// A funnel's inputs taking turns (the placeholder, the real video, the placeholder
    /// again): every buffer goes on, but only the first stream start and segment.
    #[test]
    fn a_funnel_switching_inputs_starts_no_new_segment() {
        gst::init().unwrap();
        let pipeline = gst::Pipeline::new();
        let caps = gst::Caps::builder("video/x-vp8").build();
        let source = || {
            gst_app::AppSrc::builder()
                .caps(&caps)
                .format(gst::Format::Time)
                .build()
        };
        let (a, b) = (source(), source());
        let funnel = element("funnel").unwrap();
        let sink = element("fakesink").unwrap();
        sink.set_property("sync", false);
        pipeline
            .add_many([a.upcast_ref(), b.upcast_ref(), &funnel, &sink])
            .unwrap();
        a.link(&funnel).unwrap();
        b.link(&funnel).unwrap();
        funnel.link(&sink).unwrap();
        one_timeline(&funnel.static_pad("src").unwrap());
        // Stream starts, segments and buffers reaching the sink.
        let seen = Arc::new(Mutex::new([0; 3]));
        let s = seen.clone();
        let probe = gst::PadProbeType::EVENT_DOWNSTREAM | gst::PadProbeType::BUFFER;
        sink.static_pad("sink")
            .unwrap()
            .add_probe(probe, move |_, info| {
                let i = match &info.data {
                    Some(gst::PadProbeData::Event(e)) => match e.type_() {
                        gst::EventType::StreamStart => 0,
                        gst::EventType::Segment => 1,
                        _ => return gst::PadProbeReturn::Ok,
                    },
                    Some(gst::PadProbeData::Buffer(_)) => 2,
                    _ => return gst::PadProbeReturn::Ok,
                };
                s.lock().unwrap()[i] += 1;
                gst::PadProbeReturn::Ok
            });
        pipeline.set_state(gst::State::Playing).unwrap();
        let frame = |ms: u64| {
            let mut b = gst::Buffer::from_slice([0u8; 8]);
            b.get_mut()
                .unwrap()
                .set_pts(gst::ClockTime::from_mseconds(ms));
            b
        };
        // Each push waits until the funnel passed the one before, so the inputs alternate.
        let wait_for = |n: i32| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while seen.lock().unwrap()[2] < n && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        for (n, (src, ms)) in [(&a, 0), (&b, 33), (&b, 66), (&a, 100), (&b, 133)]
            .into_iter()
            .enumerate()
        {
            src.push_buffer(frame(ms)).unwrap();
            wait_for(n as i32 + 1);
        }
        pipeline.set_state(gst::State::Null).unwrap();
        assert_eq!(*seen.lock().unwrap(), [1, 1, 5]);
    }
}
