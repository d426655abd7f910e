//! A bitrate meter: bytes over the last five seconds, in 100 ms buckets, with no allocation.
//!
//! Each simulcast layer has one, fed once per input packet; the stream allocator reads them to
//! know what each layer costs a subscriber. Five seconds smooth over keyframes (each costs
//! several frames' worth) and over encoders' rate wobble, which would otherwise make a layer's
//! price jump and the allocator switch back and forth.

use std::time::{Duration, Instant};

const BUCKETS: usize = 50;
const BUCKET: Duration = Duration::from_millis(100);
/// The span a meter averages over.
pub const WINDOW: Duration = Duration::from_millis(BUCKETS as u64 * 100);

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct RateMeter {
    /// Bytes per bucket; `buckets[i]` covers the bucket numbered `i` modulo [`BUCKETS`].
    buckets: [u64; BUCKETS],
    /// Number of the newest bucket written (buckets since `origin`).
    newest: u64,
    origin: Option<Instant>,
}

impl Default for RateMeter {
    fn default() -> Self {
        Self {
            buckets: [0; BUCKETS],
            newest: 0,
            origin: None,
        }
    }
}

impl RateMeter {
    fn bucket_of(&mut self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        (now.saturating_duration_since(origin).as_millis() / BUCKET.as_millis()) as u64
    }

    /// Clears buckets between the newest written and `n`.
    fn advance(&mut self, n: u64) {
        if n > self.newest {
            for b in (self.newest + 1)..=n.min(self.newest + BUCKETS as u64) {
                self.buckets[b as usize % BUCKETS] = 0;
            }
            self.newest = n;
        }
    }

    pub fn add(&mut self, now: Instant, bytes: usize) {
        let n = self.bucket_of(now);
        self.advance(n);
        self.buckets[n as usize % BUCKETS] += bytes as u64;
    }

    /// How much of the window the meter has seen (it scales up what it saw until then).
    pub fn covered(&self, now: Instant) -> Duration {
        self.origin.map_or(Duration::ZERO, |o| {
            now.saturating_duration_since(o).min(WINDOW)
        })
    }

    /// Bits per second over the window (0 once nothing arrived for a whole window).
    pub fn bps(&mut self, now: Instant) -> u64 {
        if self.origin.is_none() {
            return 0;
        }
        let n = self.bucket_of(now);
        self.advance(n);
        let total: u64 = self.buckets.iter().sum();
        // While the meter is younger than its window, scale up what it saw.
        let covered = (n + 1).min(BUCKETS as u64);
        total * 8 * 1_000 / (covered * BUCKET.as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_steady_rate_and_forgets_it() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        // 1,250 bytes every 10 ms: 1 Mbps.
        for i in 0..700u64 {
            m.add(t0 + Duration::from_millis(10 * i), 1_250);
        }
        let bps = m.bps(t0 + Duration::from_millis(6_995));
        assert!((950_000..=1_050_000).contains(&bps), "{bps}");
        assert_eq!(m.bps(t0 + Duration::from_secs(13)), 0);
        assert_eq!(RateMeter::default().bps(t0), 0);
    }
}
