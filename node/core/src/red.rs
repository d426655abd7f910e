//! RED (RFC 2198): redundant audio, as browsers send it for Opus.
//!
//! A RED payload carries earlier packets' audio again before the current ("primary") one, so
//! that a receiver recovers from losing a packet without waiting for a retransmission. The SFU
//! forwards RED untouched to subscribers that negotiated it, and the primary block alone — a
//! slice of the same buffer, no copy — to those that did not.

use bytes::Bytes;

/// The primary block of a RED payload and its payload type, or `None` if the payload is
/// malformed (headers running past the end, blocks longer than the payload).
pub fn primary(payload: &Bytes) -> Option<(u8, Bytes)> {
    let mut at = 0;
    let mut redundant = 0usize;
    loop {
        let header = *payload.get(at)?;
        if header & 0x80 == 0 {
            // The last header: one byte, the primary block's payload type.
            let start = at + 1 + redundant;
            if start > payload.len() {
                return None;
            }
            return Some((header & 0x7f, payload.slice(start..)));
        }
        // F=1: payload type (7), timestamp offset (14), block length (10).
        let len = payload.get(at + 2..at + 4)?;
        redundant += (u16::from_be_bytes([len[0], len[1]]) & 0x03ff) as usize;
        at += 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_primary_block_after_redundant_ones() {
        // One redundant block of 3 bytes (pt 111, offset 960), then the primary (pt 111).
        let p = Bytes::from_static(&[0xef, 0x0f, 0x00, 0x03, 0x6f, 1, 2, 3, 9, 9]);
        let (pt, primary) = primary(&p).unwrap();
        assert_eq!(pt, 111);
        assert_eq!(&primary[..], &[9, 9]);
        // No redundancy at all.
        assert_eq!(&primary_of(&[0x6f, 7])[..], &[7]);
        // Malformed: a block longer than the payload, a truncated header, nothing.
        assert!(super::primary(&Bytes::from_static(&[0xef, 0x0f, 0x00, 0x09, 0x6f, 1])).is_none());
        assert!(super::primary(&Bytes::from_static(&[0xef, 0x0f])).is_none());
        assert!(super::primary(&Bytes::new()).is_none());
    }

    fn primary_of(p: &'static [u8]) -> Bytes {
        primary(&Bytes::from_static(p)).unwrap().1
    }
}
