//! Limits on answering NACKs, so retransmissions cannot make a congested downlink worse.
//!
//! Without limits, congestion feeds itself: a link that drops 40 % of what it is sent makes
//! the subscriber NACK every lost packet, and a browser NACKs a packet again each round trip
//! until it arrives, so the retransmissions (lost in turn, NACKed again) fill the link that the
//! stream allocator is trying to relieve; measured with Chromium behind a 300 kbps limit, loss
//! stayed above 80 % for three seconds after video had been paused. Two rules stop this:
//!
//! - [`RecentResends`]: a packet resent to a subscription is not resent again within
//!   [`RESEND_INTERVAL`]; the first copy may still be on its way. It remembers as many
//!   packets as the retransmission cache holds, so a NACK naming the whole cache window again
//!   and again gets each packet once per interval.
//! - [`RetransmitBudget`]: retransmissions to one subscriber may use at most
//!   [`RETRANSMIT_SHARE`] of its bandwidth estimate (token bucket); beyond that, NACKs are
//!   left unanswered (a subscriber that cannot wait for the packet asks for a keyframe).
//!   A subscriber that sends no congestion feedback is budgeted as if its estimate were
//!   [`DEFAULT_ESTIMATE_BPS`]: otherwise a 150-byte NACK could make the node send half a
//!   megabyte.
//!
//! And one NACK is answered for at most [`MAX_RESENT_PER_NACK`] packets.

use std::time::{Duration, Instant};

/// A packet is resent to one subscription at most once in this long.
pub const RESEND_INTERVAL: Duration = Duration::from_millis(100);
/// Share of a subscriber's estimate that retransmissions may use.
pub const RETRANSMIT_SHARE: f64 = 0.2;
/// The estimate a subscriber without congestion feedback is budgeted by: 400 kbps of
/// retransmissions, more than a 1.5 Mbps stream at 10 % loss needs.
pub const DEFAULT_ESTIMATE_BPS: u64 = 2_000_000;
/// Packets one NACK may have resent: a lost burst of a large key frame, not a whole cache.
pub const MAX_RESENT_PER_NACK: usize = 64;
/// The budget saved up while nothing is retransmitted covers this much time at its rate.
const BURST: Duration = Duration::from_millis(250);
/// The smallest bucket: one full-size packet, so a low estimate still gets some repair.
const MIN_BURST_BYTES: f64 = 1_500.0;
/// Slots remembered per subscription (indexed by sequence number): the retransmission
/// cache's default size, so that every packet a NACK can name has a slot of its own.
const SLOTS: usize = crate::retransmit::DEFAULT_CACHE_SIZE;

/// When each remembered sequence number was last resent: milliseconds after `base`, plus one
/// (0: never). Compact (6 bytes a slot), since every subscription that ever NACKs has one.
#[derive(Debug)]
struct Slots {
    base: Instant,
    seq: [u16; SLOTS],
    at: [u32; SLOTS],
}

/// The last packets resent to one subscription, by outgoing sequence number. The slots are
/// allocated at the first NACK: most subscriptions (audio, clean links) never see one.
#[derive(Debug, Default)]
pub struct RecentResends {
    slots: Option<Box<Slots>>,
}

impl RecentResends {
    /// Whether `seq` may be resent now; if so, remembers that it is.
    pub fn allow(&mut self, now: Instant, seq: u16) -> bool {
        let slots = self.slots.get_or_insert_with(|| {
            Box::new(Slots {
                base: now,
                seq: [0; SLOTS],
                at: [0; SLOTS],
            })
        });
        let i = seq as usize % SLOTS;
        let ms = now.saturating_duration_since(slots.base).as_millis();
        // A node up for 49 days: start the clock again (at worst one early resend per slot).
        let ms = u32::try_from(ms + 1).unwrap_or_else(|_| {
            slots.base = now;
            slots.at = [0; SLOTS];
            1
        });
        let at = slots.at[i];
        if at != 0
            && slots.seq[i] == seq
            && u64::from(ms - at.min(ms)) < RESEND_INTERVAL.as_millis() as u64
        {
            return false;
        }
        slots.seq[i] = seq;
        slots.at[i] = ms;
        true
    }
}

/// Token bucket for one subscriber's retransmissions, refilled at a share of its estimate.
#[derive(Debug, Default)]
pub struct RetransmitBudget {
    tokens: f64,
    refilled: Option<Instant>,
}

impl RetransmitBudget {
    /// Whether a retransmission of `bytes` fits, with the subscriber's estimate `estimate_bps`
    /// (`None`: no estimate yet, [`DEFAULT_ESTIMATE_BPS`]); if it fits, it is spent.
    pub fn allow(&mut self, now: Instant, estimate_bps: Option<u64>, bytes: usize) -> bool {
        let estimate = estimate_bps.unwrap_or(DEFAULT_ESTIMATE_BPS);
        let rate = estimate as f64 * RETRANSMIT_SHARE / 8.0;
        let cap = (rate * BURST.as_secs_f64()).max(MIN_BURST_BYTES);
        self.tokens = match self.refilled {
            None => cap,
            Some(t) => {
                let elapsed = now.saturating_duration_since(t).as_secs_f64();
                (self.tokens + rate * elapsed).min(cap)
            }
        };
        self.refilled = Some(now);
        if self.tokens < bytes as f64 {
            return false;
        }
        self.tokens -= bytes as f64;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_is_resent_once_per_interval() {
        let t0 = Instant::now();
        let mut r = RecentResends::default();
        assert!(r.allow(t0, 7));
        assert!(
            !r.allow(t0 + Duration::from_millis(30), 7),
            "renacked at once"
        );
        assert!(r.allow(t0 + Duration::from_millis(30), 8), "another packet");
        assert!(r.allow(t0 + RESEND_INTERVAL, 7), "once the interval passed");
        // A packet sharing the slot of an older one is not confused with it.
        assert!(r.allow(t0 + RESEND_INTERVAL, 7 + SLOTS as u16));
    }

    #[test]
    fn retransmissions_use_at_most_their_share_of_the_estimate() {
        let t0 = Instant::now();
        let mut b = RetransmitBudget::default();
        // 400 kbps estimate: 80 kbps = 10,000 bytes/s for retransmissions.
        let estimate = Some(400_000);
        let mut sent = 0usize;
        for ms in 0..2_000u64 {
            // A NACK storm: a 1,000-byte packet asked for every millisecond.
            if b.allow(t0 + Duration::from_millis(ms), estimate, 1_000) {
                sent += 1_000;
            }
        }
        // 2 s at 10,000 bytes/s, plus the initial burst of 2,500 bytes.
        assert!((20_000..=23_000).contains(&sent), "{sent} bytes in 2 s");
    }

    #[test]
    fn without_an_estimate_the_default_one_bounds_retransmissions() {
        let t0 = Instant::now();
        let mut b = RetransmitBudget::default();
        // 2 Mbps * 0.2 = 50,000 bytes/s, a burst of 12,500 bytes.
        let sent = (0..1_000).filter(|_| b.allow(t0, None, 1_200)).count();
        assert_eq!(sent, 10, "the burst: 12,500 bytes");
        let later = t0 + Duration::from_secs(1);
        let more = (0..1_000).filter(|_| b.allow(later, None, 1_200)).count();
        assert_eq!(more, 10, "a second's refill, capped at the burst");
    }

    #[test]
    fn the_whole_cache_window_is_remembered() {
        let t0 = Instant::now();
        let mut r = RecentResends::default();
        let all: Vec<u16> = (0..SLOTS as u16)
            .map(|i| 60_000u16.wrapping_add(i))
            .collect();
        assert!(all.iter().all(|&s| r.allow(t0, s)));
        let t1 = t0 + Duration::from_millis(50);
        assert!(
            all.iter().all(|&s| !r.allow(t1, s)),
            "none twice within the interval"
        );
    }

    #[test]
    fn a_low_estimate_still_repairs_one_packet_at_a_time() {
        let t0 = Instant::now();
        let mut b = RetransmitBudget::default();
        assert!(b.allow(t0, Some(50_000), 1_200));
        assert!(!b.allow(t0, Some(50_000), 1_200), "the bucket is empty");
        // 50 kbps * 0.2 = 1,250 bytes/s: one packet a second.
        assert!(b.allow(t0 + Duration::from_secs(1), Some(50_000), 1_200));
    }
}
