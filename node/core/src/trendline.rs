//! Delay-based congestion detection: is the queue on the path to a subscriber growing?
//!
//! The trendline method of today's GCC: each group of packets (a burst sent within 5 ms)
//! yields an inter-group delay variation — how much later the group arrived after the previous
//! one than it was sent after it. Accumulated and smoothed, these trace the queueing delay over
//! time; the slope of a least-squares line through the last [`WINDOW`] points is the trend. A
//! trend above an adaptive threshold for long enough means the queue grows: overuse. Below the
//! negative threshold the queue drains: underuse.
//!
//! The threshold follows the trend magnitude (quickly down, slowly up), so that the detector
//! neither starves against competing flows nor fires on jitter.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Points in the regression.
const WINDOW: usize = 20;
/// Smoothing of the accumulated delay.
const SMOOTHING: f64 = 0.9;
/// Scale of the trend compared with the threshold.
const GAIN: f64 = 4.0;
/// The trend is weighted by the number of deltas seen, up to this many.
const MIN_DELTAS: usize = 60;
const INITIAL_THRESHOLD_MS: f64 = 12.5;
const THRESHOLD_RANGE_MS: (f64, f64) = (6.0, 600.0);
/// Threshold adaptation rates (per ms) when the trend is above and below it.
const K_UP: f64 = 0.0087;
const K_DOWN: f64 = 0.039;
/// A trend far above the threshold is an outlier and does not move it.
const MAX_ADAPT_OFFSET_MS: f64 = 15.0;
/// Overuse must last this long and show in this many readings in a row to count, so that the
/// queue a single keyframe builds (and that drains over a few frames on a busy link) is not
/// taken for congestion. A really overloaded path also overflows its queue, which the loss
/// signal catches at once.
const OVERUSE_TIME: Duration = Duration::from_millis(250);
const OVERUSE_READINGS: u32 = 4;

/// What the path is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Usage {
    #[default]
    Normal,
    Overuse,
    Underuse,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Trendline {
    first_arrival: Option<Instant>,
    accumulated_ms: f64,
    smoothed_ms: f64,
    /// (ms since first arrival, smoothed delay).
    history: VecDeque<(f64, f64)>,
    deltas: usize,
    threshold_ms: f64,
    last_threshold_update: Option<Instant>,
    overuse_since: Option<Instant>,
    overuse_readings: u32,
    previous_trend: f64,
    usage: Usage,
}

impl Default for Trendline {
    fn default() -> Self {
        Self {
            first_arrival: None,
            accumulated_ms: 0.0,
            smoothed_ms: 0.0,
            history: VecDeque::with_capacity(WINDOW + 1),
            deltas: 0,
            threshold_ms: INITIAL_THRESHOLD_MS,
            last_threshold_update: None,
            overuse_since: None,
            overuse_readings: 0,
            previous_trend: 0.0,
            usage: Usage::Normal,
        }
    }
}

impl Trendline {
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// One inter-group delay variation (`delta_ms`), for a group that arrived at `at` (our
    /// clock: when its report was processed, shifted by the receiver's spacing).
    pub fn update(&mut self, at: Instant, delta_ms: f64) -> Usage {
        let first = *self.first_arrival.get_or_insert(at);
        self.deltas = (self.deltas + 1).min(MIN_DELTAS);
        self.accumulated_ms += delta_ms;
        self.smoothed_ms = SMOOTHING * self.smoothed_ms + (1.0 - SMOOTHING) * self.accumulated_ms;
        let x = at.saturating_duration_since(first).as_secs_f64() * 1e3;
        self.history.push_back((x, self.smoothed_ms));
        if self.history.len() > WINDOW {
            self.history.pop_front();
        }
        if self.history.len() < WINDOW {
            return self.usage;
        }
        let trend = slope(&self.history).unwrap_or(self.previous_trend);
        self.detect(at, trend);
        self.usage
    }

    fn detect(&mut self, now: Instant, trend: f64) {
        let modified = self.deltas as f64 * trend * GAIN;
        if modified > self.threshold_ms {
            let since = *self.overuse_since.get_or_insert(now);
            self.overuse_readings += 1;
            if now.saturating_duration_since(since) >= OVERUSE_TIME
                && self.overuse_readings >= OVERUSE_READINGS
                && trend >= self.previous_trend
            {
                self.usage = Usage::Overuse;
            }
        } else if modified < -self.threshold_ms {
            self.overuse_since = None;
            self.overuse_readings = 0;
            self.usage = Usage::Underuse;
        } else {
            self.overuse_since = None;
            self.overuse_readings = 0;
            self.usage = Usage::Normal;
        }
        self.previous_trend = trend;
        self.adapt_threshold(now, modified);
    }

    fn adapt_threshold(&mut self, now: Instant, modified: f64) {
        let last = self.last_threshold_update.replace(now);
        if modified.abs() > self.threshold_ms + MAX_ADAPT_OFFSET_MS {
            return;
        }
        let k = if modified.abs() < self.threshold_ms {
            K_DOWN
        } else {
            K_UP
        };
        let elapsed_ms = last.map_or(0.0, |l| {
            (now.saturating_duration_since(l).as_secs_f64() * 1e3).min(100.0)
        });
        self.threshold_ms += k * (modified.abs() - self.threshold_ms) * elapsed_ms;
        self.threshold_ms = self
            .threshold_ms
            .clamp(THRESHOLD_RANGE_MS.0, THRESHOLD_RANGE_MS.1);
    }
}

/// Least-squares slope of the points.
fn slope(points: &VecDeque<(f64, f64)>) -> Option<f64> {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    (den > 0.0).then(|| num / den)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(t: &mut Trendline, start: Instant, from: u64, n: u64, delta_ms: f64) -> Usage {
        let mut u = Usage::Normal;
        for i in from..from + n {
            u = t.update(start + Duration::from_millis(33 * i), delta_ms);
        }
        u
    }

    #[test]
    fn jitter_is_normal_a_growing_queue_is_overuse_and_a_draining_one_underuse() {
        let t0 = Instant::now();
        let mut t = Trendline::default();
        for i in 0..200u64 {
            let jitter = if i % 2 == 0 { 3.0 } else { -3.0 };
            assert_eq!(
                t.update(t0 + Duration::from_millis(33 * i), jitter),
                Usage::Normal
            );
        }
        // Each frame arrives 20 ms later than the one before: detected within a few frames.
        let mut detected = None;
        for i in 200..230u64 {
            if t.update(t0 + Duration::from_millis(33 * i), 20.0) == Usage::Overuse {
                detected = Some(i - 200);
                break;
            }
        }
        assert!(detected.is_some_and(|n| n <= 14), "{detected:?}");
        assert_eq!(feed(&mut t, t0, 240, 30, -20.0), Usage::Underuse);
    }

    #[test]
    fn a_keyframe_bump_draining_over_a_few_frames_is_not_overuse() {
        let t0 = Instant::now();
        let mut t = Trendline::default();
        for i in 0..400u64 {
            // Every 3 s a keyframe arrives 50 ms late; the queue drains over five frames.
            let d = match i % 90 {
                0 => 50.0,
                1..=5 => -10.0,
                _ if i % 2 == 0 => 2.0,
                _ => -2.0,
            };
            assert_eq!(
                t.update(t0 + Duration::from_millis(33 * i), d),
                Usage::Normal,
                "{i}"
            );
        }
    }
}
