//! One subscriber's downlink: the packets going to it, numbered for congestion feedback, its
//! bandwidth estimate and its probes.
//!
//! Every packet to a subscriber that negotiated transport-wide congestion control carries the
//! next transport-wide sequence number in a header extension; the [`Estimator`] learns from
//! the subscriber's reports how those packets fared. The extension value comes from a static
//! table of all 65,536 numbers, so numbering a packet does not allocate the value.

use crate::bandwidth::{Estimator, EstimatorConfig};
use crate::probe::Prober;
use crate::resend::RetransmitBudget;
use std::time::{Duration, Instant};

/// A subscriber that negotiated feedback but sent none this long after media started is
/// treated as one without feedback: it gets everything it asks for.
const FEEDBACK_GRACE: Duration = Duration::from_secs(5);
/// Bytes on the wire beyond the RTP payload: RTP header with the extension, SRTP tag, UDP/IP.
pub(crate) const OVERHEAD: usize = 12 + 8 + 10 + 28;

/// What the subscriber negotiated for congestion control.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkParams {
    /// Id of the transport-wide sequence number header extension, if negotiated.
    pub twcc_ext: Option<u8>,
    /// Whether the subscriber sends REMB.
    pub remb: bool,
}

/// See the module documentation.
pub struct Downlink {
    params: SinkParams,
    next_twcc: u16,
    pub(crate) estimator: Estimator,
    pub(crate) prober: Prober,
    pub(crate) starvation: Starvation,
    /// Retransmissions may use only a share of the estimate.
    pub(crate) retransmit_budget: RetransmitBudget,
    first_sent: Option<Instant>,
}

/// How long a resumed video must last for the resumption to count as a success.
const RESUME_PROOF: Duration = Duration::from_secs(5);
const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// A subscriber with a wanted video paused for want of bandwidth (all of its video, or one
/// participant's of several) needs the estimate to grow past what it carries now, which the
/// estimator otherwise caps at 1.5 times that. Probes are meant for this, but real browsers
/// leave some probe packets out of their feedback, so a probe can fail on a link with room to
/// spare (a second participant's video then never started behind a relay in the cluster test
/// on a slow machine). So the estimate may grow while starved, until the allocator tries the
/// lowest layer again. When such a try fails (paused again within [`RESUME_PROOF`]), the next
/// waits longer: 2 s, 4 s, ... up to 30 s, so a link that cannot carry the video is not
/// congested over and over.
#[derive(Debug)]
pub(crate) struct Starvation {
    starved: bool,
    resumed_at: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Default for Starvation {
    fn default() -> Self {
        Self {
            starved: false,
            resumed_at: None,
            retry_at: None,
            backoff: FIRST_RETRY,
        }
    }
}

impl Starvation {
    /// Whether the subscriber is starved now; returns whether the estimate may grow past what
    /// was acknowledged.
    pub fn update(&mut self, now: Instant, starved: bool) -> bool {
        match (self.starved, starved) {
            (false, true) => {
                if self
                    .resumed_at
                    .is_some_and(|t| now.saturating_duration_since(t) < RESUME_PROOF)
                {
                    self.retry_at = Some(now + self.backoff);
                    self.backoff = (self.backoff * 2).min(MAX_RETRY);
                }
                self.resumed_at = None;
            }
            (true, false) => self.resumed_at = Some(now),
            (false, false) => {
                if self
                    .resumed_at
                    .is_some_and(|t| now.saturating_duration_since(t) >= RESUME_PROOF)
                {
                    self.resumed_at = None;
                    self.backoff = FIRST_RETRY;
                }
            }
            (true, true) => {}
        }
        self.starved = starved;
        starved && self.retry_at.is_none_or(|t| now >= t)
    }
}

impl Downlink {
    pub fn new(params: SinkParams, config: EstimatorConfig) -> Self {
        Self {
            params,
            next_twcc: 0,
            estimator: Estimator::new(config),
            prober: Prober::default(),
            starvation: Starvation::default(),
            retransmit_budget: RetransmitBudget::default(),
            first_sent: None,
        }
    }

    pub fn params(&self) -> SinkParams {
        self.params
    }

    pub fn set_params(&mut self, params: SinkParams) {
        self.params = params;
    }

    /// Records a packet about to leave; its transport-wide sequence number (with the
    /// negotiated extension id) when the subscriber gives that feedback, for the send path to
    /// write into the packet (see [`crate::edits`]).
    pub fn on_send(&mut self, now: Instant, payload_len: usize) -> Option<(u8, u16)> {
        self.first_sent.get_or_insert(now);
        let size = payload_len + OVERHEAD;
        self.prober.on_sent(size);
        let id = self.params.twcc_ext?;
        let seq = self.next_twcc;
        self.next_twcc = seq.wrapping_add(1);
        let probe = self.prober.active().map_or(0, |p| p.id);
        self.estimator.on_sent(now, seq, size, probe);
        Some((id, seq))
    }

    /// The bandwidth to allocate, or `None` when the subscriber gives no feedback (then it
    /// gets everything it asks for, as before congestion control existed).
    pub fn budget(&self, now: Instant) -> Option<u64> {
        if self.params.twcc_ext.is_none() && !self.params.remb {
            return None;
        }
        if !self.estimator.has_feedback()
            && self
                .first_sent
                .is_some_and(|t| now.saturating_duration_since(t) > FEEDBACK_GRACE)
        {
            return None;
        }
        Some(self.estimator.target_bps() as u64)
    }

    /// Whether probing is possible (the subscriber reports on every packet).
    pub fn can_probe(&self) -> bool {
        self.params.twcc_ext.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_numbered_in_sequence_with_the_negotiated_id() {
        let now = Instant::now();
        let mut d = Downlink::new(
            SinkParams {
                twcc_ext: Some(3),
                remb: false,
            },
            EstimatorConfig::default(),
        );
        for expected in [0u16, 1, 2] {
            assert_eq!(d.on_send(now, 100), Some((3, expected)));
        }
        assert_eq!(d.budget(now), Some(300_000), "initial estimate");
        assert_eq!(
            d.budget(now + Duration::from_secs(6)),
            None,
            "never any feedback"
        );
        let mut plain = Downlink::new(SinkParams::default(), EstimatorConfig::default());
        // Starvation retries back off when they fail.
        let mut s = Starvation::default();
        assert!(s.update(now, true), "starved: may grow");
        assert!(!s.update(now + Duration::from_secs(1), false));
        assert!(
            !s.update(now + Duration::from_secs(2), true),
            "paused again at once: wait"
        );
        assert!(s.update(now + Duration::from_secs(4), true), "after 2 s");
        assert_eq!(
            plain.on_send(now, 100),
            None,
            "no feedback negotiated: no number"
        );
        assert_eq!(plain.budget(now), None);
    }
}
