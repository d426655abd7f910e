//! The VP8 payload descriptor (RFC 7741 §4.2): where the picture id and TL0PICIDX sit, and a
//! rewrite of both.
//!
//! A subscriber's decoder uses the picture id to detect missing frames and TL0PICIDX to follow
//! temporal layers. When a subscription switches simulcast layer or source, both must continue
//! from what the subscriber last saw, or the decoder sees a jump backwards and waits for a
//! keyframe it already has. Browsers keep these numbers aligned across the simulcast layers of
//! one track, so a layer switch usually needs no rewrite at all; only a source change does.
//! That matters for cost: a rewrite copies the payload (the only per-subscriber copy on the
//! media path), so the forwarder asks for one only when a number really changes.

use bytes::{Bytes, BytesMut};

/// Where the picture numbering fields of one VP8 packet are, parsed once per input packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Vp8Descriptor {
    /// The picture id, its byte offset and whether it is 15 bits wide (else 7).
    pub picture_id: Option<PictureId>,
    /// TL0PICIDX and its byte offset.
    pub tl0_pic_idx: Option<(u8, usize)>,
    /// Where the VP8 payload starts (the descriptor's length).
    pub payload_offset: usize,
}

/// A picture id as found in a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PictureId {
    pub value: u16,
    pub offset: usize,
    pub long: bool,
}

impl PictureId {
    /// The modulus of this id's numbering.
    pub fn modulus(&self) -> u16 {
        if self.long { 1 << 15 } else { 1 << 7 }
    }
}

impl Vp8Descriptor {
    /// Parses the descriptor; `None` if the payload is too short for what its flags announce
    /// (such a packet is forwarded untouched).
    pub fn parse(p: &[u8]) -> Option<Self> {
        let b0 = *p.first()?;
        let mut d = Vp8Descriptor {
            payload_offset: 1,
            ..Default::default()
        };
        if b0 & 0x80 == 0 {
            return Some(d);
        }
        let x = *p.get(1)?;
        let mut i = 2;
        if x & 0x80 != 0 {
            let m = *p.get(i)?;
            if m & 0x80 != 0 {
                let lo = *p.get(i + 1)?;
                d.picture_id = Some(PictureId {
                    value: u16::from_be_bytes([m & 0x7f, lo]),
                    offset: i,
                    long: true,
                });
                i += 2;
            } else {
                d.picture_id = Some(PictureId {
                    value: m as u16,
                    offset: i,
                    long: false,
                });
                i += 1;
            }
        }
        if x & 0x40 != 0 {
            d.tl0_pic_idx = Some((*p.get(i)?, i));
            i += 1;
        }
        if x & 0x30 != 0 {
            i += 1;
        }
        d.payload_offset = i;
        Some(d)
    }

    /// The picture size a key frame starts with (RFC 6386 §9.1), if `p` is the first packet of
    /// one.
    pub fn keyframe_size(&self, p: &[u8]) -> Option<(u16, u16)> {
        let h = p.get(self.payload_offset..self.payload_offset + 10)?;
        let keyframe = h[0] & 0x01 == 0;
        if !keyframe || h[3..6] != [0x9d, 0x01, 0x2a] {
            return None;
        }
        let width = u16::from_le_bytes([h[6], h[7]]) & 0x3fff;
        let height = u16::from_le_bytes([h[8], h[9]]) & 0x3fff;
        Some((width, height))
    }

    /// Whether this packet carries any field a rewrite could change.
    pub fn has_numbering(&self) -> bool {
        self.picture_id.is_some() || self.tl0_pic_idx.is_some()
    }

    /// A copy of `payload` with the picture id and TL0PICIDX replaced (see [`Self::edit`]).
    pub fn rewrite(&self, payload: &Bytes, picture_id: u16, tl0_pic_idx: u8) -> Bytes {
        let mut b = BytesMut::from(payload.as_ref());
        self.edit(picture_id, tl0_pic_idx).apply(&mut b);
        b.freeze()
    }

    /// The edit that replaces this packet's picture id and TL0PICIDX (each masked to the
    /// width the packet uses) as it is sent. Fields the packet does not carry are left alone.
    pub fn edit(&self, picture_id: u16, tl0_pic_idx: u8) -> crate::edits::Vp8Edit {
        crate::edits::Vp8Edit {
            picture_id: self.picture_id.map(|p| (p.offset, p.long, picture_id)),
            tl0_pic_idx: self.tl0_pic_idx.map(|(_, at)| (at, tl0_pic_idx)),
        }
    }
}

/// Picture ids and TL0PICIDX a subscriber has seen, and the offsets that keep them continuous
/// across switches: `out = in + offset`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Vp8Numbering {
    pid_offset: u16,
    tl0_offset: u8,
    last_pid: Option<u16>,
    last_tl0: Option<u8>,
    /// The next packet starts a new source: choose offsets from it.
    rebase: bool,
}

/// A new source whose numbers, with the current offset, land this close ahead of the last
/// number sent keeps the offset (browsers align simulcast layers, so a layer switch stays
/// copy-free); otherwise it is renumbered to follow on directly.
const PID_WINDOW: u16 = 128;
const TL0_WINDOW: u8 = 32;

impl Vp8Numbering {
    /// The next packet comes from another layer or track.
    pub fn on_switch(&mut self) {
        self.rebase = true;
    }

    /// The offsets in use: (picture id, TL0PICIDX).
    pub fn offsets(&self) -> (u16, u8) {
        (self.pid_offset, self.tl0_offset)
    }

    /// Maps one forwarded packet's numbers. Returns the values to write when they differ from
    /// the packet's own, `None` when the payload can be forwarded untouched.
    pub fn map(&mut self, d: &Vp8Descriptor) -> Option<(u16, u8)> {
        let rebase = std::mem::take(&mut self.rebase);
        let mut pid_out = None;
        if let Some(pid) = d.picture_id {
            let m = pid.modulus();
            let mask = m - 1;
            if rebase && let Some(last) = self.last_pid {
                let candidate = pid.value.wrapping_add(self.pid_offset) & mask;
                let ahead = candidate.wrapping_sub(last) & mask;
                if ahead == 0 || ahead > PID_WINDOW.min(m / 2) {
                    self.pid_offset = last.wrapping_add(1).wrapping_sub(pid.value) & 0x7fff;
                }
            }
            let out = pid.value.wrapping_add(self.pid_offset) & mask;
            let forward = self
                .last_pid
                .is_none_or(|l| (out.wrapping_sub(l) & mask) < m / 2);
            if forward {
                self.last_pid = Some(out);
            }
            pid_out = Some(out);
        }
        let mut tl0_out = None;
        if let Some((tl0, _)) = d.tl0_pic_idx {
            if rebase && let Some(last) = self.last_tl0 {
                let candidate = tl0.wrapping_add(self.tl0_offset);
                let ahead = candidate.wrapping_sub(last);
                if ahead > TL0_WINDOW {
                    self.tl0_offset = last.wrapping_add(1).wrapping_sub(tl0);
                }
            }
            let out = tl0.wrapping_add(self.tl0_offset);
            if self.last_tl0.is_none_or(|l| out.wrapping_sub(l) < 128) {
                self.last_tl0 = Some(out);
            }
            tl0_out = Some(out);
        }
        let changed = d.picture_id.zip(pid_out).is_some_and(|(p, o)| p.value != o)
            || d.tl0_pic_idx.zip(tl0_out).is_some_and(|((t, _), o)| t != o);
        changed.then(|| (pid_out.unwrap_or(0), tl0_out.unwrap_or(0)))
    }

    /// The values a retransmission of a source packet gets, under the offsets of its epoch.
    pub fn map_with(d: &Vp8Descriptor, offsets: (u16, u8)) -> Option<(u16, u8)> {
        if offsets == (0, 0) || !d.has_numbering() {
            return None;
        }
        let pid = d
            .picture_id
            .map_or(0, |p| p.value.wrapping_add(offsets.0) & (p.modulus() - 1));
        let tl0 = d.tl0_pic_idx.map_or(0, |(t, _)| t.wrapping_add(offsets.1));
        Some((pid, tl0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_long_and_short_picture_ids_and_tl0() {
        // X=1 S=1; I=1 L=1; 15-bit pid 0x1234; TL0PICIDX 7; then payload.
        let p = [0x90, 0xc0, 0x92, 0x34, 0x07, 0x00];
        let d = Vp8Descriptor::parse(&p).unwrap();
        assert_eq!(
            d.picture_id,
            Some(PictureId {
                value: 0x1234,
                offset: 2,
                long: true
            })
        );
        assert_eq!(d.tl0_pic_idx, Some((7, 4)));
        assert_eq!(d.payload_offset, 5);
        // 7-bit pid, no TL0PICIDX.
        let d = Vp8Descriptor::parse(&[0x90, 0x80, 0x05, 0x00]).unwrap();
        assert_eq!(d.picture_id.unwrap().value, 5);
        assert!(!d.picture_id.unwrap().long);
        // No extension: nothing to rewrite.
        assert!(!Vp8Descriptor::parse(&[0x10, 0x00]).unwrap().has_numbering());
        // Truncated: refused, never a panic.
        assert_eq!(Vp8Descriptor::parse(&[0x90, 0xc0, 0x92]), None);
        assert_eq!(Vp8Descriptor::parse(&[]), None);
    }

    #[test]
    fn reads_the_size_of_a_key_frame() {
        // Minimal descriptor, then a key frame header: tag, start code, 640 x 360.
        let p = [
            0x10, 0x50, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01,
        ];
        let d = Vp8Descriptor::parse(&p).unwrap();
        assert_eq!(d.keyframe_size(&p), Some((640, 360)));
        // An inter frame, and a truncated one, have none.
        let mut inter = p;
        inter[1] |= 1;
        assert_eq!(d.keyframe_size(&inter), None);
        assert_eq!(d.keyframe_size(&p[..6]), None);
    }

    #[test]
    fn rewrite_keeps_everything_but_the_numbers() {
        let p = Bytes::from_static(&[0x90, 0xc0, 0x92, 0x34, 0x07, 0xaa, 0xbb]);
        let d = Vp8Descriptor::parse(&p).unwrap();
        let r = d.rewrite(&p, 0x0102, 9);
        assert_eq!(&r[..], &[0x90, 0xc0, 0x81, 0x02, 0x09, 0xaa, 0xbb]);
        let r = d.rewrite(&p, 0xffff, 0);
        assert_eq!(
            Vp8Descriptor::parse(&r).unwrap().picture_id.unwrap().value,
            0x7fff
        );
    }

    fn desc(pid: u16, tl0: u8) -> Vp8Descriptor {
        Vp8Descriptor {
            picture_id: Some(PictureId {
                value: pid,
                offset: 2,
                long: true,
            }),
            tl0_pic_idx: Some((tl0, 4)),
            payload_offset: 5,
        }
    }

    #[test]
    fn aligned_layers_switch_without_a_rewrite() {
        let mut n = Vp8Numbering::default();
        assert_eq!(n.map(&desc(100, 10)), None);
        assert_eq!(n.map(&desc(101, 10)), None);
        // Another simulcast layer of the same track, numbered in step: nothing to rewrite.
        n.on_switch();
        assert_eq!(n.map(&desc(102, 11)), None);
    }

    #[test]
    fn a_new_source_continues_the_numbering() {
        let mut n = Vp8Numbering::default();
        n.map(&desc(30_000, 200));
        n.map(&desc(30_001, 201));
        n.on_switch();
        // A different publisher, numbered far away: renumbered to follow on.
        assert_eq!(n.map(&desc(5, 3)), Some((30_002, 202)));
        assert_eq!(n.map(&desc(6, 3)), Some((30_003, 202)));
        assert_eq!(n.offsets(), (30_002 - 5, 199));
        // Across the 15-bit wrap.
        let mut n = Vp8Numbering::default();
        n.map(&desc(0x7fff, 0));
        n.on_switch();
        assert_eq!(n.map(&desc(9_000, 0)), Some((0, 0)));
        assert_eq!(
            Vp8Numbering::map_with(&desc(9_001, 0), n.offsets()),
            Some((1, 0))
        );
    }
}
