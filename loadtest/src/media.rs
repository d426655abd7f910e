//! Synthetic media with realistic packet sizes and timing, and send timestamps inside.
//!
//! Video looks like VP8 to an SFU: every frame starts with a payload descriptor whose S bit is
//! set and a payload header whose P bit says whether it is a key frame, so keyframe detection
//! and layer switching work; the rest is filler. Every packet carries the time it was sent
//! (microseconds since a process-wide epoch) and its frame number, so a receiver in the same
//! process measures end-to-end latency without clock synchronisation.

use bytes::{BufMut, Bytes, BytesMut};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Bytes of RTP payload per packet at most (leaves room for headers and SRTP under 1,200).
pub const MAX_PAYLOAD: usize = 1_100;
/// Bytes after the codec descriptor: send time (8) and frame number (4).
const STAMP: usize = 12;

/// The instant all send timestamps count from.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn micros_since_epoch(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_micros() as u64
}

/// One packet to send: payload, marker bit and RTP timestamp.
pub struct MediaPacket {
    pub payload: Bytes,
    pub marker: bool,
    pub timestamp: u32,
    /// RFC 6464 audio level (-dBov, 127 is silence) for audio packets.
    pub audio_level: Option<u8>,
}

/// What a video source looks like.
#[derive(Clone, Copy, Debug)]
pub struct VideoProfile {
    pub bitrate_bps: u32,
    pub fps: u32,
    /// A key frame every this many frames.
    pub keyframe_interval: u32,
    /// Key frames are this many times larger than delta frames.
    pub keyframe_factor: u32,
}

/// Generates VP8-like frames: a keyframe every `keyframe_interval` frames (and when asked),
/// `keyframe_factor` times the size of a delta frame, split into packets of at most
/// [`MAX_PAYLOAD`] bytes.
pub struct VideoSource {
    profile: VideoProfile,
    frame: u32,
    force_keyframe: bool,
}

impl VideoSource {
    pub fn new(profile: VideoProfile) -> Self {
        Self {
            profile,
            frame: 0,
            force_keyframe: true,
        }
    }

    pub fn frame_interval(&self) -> Duration {
        Duration::from_secs(1) / self.profile.fps.max(1)
    }

    /// The next keyframe comes at once (a PLI arrived).
    pub fn request_keyframe(&mut self) {
        self.force_keyframe = true;
    }

    /// The packets of the next frame.
    pub fn next_frame(&mut self, now: Instant) -> Vec<MediaPacket> {
        let p = self.profile;
        let key = self.force_keyframe || self.frame.is_multiple_of(p.keyframe_interval.max(1));
        self.force_keyframe = false;
        // Average frame size such that key frames plus delta frames average the bitrate.
        let per_frame = (p.bitrate_bps / 8 / p.fps.max(1)) as usize;
        let n = p.keyframe_interval.max(1) as usize;
        let delta = per_frame * n / (n - 1 + p.keyframe_factor as usize);
        let size = if key {
            delta * p.keyframe_factor as usize
        } else {
            delta
        }
        .max(STAMP + 2);
        let packets = size.div_ceil(MAX_PAYLOAD);
        let timestamp = self.frame.wrapping_mul(90_000 / p.fps.max(1));
        let stamp = micros_since_epoch(now);
        let out = (0..packets)
            .map(|i| {
                let len = if i + 1 == packets {
                    size - MAX_PAYLOAD * i
                } else {
                    MAX_PAYLOAD
                };
                let mut b = BytesMut::with_capacity(len.max(STAMP + 2));
                // VP8 payload descriptor: S bit on the first packet of the frame.
                b.put_u8(if i == 0 { 0x10 } else { 0x00 });
                // VP8 payload header: P=0 for a key frame.
                b.put_u8(if key { 0x00 } else { 0x01 });
                b.put_u64(stamp);
                b.put_u32(self.frame);
                b.resize(len.max(STAMP + 2), 0xa5);
                MediaPacket {
                    payload: b.freeze(),
                    marker: i + 1 == packets,
                    timestamp,
                    audio_level: None,
                }
            })
            .collect();
        self.frame += 1;
        out
    }
}

/// Silence is sent as a comfort-noise packet this often (Opus DTX), so that receivers keep
/// their sequence numbers continuous and the stream is known to be alive.
pub const DTX_INTERVAL: Duration = Duration::from_millis(400);
/// Bytes of a comfort-noise packet: TOC byte, send time and packet number.
const DTX_BYTES: usize = 1 + STAMP;
/// RFC 6464 level (-dBov) of a comfort-noise packet: silence.
pub const SILENT_LEVEL: u8 = 127;

/// Generates Opus-like packets: one every `ptime`, full size while speaking, a small
/// comfort-noise packet every [`DTX_INTERVAL`] while silent.
pub struct AudioSource {
    /// Bytes of a packet while speaking.
    bytes: usize,
    ptime: Duration,
    /// Packet slots elapsed, sent or skipped: the RTP timestamp keeps running through silence.
    slot: u32,
    last_sent: Option<Instant>,
}

impl AudioSource {
    pub fn new(bitrate_bps: u32, ptime: Duration) -> Self {
        let bytes = (bitrate_bps as f64 / 8.0 * ptime.as_secs_f64()) as usize;
        Self {
            bytes: bytes.max(DTX_BYTES + 1),
            ptime: if ptime.is_zero() {
                Duration::from_millis(20)
            } else {
                ptime
            },
            slot: 0,
            last_sent: None,
        }
    }

    /// Time between packet slots (the packetisation time).
    pub fn interval(&self) -> Duration {
        self.ptime
    }

    /// While silent: whether a comfort-noise packet is due now.
    pub fn dtx_due(&self, now: Instant) -> bool {
        self.last_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= DTX_INTERVAL)
    }

    /// Lets a slot pass without a packet (silence between comfort-noise packets).
    pub fn skip(&mut self) {
        self.slot = self.slot.wrapping_add(1);
    }

    /// The packet of the current slot: speech, or comfort noise at the silent level.
    pub fn next_packet(&mut self, now: Instant, speaking: bool) -> MediaPacket {
        let len = if speaking { self.bytes } else { DTX_BYTES };
        let mut b = BytesMut::with_capacity(len);
        b.put_u8(0xfc); // an Opus TOC byte: CELT fullband, 20 ms frames
        b.put_u64(micros_since_epoch(now));
        b.put_u32(self.slot);
        b.resize(len, 0x5a);
        let samples = (48_000.0 * self.ptime.as_secs_f64()) as u32;
        let timestamp = self.slot.wrapping_mul(samples);
        self.slot = self.slot.wrapping_add(1);
        self.last_sent = Some(now);
        MediaPacket {
            payload: b.freeze(),
            marker: false,
            timestamp,
            // Speech at a level that varies like a voice would (25 to 40 -dBov).
            audio_level: Some(if speaking {
                25 + (self.slot % 16) as u8
            } else {
                SILENT_LEVEL
            }),
        }
    }
}

/// The send time embedded in a received payload (video offset 2, audio offset 1).
pub fn sent_at(payload: &[u8], video: bool) -> Option<Instant> {
    let off = if video { 2 } else { 1 };
    let raw = payload.get(off..off + 8)?;
    let micros = u64::from_be_bytes(raw.try_into().ok()?);
    Some(epoch() + Duration::from_micros(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_averages_its_bitrate_and_marks_keyframes() {
        let mut v = VideoSource::new(VideoProfile {
            bitrate_bps: 1_500_000,
            fps: 30,
            keyframe_interval: 60,
            keyframe_factor: 5,
        });
        let now = Instant::now();
        let mut bytes = 0;
        let mut keys = 0;
        for _ in 0..300 {
            let frame = v.next_frame(now);
            assert!(frame.last().unwrap().marker);
            assert_eq!(frame[0].payload[0], 0x10);
            if frame[0].payload[1] == 0 {
                keys += 1;
            }
            bytes += frame.iter().map(|p| p.payload.len()).sum::<usize>();
        }
        let bps = bytes * 8 / 10;
        assert!((1_400_000..1_600_000).contains(&bps), "{bps}");
        assert_eq!(keys, 5);
        assert!(sent_at(&v.next_frame(now)[0].payload, true).is_some());
    }

    #[test]
    fn audio_sends_its_bitrate_and_falls_to_comfort_noise_when_silent() {
        let mut a = AudioSource::new(32_000, Duration::from_millis(20));
        let t0 = Instant::now();
        let speech = a.next_packet(t0, true);
        assert_eq!(speech.payload.len(), 80, "32 kbps in 20 ms packets");
        assert!(speech.audio_level.is_some_and(|l| l < SILENT_LEVEL));
        // Silent: nothing until the DTX interval has passed, then a small silent packet.
        let t1 = t0 + Duration::from_millis(20);
        assert!(!a.dtx_due(t1));
        a.skip();
        let t2 = t0 + DTX_INTERVAL;
        assert!(a.dtx_due(t2));
        let cn = a.next_packet(t2, false);
        assert_eq!(cn.audio_level, Some(SILENT_LEVEL));
        assert!(cn.payload.len() < speech.payload.len());
        // The RTP clock ran on through the skipped slot: 960 samples per 20 ms.
        assert_eq!(cn.timestamp.wrapping_sub(speech.timestamp), 2 * 960);
        assert!(sent_at(&cn.payload, false).is_some());
    }
}
