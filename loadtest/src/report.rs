//! The summary of a run: percentiles over peers, as a table for people and JSON for scripts.

use crate::peer::PeerState;
use crate::procstat::ProcSample;
use crate::run::Plan;
use crate::stats::{Histogram, Percentiles};
use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// CPU and memory of a process over the measurement window.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct ProcessUse {
    /// CPU time used per second of wall time, in percent of one core.
    pub cpu_percent: f64,
    pub rss_mb: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub publishers: usize,
    pub subscribers: usize,
    pub window_s: f64,
    pub subscribers_connected: usize,
    pub subscribers_failed: usize,
    /// One failure reason, if any peer failed.
    pub first_failure: Option<String>,
    pub join_time_ms: Option<Percentiles>,
    pub first_media_ms: Option<Percentiles>,
    /// Per subscriber, over the window.
    pub video_loss_percent: Option<Percentiles>,
    pub audio_loss_percent: Option<Percentiles>,
    pub video_kbps: Option<Percentiles>,
    pub audio_kbps: Option<Percentiles>,
    pub jitter_ms: Option<Percentiles>,
    /// Over all packets of all subscribers (send to receive, same clock).
    pub latency_ms: Option<Percentiles>,
    pub freezes: u64,
    pub subscribers_with_freezes: usize,
    /// Loss over all subscribers' video packets together, in percent.
    pub total_video_loss_percent: f64,
    /// The watched SFU processes together.
    pub sfu: Option<ProcessUse>,
    /// Each watched process: (pid, use).
    pub sfu_processes: Vec<(u32, ProcessUse)>,
    /// SFU CPU per subscriber, in percent of one core.
    pub sfu_cpu_per_subscriber_percent: Option<f64>,
    pub loadtest: Option<ProcessUse>,
    /// Load tester memory per simulated peer.
    pub loadtest_kb_per_peer: Option<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn usage(pair: Option<(ProcSample, ProcSample)>, window: Duration) -> Option<ProcessUse> {
    let (a, b) = pair?;
    Some(ProcessUse {
        cpu_percent: (b.cpu.saturating_sub(a.cpu)).as_secs_f64() / window.as_secs_f64() * 100.0,
        rss_mb: b.rss_bytes as f64 / 1e6,
    })
}

pub fn build(
    plan: &Plan,
    states: &[(bool, PeerState)],
    window: Duration,
    sfu: Vec<(u32, ProcSample, ProcSample)>,
    own: Option<(ProcSample, ProcSample)>,
) -> Report {
    let subs: Vec<&PeerState> = states.iter().filter(|(p, _)| !*p).map(|(_, s)| s).collect();
    let live: Vec<&&PeerState> = subs.iter().filter(|s| s.failed.is_none()).collect();
    let secs = window.as_secs_f64().max(1e-3);
    let per = |f: &dyn Fn(&PeerState) -> Option<f64>| {
        Percentiles::of(live.iter().filter_map(|s| f(s)).collect())
    };
    let mut latency = Histogram::default();
    for s in &live {
        latency.merge(&s.video.latency);
        latency.merge(&s.audio.latency);
    }
    let latency_ms = (latency.count() > 0).then(|| Percentiles {
        p50: latency.quantile(0.5).map_or(0.0, ms),
        p90: latency.quantile(0.9).map_or(0.0, ms),
        p99: latency.quantile(0.99).map_or(0.0, ms),
        max: latency.quantile(1.0).map_or(0.0, ms),
    });
    let (expected, received) = live.iter().fold((0u64, 0u64), |(e, r), s| {
        (
            e + s.video.expected(),
            r + s.video.packets.min(s.video.expected()),
        )
    });
    let sfu_processes: Vec<(u32, ProcessUse)> = sfu
        .iter()
        .filter_map(|(pid, a, b)| Some((*pid, usage(Some((*a, *b)), window)?)))
        .collect();
    let sfu_use = (!sfu_processes.is_empty()).then(|| ProcessUse {
        cpu_percent: sfu_processes.iter().map(|(_, u)| u.cpu_percent).sum(),
        rss_mb: sfu_processes.iter().map(|(_, u)| u.rss_mb).sum(),
    });
    let own_use = usage(own, window);
    Report {
        publishers: plan.publishers,
        subscribers: plan.subscribers,
        window_s: secs,
        subscribers_connected: subs.iter().filter(|s| s.connected_at.is_some()).count(),
        subscribers_failed: subs.iter().filter(|s| s.failed.is_some()).count(),
        first_failure: states.iter().find_map(|(_, s)| s.failed.clone()),
        join_time_ms: per(&|s| s.join_time().map(ms)),
        first_media_ms: per(&|s| s.first_media().map(ms)),
        video_loss_percent: per(&|s| (s.video.expected() > 0).then(|| s.video.loss() * 100.0)),
        audio_loss_percent: per(&|s| (s.audio.expected() > 0).then(|| s.audio.loss() * 100.0)),
        video_kbps: per(&|s| Some(s.video.bytes as f64 * 8.0 / secs / 1e3)),
        audio_kbps: per(&|s| Some(s.audio.bytes as f64 * 8.0 / secs / 1e3)),
        jitter_ms: per(&|s| (s.video.packets > 0).then(|| ms(s.video.jitter()))),
        latency_ms,
        freezes: live.iter().map(|s| s.video.freezes as u64).sum(),
        subscribers_with_freezes: live.iter().filter(|s| s.video.freezes > 0).count(),
        total_video_loss_percent: if expected == 0 {
            0.0
        } else {
            (expected - received) as f64 / expected as f64 * 100.0
        },
        sfu: sfu_use,
        sfu_processes,
        sfu_cpu_per_subscriber_percent: sfu_use
            .filter(|_| plan.subscribers > 0)
            .map(|u| u.cpu_percent / plan.subscribers as f64),
        loadtest: own_use,
        loadtest_kb_per_peer: own_use
            .map(|u| u.rss_mb * 1e3 / (plan.publishers + plan.subscribers).max(1) as f64),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "publishers {}  subscribers {} ({} connected, {} failed)  window {:.1} s",
            self.publishers,
            self.subscribers,
            self.subscribers_connected,
            self.subscribers_failed,
            self.window_s
        )?;
        if let Some(e) = &self.first_failure {
            writeln!(f, "first failure: {e}")?;
        }
        writeln!(
            f,
            "{:<26}{:>10}{:>10}{:>10}{:>10}",
            "per subscriber", "p50", "p90", "p99", "max"
        )?;
        let rows: [(&str, Option<Percentiles>); 9] = [
            ("join time (ms)", self.join_time_ms),
            ("time to first media (ms)", self.first_media_ms),
            ("video received (kbps)", self.video_kbps),
            ("audio received (kbps)", self.audio_kbps),
            ("video loss (%)", self.video_loss_percent),
            ("audio loss (%)", self.audio_loss_percent),
            ("jitter (ms)", self.jitter_ms),
            ("latency, all packets (ms)", self.latency_ms),
            ("", None),
        ];
        for (name, p) in rows.iter().filter(|(n, _)| !n.is_empty()) {
            match p {
                Some(p) => writeln!(
                    f,
                    "{name:<26}{:>10.2}{:>10.2}{:>10.2}{:>10.2}",
                    p.p50, p.p90, p.p99, p.max
                )?,
                None => writeln!(f, "{name:<26}{:>10}", "-")?,
            }
        }
        writeln!(
            f,
            "video loss over all subscribers: {:.3} %   freezes: {} ({} subscribers)",
            self.total_video_loss_percent, self.freezes, self.subscribers_with_freezes
        )?;
        if self.sfu_processes.len() > 1 {
            for (pid, u) in &self.sfu_processes {
                writeln!(
                    f,
                    "  process {pid}: {:.1} % of a core, {:.1} MB RSS",
                    u.cpu_percent, u.rss_mb
                )?;
            }
        }
        if let Some(s) = self.sfu {
            writeln!(
                f,
                "SFU process(es): {:.1} % of a core, {:.1} MB RSS, {:.3} % of a core per subscriber",
                s.cpu_percent,
                s.rss_mb,
                self.sfu_cpu_per_subscriber_percent.unwrap_or(0.0)
            )?;
        }
        if let Some(s) = self.loadtest {
            writeln!(
                f,
                "load tester: {:.1} % of a core, {:.1} MB RSS ({:.0} KB per peer)",
                s.cpu_percent,
                s.rss_mb,
                self.loadtest_kb_per_peer.unwrap_or(0.0)
            )?;
        }
        Ok(())
    }
}
