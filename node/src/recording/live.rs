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
        Ok(Live { rtmp_bins })
    }

    /// The RTMP destination (its index) an element posting an error belongs to.
    pub fn stream_of(&self, element: &gst::Object) -> Option<usize> {
        let mut o = Some(element.clone());
        while let Some(e) = o {
            if let Some(i) = self.rtmp_bins.iter().position(|n| *n == e.name()) {
                return Some(i);
            }
            o = e.parent();
        }
        None
    }

    /// Takes a failed RTMP destination out of the pipeline; the rest goes on.
    pub fn remove_stream(&self, pipeline: &gst::Pipeline, index: usize) {
        let Some(name) = self.rtmp_bins.get(index) else {
            return;
        };
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
