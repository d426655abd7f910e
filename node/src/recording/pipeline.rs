//! Which GStreamer elements record which codec, and the pipeline built from them:
//!
//! ```text
//! appsrc (RTP) → rtpjitterbuffer → depayloader → capssetter → muxer → filesink
//! ```
//!
//! The jitter buffer puts packets back in order and turns RTP timestamps into buffer times
//! (the muxer writes those); the depayloader rebuilds frames without decoding them. The
//! muxer starts the file at time 0 and keeps RTP's timing from there.

use super::RecordingError;
use super::video_gate::KeyframeRequests;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::path::Path;

/// How long the jitter buffer waits for a late packet. A recording is not interactive, and on
/// the node's own machine little arrives late: this only covers reordering and a NACK's worth
/// of delay upstream.
pub(super) const JITTER_LATENCY_MS: u32 = 300;
/// What the appsrc queues (bytes) before it drops packets: a stuck disk must not grow the
/// node's memory without bound. About 8 s of 2.5 Mbit/s video.
const APPSRC_MAX_BYTES: u64 = 2_500_000;

/// How one codec is recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `encoding-name` of the RTP caps.
    pub encoding: &'static str,
    /// `audio` or `video`.
    pub media: &'static str,
    pub clock_rate: u32,
    /// The payload type the recording's subscription is given (the forwarder rewrites packets
    /// to it).
    pub payload_type: u8,
    pub depayloader: &'static str,
    pub muxer: &'static str,
    pub extension: &'static str,
}

/// The plan for a track's codec (its MIME type, `video/VP8`...).
pub fn plan(mime: &str, clock_rate: u32) -> Result<Plan, RecordingError> {
    let codec = mime.rsplit('/').next().unwrap_or("").to_ascii_uppercase();
    let video = |encoding, depayloader, muxer, extension, payload_type| Plan {
        encoding,
        media: "video",
        clock_rate: 90_000,
        payload_type,
        depayloader,
        muxer,
        extension,
    };
    Ok(match codec.as_str() {
        "OPUS" => Plan {
            encoding: "OPUS",
            media: "audio",
            clock_rate: if clock_rate > 0 { clock_rate } else { 48_000 },
            payload_type: 111,
            depayloader: "rtpopusdepay",
            muxer: "webmmux",
            extension: "webm",
        },
        "VP8" => video("VP8", "rtpvp8depay", "webmmux", "webm", 96),
        "VP9" => video("VP9", "rtpvp9depay", "webmmux", "webm", 98),
        "AV1" => video("AV1", "rtpav1depay", "matroskamux", "mkv", 45),
        "H264" => video("H264", "rtph264depay", "mp4mux", "mp4", 102),
        _ => {
            return Err(RecordingError::Unsupported(format!(
                "codec {mime} cannot be recorded (Opus, VP8, VP9, AV1 and H.264 can)"
            )));
        }
    })
}

/// A built pipeline and its source.
pub struct Built {
    pub pipeline: gst::Pipeline,
    pub src: gst_app::AppSrc,
}

pub(super) fn element(name: &str) -> Result<gst::Element, RecordingError> {
    gst::ElementFactory::make(name).build().map_err(|_| {
        RecordingError::Pipeline(format!(
            "GStreamer element {name} is not installed on this node"
        ))
    })
}

/// Sets a property if this GStreamer version has it (several came in recent versions).
pub(super) fn set_if_known(e: &gst::Element, name: &str, value: &str) {
    if e.find_property(name).is_some() {
        e.set_property_from_str(name, value);
    }
}

/// Builds the pipeline writing `file` (not started); the keyframes its depayloader asks for
/// after a loss are raised in `requests`.
pub fn build(
    plan: &Plan,
    file: &Path,
    requests: &KeyframeRequests,
) -> Result<Built, RecordingError> {
    let pipeline = gst::Pipeline::new();
    let caps = gst::Caps::builder("application/x-rtp")
        .field("media", plan.media)
        .field("clock-rate", plan.clock_rate as i32)
        .field("encoding-name", plan.encoding)
        .field("payload", plan.payload_type as i32);
    let caps = if plan.encoding == "OPUS" {
        caps.field("encoding-params", "2").build()
    } else {
        caps.build()
    };
    let src = gst_app::AppSrc::builder()
        .caps(&caps)
        .is_live(true)
        .do_timestamp(true)
        .format(gst::Format::Time)
        .max_bytes(APPSRC_MAX_BYTES)
        .block(false)
        .build();
    // Drop the newest when full rather than block (the feeding thread must never wait).
    set_if_known(src.upcast_ref(), "leaky-type", "upstream");
    let jitter = element("rtpjitterbuffer")?;
    jitter.set_property("latency", JITTER_LATENCY_MS);
    // Buffer times from the RTP timestamps alone (from the first packet's arrival): a burst
    // after a stall must not squeeze frames onto one timestamp, as arrival-time smoothing
    // does (two video frames on one millisecond are an error to WebM readers).
    jitter.set_property_from_str("mode", "none");
    let depay = element(plan.depayloader)?;
    // After a loss the file gets no picture that refers to what is missing (the depayloader
    // waits for the next keyframe), and that keyframe is asked for: the request reaches the
    // appsrc, where `requests` takes it to the media worker.
    if plan.media == "video" {
        set_if_known(&depay, "wait-for-keyframe", "true");
        set_if_known(&depay, "request-keyframe", "true");
        if let Some(pad) = src.static_pad("src") {
            requests.watch(&pad);
        }
    }
    // rtpopusdepay (1.22) says no sample rate, which the WebM muxer needs: Opus in RTP is
    // always 48 kHz (RFC 7587), so it is added.
    // H.264 also needs a parser: MP4 wants the picture size and codec data, which only the
    // stream's SPS says (h264parse, gst-plugins-bad).
    let fix = if plan.encoding == "H264" {
        element("h264parse")?
    } else {
        element("capssetter")?
    };
    if plan.encoding == "OPUS" {
        fix.set_property(
            "caps",
            gst::Caps::builder("audio/x-opus")
                .field("rate", 48_000i32)
                .build(),
        );
    }
    // Video frames are timed by the camera's capture times, which jitter on a busy machine
    // (frames 15 to 50 ms apart): readers that assume a constant rate (ffmpeg guesses 30 fps)
    // put two of them on one tick. A Matroska DefaultDuration of 2 ms (500 fps, the finest
    // ffmpeg takes) gives them ticks fine enough; the blocks keep their own times.
    let video_caps = match plan.encoding {
        "VP8" => Some("video/x-vp8"),
        "VP9" => Some("video/x-vp9"),
        "AV1" => Some("video/x-av1"),
        _ => None,
    };
    if let Some(media) = video_caps {
        fix.set_property(
            "caps",
            gst::Caps::builder(media)
                .field("framerate", gst::Fraction::new(500, 1))
                .build(),
        );
    }
    let mux = element(plan.muxer)?;
    match plan.muxer {
        "mp4mux" => {
            // Fragments written as they fill: a killed node leaves a playable file.
            mux.set_property_from_str("fragment-duration", "1000");
            set_if_known(&mux, "streamable", "true");
        }
        _ => {
            // Clusters are written as they fill (a killed node leaves a playable file); not
            // "streamable", so that a proper stop seeks back and writes duration and cues.
            set_if_known(&mux, "offset-to-zero", "true");
        }
    }
    let sink = element("filesink")?;
    sink.set_property("location", file.display().to_string());
    // Not synchronised to the clock: write as fast as packets come.
    sink.set_property("sync", false);
    // What a killed node loses is what sits in this buffer: 8 KiB is 1.6 s of 40 kbit/s
    // Opus (the default 64 KiB would be 13 s), a fraction of a second of video.
    sink.set_property("buffer-size", 8192u32);
    let chain = [src.upcast_ref(), &jitter, &depay, &fix, &mux, &sink];
    pipeline
        .add_many(chain)
        .map_err(|e| RecordingError::Pipeline(format!("assembling the pipeline: {e}")))?;
    gst::Element::link_many(chain)
        .map_err(|e| RecordingError::Pipeline(format!("linking the pipeline: {e}")))?;
    Ok(Built { pipeline, src })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_codec_has_its_container_and_others_are_refused_by_name() {
        assert_eq!(plan("audio/opus", 48000).unwrap().extension, "webm");
        assert_eq!(plan("video/VP8", 90000).unwrap().muxer, "webmmux");
        assert_eq!(plan("video/H264", 90000).unwrap().extension, "mp4");
        let e = plan("audio/PCMU", 8000).unwrap_err().to_string();
        assert!(e.contains("audio/PCMU"), "{e}");
    }

    #[test]
    fn opus_packets_become_a_webm_file() {
        gst::init().unwrap();
        let file = std::env::temp_dir().join(format!("opus-{}.webm", rand::random::<u32>()));
        let p = plan("audio/opus", 48000).unwrap();
        let b = build(&p, &file, &KeyframeRequests::default()).unwrap();
        b.pipeline.set_state(gst::State::Playing).unwrap();
        for i in 0..50u16 {
            // A 20 ms CELT silence frame (TOC 0xF8), 960 ticks apart.
            let mut rtp = vec![0x80, p.payload_type, (i >> 8) as u8, i as u8];
            rtp.extend_from_slice(&(u32::from(i) * 960).to_be_bytes());
            rtp.extend_from_slice(&[0, 0, 0, 1, 0xF8, 0xFF, 0xFE]);
            b.src.push_buffer(gst::Buffer::from_mut_slice(rtp)).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        b.src.end_of_stream().unwrap();
        let bus = b.pipeline.bus().unwrap();
        let end = bus
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(5),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .unwrap();
        let _ = b.pipeline.set_state(gst::State::Null);
        assert!(
            matches!(end.view(), gst::MessageView::Eos(_)),
            "{:?}",
            end.view()
        );
        assert!(std::fs::metadata(&file).unwrap().len() > 100);
        let _ = std::fs::remove_file(&file);
    }
}
