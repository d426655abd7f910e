//! Live outputs of a room recording: the same speaker-following program sent to RTMP
//! destinations and written as HLS for the node to serve. Those need H.264 and AAC, which
//! publishers do not send, so only this part transcodes:
//!
//! ```text
//! program video (VP8) ─ tee ─▶ the file
//!                         └─▶ queue (5 s) → vp8dec → queue (leaky) → videoconvert → videoscale → videorate
//!                               → openh264enc → tee ─▶ rtmp-N: queue → h264parse ─┐
//!                                                 └─▶ hls: queue → h264parse ─┐   │
//! program audio (mix) ─ tee ─▶ opusenc → the file                             │   │
//!                         └─▶ queue → audioconvert → voaacenc → tee ─▶ hls ◀──┘   │
//!                                                                  └─▶ rtmp-N: flvmux → rtmp2sink
//! ```
//!
//! Each RTMP destination is a bin of its own: one that fails (does not answer, refuses the
//! stream, drops the connection) is taken out with its reason while the file, HLS and the
//! other destinations go on. The transcoding queues leak, so a slow encoder drops pictures
//! here rather than holding back the file (decoded ones: a compressed frame dropped before
//! the decoder would stop the picture until the next keyframe).

use super::RecordingError;
use super::pipeline::{element, set_if_known};
use gstreamer as gst;
use gstreamer::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Picture of the live outputs: a 16:9 frame every speaker is scaled into (with borders).
const WIDTH: i32 = 960;
const HEIGHT: i32 = 540;
const FPS: i32 = 30;
/// H.264 bitrate (bits per second) and keyframe interval (frames: 2 s, an HLS segment).
const VIDEO_BPS: u32 = 1_500_000;
const GOP: u32 = 60;
const AUDIO_BPS: i32 = 128_000;
/// HLS segments, and how many the playlist lists (older ones are deleted).
const HLS_SEGMENT_SECS: u32 = 2;
const HLS_PLAYLIST_LENGTH: u32 = 6;
/// How long the FLV muxer waits for the later of audio and video (nanoseconds).
const FLV_WAIT_NS: u64 = 1_000_000_000;
/// The HLS playlist's file name in its directory.
pub const HLS_PLAYLIST: &str = "live.m3u8";

/// Where the live outputs go.
#[derive(Clone, Debug, Default)]
pub struct LiveSpec {
    /// RTMP(S) URLs (`rtmp://host/app/key`).
    pub streams: Vec<String>,
    /// A directory for HLS segments and playlist, if HLS is wanted.
    pub hls_dir: Option<PathBuf>,
}

impl LiveSpec {
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.hls_dir.is_none()
    }
}

/// The live part of a built pipeline.
pub struct Live {
    /// Names of the RTMP bins, by stream index.
    rtmp_bins: Vec<String>,
    /// Destinations that failed, by stream index: set by the failing element's own thread
    /// as it posts its error (see [`cut_off`]).
    failed: Arc<[AtomicBool]>,
}

/// The index of the RTMP bin (by name in `bins`) that `element` is in.
fn bin_of(bins: &[String], element: &gst::Object) -> Option<usize> {
    let mut o = Some(element.clone());
    while let Some(e) = o {
        if let Some(i) = bins.iter().position(|n| *n == e.name()) {
            return Some(i);
        }
        o = e.parent();
    }
    None
}

/// Keeps a failed destination's failure to itself. A destination that fails (nothing
/// answers, the connection drops) makes `rtmp2sink` return an error or `FLUSHING` for
/// everything after; `flvmux` then refuses its inputs with it, the queue in front of each
/// keeps that result for every later buffer, and the tee feeding it passes it back upstream
/// (`allow-not-linked` only forgives an unlinked pad): the encoder, the decoder, the program's
/// video tee and the jitter buffer before it all stopped, silently (`FLUSHING` is not an
/// error), so the file got no more video and the live outputs no more H.264. That happened
/// when the recording thread took the failed bin out only after data reached it (a loaded
/// machine). Now, from the moment the failure is posted on the bus (before the sink returns
/// its error), buffers are dropped on the way into the bin and inside it before the muxer,
/// which reports them as passed; the bin is taken out later as before.
fn cut_off(pad: &gst::Pad, failed: Arc<[AtomicBool]>, index: usize) {
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
        move |_, info| {
            if failed[index].load(Ordering::Acquire) {
                // Taken and handled, so the push reports `Ok` (a `Drop` of data the
                // binding took already makes GStreamer unref a null pointer, a critical).
                info.data.take();
                gst::PadProbeReturn::Handled
            } else {
                gst::PadProbeReturn::Ok
            }
        },
    );
}

fn add_and_link(bin: &impl IsA<gst::Bin>, chain: &[&gst::Element]) -> Result<(), RecordingError> {
    bin.add_many(chain.iter().copied())
        .map_err(|e| RecordingError::Pipeline(format!("assembling the live outputs: {e}")))?;
    gst::Element::link_many(chain.iter().copied())
        .map_err(|e| RecordingError::Pipeline(format!("linking the live outputs: {e}")))
}

fn queue(leaky: bool) -> Result<gst::Element, RecordingError> {
    let q = element("queue")?;
    if leaky {
        q.set_property_from_str("leaky", "downstream");
    }
    Ok(q)
}

/// A bin with ghost pads `video` and `audio` (and nothing else).
fn ghost(bin: &gst::Bin, name: &str, target: &gst::Pad) -> Result<(), RecordingError> {
    let pad = gst::GhostPad::builder_with_target(target)
        .map_err(|e| RecordingError::Pipeline(format!("ghost pad {name}: {e}")))?
        .name(name)
        .build();
    bin.add_pad(&pad)
        .map_err(|e| RecordingError::Pipeline(format!("ghost pad {name}: {e}")))
}

fn link_to(from: &gst::Element, pad: &gst::Pad) -> Result<(), RecordingError> {
    let src = from
        .request_pad_simple("src_%u")
        .or_else(|| from.static_pad("src"))
        .ok_or_else(|| RecordingError::Pipeline(format!("{} has no src pad", from.name())))?;
    src.link(pad)
        .map(|_| ())
        .map_err(|e| RecordingError::Pipeline(format!("linking {}: {e:?}", from.name())))
}

impl Live {
    /// Adds the live outputs to `pipeline`, fed from the program's `video` tee (VP8, if the
    /// recording has video) and `audio` tee (raw mixed audio).
    pub fn build(
        pipeline: &gst::Pipeline,
        video: Option<&gst::Element>,
        audio: &gst::Element,
        spec: &LiveSpec,
    ) -> Result<Live, RecordingError> {
        // Transcoding, once for every output.
        let h264 = match video {
            Some(video_tee) => {
                // Frames are dropped only once decoded: a VP8 frame dropped before the
                // decoder (a keyframe, say) would leave it nothing to decode until the next
                // keyframe, which a publisher sends only when asked (seen: a loaded machine's
                // stream went out with no picture at all). The queue before it holds up to
                // 5 s of compressed frames (decoding keeps up far more easily than encoding),
                // leaking only past that; the one after it leaks pictures the encoder has no
                // time for.
                let q = queue(true)?;
                q.set_property("max-size-buffers", 0u32);
                q.set_property("max-size-bytes", 0u32);
                q.set_property("max-size-time", 5_000_000_000u64);
                let decode = element("vp8dec")?;
                // A decoder that has no reference picture (its keyframe lost, or broken)
                // asks upstream for a keyframe, which reaches the room as a request to the
                // publisher (`video_gate::KeyframeRequests`), and shows nothing broken
                // meanwhile. Without it, it waited for a keyframe that a publisher sends
                // only when asked, and the live stream carried audio alone.
                set_if_known(&decode, "automatic-request-sync-points", "true");
                set_if_known(&decode, "discard-corrupted-frames", "true");
                let decoded = queue(true)?;
                let convert = element("videoconvert")?;
                let scale = element("videoscale")?;
                // Speakers' pictures differ in size: each is fitted into the same frame.
                scale.set_property("add-borders", true);
                let rate = element("videorate")?;
                // From the first picture on, not a second of copies of it back to the
                // segment's start.
                set_if_known(&rate, "skip-to-first", "true");
                let caps = element("capsfilter")?;
                caps.set_property(
                    "caps",
                    gst::Caps::builder("video/x-raw")
                        .field("width", WIDTH)
                        .field("height", HEIGHT)
                        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
                        .field("framerate", gst::Fraction::new(FPS, 1))
                        .build(),
                );
                let encode = element("openh264enc")?;
                encode.set_property("bitrate", VIDEO_BPS);
                encode.set_property("gop-size", GOP);
                set_if_known(&encode, "rate-control", "bitrate");
                let tee = element("tee")?;
                tee.set_property("allow-not-linked", true);
                add_and_link(
                    pipeline,
                    &[
                        &q, &decode, &decoded, &convert, &scale, &rate, &caps, &encode, &tee,
                    ],
                )?;
                if let Some(pad) = encode.static_pad("src") {
                    timed_only(&pad);
                }
                let sink = q.static_pad("sink").ok_or_else(|| {
                    RecordingError::Pipeline("the transcoding queue has no sink".into())
                })?;
                link_to(video_tee, &sink)?;
                Some(tee)
            }
            None => None,
        };
        let aac = {
            let q = queue(true)?;
            let convert = element("audioconvert")?;
            let encode = element("voaacenc")?;
            encode.set_property("bitrate", AUDIO_BPS);
            let tee = element("tee")?;
            tee.set_property("allow-not-linked", true);
            add_and_link(pipeline, &[&q, &convert, &encode, &tee])?;
            let sink = q
                .static_pad("sink")
                .ok_or_else(|| RecordingError::Pipeline("the AAC queue has no sink".into()))?;
            link_to(audio, &sink)?;
            tee
        };

        let mut rtmp_bins = Vec::new();
        let failed: Arc<[AtomicBool]> = spec
            .streams
            .iter()
            .map(|_| AtomicBool::new(false))
            .collect();
        for (i, url) in spec.streams.iter().enumerate() {
            let name = format!("rtmp-{i}");
            let bin = gst::Bin::with_name(&name);
            let mux = element("flvmux")?;
            mux.set_property("streamable", true);
            // In a live pipeline the muxer writes what it has when its latency is up; FLV
            // times only go forward, so a video frame coming after audio it should precede
            // was put on that audio's time (frames 21 ms apart, some on the same
            // millisecond). Waiting this long for both streams keeps their own times.
            mux.set_property("latency", FLV_WAIT_NS);
            let sink = element("rtmp2sink")?;
            sink.set_property("location", url);
            // Pushed as it comes: the pipeline is live already.
            sink.set_property("sync", false);
            sink.set_property("async", false);
            add_and_link(&bin, &[&mux, &sink])?;
            if h264.is_some() {
                let q = queue(true)?;
                let parse = element("h264parse")?;
                add_and_link(&bin, &[&q, &parse])?;
                let pad = mux
                    .request_pad_simple("video")
                    .ok_or_else(|| RecordingError::Pipeline("flvmux gave no video pad".into()))?;
                parse
                    .static_pad("src")
                    .ok_or_else(|| RecordingError::Pipeline("h264parse has no src".into()))?
                    .link(&pad)
                    .map_err(|e| RecordingError::Pipeline(format!("flv video: {e:?}")))?;
                let target = q.static_pad("sink").ok_or_else(|| {
                    RecordingError::Pipeline("the RTMP video queue has no sink".into())
                })?;
                ghost(&bin, "video", &target)?;
                cut_off(&pad, failed.clone(), i);
            }
            let q = queue(true)?;
            let parse = element("aacparse")?;
            add_and_link(&bin, &[&q, &parse])?;
            let pad = mux
                .request_pad_simple("audio")
                .ok_or_else(|| RecordingError::Pipeline("flvmux gave no audio pad".into()))?;
            parse
                .static_pad("src")
                .ok_or_else(|| RecordingError::Pipeline("aacparse has no src".into()))?
                .link(&pad)
                .map_err(|e| RecordingError::Pipeline(format!("flv audio: {e:?}")))?;
            let target = q.static_pad("sink").ok_or_else(|| {
                RecordingError::Pipeline("the RTMP audio queue has no sink".into())
            })?;
            ghost(&bin, "audio", &target)?;
            cut_off(&pad, failed.clone(), i);
            for name in ["video", "audio"] {
                if let Some(pad) = bin.static_pad(name) {
                    cut_off(&pad, failed.clone(), i);
                }
            }
            pipeline
                .add(&bin)
                .map_err(|e| RecordingError::Pipeline(format!("adding {name}: {e}")))?;
            if let (Some(h264), Some(pad)) = (&h264, bin.static_pad("video")) {
                link_to(h264, &pad)?;
            }
            if let Some(pad) = bin.static_pad("audio") {
                link_to(&aac, &pad)?;
            }
            rtmp_bins.push(name);
        }

        if let Some(dir) = &spec.hls_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                RecordingError::Pipeline(format!("creating {}: {e}", dir.display()))
            })?;
            let hls = element("hlssink2")?;
            hls.set_property("location", dir.join("segment%05d.ts").display().to_string());
            hls.set_property(
                "playlist-location",
                dir.join(HLS_PLAYLIST).display().to_string(),
            );
            hls.set_property("target-duration", HLS_SEGMENT_SECS);
            hls.set_property("playlist-length", HLS_PLAYLIST_LENGTH);
            hls.set_property("max-files", HLS_PLAYLIST_LENGTH * 2);
            pipeline
                .add(&hls)
                .map_err(|e| RecordingError::Pipeline(format!("adding hlssink2: {e}")))?;
            if let Some(h264) = &h264 {
                let q = queue(true)?;
                let parse = element("h264parse")?;
                add_and_link(pipeline, &[&q, &parse])?;
                let pad = hls
                    .request_pad_simple("video")
                    .ok_or_else(|| RecordingError::Pipeline("hlssink2 gave no video".into()))?;
                link_pads(&parse, &pad)?;
                if let Some(sink) = q.static_pad("sink") {
                    link_to(h264, &sink)?;
                }
            }
            let q = queue(true)?;
            let parse = element("aacparse")?;
            add_and_link(pipeline, &[&q, &parse])?;
            let pad = hls
                .request_pad_simple("audio")
                .ok_or_else(|| RecordingError::Pipeline("hlssink2 gave no audio".into()))?;
            link_pads(&parse, &pad)?;
            if let Some(sink) = q.static_pad("sink") {
                link_to(&aac, &sink)?;
            }
        }
        if !rtmp_bins.is_empty()
            && let Some(bus) = pipeline.bus()
        {
            // Runs on the thread posting the error, before the failing element goes on.
            let (bins, failed) = (rtmp_bins.clone(), failed.clone());
            bus.set_sync_handler(move |_, msg| {
                if let gst::MessageView::Error(_) = msg.view()
                    && let Some(i) = msg.src().and_then(|src| bin_of(&bins, src))
                {
                    failed[i].store(true, Ordering::Release);
                }
                gst::BusSyncReply::Pass
            });
        }
        Ok(Live { rtmp_bins, failed })
    }

    /// The RTMP destination (its index) an element posting an error belongs to.
    pub fn stream_of(&self, element: &gst::Object) -> Option<usize> {
        bin_of(&self.rtmp_bins, element)
    }

    /// Takes a failed RTMP destination out of the pipeline; the rest goes on.
    pub fn remove_stream(&self, pipeline: &gst::Pipeline, index: usize) {
        let Some(name) = self.rtmp_bins.get(index) else {
            return;
        };
        if let Some(failed) = self.failed.get(index) {
            failed.store(true, Ordering::Release);
        }
        let Some(bin) = pipeline.by_name(name) else {
            return;
        };
        for pad in bin.sink_pads() {
            if let Some(peer) = pad.peer() {
                let _ = peer.unlink(&pad);
                if let Some(tee) = peer.parent_element() {
                    tee.release_request_pad(&peer);
                }
            }
        }
        let _ = bin.set_state(gst::State::Null);
        let _ = pipeline.remove(&bin);
        // An error posted while the pipeline was still starting (its file's sink waits for
        // its first buffer before it is playing, a second or so) fails that start: the
        // pipeline stayed paused, the file's sink held its first buffer (the file stayed
        // empty), the muxer and then the program's video tee waited behind it, and only the
        // live sources' audio went on. Seen under load, when the connection's refusal came
        // later than the start; asked again, the start completes without the bin.
        if pipeline.set_state(gst::State::Playing).is_err() {
            tracing::warn!("the recording's pipeline does not play again after {name} failed");
        }
    }
}

/// Gives the encoder's frames a time when it gives them none (seen: its first frame, the
/// keyframe with the stream's SPS and PPS, when the first picture came a second or more after
/// the pipeline started): the FLV muxer never picks a frame without a time while audio waits
/// (it picks the lowest time), so the RTMP stream carried audio alone, with every later frame
/// queued behind that one. Such a frame takes the time of the frame before it (or 0).
fn timed_only(pad: &gst::Pad) {
    // Nanoseconds; the probe runs on the encoder's streaming thread only.
    let last_ns = std::sync::atomic::AtomicU64::new(0);
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(b) = info.buffer_mut() else {
            return gst::PadProbeReturn::Ok;
        };
        let ordering = std::sync::atomic::Ordering::Relaxed;
        match b.pts() {
            Some(pts) => last_ns.store(pts.nseconds(), ordering),
            None => {
                let last = gst::ClockTime::from_nseconds(last_ns.load(ordering));
                tracing::debug!("an H.264 frame without a time gets {last}");
                let b = b.make_mut();
                b.set_pts(last);
                if b.dts().is_none() {
                    b.set_dts(last);
                }
            }
        }
        gst::PadProbeReturn::Ok
    });
}

fn link_pads(from: &gst::Element, to: &gst::Pad) -> Result<(), RecordingError> {
    from.static_pad("src")
        .ok_or_else(|| RecordingError::Pipeline(format!("{} has no src pad", from.name())))?
        .link(to)
        .map(|_| ())
        .map_err(|e| RecordingError::Pipeline(format!("linking {}: {e:?}", from.name())))
}

/// An HLS file name the node may serve: plain names only (no directories).
pub fn servable(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
        && (name.ends_with(".ts") || name.ends_with(".m3u8"))
}

/// The HLS directory of recording `id` under the recordings directory.
pub fn hls_dir(recordings: &Path, id: &str) -> PathBuf {
    recordings.join(format!("{id}-hls"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    /// A live program (VP8 test pictures and a tone, as the room's program gives) streamed to
    /// a destination where nothing listens, whose failure the recording thread handles late
    /// (3 s: a loaded machine). The file's branch (here a queue and an async sink, as the
    /// file's `filesink`) gets every picture afterwards: before the fix it stopped for good,
    /// at its first picture (the failure, posted while the pipeline was starting, left it
    /// paused) or once the destination's error came back through the tees.
    #[test]
    fn a_failed_destination_not_yet_removed_stops_nothing_else() {
        gst::init().unwrap();
        let pipeline = gst::Pipeline::new();
        let pictures = element("videotestsrc").unwrap();
        pictures.set_property("is-live", true);
        let raw = element("capsfilter").unwrap();
        raw.set_property(
            "caps",
            gst::Caps::builder("video/x-raw")
                .field("width", 320i32)
                .field("height", 240i32)
                .field("framerate", gst::Fraction::new(30, 1))
                .build(),
        );
        let vp8 = element("vp8enc").unwrap();
        vp8.set_property("deadline", 1i64);
        vp8.set_property("keyframe-max-dist", 30i32);
        let video = element("tee").unwrap();
        let file = element("queue").unwrap();
        let file_sink = element("fakesink").unwrap();
        file_sink.set_property("sync", false);
        let tone = element("audiotestsrc").unwrap();
        tone.set_property("is-live", true);
        let audio = element("tee").unwrap();
        let chain = [&pictures, &raw, &vp8, &video, &file, &file_sink];
        add_and_link(&pipeline, &chain).unwrap();
        add_and_link(&pipeline, &[&tone, &audio]).unwrap();
        let spec = LiveSpec {
            streams: vec!["rtmp://127.0.0.1:9/live/nobody".into()],
            hls_dir: None,
        };
        let live = Live::build(&pipeline, Some(&video), &audio, &spec).unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let w = written.clone();
        file_sink
            .static_pad("sink")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                w.fetch_add(1, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            });
        pipeline.set_state(gst::State::Playing).unwrap();
        std::thread::sleep(Duration::from_secs(3));
        // What the recording thread does with the error, late.
        let bus = pipeline.bus().unwrap();
        let error = bus
            .pop_filtered(&[gst::MessageType::Error])
            .expect("the destination failed");
        let index = live.stream_of(&error.src().unwrap().clone());
        assert_eq!(index, Some(0), "{error:?}");
        live.remove_stream(&pipeline, 0);
        let before = written.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(2));
        let after = written.load(Ordering::Relaxed);
        let (_, state, _) = pipeline.state(gst::ClockTime::ZERO);
        let _ = pipeline.set_state(gst::State::Null);
        assert_eq!(state, gst::State::Playing);
        // 30 fps: 60 in 2 s (and the second the file's queue held, if it was waiting).
        assert!(
            after >= before + 40,
            "the file's branch stopped with the failed destination: {before} pictures, then {after}"
        );
    }
}
