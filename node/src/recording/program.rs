//! The GStreamer pipeline of a room recording (the room's "program"): one video stream that
//! follows the active speaker, copied without decoding, and one audio stream mixing every
//! participant:
//!
//! ```text
//! appsrc (VP8 RTP, one stream the forwarder switches) → rtpjitterbuffer → rtpvp8depay ─┐
//! appsrc (a black placeholder keyframe, while there is no video) ───────────── funnel ◀┘
//!                                                                                  ↓ tee ───┐
//! audiotestsrc (live silence) ─────────────────────────────┐                                 │
//! appsrc (Opus RTP) → rtpjitterbuffer → rtpopusdepay → opusdec → audioconvert → audioresample ┤
//!   … one branch per audio track, added and removed while it runs                 audiomixer │
//!                                           → audioconvert → opusenc → queue → webmmux ◀────┘
//!                                                                               → filesink
//! ```
//!
//! The forwarder switches the video subscription between tracks at keyframes with continuous
//! sequence numbers and timestamps, so the depayloader sees one stream whose picture size may
//! change at a keyframe (Matroska allows that). Audio is decoded, mixed and encoded again:
//! every branch is timed on the pipeline's clock (live sources), and the live silence keeps
//! the mixer going when nobody publishes audio, so participants can come and go.
//!
//! The file always declares its video stream, even when the recording starts before any
//! camera: the muxer writes nothing until every stream has data, so while there is no video
//! a placeholder picture keeps it writing (see [`super::video_gate`]), and the speakers'
//! video takes over at its first keyframe.

use super::RecordingError;
use super::live::{Live, LiveSpec};
use super::pipeline::{JITTER_LATENCY_MS, element, set_if_known};
use super::video_gate::{KeyframeRequests, VideoGate, placeholder_caps};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::path::Path;

/// The payload types the program's subscriptions are given (the forwarder rewrites packets
/// to them).
pub const VIDEO_PT: u8 = 96;
pub const AUDIO_PT: u8 = 111;
/// How long the mixer waits for an audio branch beyond its measured latency: more than a
/// branch's jitter buffer, so a branch added later (whose latency the mixer did not measure
/// at start) is still mixed in time.
const MIXER_EXTRA_LATENCY_MS: u64 = 500;
/// Encoded audio held while the muxer waits for the first video frame (it writes both
/// streams interleaved), or for the next video after a speaker without video.
const AUDIO_QUEUE_SECS: u64 = 20;
/// Bytes an appsrc queues before dropping (a stuck disk must not grow the node's memory).
const APPSRC_MAX_BYTES: u64 = 2_500_000;

/// The running program pipeline's parts the recording thread drives.
pub struct Program {
    pub pipeline: gst::Pipeline,
    /// The speaker's video (RTP).
    pub video: gst_app::AppSrc,
    /// The placeholder picture while there is no video, and the keyframe requests.
    pub gate: VideoGate,
    mixer: gst::Element,
    /// RTMP and HLS outputs, if any were asked for.
    pub live: Option<Live>,
}

/// One participant's audio in the mix.
pub struct AudioBranch {
    pub src: gst_app::AppSrc,
    elements: Vec<gst::Element>,
    mixer_pad: gst::Pad,
}

fn rtp_source(media: &str, encoding: &str, clock_rate: i32, pt: u8) -> gst_app::AppSrc {
    let caps = gst::Caps::builder("application/x-rtp")
        .field("media", media)
        .field("clock-rate", clock_rate)
        .field("encoding-name", encoding)
        .field("payload", pt as i32);
    let caps = if encoding == "OPUS" {
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
    set_if_known(src.upcast_ref(), "leaky-type", "upstream");
    src
}

fn add_and_link(pipeline: &gst::Pipeline, chain: &[&gst::Element]) -> Result<(), RecordingError> {
    pipeline
        .add_many(chain.iter().copied())
        .map_err(|e| RecordingError::Pipeline(format!("assembling the pipeline: {e}")))?;
    gst::Element::link_many(chain.iter().copied())
        .map_err(|e| RecordingError::Pipeline(format!("linking the pipeline: {e}")))
}

/// An element's static pad.
fn pad(e: &gst::Element, name: &str) -> Result<gst::Pad, RecordingError> {
    e.static_pad(name)
        .ok_or_else(|| RecordingError::Pipeline(format!("{} has no {name} pad", e.name())))
}

/// Links `from`'s source pad to a new request pad of `to` (a muxer or mixer).
fn link_request(
    from: &gst::Element,
    to: &gst::Element,
    template: &str,
) -> Result<gst::Pad, RecordingError> {
    let sink = to
        .request_pad_simple(template)
        .ok_or_else(|| RecordingError::Pipeline(format!("{} gave no {template} pad", to.name())))?;
    let src = from
        .static_pad("src")
        .ok_or_else(|| RecordingError::Pipeline(format!("{} has no src pad", from.name())))?;
    src.link(&sink)
        .map_err(|e| RecordingError::Pipeline(format!("linking {template}: {e:?}")))?;
    Ok(sink)
}

impl Program {
    /// Builds the pipeline writing `file` (WebM: VP8 and Opus), not started, with the live
    /// outputs `live` asks for.
    pub fn build(
        file: &Path,
        live: &LiveSpec,
        requests: KeyframeRequests,
    ) -> Result<Program, RecordingError> {
        let pipeline = gst::Pipeline::new();
        let mux = element("webmmux")?;
        // Clusters are written as they fill (a killed node leaves a playable file); a proper
        // stop seeks back to write duration and cues.
        set_if_known(&mux, "offset-to-zero", "true");
        let sink = element("filesink")?;
        sink.set_property("location", file.display().to_string());
        sink.set_property("sync", false);
        sink.set_property("buffer-size", 8192u32);
        add_and_link(&pipeline, &[&mux, &sink])?;

        let (video, tee, gate) = {
            let src = rtp_source("video", "VP8", 90_000, VIDEO_PT);
            requests.watch(&pad(src.upcast_ref(), "src")?);
            let jitter = element("rtpjitterbuffer")?;
            jitter.set_property("latency", JITTER_LATENCY_MS);
            // RTP timing only: frames of a burst keep their own times (see `pipeline`).
            jitter.set_property_from_str("mode", "none");
            let depay = element("rtpvp8depay")?;
            // After a loss the file gets no picture that refers to what is missing, and a
            // keyframe is asked for (see `video_gate`).
            set_if_known(&depay, "wait-for-keyframe", "true");
            set_if_known(&depay, "request-keyframe", "true");
            // The picture follows cameras whose capture times jitter (frames 15 to 50 ms
            // apart on a busy machine): the stream has no frame rate, only millisecond
            // times. Readers that assume a constant rate put two such frames on one tick
            // (ffmpeg guesses 30 fps and reports "non monotonically increasing dts"). A
            // DefaultDuration of 2 ms (500 fps, the finest ffmpeg takes from Matroska) gives
            // them ticks fine enough for any two real frames.
            let framerate = gst::Fraction::new(500, 1);
            let rate = element("capssetter")?;
            rate.set_property(
                "caps",
                gst::Caps::builder("video/x-vp8")
                    .field("framerate", framerate)
                    .build(),
            );
            // The real video and the placeholder picture while there is none.
            let funnel = element("funnel")?;
            let queue = element("queue")?;
            let tee = element("tee")?;
            add_and_link(
                &pipeline,
                &[
                    src.upcast_ref(),
                    &jitter,
                    &depay,
                    &rate,
                    &funnel,
                    &tee,
                    &queue,
                ],
            )?;
            let gate = VideoGate::new(
                placeholder_caps(framerate),
                &pad(&rate, "src")?,
                &pad(&funnel, "src")?,
                requests,
            )?;
            pipeline
                .add(gate.src())
                .map_err(|e| RecordingError::Pipeline(format!("adding the placeholder: {e}")))?;
            link_request(gate.src().upcast_ref(), &funnel, "sink_%u")?;
            link_request(&queue, &mux, "video_%u")?;
            (src, tee, gate)
        };

        let silence = element("audiotestsrc")?;
        silence.set_property("is-live", true);
        silence.set_property_from_str("wave", "silence");
        // 20 ms buffers, as Opus frames.
        silence.set_property("samplesperbuffer", 960i32);
        let raw = gst::Caps::builder("audio/x-raw")
            .field("rate", 48_000i32)
            .field("channels", 2i32)
            .build();
        let silence_caps = element("capsfilter")?;
        silence_caps.set_property("caps", &raw);
        let mixer = element("audiomixer")?;
        mixer.set_property("latency", MIXER_EXTRA_LATENCY_MS * 1_000_000);
        let mixed_caps = element("capsfilter")?;
        mixed_caps.set_property("caps", &raw);
        let audio_tee = element("tee")?;
        let convert = element("audioconvert")?;
        let encoder = element("opusenc")?;
        let queue = element("queue")?;
        queue.set_property("max-size-buffers", 0u32);
        queue.set_property("max-size-bytes", 0u32);
        queue.set_property("max-size-time", AUDIO_QUEUE_SECS * 1_000_000_000);
        add_and_link(&pipeline, &[&silence, &silence_caps])?;
        add_and_link(
            &pipeline,
            &[&mixer, &mixed_caps, &audio_tee, &convert, &encoder, &queue],
        )?;
        link_request(&silence_caps, &mixer, "sink_%u")?;
        link_request(&queue, &mux, "audio_%u")?;
        let live = if live.is_empty() {
            None
        } else {
            Some(Live::build(&pipeline, Some(&tee), &audio_tee, live)?)
        };
        Ok(Program {
            pipeline,
            video,
            gate,
            mixer,
            live,
        })
    }

    /// Adds one participant's Opus track to the mix while the pipeline runs.
    pub fn add_audio(&self) -> Result<AudioBranch, RecordingError> {
        let src = rtp_source("audio", "OPUS", 48_000, AUDIO_PT);
        let jitter = element("rtpjitterbuffer")?;
        jitter.set_property("latency", JITTER_LATENCY_MS);
        let depay = element("rtpopusdepay")?;
        let decoder = element("opusdec")?;
        // Concealment for lost packets rather than clicks.
        decoder.set_property("plc", true);
        let convert = element("audioconvert")?;
        let resample = element("audioresample")?;
        let elements: Vec<gst::Element> = vec![
            src.clone().upcast(),
            jitter,
            depay,
            decoder,
            convert,
            resample,
        ];
        let refs: Vec<&gst::Element> = elements.iter().collect();
        add_and_link(&self.pipeline, &refs)?;
        let last = elements
            .last()
            .cloned()
            .unwrap_or_else(|| src.clone().upcast());
        let mixer_pad = link_request(&last, &self.mixer, "sink_%u")?;
        for e in &elements {
            e.sync_state_with_parent()
                .map_err(|e| RecordingError::Pipeline(format!("starting an audio branch: {e}")))?;
        }
        // The new branch's latency (its jitter buffer) joins the pipeline's.
        let _ = self.pipeline.recalculate_latency();
        Ok(AudioBranch {
            src,
            elements,
            mixer_pad,
        })
    }

    /// Takes a branch out of the mix (its participant left): stopped and removed, so the
    /// mixer no longer waits for it.
    pub fn remove_audio(&self, branch: AudioBranch) {
        let _ = branch.mixer_pad.peer().map(|p| p.unlink(&branch.mixer_pad));
        self.mixer.release_request_pad(&branch.mixer_pad);
        for e in &branch.elements {
            let _ = e.set_state(gst::State::Null);
        }
        let refs: Vec<&gst::Element> = branch.elements.iter().collect();
        let _ = self.pipeline.remove_many(refs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two participants' Opus (20 ms CELT silence frames), one joining late and one leaving
    /// early, mixed into one audio stream as long as the recording; no video, so the video
    /// stream gets the placeholder picture.
    #[test]
    fn audio_branches_come_and_go_and_the_mix_lasts_the_whole_recording() {
        gstreamer::init().unwrap();
        let file = std::env::temp_dir().join(format!("prog-{}.webm", rand::random::<u32>()));
        let p = Program::build(&file, &LiveSpec::default(), KeyframeRequests::default()).unwrap();
        p.pipeline.set_state(gst::State::Playing).unwrap();
        let packet = |i: u32| {
            let mut rtp = vec![0x80, AUDIO_PT, (i >> 8) as u8, i as u8];
            rtp.extend_from_slice(&(i * 960).to_be_bytes());
            rtp.extend_from_slice(&[0, 0, 0, 1, 0xF8, 0xFF, 0xFE]);
            gst::Buffer::from_mut_slice(rtp)
        };
        let start = std::time::Instant::now();
        let mut a = Some(p.add_audio().unwrap());
        let mut b = None;
        for i in 0..175u32 {
            if let Some(a) = &a {
                a.src.push_buffer(packet(i)).unwrap();
            }
            if i == 25 {
                b = Some(p.add_audio().unwrap());
            }
            if let Some(b) = &b {
                b.src.push_buffer(packet(i - 25)).unwrap();
            }
            if i == 150
                && let Some(a) = a.take()
            {
                p.remove_audio(a);
            }
            // As the recording thread does.
            p.gate
                .fill(std::time::Instant::now(), p.pipeline.current_running_time());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let truth = start.elapsed().as_secs_f64();
        p.pipeline.send_event(gst::event::Eos::new());
        let bus = p.pipeline.bus().unwrap();
        let end = bus
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(5),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .unwrap();
        let _ = p.pipeline.set_state(gst::State::Null);
        assert!(
            matches!(end.view(), gst::MessageView::Eos(_)),
            "{:?}",
            end.view()
        );
        let out = std::process::Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "format=duration",
                "-of",
                "csv=p=0",
            ])
            .arg(&file)
            .output()
            .unwrap();
        let duration: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert!(
            (duration - truth).abs() < 0.5,
            "{duration} s in the file, {truth} s recorded"
        );
        // No video came: the file's video stream has the placeholder picture (a keyframe
        // after FIRST_WAIT), and the whole file decodes.
        let frames = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
            .args(["-show_entries", "stream=codec_name,nb_read_frames"])
            .args(["-of", "csv=p=0"])
            .arg(&file)
            .output()
            .unwrap();
        let frames = String::from_utf8_lossy(&frames.stdout).trim().to_owned();
        assert_eq!(frames, "vp8,1", "one placeholder picture in 3.5 s");
        let decoded = std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i"])
            .arg(&file)
            .args(["-f", "null", "-"])
            .output()
            .unwrap();
        let errors = String::from_utf8_lossy(&decoded.stderr);
        assert!(decoded.status.success() && errors.is_empty(), "{errors}");
        let _ = std::fs::remove_file(&file);
    }
}
