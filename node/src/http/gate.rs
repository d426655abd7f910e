//! The node's join rate: a token bucket in front of every way in (WebSocket upgrade, WHIP,
//! WHEP). A join costs a node far more than a packet (a peer connection, a DTLS handshake,
//! negotiation), and a thousand clients pressing "join" in the same second would otherwise
//! stall the media of everyone already in. Joins past the rate are answered `429` with
//! `Retry-After`; clients that honour it (the demo page, the load tester) come back, so a
//! storm is spread out in time instead of failing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// See the module documentation.
pub struct JoinGate {
    bucket: Mutex<Bucket>,
    /// Joins per second (0: unlimited).
    rate: f64,
    /// Joins admitted at once after a quiet while.
    burst: f64,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl JoinGate {
    /// A gate admitting `rate` joins per second on average, bursts of a second's worth.
    pub fn new(rate: u32) -> Self {
        let rate = f64::from(rate);
        Self {
            bucket: Mutex::new(Bucket {
                tokens: rate,
                at: Instant::now(),
            }),
            rate,
            burst: rate.max(1.0),
        }
    }

    /// Admits one join now, or says how long until one would be.
    pub fn try_admit(&self) -> Result<(), Duration> {
        self.try_admit_at(Instant::now())
    }

    /// Whether a join would be admitted now, without taking it.
    pub fn peek(&self) -> Result<(), Duration> {
        self.check(Instant::now(), false)
    }

    fn try_admit_at(&self, now: Instant) -> Result<(), Duration> {
        self.check(now, true)
    }

    fn check(&self, now: Instant, take: bool) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            if take {
                b.tokens -= 1.0;
            }
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_the_rate_and_says_when_to_come_back() {
        let gate = JoinGate::new(10);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(gate.try_admit_at(t0).is_ok(), "a second's worth at once");
        }
        let wait = gate.try_admit_at(t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(
            gate.try_admit_at(t0 + wait).is_ok(),
            "admitted after the wait"
        );
        // A quiet while fills the bucket up to one second's worth only.
        let later = t0 + Duration::from_secs(60);
        let admitted = (0..100)
            .filter(|_| gate.try_admit_at(later).is_ok())
            .count();
        assert_eq!(admitted, 10);
        assert!(JoinGate::new(0).try_admit_at(t0).is_ok(), "0: unlimited");
    }
}
