//! Bandwidth estimation for one subscriber's downlink, from transport-wide congestion control
//! feedback (GCC-style), with REMB as the fallback.
//!
//! Every packet sent to the subscriber carries a transport-wide sequence number; the subscriber
//! reports when each one arrived (TWCC feedback). From that the [`Estimator`] derives:
//!
//! - a **delay signal**: arrival-time gradients between packet groups (grouped by webrtc-rs's
//!   `rtc-interceptor`), whose trend shows whether the queue on the path grows (overuse) or
//!   drains (see [`crate::trendline`]);
//! - the **acknowledged rate**: what actually reached the subscriber recently;
//! - the **loss fraction** of the last second.
//!
//! An AIMD controller turns those into the target: on overuse it drops to 85% of the
//! acknowledged rate, otherwise it grows 8% per second (one packet per 200 ms near a rate that
//! overused before), never beyond 1.5× what was acknowledged, so an idle link cannot talk
//! itself into a rate it never carried. Climbing faster is the job of **probes**: a cluster of
//! packets sent at a chosen rate; if the subscriber received them at that rate without the
//! queue growing, the target jumps to it (see [`crate::probe`]). Heavy loss (above 10%, in the
//! latest report and over the last second) cuts the target to just under what was delivered.
//!
//! Subscribers that do not negotiate TWCC but send REMB get the REMB value as their estimate.
//!
//! Nothing here reads a clock; every call takes `now`.

use crate::trendline::{Trendline, Usage};
use rtc_interceptor::{ArrivalGroupAccumulator, PacketReport, convert_twcc};
use rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Sent packets remembered for matching feedback: at most this many (about 4 s at 1,000
/// packets per second), at first far fewer. The ring doubles only when a packet would take
/// the slot of one sent less than [`FEEDBACK_HORIZON`] ago, so a subscriber receiving audio
/// and a low layer keeps a few hundred slots, not 4,096 (128 KiB, the largest part of what an
/// audience member used to cost).
const HISTORY: usize = 4096;
const FIRST_HISTORY: usize = 128;
/// Feedback for a packet older than this is not waited for.
const FEEDBACK_HORIZON: Duration = Duration::from_secs(2);
/// Window of the acknowledged-rate measurement, in receiver time.
const ACKED_WINDOW: Duration = Duration::from_millis(500);
/// Window of the loss fraction.
const LOSS_WINDOW: Duration = Duration::from_secs(1);
/// Minimum time between two changes of the target, so each is observed before the next.
const CHANGE_INTERVAL: Duration = Duration::from_millis(200);
/// Back off to this fraction of the acknowledged rate on overuse.
const DECREASE_FACTOR: f64 = 0.85;
/// Multiplicative growth per second far from the last overuse.
const INCREASE_FACTOR: f64 = 1.08;
/// Additive growth per change near the rate that overused last.
const ADDITIVE_STEP: f64 = 15_000.0;
/// Loss above this cuts the target.
const HIGH_LOSS: f64 = 0.10;
/// Without TWCC feedback for this long, REMB (if any) is believed instead.
const TWCC_STALE: Duration = Duration::from_secs(2);
/// The queue a probe built takes a while to drain and leave the delay trend: overuse seen this
/// soon after a probe's verdict is the probe's, already accounted for by the verdict.
const PROBE_GRACE: Duration = Duration::from_millis(300);
/// A probe cluster not fully reported this long after it ended is judged on what is known.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Limits of the estimate.
#[derive(Clone, Copy, Debug)]
pub struct EstimatorConfig {
    pub initial_bps: f64,
    pub min_bps: f64,
    pub max_bps: f64,
}

impl Default for EstimatorConfig {
    fn default() -> Self {
        Self {
            // Enough for audio and a low simulcast layer; more has to be shown to fit.
            initial_bps: 300_000.0,
            min_bps: 30_000.0,
            max_bps: 50_000_000.0,
        }
    }
}

/// A probe cluster's verdict.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeOutcome {
    pub id: u16,
    /// The rate the cluster was delivered at, if the cluster was measurable and not lossy.
    pub delivered_bps: Option<f64>,
}

#[derive(Clone, Copy, Debug)]
struct Sent {
    twcc: u16,
    departure: Instant,
    size: u32,
    probe: u16,
    /// Already reported lost once (a later report may still say it arrived).
    lost_reported: bool,
}

/// What is known of one probe cluster.
#[derive(Clone, Copy, Debug)]
struct Cluster {
    id: u16,
    /// Packets sent in it; known once it ended.
    sent: Option<u32>,
    ended_at: Option<Instant>,
    acked: u32,
    lost: u32,
    first_departure: Option<Instant>,
    last_departure: Option<Instant>,
    first_arrival: Option<Duration>,
    last_arrival: Option<Duration>,
    bytes: u64,
}

/// See the module documentation.
pub struct Estimator {
    config: EstimatorConfig,
    /// A ring indexed by transport-wide sequence number modulo its length (a power of two,
    /// so that it divides the sequence space); empty until the first packet.
    history: Vec<Option<Sent>>,
    groups: ArrivalGroupAccumulator,
    detector: Trendline,
    /// (arrival on the receiver's clock, bytes), oldest first.
    acked: VecDeque<(Duration, u32)>,
    /// (feedback time, lost, reported), oldest first.
    loss: VecDeque<(Instant, u32, u32)>,
    target: f64,
    /// The acknowledged rate when overuse was last detected.
    ceiling: Option<f64>,
    last_change: Option<Instant>,
    last_feedback: Option<Instant>,
    remb: Option<f64>,
    clusters: Vec<Cluster>,
    outcomes: VecDeque<ProbeOutcome>,
    last_verdict: Option<Instant>,
    /// All of the subscriber's video is paused for want of bandwidth.
    starved: bool,
}

impl Estimator {
    pub fn new(config: EstimatorConfig) -> Self {
        Self {
            config,
            history: Vec::new(),
            groups: ArrivalGroupAccumulator::default(),
            detector: Trendline::default(),
            acked: VecDeque::new(),
            loss: VecDeque::new(),
            target: config.initial_bps,
            ceiling: None,
            last_change: None,
            last_feedback: None,
            remb: None,
            clusters: Vec::new(),
            outcomes: VecDeque::new(),
            last_verdict: None,
            starved: false,
        }
    }

    /// The current estimate, in bits per second.
    pub fn target_bps(&self) -> f64 {
        self.target
    }

    /// Whether the subscriber has sent any congestion feedback (TWCC or REMB) yet.
    pub fn has_feedback(&self) -> bool {
        self.last_feedback.is_some() || self.remb.is_some()
    }

    /// The delay detector's current reading.
    pub fn usage(&self) -> Usage {
        self.detector.usage()
    }

    /// Loss fraction over the last second of feedback.
    pub fn loss_fraction(&self) -> f64 {
        let (lost, total) = self
            .loss
            .iter()
            .fold((0u32, 0u32), |(l, t), &(_, lost, total)| {
                (l + lost, t + total)
            });
        if total == 0 {
            0.0
        } else {
            lost as f64 / total as f64
        }
    }

    /// The rate acknowledged over the last half second, if enough arrived to tell.
    pub fn acked_bps(&self) -> Option<f64> {
        let (first, _) = *self.acked.front()?;
        let (last, _) = *self.acked.back()?;
        let span = last.checked_sub(first)?;
        if span < Duration::from_millis(50) || self.acked.len() < 3 {
            return None;
        }
        let bytes: u64 = self.acked.iter().skip(1).map(|&(_, b)| b as u64).sum();
        Some(bytes as f64 * 8.0 / span.as_secs_f64())
    }

    /// Tells the estimator whether all of the subscriber's video is paused for want of
    /// bandwidth (the estimate may then grow past what is acknowledged).
    pub fn set_starved(&mut self, starved: bool) {
        self.starved = starved;
    }

    /// Records a packet leaving with transport-wide sequence number `twcc`; `probe` is the
    /// probe cluster it belongs to (0: none).
    pub fn on_sent(&mut self, now: Instant, twcc: u16, size: usize, probe: u16) {
        if self.history.is_empty() {
            self.history = vec![None; FIRST_HISTORY];
        }
        let len = self.history.len();
        if len < HISTORY
            && self.history[twcc as usize % len].is_some_and(|old| {
                old.twcc != twcc && now.saturating_duration_since(old.departure) < FEEDBACK_HORIZON
            })
        {
            self.grow_history();
        }
        let len = self.history.len();
        self.history[twcc as usize % len] = Some(Sent {
            twcc,
            departure: now,
            size: size as u32,
            probe,
            lost_reported: false,
        });
        if probe != 0 {
            let c = self.cluster(probe);
            c.first_departure.get_or_insert(now);
            c.last_departure = Some(now);
        }
    }

    /// Doubles the history ring, keeping what it remembers.
    fn grow_history(&mut self) {
        let len = self.history.len() * 2;
        let mut grown = vec![None; len];
        for s in self.history.iter().flatten() {
            grown[s.twcc as usize % len] = Some(*s);
        }
        self.history = grown;
    }

    /// A probe cluster ended after `sent` packets.
    pub fn end_probe(&mut self, now: Instant, id: u16, sent: u32) {
        let c = self.cluster(id);
        c.sent = Some(sent);
        c.ended_at = Some(now);
    }

    fn cluster(&mut self, id: u16) -> &mut Cluster {
        let i = match self.clusters.iter().position(|c| c.id == id) {
            Some(i) => i,
            None => {
                self.clusters.push(Cluster {
                    id,
                    sent: None,
                    ended_at: None,
                    acked: 0,
                    lost: 0,
                    first_departure: None,
                    last_departure: None,
                    first_arrival: None,
                    last_arrival: None,
                    bytes: 0,
                });
                self.clusters.len() - 1
            }
        };
        &mut self.clusters[i]
    }

    /// TWCC feedback from the subscriber.
    pub fn on_twcc(&mut self, now: Instant, feedback: &TransportLayerCc) {
        self.last_feedback = Some(now);
        let (mut lost, mut total) = (0u32, 0u32);
        let len = self.history.len();
        for ack in convert_twcc(feedback) {
            if len == 0 {
                break;
            }
            let Some(sent) = self.history[ack.sequence_number as usize % len]
                .filter(|s| s.twcc == ack.sequence_number)
            else {
                continue;
            };
            // A packet counts once: forgotten once it arrived, flagged once reported lost.
            let slot = &mut self.history[ack.sequence_number as usize % len];
            if ack.arrived {
                *slot = None;
            } else if sent.lost_reported {
                continue;
            } else if let Some(s) = slot {
                s.lost_reported = true;
            }
            total += 1;
            let report = PacketReport {
                ssrc: 0,
                id: 0,
                rtp_sequence_number: 0,
                is_twcc: true,
                twcc_sequence_number: sent.twcc,
                size: sent.size as usize,
                arrived: ack.arrived,
                departure: sent.departure,
                arrival: ack.arrival,
                ecn: ack.ecn,
            };
            match (ack.arrived, ack.arrival) {
                (true, Some(arrival)) => {
                    self.acked.push_back((arrival, sent.size));
                    if let Some(trend) = self.groups.accumulate(&report) {
                        self.detector.update(trend.at, trend.delta_ms);
                    }
                    if sent.probe != 0 {
                        let c = self.cluster(sent.probe);
                        c.acked += 1;
                        c.bytes += sent.size as u64;
                        c.first_arrival = Some(c.first_arrival.map_or(arrival, |a| a.min(arrival)));
                        c.last_arrival = Some(c.last_arrival.map_or(arrival, |a| a.max(arrival)));
                    }
                }
                _ => {
                    lost += 1;
                    if sent.probe != 0 {
                        self.cluster(sent.probe).lost += 1;
                    }
                }
            }
        }
        if let Some(&(newest, _)) = self.acked.back() {
            while self
                .acked
                .front()
                .is_some_and(|&(a, _)| newest.saturating_sub(a) > ACKED_WINDOW)
            {
                self.acked.pop_front();
            }
        }
        if total > 0 {
            self.loss.push_back((now, lost, total));
        }
        while self
            .loss
            .front()
            .is_some_and(|&(t, _, _)| now.saturating_duration_since(t) > LOSS_WINDOW)
        {
            self.loss.pop_front();
        }
        let batch_loss = if total >= 5 {
            lost as f64 / total as f64
        } else {
            0.0
        };
        self.update(now, batch_loss);
        self.judge_probes(now);
    }

    /// A REMB message: the subscriber's own estimate. Used while no TWCC feedback arrives.
    pub fn on_remb(&mut self, now: Instant, bps: f64) {
        self.remb = Some(bps);
        let twcc_fresh = self
            .last_feedback
            .is_some_and(|t| now.saturating_duration_since(t) < TWCC_STALE);
        if !twcc_fresh {
            self.target = bps.clamp(self.config.min_bps, self.config.max_bps);
        }
    }

    /// Judges probe clusters whose feedback is overdue.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.judge_probes(now);
    }

    /// The next probe verdict, if one is ready.
    pub fn poll_probe_outcome(&mut self) -> Option<ProbeOutcome> {
        self.outcomes.pop_front()
    }

    fn update(&mut self, now: Instant, batch_loss: f64) {
        let acked = self.acked_bps();
        let settled = self
            .last_change
            .is_none_or(|t| now.saturating_duration_since(t) >= CHANGE_INTERVAL);
        // A probe overshoots on purpose; its verdict (see `judge_probes`) says what the path
        // carries. Until then, the queue it built is no reason to back off.
        let probing = !self.clusters.is_empty()
            || self
                .last_verdict
                .is_some_and(|t| now.saturating_duration_since(t) < PROBE_GRACE);
        match self.detector.usage() {
            Usage::Overuse if settled && !probing => {
                // Back off from what the path delivers (repeated readings of the same queue
                // must not spiral down), never up.
                self.target = match acked {
                    Some(a) => (a * DECREASE_FACTOR).min(self.target),
                    None => self.target * DECREASE_FACTOR,
                };
                self.ceiling = acked;
                self.last_change = Some(now);
            }
            Usage::Normal if settled => {
                let near = self.ceiling.is_some_and(|c| self.target > 0.85 * c);
                let elapsed = self
                    .last_change
                    .map_or(CHANGE_INTERVAL, |t| now.saturating_duration_since(t))
                    .min(Duration::from_secs(1));
                let grown = if near {
                    self.target + ADDITIVE_STEP
                } else {
                    self.target * INCREASE_FACTOR.powf(elapsed.as_secs_f64())
                };
                // Never beyond what the link has shown it carries (probes go further) — unless
                // all video is paused for want of bandwidth: then the only way back is to grow
                // until the allocator tries the lowest layer again, and the path answers.
                let cap = if self.starved {
                    f64::INFINITY
                } else {
                    acked.map_or(self.target, |a| 1.5 * a + 10_000.0)
                };
                self.target = grown.min(cap).max(self.target);
                if let (Some(a), Some(c)) = (acked, self.ceiling)
                    && a > 1.15 * c
                {
                    self.ceiling = None;
                }
                self.last_change = Some(now);
            }
            _ => {}
        }
        // Heavy loss: the path delivers what was acknowledged and no more (a full drop-tail
        // queue shows no delay growth, only loss). The latest report must show it, so that once
        // sending fits, cutting stops; and so must the last second, because a report of a few
        // packets shows one random loss as 15 or 20 %.
        if batch_loss > HIGH_LOSS && self.loss_fraction() > HIGH_LOSS && settled {
            self.target = match acked {
                Some(a) => (a * 0.9).min(self.target),
                None => self.target * (1.0 - 0.5 * batch_loss),
            };
            self.last_change = Some(now);
        }
        self.target = self.target.clamp(self.config.min_bps, self.config.max_bps);
    }

    fn judge_probes(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.clusters.len() {
            let c = self.clusters[i];
            let Some(sent) = c.sent else {
                i += 1;
                continue;
            };
            let reported = c.acked + c.lost;
            let complete = reported * 10 >= sent * 9;
            let overdue = c
                .ended_at
                .is_some_and(|t| now.saturating_duration_since(t) > PROBE_TIMEOUT);
            if !(complete || overdue) {
                i += 1;
                continue;
            }
            self.clusters.swap_remove(i);
            self.last_verdict = Some(now);
            let delivered = Self::probe_rate(&c, sent);
            let probed = Self::sent_rate(&c, sent);
            if let (Some(d), Some(p)) = (delivered, probed)
                && d < 0.9 * p
                && d < self.target
            {
                // The path just showed what it carries: an estimate above that (grown while
                // the link was barely used) must not drive the next probe or allocation.
                self.target = d.clamp(self.config.min_bps, self.config.max_bps);
                self.last_change = Some(now);
            }
            if let Some(rate) = delivered
                && self.detector.usage() != Usage::Overuse
                && rate > self.target
            {
                self.target = rate.clamp(self.config.min_bps, self.config.max_bps);
                if self.ceiling.is_some_and(|ceiling| rate > ceiling) {
                    self.ceiling = None;
                }
                self.last_change = Some(now);
            }
            self.outcomes.push_back(ProbeOutcome {
                id: c.id,
                delivered_bps: delivered,
            });
        }
    }

    /// The rate a cluster was sent at.
    fn sent_rate(c: &Cluster, sent: u32) -> Option<f64> {
        let span = c
            .last_departure?
            .checked_duration_since(c.first_departure?)?;
        if span < Duration::from_millis(5) || c.acked < 2 {
            return None;
        }
        let bytes = c.bytes as f64 * (sent.max(2) - 1) as f64 / c.acked as f64;
        Some(bytes * 8.0 / span.as_secs_f64())
    }

    /// The rate a cluster was delivered at: the lower of its send and receive rates, or `None`
    /// if too little of it was reported, it lost more than 10%, or it was too short to time.
    fn probe_rate(c: &Cluster, sent: u32) -> Option<f64> {
        if c.acked < 4 || c.acked * 10 < sent * 8 || c.lost * 10 > sent {
            return None;
        }
        let send_span = c
            .last_departure?
            .checked_duration_since(c.first_departure?)?;
        let recv_span = c.last_arrival?.checked_sub(c.first_arrival?)?;
        if send_span < Duration::from_millis(5) || recv_span < Duration::from_millis(5) {
            return None;
        }
        // n packets span n - 1 gaps.
        let bytes = c.bytes as f64 * (c.acked - 1) as f64 / c.acked as f64;
        let send = bytes * 8.0 / send_span.as_secs_f64();
        let recv = bytes * 8.0 / recv_span.as_secs_f64();
        Some(send.min(recv))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TWCC feedback for `base..`: arrivals in microseconds on the receiver's clock.
    fn twcc(base: u16, arrivals: &[Option<u64>]) -> TransportLayerCc {
        let arrivals: Vec<Option<Duration>> = arrivals
            .iter()
            .map(|a| a.map(Duration::from_micros))
            .collect();
        crate::twcc_feedback::twcc_feedback(base, &arrivals, 0)
    }

    /// Sends up to `rate_bps` of video, never more than the estimate (as the allocator does):
    /// a frame of 1,000-byte packets every 33 ms, for `secs` over a link of `link_bps` with a
    /// 20 ms base delay and an unbounded queue, reporting every 50 ms; returns the estimate.
    fn drive(
        e: &mut Estimator,
        t0: Instant,
        seq: &mut u16,
        rate_bps: f64,
        link_bps: f64,
        secs: f64,
    ) -> f64 {
        drive_lossy(e, t0, seq, rate_bps, link_bps, secs, 0)
    }

    /// [`drive`], with every `lose_every`th packet lost on the way (0: none).
    fn drive_lossy(
        e: &mut Estimator,
        t0: Instant,
        seq: &mut u16,
        rate_bps: f64,
        link_bps: f64,
        secs: f64,
        lose_every: u16,
    ) -> f64 {
        let size = 1_000usize;
        let frame = Duration::from_millis(33);
        let service = Duration::from_secs_f64(size as f64 * 8.0 / link_bps);
        let mut now = t0;
        let mut link_free = t0;
        let mut pending: Vec<(u16, Instant)> = Vec::new();
        let mut next_report = t0 + Duration::from_millis(50);
        let end = t0 + Duration::from_secs_f64(secs);
        while now < end {
            let rate = rate_bps.min(e.target_bps());
            let per_frame = (rate / 8.0 * frame.as_secs_f64() / size as f64)
                .round()
                .max(1.0) as usize;
            for _ in 0..per_frame {
                e.on_sent(now, *seq, size, 0);
                let start = link_free.max(now);
                link_free = start + service;
                pending.push((*seq, link_free + Duration::from_millis(20)));
                *seq = seq.wrapping_add(1);
            }
            now += frame;
            while now >= next_report {
                let ready: Vec<_> = pending
                    .iter()
                    .filter(|(_, a)| *a <= next_report)
                    .copied()
                    .collect();
                if let Some(&(base, _)) = ready.first() {
                    let arrivals: Vec<Option<u64>> = ready
                        .iter()
                        .map(|&(s, a)| {
                            let lost = lose_every != 0 && s % lose_every == 0;
                            (!lost).then(|| a.duration_since(t0).as_micros() as u64 + 1_000_000)
                        })
                        .collect();
                    e.on_twcc(next_report, &twcc(base, &arrivals));
                    pending.retain(|(_, a)| *a > next_report);
                }
                next_report += Duration::from_millis(50);
            }
        }
        e.target_bps()
    }

    #[test]
    fn the_history_grows_with_the_rate_and_feedback_still_matches() {
        let t0 = Instant::now();
        let mut e = Estimator::new(EstimatorConfig::default());
        assert!(
            e.history.is_empty(),
            "nothing allocated before the first packet"
        );
        // Audio only: 50 packets a second fit the first ring.
        for i in 0..500u16 {
            e.on_sent(t0 + Duration::from_millis(20 * i as u64), i, 100, 0);
        }
        assert_eq!(e.history.len(), FIRST_HISTORY);
        // 1,000 packets a second: the ring doubles until two seconds fit, no further.
        let mut e = Estimator::new(EstimatorConfig::default());
        let mut seq = 0u16;
        for i in 0..5_000u64 {
            e.on_sent(t0 + Duration::from_millis(i), seq, 1_000, 0);
            seq = seq.wrapping_add(1);
        }
        assert_eq!(
            e.history.len(),
            2048,
            "two seconds at 1,000 packets a second"
        );
        // Feedback for a packet sent 1.5 s ago still finds it.
        let old = seq.wrapping_sub(1_500);
        e.on_twcc(t0 + Duration::from_secs(5), &twcc(old, &[Some(1_000)]));
        assert!(
            e.history[old as usize % e.history.len()].is_none(),
            "acknowledged and forgotten"
        );
    }

    #[test]
    fn an_uncongested_link_lets_the_estimate_grow_with_what_is_sent() {
        let t0 = Instant::now();
        let mut e = Estimator::new(EstimatorConfig::default());
        let mut seq = 0;
        // 8% a second from 300 kbps: about 440 kbps after 5 s.
        let target = drive(&mut e, t0, &mut seq, 600_000.0, 10_000_000.0, 5.0);
        assert!(
            (400_000.0..480_000.0).contains(&target),
            "grows slowly: {target}"
        );
        assert_eq!(e.usage(), Usage::Normal);
        // Carrying one packet a frame (242 kbps), it never claims more than 1.5 times that.
        let mut e = Estimator::new(EstimatorConfig::default());
        let target = drive(&mut e, t0, &mut seq, 200_000.0, 10_000_000.0, 10.0);
        let carried = 1_000.0 * 8.0 / 0.033;
        assert!(
            target <= 1.5 * carried + 10_001.0,
            "an idle link does not talk itself up: {target}"
        );
    }

    #[test]
    fn a_bottleneck_brings_the_estimate_down_to_it() {
        let t0 = Instant::now();
        let mut e = Estimator::new(EstimatorConfig {
            initial_bps: 1_000_000.0,
            ..Default::default()
        });
        let mut seq = 0;
        let target = drive(&mut e, t0, &mut seq, 1_000_000.0, 400_000.0, 4.0);
        // AIMD hovers around the bottleneck: backs off below it, creeps back above.
        assert!(
            target < 500_000.0,
            "backs off to about the bottleneck: {target}"
        );
        assert!(target > 250_000.0, "but not far below: {target}");
        assert!(e.acked_bps().is_some_and(|a| a <= 410_000.0));
    }

    #[test]
    fn light_random_loss_does_not_bring_the_estimate_down() {
        // 4 % loss at a few packets per report: single reports often show more than 10 %
        // (one of five), the last second never does. Only the latter is congestion.
        let t0 = Instant::now();
        let mut e = Estimator::new(EstimatorConfig {
            initial_bps: 800_000.0,
            ..Default::default()
        });
        let mut seq = 0;
        let target = drive_lossy(&mut e, t0, &mut seq, 800_000.0, 10_000_000.0, 5.0, 25);
        assert!(
            (e.loss_fraction() - 0.04).abs() < 0.02,
            "{}",
            e.loss_fraction()
        );
        assert!(target >= 800_000.0, "kept: {target}");
    }

    #[test]
    fn remb_is_used_without_twcc() {
        let t0 = Instant::now();
        let mut e = Estimator::new(EstimatorConfig::default());
        e.on_remb(t0, 750_000.0);
        assert_eq!(e.target_bps(), 750_000.0);
    }

    #[test]
    fn a_probe_delivered_in_full_raises_the_estimate() {
        let t0 = Instant::now();
        let mut e = Estimator::new(EstimatorConfig::default());
        // 30 packets of 1,250 bytes in 150 ms: 2 Mbps, received at the same pace.
        for i in 0..30u16 {
            e.on_sent(t0 + Duration::from_millis(5 * i as u64), i, 1_250, 7);
        }
        e.end_probe(t0 + Duration::from_millis(150), 7, 30);
        let arrivals: Vec<Option<u64>> = (0..30u64).map(|i| Some(2_000_000 + 5_000 * i)).collect();
        e.on_twcc(t0 + Duration::from_millis(200), &twcc(0, &arrivals));
        let outcome = e.poll_probe_outcome().expect("judged");
        let rate = outcome.delivered_bps.expect("measurable");
        assert!((1_900_000.0..2_100_000.0).contains(&rate), "{rate}");
        assert!(e.target_bps() >= 1_900_000.0, "{}", e.target_bps());
    }

    #[test]
    fn a_lossy_probe_fails_and_leaves_the_estimate() {
        let t0 = Instant::now();
        let mut e = Estimator::new(EstimatorConfig::default());
        for i in 0..20u16 {
            e.on_sent(t0 + Duration::from_millis(5 * i as u64), i, 1_250, 3);
        }
        e.end_probe(t0 + Duration::from_millis(100), 3, 20);
        let arrivals: Vec<Option<u64>> = (0..20u64)
            .map(|i| (i % 3 != 0).then_some(1_000_000 + 5_000 * i))
            .collect();
        e.on_twcc(t0 + Duration::from_millis(150), &twcc(0, &arrivals));
        assert_eq!(e.poll_probe_outcome().map(|o| o.delivered_bps), Some(None));
        assert!(e.target_bps() < 400_000.0, "not raised: {}", e.target_bps());
    }
}
