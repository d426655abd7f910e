//! The node's join rate: a token bucket in front of every way in (WebSocket upgrade, WHIP,
//! WHEP). A join costs a node far more than a packet (a peer connection, a DTLS handshake,
//! negotiation), and a thousand clients pressing "join" in the same second would otherwise
//! stall the media of everyone already in. Joins past the rate are answered `429` with
//! `Retry-After`; clients that honour it (the demo page, the load tester) come back, so a
//! storm is spread out in time instead of failing.
//!
//! The gate also closes while the media workers are saturated (their CPU, sampled every
//! second, above `limits.max_worker_cpu` of a core each on average): a join would then degrade
//! everyone already in, so it is answered `429` with `Retry-After`, and the control plane
//! places it on another node (it sees the same load in the node's record).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a join refused for load is told to wait.
pub const BUSY_RETRY: Duration = Duration::from_secs(2);

/// See the module documentation.
pub struct JoinGate {
    bucket: Mutex<Bucket>,
    /// Joins per second (0: unlimited).
    rate: f64,
    /// Joins admitted at once after a quiet while.
    burst: f64,
    /// The media workers' CPU over the last sample, in thousandths of a core per worker.
    busy_permille: AtomicU32,
    /// Above this (thousandths of a core per worker), joins wait; 0: never.
    max_busy_permille: u32,
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
            busy_permille: AtomicU32::new(0),
            max_busy_permille: 0,
        }
    }

    /// Also closes while the workers use more than `fraction` of a core each (0: never).
    pub fn with_max_worker_cpu(mut self, fraction: f64) -> Self {
        self.max_busy_permille = (fraction.max(0.0) * 1000.0).round() as u32;
        self
    }

    /// The workers' CPU, in cores per worker, as last sampled.
    pub fn set_worker_cpu(&self, per_worker: f64) {
        let permille = (per_worker.max(0.0) * 1000.0).round().min(u32::MAX as f64) as u32;
        self.busy_permille.store(permille, Ordering::Relaxed);
    }

    /// Whether the workers are too busy for another join.
    pub fn saturated(&self) -> bool {
        self.max_busy_permille > 0
            && self.busy_permille.load(Ordering::Relaxed) > self.max_busy_permille
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

/// Joins per source address: one client (or one attacker) may not use up the node's join rate.
/// Addresses on this machine are exempt (a load tester, a local proxy terminating TLS).
pub struct SourceGate {
    buckets: Mutex<std::collections::HashMap<std::net::IpAddr, Bucket>>,
    /// Joins per second per address (0: unlimited).
    rate: f64,
    burst: f64,
}

/// Addresses remembered at most; past it, those whose bucket has refilled are forgotten.
const MAX_SOURCES: usize = 16_384;

impl SourceGate {
    /// `rate` joins per second per address on average, bursts of twice that.
    pub fn new(rate: u32) -> Self {
        let rate = f64::from(rate);
        Self {
            buckets: Mutex::new(std::collections::HashMap::new()),
            rate,
            burst: (2.0 * rate).max(1.0),
        }
    }

    /// Admits one join from `ip` now, or says how long until one would be.
    pub fn try_admit(&self, ip: std::net::IpAddr) -> Result<(), Duration> {
        self.try_admit_at(ip, Instant::now())
    }

    fn try_admit_at(&self, ip: std::net::IpAddr, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 || ip.is_loopback() {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_SOURCES && !buckets.contains_key(&ip) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        let b = buckets.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }
}

/// Samples the media workers' CPU into `gate` every second, for as long as the node runs.
pub async fn sample_worker_cpu(gate: std::sync::Arc<JoinGate>, workers: usize) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = (Instant::now(), crate::cluster::media_cpu_seconds());
    loop {
        tick.tick().await;
        let now = (Instant::now(), crate::cluster::media_cpu_seconds());
        let elapsed = now.0.duration_since(last.0).as_secs_f64().max(1e-3);
        gate.set_worker_cpu((now.1 - last.1) / elapsed / workers.max(1) as f64);
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_has_its_own_rate_and_this_machine_none() {
        let gate = SourceGate::new(5);
        let t0 = Instant::now();
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let admitted = (0..100)
            .filter(|_| gate.try_admit_at(a, t0).is_ok())
            .count();
        assert_eq!(admitted, 10, "a burst of two seconds' worth");
        assert!(
            gate.try_admit_at(b, t0).is_ok(),
            "another source is not affected"
        );
        let wait = gate.try_admit_at(a, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(200), "{wait:?}");
        assert!(
            gate.try_admit_at(a, t0 + Duration::from_millis(200))
                .is_ok()
        );
        let local = "127.0.0.1".parse().unwrap();
        assert!((0..1000).all(|_| gate.try_admit_at(local, t0).is_ok()));
    }

    #[test]
    fn closes_while_the_workers_are_saturated_and_only_if_asked() {
        let gate = JoinGate::new(0).with_max_worker_cpu(0.9);
        gate.set_worker_cpu(0.5);
        assert!(!gate.saturated());
        gate.set_worker_cpu(0.97);
        assert!(gate.saturated());
        gate.set_worker_cpu(0.2);
        assert!(!gate.saturated(), "open again once the load falls");
        let never = JoinGate::new(0);
        never.set_worker_cpu(5.0);
        assert!(!never.saturated());
    }

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
