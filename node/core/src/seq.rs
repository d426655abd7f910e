//! Extended (unwrapped) RTP sequence numbers.
//!
//! RTP sequence numbers are 16 bits and wrap every few seconds of video, so any comparison over
//! a longer span needs the rollover count. An [`Unwrapper`] turns the 16-bit numbers of one
//! stream into monotonic 64-bit values, treating a jump of less than half the space as forward
//! and anything else as a late (reordered) packet.

/// Unwraps the 16-bit sequence numbers of one RTP stream.
#[derive(Default, Clone, Debug)]
pub struct Unwrapper {
    highest: Option<u64>,
}

impl Unwrapper {
    /// Extended value of `seq`, and whether it is newer than every earlier one.
    pub fn unwrap(&mut self, seq: u16) -> (u64, bool) {
        let Some(highest) = self.highest else {
            // Start one rollover in, so that reordered packets from just before the first one
            // still get a value that is not below zero.
            let ext = (1u64 << 16) | seq as u64;
            self.highest = Some(ext);
            return (ext, true);
        };
        let ext = extend(highest, seq);
        if ext > highest {
            self.highest = Some(ext);
            (ext, true)
        } else {
            (ext, false)
        }
    }

    /// The highest extended sequence number seen so far.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }
}

/// The extended value of `seq` closest to `reference`.
pub fn extend(reference: u64, seq: u16) -> u64 {
    let base = reference & !0xffff;
    let candidate = base | seq as u64;
    let diff = candidate as i64 - reference as i64;
    if diff > 0x8000 && candidate >= 0x10000 {
        candidate - 0x10000
    } else if diff < -0x8000 {
        candidate + 0x10000
    } else {
        candidate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwraps_across_the_rollover() {
        let mut u = Unwrapper::default();
        let (a, _) = u.unwrap(65_534);
        let (b, newer) = u.unwrap(1);
        assert!(newer);
        assert_eq!(b - a, 3);
    }

    #[test]
    fn late_packets_are_not_newer() {
        let mut u = Unwrapper::default();
        let (a, _) = u.unwrap(10);
        u.unwrap(12);
        let (late, newer) = u.unwrap(11);
        assert!(!newer);
        assert_eq!(late, a + 1);
        // A late packet from before a rollover.
        let mut u = Unwrapper::default();
        let (a, _) = u.unwrap(2);
        let (late, newer) = u.unwrap(65_535);
        assert!(!newer);
        assert_eq!(a - late, 3);
    }
}
