//! Conversion from the monotonic instants the core is driven with to NTP wall-clock time.
//!
//! The core never reads a clock. Sender reports need NTP timestamps, so the caller hands the
//! room one anchor pairing an [`Instant`] with the wall-clock time at that instant; tests use a
//! fixed anchor and stay deterministic.

use std::time::{Duration, Instant};

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// Maps instants to 64-bit NTP timestamps (32.32 fixed point seconds since 1900).
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    anchor: Instant,
    anchor_unix: Duration,
}

impl WallClock {
    /// `anchor_unix` is the time since the Unix epoch at `anchor`.
    pub fn new(anchor: Instant, anchor_unix: Duration) -> Self {
        Self {
            anchor,
            anchor_unix,
        }
    }

    /// NTP timestamp of `at`. Instants before the anchor clamp to it.
    pub fn ntp(&self, at: Instant) -> u64 {
        let unix = self.anchor_unix + at.saturating_duration_since(self.anchor);
        to_ntp(unix + Duration::from_secs(NTP_UNIX_OFFSET_SECS))
    }
}

/// 32.32 fixed point from a duration.
pub fn to_ntp(d: Duration) -> u64 {
    let secs = d.as_secs();
    let frac = ((d.subsec_nanos() as u64) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// Adds a duration to an NTP timestamp.
pub fn ntp_add(ntp: u64, d: Duration) -> u64 {
    ntp.wrapping_add(to_ntp(d))
}

/// Converts a duration to RTP clock ticks at `clock_rate`.
pub fn rtp_ticks(d: Duration, clock_rate: u32) -> u32 {
    (d.as_nanos() * clock_rate as u128 / 1_000_000_000) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp_of_the_unix_epoch_is_the_fixed_offset() {
        let now = Instant::now();
        let clock = WallClock::new(now, Duration::ZERO);
        assert_eq!(clock.ntp(now), NTP_UNIX_OFFSET_SECS << 32);
        let half = clock.ntp(now + Duration::from_millis(500));
        assert_eq!(half, (NTP_UNIX_OFFSET_SECS << 32) | (1 << 31));
    }

    #[test]
    fn rtp_ticks_at_video_and_audio_rates() {
        assert_eq!(rtp_ticks(Duration::from_millis(20), 48_000), 960);
        assert_eq!(rtp_ticks(Duration::from_millis(1000 / 30), 90_000), 2_970);
    }
}
