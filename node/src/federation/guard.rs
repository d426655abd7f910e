//! Bounds on what a peer can make a gateway do: a peer holding a valid federation certificate
//! may still be broken or hostile. Sans-IO (time is an argument).
//!
//! - [`Bucket`]: a token bucket bounding the subscriptions a peer may send (each costs a
//!   registry look-up, and a refused one an answer on our send queue), and the audio level
//!   frames (each is shared with every node of ours hosting the room).
//! - [`LogGate`]: at most one log line per second per peer and kind of refusal, so a flood
//!   is logged, not written out line by line.
//! - [`datagram_ok`]: a peer's media datagram must parse (records of flows it did not open
//!   are then dropped by the router, as on relay links: the flow table is keyed by link).

use bytes::Bytes;
use std::time::{Duration, Instant};

/// Subscriptions a peer may send in a burst: a room's worth of tracks at once.
pub const SUBSCRIBE_BURST: f64 = 1000.0;
/// Subscriptions per second a peer may send after a burst (layer changes, new tracks).
pub const SUBSCRIBE_RATE: f64 = 200.0;

/// Audio level frames a peer may send in a burst.
pub const LEVELS_BURST: f64 = 200.0;
/// Audio level frames per second a peer may send after a burst. Its gateway passes on each
/// frame one of its nodes shares: four a second per room and node (and worker) with speaking
/// publishers, so 25 such at once (a hundred with a burst).
pub const LEVELS_RATE: f64 = 100.0;

/// See the module documentation.
pub struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    pub fn new(now: Instant, rate: f64, burst: f64) -> Self {
        Self {
            tokens: burst,
            last: now,
            rate,
            burst,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// See the module documentation.
#[derive(Default)]
pub struct LogGate {
    next: Option<Instant>,
    suppressed: u64,
}

impl LogGate {
    /// `Some(n)` if a line may be logged now, `n` being how many were not logged since the
    /// last one; `None` (and counted) otherwise.
    pub fn pass(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|next| now < next) {
            self.suppressed += 1;
            return None;
        }
        self.next = Some(now + Duration::from_secs(1));
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Whether a datagram holds at least one record and every record parses. Walks the records
/// in place: no copy, no allocation. (Whether their flows are the peer's is the router's
/// question: a datagram batches several flows, and one just closed must not cost the others.)
pub fn datagram_ok(d: &Bytes) -> bool {
    let mut n = 0;
    for r in sfu_relay::wire::records(d.clone()) {
        if r.is_err() {
            return false;
        }
        n += 1;
    }
    n > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_a_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, 10.0, 5.0);
        assert_eq!((0..8).filter(|_| b.take(t0)).count(), 5);
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..8).filter(|_| b.take(t1)).count(), 5);
        // Idle time fills it up to the burst only.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..8).filter(|_| b.take(t2)).count(), 5);
    }

    #[test]
    fn a_level_flood_passes_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0, LEVELS_RATE, LEVELS_BURST);
        // 10,000 frames over one second, evenly spread.
        let passed = (0..10_000u64)
            .filter(|i| b.take(t0 + Duration::from_micros(i * 100)))
            .count();
        let most = (LEVELS_BURST + LEVELS_RATE) as usize;
        assert!((most - 2..=most).contains(&passed), "{passed}");
        // A gateway passing on four frames a second for 20 rooms is never refused.
        let t1 = t0 + Duration::from_secs(10);
        let mut b = Bucket::new(t1, LEVELS_RATE, LEVELS_BURST);
        let normal = (0..80 * 30u64).all(|i| b.take(t1 + Duration::from_micros(i * 12_500)));
        assert!(normal);
    }

    #[test]
    fn a_gate_logs_once_a_second_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut g = LogGate::default();
        assert_eq!(g.pass(t0), Some(0));
        assert_eq!(g.pass(t0 + Duration::from_millis(10)), None);
        assert_eq!(g.pass(t0 + Duration::from_millis(20)), None);
        assert_eq!(g.pass(t0 + Duration::from_secs(1)), Some(2));
    }

    #[test]
    fn only_well_formed_datagrams_pass() {
        let rtp = [0x80u8; 20];
        assert!(datagram_ok(&sfu_relay::wire::encode_datagram(7, &rtp)));
        assert!(!datagram_ok(&Bytes::from_static(&[0xff; 30])));
        assert!(!datagram_ok(&Bytes::new()));
        // A good record followed by garbage.
        let mut two = sfu_relay::wire::encode_datagram(7, &rtp).to_vec();
        two.extend_from_slice(&[1, 2, 3]);
        assert!(!datagram_ok(&Bytes::from(two)));
    }
}
