//! A publisher's outgoing media on its peer connection: an Opus-like audio track with the
//! RFC 6464 audio-level extension, and a VP8-like video track sent as one stream or as three
//! simulcast layers (RIDs `q`, `h`, `f`, each with MID and RID header extensions, as browsers
//! send them). Speakers take turns: out of turn, audio falls to comfort noise (DTX).

use crate::conn::{AUDIO_LEVEL_URI, MID_URI, RID_URI};
use crate::media::{AudioSource, MediaPacket, VideoProfile, VideoSource, epoch};
use anyhow::Context;
use bytes::Bytes;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverId};
use std::time::{Duration, Instant};

/// Simulcast RIDs from lowest to highest, and the divisor of the top bitrate each sends
/// (roughly what a browser sends at a quarter, half and full resolution).
pub const LAYERS: [(&str, u32); 3] = [("q", 8), ("h", 3), ("f", 1)];

/// A publisher's audio.
#[derive(Clone, Copy, Debug)]
pub struct AudioProfile {
    pub bitrate_bps: u32,
    pub ptime: Duration,
    /// Send the RFC 6464 audio-level header extension.
    pub audio_level: bool,
}

/// Who speaks when: publisher `index` of `count` speaks during its `turn` of every round,
/// counted from the process-wide epoch so that all publishers of a room agree.
#[derive(Clone, Copy, Debug)]
pub struct SpeakerTurn {
    pub index: u32,
    pub count: u32,
    pub turn: Duration,
}

impl SpeakerTurn {
    pub fn speaking(&self, now: Instant) -> bool {
        if self.turn.is_zero() || self.count <= 1 {
            return true;
        }
        let since = now.saturating_duration_since(epoch());
        let slot = (since.as_secs_f64() / self.turn.as_secs_f64()) as u64;
        slot % self.count as u64 == self.index as u64
    }
}

/// What a publisher sends.
#[derive(Clone, Debug)]
pub struct Publish {
    pub video: Option<VideoProfile>,
    pub simulcast: bool,
    pub audio: Option<AudioProfile>,
    pub speaker: Option<SpeakerTurn>,
}

/// One outgoing RTP stream (a simulcast layer, or the only stream of a track).
struct OutStream {
    sender: RTCRtpSenderId,
    ssrc: u32,
    seq: u16,
    payload_type: u8,
    /// Negotiated header extensions with their values: (MID id, MID), (RID id, RID).
    mid: Option<(u8, Bytes)>,
    rid: Option<(u8, Bytes)>,
    /// The RID this stream was created with ("" without simulcast).
    rid_name: &'static str,
    audio_level: Option<u8>,
}

impl OutStream {
    fn new(sender: RTCRtpSenderId, ssrc: u32, rid_name: &'static str) -> Self {
        Self {
            sender,
            ssrc,
            seq: rand::random(),
            payload_type: 0,
            mid: None,
            rid: None,
            rid_name,
            audio_level: None,
        }
    }

    /// Learns the payload type and header extension ids the answer settled on.
    fn negotiate(&mut self, pc: &mut RTCPeerConnection) {
        let mid = pc
            .rtp_transceiver(RTCRtpTransceiverId::from(self.sender))
            .and_then(|t| t.mid().clone());
        let Some(mut s) = pc.rtp_sender(self.sender) else {
            return;
        };
        let p = &s.get_parameters().rtp_parameters;
        self.payload_type = p.codecs.first().map_or(0, |c| c.payload_type);
        let id = |uri: &str| {
            p.header_extensions
                .iter()
                .find(|h| h.uri == uri)
                .map(|h| h.id as u8)
        };
        self.mid = id(MID_URI).zip(mid.map(|m| Bytes::from(m.into_bytes())));
        self.rid = (!self.rid_name.is_empty())
            .then(|| id(RID_URI))
            .flatten()
            .map(|i| (i, Bytes::from_static(self.rid_name.as_bytes())));
        self.audio_level = id(AUDIO_LEVEL_URI);
    }

    fn send(
        &mut self,
        pc: &mut RTCPeerConnection,
        m: MediaPacket,
        now: Instant,
    ) -> anyhow::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = rtp::header::Header {
            version: 2,
            marker: m.marker,
            payload_type: self.payload_type,
            sequence_number: self.seq,
            timestamp: m.timestamp,
            ssrc: self.ssrc,
            ..Default::default()
        };
        if let Some((id, mid)) = &self.mid {
            header.set_extension(*id, mid.clone())?;
        }
        if let Some((id, rid)) = &self.rid {
            header.set_extension(*id, rid.clone())?;
        }
        if let (Some(id), Some(level)) = (self.audio_level, m.audio_level) {
            // RFC 6464: the voice-activity bit, then the level in -dBov.
            let voice = if level < crate::media::SILENT_LEVEL {
                0x80
            } else {
                0
            };
            header.set_extension(id, Bytes::copy_from_slice(&[voice | level]))?;
        }
        let packet = rtp::packet::Packet {
            header,
            payload: m.payload,
        };
        pc.rtp_sender(self.sender)
            .context("sender gone")?
            .write_rtp(now, packet)
            .context("writing RTP")?;
        Ok(())
    }
}

fn encoding(
    ssrc: u32,
    rid: &str,
    mime: &str,
    clock_rate: u32,
    channels: u16,
) -> RTCRtpEncodingParameters {
    RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters {
            rid: rid.to_owned(),
            ssrc: Some(ssrc),
            ..Default::default()
        },
        codec: RTCRtpCodec {
            mime_type: mime.into(),
            clock_rate,
            channels,
            ..Default::default()
        },
        active: true,
        ..Default::default()
    }
}

/// A publisher's tracks, sources and send schedule.
pub struct Publisher {
    /// Video streams (one, or one per simulcast layer) with their sources.
    video: Vec<(OutStream, VideoSource)>,
    frame_interval: Duration,
    audio: Option<(OutStream, AudioSource, bool)>,
    speaker: Option<SpeakerTurn>,
    next_video: Option<Instant>,
    next_audio: Option<Instant>,
}

impl Publisher {
    /// Adds the tracks to `pc` (before the offer).
    pub fn add_tracks(pc: &mut RTCPeerConnection, name: &str, p: &Publish) -> anyhow::Result<Self> {
        let stream_id = name.to_owned();
        let mut audio = None;
        if let Some(a) = p.audio {
            let ssrc = rand::random::<u32>();
            let sender = pc.add_track(MediaStreamTrack::new(
                stream_id.clone(),
                format!("{name}-audio"),
                "audio".into(),
                RtpCodecKind::Audio,
                vec![encoding(ssrc, "", MIME_TYPE_OPUS, 48_000, 2)],
            ))?;
            audio = Some((
                OutStream::new(sender, ssrc, ""),
                AudioSource::new(a.bitrate_bps, a.ptime),
                a.audio_level,
            ));
        }
        let mut video = Vec::new();
        let mut frame_interval = Duration::from_secs(1);
        if let Some(v) = p.video {
            let layers: &[(&'static str, u32)] = if p.simulcast { &LAYERS } else { &[("", 1)] };
            let ssrcs: Vec<u32> = layers.iter().map(|_| rand::random()).collect();
            let sender = pc.add_track(MediaStreamTrack::new(
                stream_id,
                format!("{name}-video"),
                "video".into(),
                RtpCodecKind::Video,
                layers
                    .iter()
                    .zip(&ssrcs)
                    .map(|((rid, _), ssrc)| encoding(*ssrc, rid, MIME_TYPE_VP8, 90_000, 0))
                    .collect(),
            ))?;
            for ((rid, share), ssrc) in layers.iter().zip(ssrcs) {
                let source = VideoSource::new(VideoProfile {
                    bitrate_bps: v.bitrate_bps / share,
                    ..v
                });
                frame_interval = source.frame_interval();
                video.push((OutStream::new(sender, ssrc, rid), source));
            }
        }
        Ok(Self {
            video,
            frame_interval,
            audio,
            speaker: p.speaker,
            next_video: None,
            next_audio: None,
        })
    }

    /// Learns what the answer negotiated (after applying it).
    pub fn negotiate(&mut self, pc: &mut RTCPeerConnection) {
        for (s, _) in &mut self.video {
            s.negotiate(pc);
        }
        if let Some((s, _, level)) = &mut self.audio {
            s.negotiate(pc);
            if !*level {
                s.audio_level = None;
            }
        }
    }

    /// Starts sending (once connected).
    pub fn start(&mut self, now: Instant) {
        self.next_video = (!self.video.is_empty()).then_some(now);
        self.next_audio = self.audio.as_ref().map(|_| now);
    }

    /// When something is due next.
    pub fn next_due(&self) -> Option<Instant> {
        match (self.next_video, self.next_audio) {
            (Some(v), Some(a)) => Some(v.min(a)),
            (v, a) => v.or(a),
        }
    }

    /// The next frame of every layer comes as a keyframe.
    pub fn request_keyframe(&mut self) {
        for (_, src) in &mut self.video {
            src.request_keyframe();
        }
    }

    /// Sends everything due at `now`; returns the packets sent. Slots missed because the task
    /// woke late are sent now, so that the offered load keeps its rate; after a stall of more
    /// than [`MAX_BEHIND`] the schedule starts again from now instead.
    pub fn send_due(&mut self, pc: &mut RTCPeerConnection, now: Instant) -> anyhow::Result<u64> {
        let mut sent = 0;
        while let Some(due) = self.next_video.filter(|d| *d <= now) {
            for (stream, src) in &mut self.video {
                for m in src.next_frame(now) {
                    stream.send(pc, m, now)?;
                    sent += 1;
                }
            }
            self.next_video = Some(next_slot(due, self.frame_interval, now));
        }
        while let (Some(due), Some((stream, src, _))) =
            (self.next_audio.filter(|d| *d <= now), self.audio.as_mut())
        {
            let speaking = self.speaker.is_none_or(|s| s.speaking(now));
            if speaking || src.dtx_due(now) {
                stream.send(pc, src.next_packet(now, speaking), now)?;
                sent += 1;
            } else {
                src.skip();
            }
            self.next_audio = Some(next_slot(due, src.interval(), now));
        }
        Ok(sent)
    }
}

/// How far behind its schedule a publisher may fall and still catch up.
pub const MAX_BEHIND: Duration = Duration::from_millis(500);

/// The slot after `due`, or one interval from now after a stall longer than [`MAX_BEHIND`].
fn next_slot(due: Instant, interval: Duration, now: Instant) -> Instant {
    let next = due + interval;
    if next + MAX_BEHIND < now {
        now + interval
    } else {
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speakers_take_turns_one_at_a_time() {
        let turn = Duration::from_secs(2);
        let speakers: Vec<SpeakerTurn> = (0..3)
            .map(|index| SpeakerTurn {
                index,
                count: 3,
                turn,
            })
            .collect();
        for slot in 0..9u32 {
            let at = epoch() + turn * slot + Duration::from_millis(500);
            let speaking: Vec<u32> = speakers
                .iter()
                .filter(|s| s.speaking(at))
                .map(|s| s.index)
                .collect();
            assert_eq!(speaking, [slot % 3], "slot {slot}");
        }
        let alone = SpeakerTurn {
            index: 0,
            count: 1,
            turn,
        };
        assert!(alone.speaking(epoch() + turn * 5));
    }

    #[test]
    fn a_late_publisher_catches_up_short_stalls_only() {
        let t = Instant::now();
        let i = Duration::from_millis(20);
        // 100 ms late: the next slot is still the one after `due`, so the loop sends it too.
        assert_eq!(next_slot(t, i, t + Duration::from_millis(100)), t + i);
        // Two seconds late: start again from now.
        let now = t + Duration::from_secs(2);
        assert_eq!(next_slot(t, i, now), now + i);
    }
}
