//! What changes in a forwarded packet per subscriber, written as the packet leaves rather than
//! made in a copy of it: the transport-wide sequence number (a header extension) and VP8's
//! picture numbering (two payload bytes).
//!
//! A forwarded packet is one header and one shared payload for every subscriber; the send path
//! writes it once into its send buffer anyway (SRTP needs the bytes in place), so that is where
//! these go, and forwarding allocates nothing per subscriber.

use crate::Packet;
use bytes::{Bytes, BytesMut};

/// RTP header extension profile of one-byte extensions (RFC 8285).
pub const ONE_BYTE_PROFILE: u16 = 0xBEDE;

/// See the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketEdits {
    /// Transport-wide sequence number: the negotiated one-byte extension id, and the number.
    pub twcc: Option<(u8, u16)>,
    /// VP8 numbering rewritten in the payload descriptor.
    pub vp8: Option<Vp8Edit>,
}

/// New values for a VP8 payload descriptor's numbering, at the offsets the packet has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vp8Edit {
    /// (offset, 15 bits wide, value).
    pub picture_id: Option<(usize, bool, u16)>,
    /// (offset, value).
    pub tl0_pic_idx: Option<(usize, u8)>,
}

impl Vp8Edit {
    /// Writes the numbering into a copy of the packet's payload.
    pub fn apply(&self, payload: &mut [u8]) {
        if let Some((at, long, v)) = self.picture_id {
            if long && at + 1 < payload.len() {
                let v = v & 0x7fff;
                payload[at] = 0x80 | (v >> 8) as u8;
                payload[at + 1] = v as u8;
            } else if !long && at < payload.len() {
                payload[at] = (v & 0x7f) as u8;
            }
        }
        if let Some((at, v)) = self.tl0_pic_idx
            && at < payload.len()
        {
            payload[at] = v;
        }
    }
}

impl PacketEdits {
    /// The packet as it goes on the wire, whole (allocates: for tests and inspection; the send
    /// path writes the edits into its buffer instead).
    pub fn applied(&self, packet: &Packet) -> Packet {
        let mut header = packet.header.clone();
        if let Some((id, seq)) = self.twcc {
            header.extension = true;
            header.extension_profile = ONE_BYTE_PROFILE;
            let _ = header.set_extension(id, Bytes::copy_from_slice(&seq.to_be_bytes()));
        }
        let payload = match &self.vp8 {
            Some(edit) => {
                let mut b = BytesMut::from(packet.payload.as_ref());
                edit.apply(&mut b);
                b.freeze()
            }
            None => packet.payload.clone(),
        };
        Packet { header, payload }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_land_where_the_descriptor_has_its_fields() {
        let mut payload = [0x90, 0x80, 0x80, 0x12, 0x07, 0xaa];
        Vp8Edit {
            picture_id: Some((2, true, 0x1234)),
            tl0_pic_idx: Some((4, 9)),
        }
        .apply(&mut payload);
        assert_eq!(payload, [0x90, 0x80, 0x92, 0x34, 9, 0xaa]);
        // Offsets past the end (a malformed packet) change nothing and do not panic.
        let mut short = [0x90];
        Vp8Edit {
            picture_id: Some((2, true, 1)),
            tl0_pic_idx: Some((5, 1)),
        }
        .apply(&mut short);
        assert_eq!(short, [0x90]);
    }
}
