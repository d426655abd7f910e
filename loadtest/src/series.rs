//! The per-second time series of a run (ramp, warm-up and measurement alike): peers, received
//! bitrate, latency percentiles, loss and CPU, taken once a second from every peer's state.
//! It feeds the progress bar, the plot and the `series` of the JSON report.

use crate::procstat;
use crate::state::{Shared, lock};
use crate::stats::Histogram;
use serde::Serialize;
use std::time::{Duration, Instant};

/// One second of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the run started (end of the second sampled).
    pub t_s: f64,
    pub peers_started: usize,
    pub peers_connected: usize,
    pub peers_failed: usize,
    /// Peers that received at least one media packet in this second.
    pub peers_receiving: usize,
    /// Media received by all peers together (RTP payload), in kbit/s.
    pub received_kbps: f64,
    /// Send-to-receive latency of the packets of this second.
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Packets missing from the sequence numbers of this second, in percent.
    pub loss_percent: Option<f64>,
    /// CPU of the watched processes together, in percent of one core.
    pub sfu_cpu_percent: Option<f64>,
    /// CPU of the load tester, in percent of one core.
    pub loadtest_cpu_percent: Option<f64>,
    /// CPU of everything else on the machine, in percent of one core: the background load
    /// the measurement shared the machine with.
    pub others_cpu_percent: Option<f64>,
}

/// Takes [`Sample`]s.
pub struct Sampler {
    start: Instant,
    last: Instant,
    watch_pids: Vec<u32>,
    last_sfu_cpu: Option<Duration>,
    last_own_cpu: Option<Duration>,
    last_machine_cpu: Option<Duration>,
    /// Reused for every sample, so that sampling allocates nothing per peer.
    latency: Histogram,
}

fn cpu_of(pids: &[u32]) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for &p in pids {
        total += procstat::sample(p)?.cpu;
    }
    (!pids.is_empty()).then_some(total)
}

fn percent(cpu: Duration, wall: Duration) -> f64 {
    cpu.as_secs_f64() / wall.as_secs_f64().max(1e-3) * 100.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Sampler {
    pub fn new(start: Instant, watch_pids: Vec<u32>) -> Self {
        Self {
            start,
            last: start,
            last_sfu_cpu: cpu_of(&watch_pids),
            last_own_cpu: procstat::own().map(|s| s.cpu),
            last_machine_cpu: procstat::machine_busy(),
            watch_pids,
            latency: Histogram::default(),
        }
    }

    /// Collects what every peer received since the last sample.
    pub fn sample(&mut self, peers: &[Shared]) -> Sample {
        let now = Instant::now();
        let wall = now.saturating_duration_since(self.last);
        self.last = now;
        self.latency.clear();
        let (mut connected, mut failed, mut receiving) = (0, 0, 0);
        let (mut bytes, mut packets, mut expected) = (0u64, 0u64, 0u64);
        for p in peers {
            let mut s = lock(p);
            connected += s.connected_at.is_some() as usize;
            failed += s.failed.is_some() as usize;
            let r = &mut s.reception;
            receiving += (r.tick.packets > 0) as usize;
            bytes += r.tick.bytes;
            packets += r.tick.packets;
            self.latency.merge(&r.tick.latency);
            r.tick.packets = 0;
            r.tick.bytes = 0;
            r.tick.latency.clear();
            for stream in &mut r.streams {
                expected += stream.stats.take_expected();
            }
        }
        let sfu = cpu_of(&self.watch_pids);
        let own = procstat::own().map(|s| s.cpu);
        let sfu_cpu_percent = sfu
            .zip(self.last_sfu_cpu)
            .map(|(b, a)| percent(b.saturating_sub(a), wall));
        let loadtest_cpu_percent = own
            .zip(self.last_own_cpu)
            .map(|(b, a)| percent(b.saturating_sub(a), wall));
        let machine = procstat::machine_busy();
        let machine_cpu_percent = machine
            .zip(self.last_machine_cpu)
            .map(|(b, a)| percent(b.saturating_sub(a), wall));
        let others_cpu_percent = machine_cpu_percent.map(|m| {
            (m - sfu_cpu_percent.unwrap_or(0.0) - loadtest_cpu_percent.unwrap_or(0.0)).max(0.0)
        });
        self.last_sfu_cpu = sfu;
        self.last_own_cpu = own;
        self.last_machine_cpu = machine;
        Sample {
            t_s: now.saturating_duration_since(self.start).as_secs_f64(),
            peers_started: peers.len(),
            peers_connected: connected,
            peers_failed: failed,
            peers_receiving: receiving,
            received_kbps: bytes as f64 * 8.0 / wall.as_secs_f64().max(1e-3) / 1e3,
            latency_p50_ms: self.latency.quantile(0.5).map(ms),
            latency_p99_ms: self.latency.quantile(0.99).map(ms),
            loss_percent: (expected > 0)
                .then(|| expected.saturating_sub(packets) as f64 / expected as f64 * 100.0),
            sfu_cpu_percent,
            loadtest_cpu_percent,
            others_cpu_percent,
        }
    }
}
