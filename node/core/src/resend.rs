//! Limits on answering NACKs, so retransmissions cannot make a congested downlink worse.
//!
//! Without limits, congestion feeds itself: a link that drops 40 % of what it is sent makes
//! the subscriber NACK every lost packet, and a browser NACKs a packet again each round trip
//! until it arrives, so the retransmissions (lost in turn, NACKed again) fill the link that the
//! stream allocator is trying to relieve; measured with Chromium behind a 300 kbps limit, loss
//! stayed above 80 % for three seconds after video had been paused. Two rules stop this:
//!
//! - [`RecentResends`]: a packet resent to a subscription is not resent again within
//!   [`RESEND_INTERVAL`]; the first copy may still be on its way.
//! - [`RetransmitBudget`]: retransmissions to one subscriber may use at most
//!   [`RETRANSMIT_SHARE`] of its bandwidth estimate (token bucket); beyond that, NACKs are
//!   left unanswered (a subscriber that cannot wait for the packet asks for a keyframe).
//!
//! Subscribers without congestion feedback have no estimate and no budget: every NACK is
//! answered, as before.

use std::time::{Duration, Instant};

/// A packet is resent to one subscription at most once in this long.
pub const RESEND_INTERVAL: Duration = Duration::from_millis(100);
/// Share of a subscriber's estimate that retransmissions may use.
pub const RETRANSMIT_SHARE: f64 = 0.2;
/// The budget saved up while nothing is retransmitted covers this much time at its rate.
const BURST: Duration = Duration::from_millis(250);
/// The smallest bucket: one full-size packet, so a low estimate still gets some repair.
const MIN_BURST_BYTES: f64 = 1_500.0;
/// Slots remembered per subscription (a power of two, indexed by sequence number).
const SLOTS: usize = 64;

/// When each remembered sequence number was last resent.
type Slots = [Option<(u16, Instant)>; SLOTS];

/// The last packets resent to one subscription, by outgoing sequence number. The slots are
/// allocated at the first NACK: most subscriptions (audio, clean links) never see one.
#[derive(Debug, Default)]
pub struct RecentResends {
    slots: Option<Box<Slots>>,
}

impl RecentResends {
    /// Whether `seq` may be resent now; if so, remembers that it is.
    pub fn allow(&mut self, now: Instant, seq: u16) -> bool {
        let slots = self.slots.get_or_insert_with(|| Box::new([None; SLOTS]));
        let slot = &mut slots[seq as usize % SLOTS];
        if let Some((s, at)) = *slot
            && s == seq
            && now.saturating_duration_since(at) < RESEND_INTERVAL
        {
            return false;
        }
        *slot = Some((seq, now));
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
    /// (`None`: no estimate, no limit); if it fits, it is spent.
    pub fn allow(&mut self, now: Instant, estimate_bps: Option<u64>, bytes: usize) -> bool {
        let Some(estimate) = estimate_bps else {
            return true;
        };
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
    fn without_an_estimate_every_retransmission_goes() {
        let t0 = Instant::now();
        let mut b = RetransmitBudget::default();
        assert!((0..1_000).all(|_| b.allow(t0, None, 1_200)));
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
