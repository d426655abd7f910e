//! Codecs the core forwards, and keyframe detection in their RTP payloads.
//!
//! The SFU never decodes media; it only needs to know where a decodable sequence starts so that
//! a subscriber (or a layer switch) begins at a keyframe. Each parser reads at most the payload
//! descriptor and the first bytes of the codec payload, and treats anything malformed as "not a
//! keyframe" rather than failing.

/// Media kind of a track.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum MediaKind {
    Audio,
    Video,
}

/// A codec the forwarding core knows how to handle.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Codec {
    Opus,
    Vp8,
    Vp9,
    H264,
    Av1,
    /// Any other codec (G.711, G.722, H.265, ...): forwarded, but every packet is treated as
    /// decodable on its own for audio and as a keyframe-less stream for video.
    Other,
}

impl Codec {
    /// Maps an SDP MIME type (`video/VP8`, `audio/opus`, ...) to a codec.
    pub fn from_mime(mime: &str) -> Codec {
        let sub = mime.rsplit('/').next().unwrap_or(mime);
        match sub.to_ascii_lowercase().as_str() {
            "opus" => Codec::Opus,
            "vp8" => Codec::Vp8,
            "vp9" => Codec::Vp9,
            "h264" => Codec::H264,
            "av1" => Codec::Av1,
            _ => Codec::Other,
        }
    }

    /// RTP clock rate of the codec (all WebRTC video codecs use 90 kHz; Opus uses 48 kHz).
    pub fn default_clock_rate(self, kind: MediaKind) -> u32 {
        match (self, kind) {
            (Codec::Opus, _) => 48_000,
            (_, MediaKind::Video) => 90_000,
            (_, MediaKind::Audio) => 8_000,
        }
    }

    /// Whether `payload` starts a frame that decodes without earlier frames.
    ///
    /// For audio every packet is independently decodable, so this returns `true`.
    pub fn is_keyframe(self, kind: MediaKind, payload: &[u8]) -> bool {
        match self {
            Codec::Vp8 => vp8_is_keyframe(payload),
            Codec::Vp9 => vp9_is_keyframe(payload),
            Codec::H264 => h264_is_keyframe(payload),
            Codec::Av1 => av1_is_keyframe(payload),
            Codec::Opus => true,
            Codec::Other => kind == MediaKind::Audio,
        }
    }
}

/// VP8 (RFC 7741): the payload descriptor, then the VP8 payload header whose first bit (P) is 0
/// for a key frame. Only meaningful on the first packet of a partition 0 (S=1, PID=0).
fn vp8_is_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let start_of_partition = b0 & 0x10 != 0;
    let partition_id = b0 & 0x07;
    if !start_of_partition || partition_id != 0 {
        return false;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        // Extended control bits: I L T K.
        let Some(&x) = p.get(i) else { return false };
        i += 1;
        if x & 0x80 != 0 {
            // Picture ID: 7 or 15 bits, the M bit says which.
            let Some(&pid) = p.get(i) else { return false };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID / KEYIDX
        }
    }
    p.get(i).is_some_and(|&h| h & 0x01 == 0)
}

/// VP9 (RFC 9628): the flexible/non-flexible descriptor. A key frame is a non inter-predicted
/// (P=0) start of frame (B=1) on the base spatial layer.
fn vp9_is_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let inter_predicted = b0 & 0x40 != 0;
    let layer_indices = b0 & 0x20 != 0;
    let start_of_frame = b0 & 0x08 != 0;
    if inter_predicted || !start_of_frame {
        return false;
    }
    if !layer_indices {
        return true;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let Some(&pid) = p.get(i) else { return false };
        i += if pid & 0x80 != 0 { 2 } else { 1 };
    }
    // Layer indices byte: TID(3) U(1) SID(3) D(1).
    p.get(i).is_some_and(|&l| (l >> 1) & 0x07 == 0)
}

/// H.264 (RFC 6184): an IDR slice or an SPS, alone, inside a STAP-A, or at the start of a FU-A.
fn h264_is_keyframe(p: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let Some(&b0) = p.first() else { return false };
    match b0 & 0x1f {
        IDR | SPS => true,
        STAP_A => {
            let mut i = 1;
            while i + 2 < p.len() {
                let size = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
                let Some(&nal) = p.get(i + 2) else {
                    return false;
                };
                if matches!(nal & 0x1f, IDR | SPS) {
                    return true;
                }
                i += 2 + size;
            }
            false
        }
        FU_A => p
            .get(1)
            .is_some_and(|&fu| fu & 0x80 != 0 && matches!(fu & 0x1f, IDR | SPS)),
        _ => false,
    }
}

/// AV1 (AV1 RTP spec §4.4): the N bit of the aggregation header marks the first packet of a
/// coded video sequence, which starts with a key frame.
fn av1_is_keyframe(p: &[u8]) -> bool {
    p.first().is_some_and(|&h| h & 0x08 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_types_map_case_insensitively() {
        assert_eq!(Codec::from_mime("video/VP8"), Codec::Vp8);
        assert_eq!(Codec::from_mime("audio/opus"), Codec::Opus);
        assert_eq!(Codec::from_mime("video/h264"), Codec::H264);
        assert_eq!(Codec::from_mime("video/AV1"), Codec::Av1);
        assert_eq!(Codec::from_mime("audio/PCMU"), Codec::Other);
    }

    #[test]
    fn vp8_keyframe_detection() {
        // X=1,S=1,PID=0; I=1 with a 15-bit picture id; then a key frame header (P=0).
        assert!(vp8_is_keyframe(&[0x90, 0x80, 0x81, 0x23, 0x10]));
        // Same, P=1: an inter frame.
        assert!(!vp8_is_keyframe(&[0x90, 0x80, 0x81, 0x23, 0x11]));
        // Not the start of a partition.
        assert!(!vp8_is_keyframe(&[0x80, 0x80, 0x81, 0x23, 0x10]));
        // Minimal descriptor (no X) on a key frame.
        assert!(vp8_is_keyframe(&[0x10, 0x9c]));
        // Truncated input is never a key frame and never panics.
        assert!(!vp8_is_keyframe(&[0x90, 0x80, 0x81]));
        assert!(!vp8_is_keyframe(&[]));
    }

    #[test]
    fn h264_keyframe_detection() {
        assert!(h264_is_keyframe(&[0x65, 0x88])); // IDR
        assert!(h264_is_keyframe(&[0x67, 0x42])); // SPS
        assert!(!h264_is_keyframe(&[0x41, 0x9a])); // non-IDR slice
        // STAP-A carrying SPS.
        assert!(h264_is_keyframe(&[0x78, 0x00, 0x02, 0x67, 0x42]));
        // STAP-A with only a non-IDR slice, then a truncated size field.
        assert!(!h264_is_keyframe(&[0x78, 0x00, 0x02, 0x41, 0x9a, 0x00]));
        // FU-A start of an IDR, and a continuation of one.
        assert!(h264_is_keyframe(&[0x7c, 0x85]));
        assert!(!h264_is_keyframe(&[0x7c, 0x05]));
        assert!(!h264_is_keyframe(&[0x7c]));
    }

    #[test]
    fn vp9_and_av1_keyframe_detection() {
        // B=1, P=0, no layer indices.
        assert!(vp9_is_keyframe(&[0x08]));
        // P=1.
        assert!(!vp9_is_keyframe(&[0x48]));
        // With L=1 and SID=1: not the base layer.
        assert!(!vp9_is_keyframe(&[0x28, 0x02]));
        assert!(vp9_is_keyframe(&[0x28, 0x00]));
        assert!(av1_is_keyframe(&[0x08]));
        assert!(!av1_is_keyframe(&[0x10]));
    }

    #[test]
    fn audio_is_always_decodable() {
        assert!(Codec::Opus.is_keyframe(MediaKind::Audio, &[0xfc]));
        assert!(Codec::Other.is_keyframe(MediaKind::Audio, &[]));
        assert!(!Codec::Other.is_keyframe(MediaKind::Video, &[0x00]));
    }
}
