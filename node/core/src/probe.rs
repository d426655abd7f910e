//! Probing a subscriber's downlink for more bandwidth.
//!
//! The estimator only grows slowly on its own (and never far beyond what was carried), so a
//! subscriber that was held to a low layer would take tens of seconds to climb back once its
//! link cleared. A probe asks the link directly: for [`PROBE_DURATION`] the downlink sends at a
//! chosen rate, topping the media up with duplicates of packets the subscriber already
//! received (its jitter buffer discards them, so they cost nothing but bytes). The estimator
//! measures the rate the cluster was delivered at (see [`crate::bandwidth`]).
//!
//! A probe runs only while some subscription gets less than it wants, at what they want plus
//! headroom for the allocator's upgrade margin, but at most double the estimate: probes go up
//! in steps, one after the other while they succeed, so a freed link is found within a few; a
//! failed probe backs off (1 s, 2 s, then 3 s)
//! before the next attempt, so a subscriber behind a real bottleneck is not flooded.

use std::time::{Duration, Instant};

/// How long one probe cluster lasts: long enough for a handful of packets whose arrival
/// spacing shows the path's rate, short enough that probing beyond a bottleneck only queues
/// a few tens of milliseconds there (a long probe would overflow its queue, and audio with it).
pub const PROBE_DURATION: Duration = Duration::from_millis(60);
/// Pause after a successful probe before the next step.
const AFTER_SUCCESS: Duration = Duration::from_millis(250);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(3);
/// Probe above what subscriptions want by this much: the allocator needs 10% headroom to
/// move a subscription up.
const HEADROOM: f64 = 1.3;

/// A probe in progress.
#[derive(Clone, Copy, Debug)]
pub struct ActiveProbe {
    pub id: u16,
    pub rate_bps: f64,
    started: Instant,
    /// Bytes sent so far in the cluster (media and duplicates).
    bytes: u64,
    /// Packets sent so far in the cluster.
    pub packets: u32,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Prober {
    next_id: u16,
    active: Option<ActiveProbe>,
    /// Ended, awaiting its verdict: (id, rate probed).
    judging: Option<(u16, f64)>,
    not_before: Option<Instant>,
    backoff: Duration,
}

impl Default for Prober {
    fn default() -> Self {
        Self {
            next_id: 1,
            active: None,
            judging: None,
            not_before: None,
            backoff: FIRST_BACKOFF,
        }
    }
}

impl Prober {
    /// The probe in progress, if any.
    pub fn active(&self) -> Option<&ActiveProbe> {
        self.active.as_ref()
    }

    /// Starts a probe if one is due: subscriptions want `desired_bps` in all, `satisfied` if
    /// each got what it wants; the estimate is `estimate_bps`. Returns the cluster id.
    pub fn maybe_start(
        &mut self,
        now: Instant,
        estimate_bps: f64,
        desired_bps: f64,
        satisfied: bool,
    ) -> Option<u16> {
        if satisfied || self.active.is_some() || self.judging.is_some() {
            return None;
        }
        if self.not_before.is_some_and(|t| now < t) {
            return None;
        }
        let rate = (desired_bps * HEADROOM).min(estimate_bps * 2.0);
        if rate <= estimate_bps {
            return None;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.active = Some(ActiveProbe {
            id,
            rate_bps: rate,
            started: now,
            bytes: 0,
            packets: 0,
        });
        Some(id)
    }

    /// A packet of `size` bytes left during the probe (media or duplicate).
    pub fn on_sent(&mut self, size: usize) {
        if let Some(p) = &mut self.active {
            p.bytes += size as u64;
            p.packets += 1;
        }
    }

    /// Bytes of duplicates to send now to keep the cluster at its rate.
    pub fn bytes_due(&self, now: Instant) -> usize {
        let Some(p) = &self.active else { return 0 };
        let elapsed = now.saturating_duration_since(p.started).min(PROBE_DURATION);
        let target = p.rate_bps / 8.0 * elapsed.as_secs_f64();
        (target - p.bytes as f64).max(0.0) as usize
    }

    /// Ends the probe once its time is up; returns it (id, packets) for the estimator.
    pub fn poll_end(&mut self, now: Instant) -> Option<(u16, u32)> {
        let p = self.active?;
        if now.saturating_duration_since(p.started) < PROBE_DURATION {
            return None;
        }
        self.active = None;
        self.judging = Some((p.id, p.rate_bps));
        Some((p.id, p.packets))
    }

    /// The rate of the probe awaiting its verdict (0 if none).
    pub fn judging_rate(&self) -> f64 {
        self.judging.map_or(0.0, |(_, r)| r)
    }

    /// When the probe in progress needs attention next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.active.map(|p| p.started + PROBE_DURATION)
    }

    /// The estimator's verdict on cluster `id`: `delivered` is the rate it arrived at, if it
    /// could be measured; it succeeded if that reached most of what was probed.
    pub fn on_outcome(&mut self, now: Instant, id: u16, probed_bps: f64, delivered: Option<f64>) {
        if self.judging.map(|(j, _)| j) != Some(id) {
            return;
        }
        self.judging = None;
        let success = delivered.is_some_and(|d| d >= probed_bps * 0.85);
        if success {
            self.backoff = FIRST_BACKOFF;
            self.not_before = Some(now + AFTER_SUCCESS);
        } else {
            self.not_before = Some(now + self.backoff);
            self.backoff = (self.backoff + FIRST_BACKOFF).min(MAX_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_step_up_and_back_off_after_failure() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        assert_eq!(
            p.maybe_start(t0, 500_000.0, 450_000.0, true),
            None,
            "satisfied"
        );
        assert_eq!(
            p.maybe_start(t0, 500_000.0, 350_000.0, false),
            None,
            "no gain"
        );
        let id = p.maybe_start(t0, 500_000.0, 3_000_000.0, false).unwrap();
        assert_eq!(
            p.active().unwrap().rate_bps,
            1_000_000.0,
            "at most doubling"
        );
        // Half way (30 ms at 1 Mbps), with nothing sent yet: 3,750 bytes are due.
        let due = p.bytes_due(t0 + PROBE_DURATION / 2);
        assert!((3_700..3_800).contains(&due), "{due}");
        p.on_sent(due);
        assert!(p.bytes_due(t0 + PROBE_DURATION / 2) < 10);
        assert_eq!(p.poll_end(t0 + Duration::from_millis(50)), None);
        let (ended, _) = p.poll_end(t0 + PROBE_DURATION).unwrap();
        assert_eq!(ended, id);
        assert_eq!(
            p.maybe_start(t0 + PROBE_DURATION, 500_000.0, 3e6, false),
            None,
            "judging"
        );
        let t1 = t0 + Duration::from_millis(400);
        p.on_outcome(t1, id, 1_000_000.0, Some(400_000.0));
        assert_eq!(
            p.maybe_start(t1 + Duration::from_millis(500), 400_000.0, 3e6, false),
            None
        );
        let id2 = p
            .maybe_start(t1 + FIRST_BACKOFF, 400_000.0, 3e6, false)
            .unwrap();
        p.poll_end(t1 + FIRST_BACKOFF + PROBE_DURATION).unwrap();
        let t2 = t1 + Duration::from_secs(2);
        p.on_outcome(t2, id2, 800_000.0, Some(790_000.0));
        assert!(
            p.maybe_start(t2 + AFTER_SUCCESS, 790_000.0, 3e6, false)
                .is_some(),
            "success: go on"
        );
    }
}
