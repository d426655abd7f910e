//! The summary of a run: per-peer measurements as percentiles over peers, totals, the CPU and
//! memory of the watched processes and of the load tester, and the per-second series; as a
//! table for people ([`Report`]'s `Display`) and as JSON for scripts (`Serialize`).

use crate::procstat::ProcSample;
use crate::scenario::Scenario;
use crate::series::Sample;
use crate::state::PeerState;
use crate::stats::{Histogram, LightCounts, Percentiles, StreamStats};
use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// What the report knows about a peer besides its measurements.
#[derive(Clone, Copy, Debug)]
pub struct PeerMeta {
    pub room: usize,
    pub publisher: bool,
    /// Receives media (a subscriber, or a publisher that subscribes).
    pub receiver: bool,
    /// Streams (per publisher: audio, video) it should receive.
    pub expected_streams: usize,
}

/// CPU and memory of a process over the measurement window.
#[derive(Debug, Serialize, Clone, Copy)]
pub struct ProcessUse {
    /// CPU time used per second of wall time, in percent of one core.
    pub cpu_percent: f64,
    /// Resident memory at the end of the window.
    pub rss_mb: f64,
}

/// See the module documentation. Percentiles are over peers (each peer's figure over the
/// window), except `latency_ms`, which is over every packet every receiver got (with light
/// receivers, every packet of the sample).
#[derive(Debug, Serialize)]
pub struct Report {
    /// The scenario that ran (without its credentials).
    pub scenario: Scenario,
    pub peers: usize,
    pub publishers: usize,
    /// Peers that receive media: subscribers, and publishers that subscribe.
    pub receivers: usize,
    pub peers_connected: usize,
    pub peers_failed: usize,
    /// Times a server answered a join `429` (come back later) and the peer did, over the run.
    pub join_retries: u64,
    /// Peers per server they joined (with a control plane: how placement spread them).
    pub peers_per_server: Vec<(String, usize)>,
    /// A few failure reasons (peer identity first), if any peer failed.
    pub failures: Vec<String>,
    /// Receivers that got media on every stream they should (every publisher's audio and video).
    pub receivers_complete: usize,
    /// Receivers that got every stream with under 1 % loss of audio and of video.
    pub receivers_under_1pct_loss: usize,
    /// Seconds of the measurement window, and where it started in `series`.
    pub window_s: f64,
    pub window_started_s: f64,
    /// From starting to join (signaling included) to ICE and DTLS done; every peer.
    pub join_time_ms: Option<Percentiles>,
    /// From starting to join to the first media packet; receivers.
    pub first_media_ms: Option<Percentiles>,
    /// Received per receiver (RTP payload, all its streams of the kind).
    pub video_kbps: Option<Percentiles>,
    pub audio_kbps: Option<Percentiles>,
    /// Per receiver, over its streams of the kind, from RTP sequence numbers.
    pub video_loss_percent: Option<Percentiles>,
    pub audio_loss_percent: Option<Percentiles>,
    /// RFC 3550 interarrival jitter, per receiver (the mean of its video streams).
    pub jitter_ms: Option<Percentiles>,
    /// Send-to-receive latency of every packet (send time carried in the payload); with light
    /// receivers, of every sampled packet.
    pub latency_ms: Option<Percentiles>,
    /// Video gaps over 500 ms, per receiver.
    pub freezes_per_receiver: Option<Percentiles>,
    pub freezes: u64,
    pub receivers_with_freezes: usize,
    /// Time video stood still in freezes over time watched, in percent: the frozen time of
    /// every receiver's video streams over the window times their number (a freeze counts
    /// whole when it ends, so one that began before the window counts its earlier part too).
    pub freeze_ratio_percent: f64,
    /// Loss over all receivers' packets together, in percent.
    pub total_video_loss_percent: f64,
    pub total_audio_loss_percent: f64,
    /// RTP packets the publishers sent in the window, and keyframe requests they got.
    pub packets_sent: u64,
    /// RTP packets the receivers got in the window.
    pub packets_received: u64,
    /// With light receivers: how they handled the packets of the window, over all of them.
    pub light: Option<LightCounts>,
    pub keyframe_requests: u64,
    /// The watched processes together, and each.
    pub sfu: Option<ProcessUse>,
    pub sfu_processes: Vec<(u32, ProcessUse)>,
    /// CPU of the watched processes per connected receiver, in percent of one core.
    pub sfu_cpu_per_subscriber_percent: Option<f64>,
    pub loadtest: Option<ProcessUse>,
    /// Load tester memory growth over the run per simulated peer.
    pub loadtest_kb_per_peer: Option<f64>,
    /// Load tester CPU time per received packet, in microseconds (everything it does, sending
    /// and timers included, divided by what it received): its capacity in packets per core.
    pub loadtest_cpu_us_per_packet: Option<f64>,
    /// CPU of everything else on the machine over the window (percent of one core): what the
    /// measurement shared the machine with.
    pub others_cpu_percent: Option<f64>,
    /// One sample per second of the whole run.
    pub series: Vec<Sample>,
}

/// What [`build`] needs.
pub struct Inputs<'a> {
    pub scenario: &'a Scenario,
    pub metas: &'a [PeerMeta],
    pub states: &'a [PeerState],
    pub window: Duration,
    pub window_started_s: f64,
    pub sfu: Vec<(u32, ProcSample, ProcSample)>,
    pub own: Option<(ProcSample, ProcSample)>,
    /// The machine's busy CPU time at the start and end of the window.
    pub machine: Option<(Duration, Duration)>,
    pub rss_before: Option<u64>,
    pub series: Vec<Sample>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn usage(a: ProcSample, b: ProcSample, window: Duration) -> ProcessUse {
    ProcessUse {
        cpu_percent: b.cpu.saturating_sub(a.cpu).as_secs_f64() / window.as_secs_f64().max(1e-3)
            * 100.0,
        rss_mb: b.rss_bytes as f64 / 1e6,
    }
}

/// (expected, received) packets over streams.
fn counts<'a>(streams: impl Iterator<Item = &'a StreamStats>) -> (u64, u64) {
    streams.fold((0, 0), |(e, r), s| {
        (e + s.expected(), r + s.packets.min(s.expected()))
    })
}

fn loss_percent((expected, received): (u64, u64)) -> f64 {
    if expected == 0 {
        0.0
    } else {
        (expected - received) as f64 / expected as f64 * 100.0
    }
}

/// How many peers joined each server, most first (ties by name, so the order is stable).
fn per_server(states: &[PeerState]) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for server in states.iter().filter_map(|s| s.server.as_deref()) {
        *counts.entry(server).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = counts
        .into_iter()
        .map(|(server, n)| (server.to_owned(), n))
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

pub fn build(i: Inputs<'_>) -> Report {
    let secs = i.window.as_secs_f64().max(1e-3);
    let peers: Vec<(&PeerMeta, &PeerState)> = i.metas.iter().zip(i.states).collect();
    let live_receivers: Vec<&PeerState> = peers
        .iter()
        .filter(|(m, s)| m.receiver && s.failed.is_none())
        .map(|(_, s)| *s)
        .collect();
    let over_receivers = |f: &dyn Fn(&PeerState) -> Option<f64>| {
        Percentiles::of(live_receivers.iter().filter_map(|s| f(s)).collect())
    };
    let kbps = |s: &PeerState, video: bool| {
        s.reception.of(video).map(|x| x.bytes).sum::<u64>() as f64 * 8.0 / secs / 1e3
    };
    let loss = |s: &PeerState, video: bool| {
        let c = counts(s.reception.of(video));
        (c.0 > 0).then(|| loss_percent(c))
    };
    let mut latency = Histogram::default();
    for s in &live_receivers {
        latency.merge(&s.reception.latency);
    }
    let q = |p: f64| latency.quantile(p).map_or(0.0, ms);
    let latency_ms = (latency.count() > 0).then(|| Percentiles {
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        max: q(1.0),
    });
    let total = |video: bool| {
        loss_percent(live_receivers.iter().fold((0, 0), |(e, r), s| {
            let (e2, r2) = counts(s.reception.of(video));
            (e + e2, r + r2)
        }))
    };
    let complete = |m: &PeerMeta, s: &PeerState| {
        s.failed.is_none()
            && s.reception
                .streams
                .iter()
                .filter(|x| x.stats.packets > 0)
                .count()
                >= m.expected_streams
    };
    let receivers_complete = peers
        .iter()
        .filter(|(m, s)| m.receiver && complete(m, s))
        .count();
    let receivers_under_1pct_loss = peers
        .iter()
        .filter(|(m, s)| {
            m.receiver
                && complete(m, s)
                && loss(s, true).unwrap_or(0.0) < 1.0
                && loss(s, false).unwrap_or(0.0) < 1.0
        })
        .count();
    let sfu_processes: Vec<(u32, ProcessUse)> = i
        .sfu
        .iter()
        .map(|(pid, a, b)| (*pid, usage(*a, *b, i.window)))
        .collect();
    let sfu = (!sfu_processes.is_empty()).then(|| ProcessUse {
        cpu_percent: sfu_processes.iter().map(|(_, u)| u.cpu_percent).sum(),
        rss_mb: sfu_processes.iter().map(|(_, u)| u.rss_mb).sum(),
    });
    let connected_receivers = peers
        .iter()
        .filter(|(m, s)| m.receiver && s.connected_at.is_some() && s.failed.is_none())
        .count();
    let loadtest = i.own.map(|(a, b)| usage(a, b, i.window));
    let n = peers.len();
    let packets_received: u64 = live_receivers
        .iter()
        .flat_map(|s| s.reception.streams.iter().map(|x| x.stats.packets))
        .sum();
    Report {
        scenario: i.scenario.clone(),
        peers: n,
        publishers: peers.iter().filter(|(m, _)| m.publisher).count(),
        receivers: peers.iter().filter(|(m, _)| m.receiver).count(),
        peers_connected: i.states.iter().filter(|s| s.connected_at.is_some()).count(),
        peers_failed: i.states.iter().filter(|s| s.failed.is_some()).count(),
        join_retries: crate::signal::BUSY_RETRIES.load(std::sync::atomic::Ordering::Relaxed),
        peers_per_server: per_server(i.states),
        failures: i
            .states
            .iter()
            .filter_map(|s| s.failed.clone())
            .take(5)
            .collect(),
        receivers_complete,
        receivers_under_1pct_loss,
        window_s: secs,
        window_started_s: i.window_started_s,
        join_time_ms: Percentiles::of(
            i.states
                .iter()
                .filter_map(|s| s.join_time().map(ms))
                .collect(),
        ),
        first_media_ms: over_receivers(&|s| s.first_media().map(ms)),
        video_kbps: over_receivers(&|s| Some(kbps(s, true))).filter(|_| i.scenario.video.is_some()),
        audio_kbps: over_receivers(&|s| Some(kbps(s, false)))
            .filter(|_| i.scenario.audio.is_some()),
        video_loss_percent: over_receivers(&|s| loss(s, true)),
        audio_loss_percent: over_receivers(&|s| loss(s, false)),
        jitter_ms: over_receivers(&|s| {
            let v: Vec<f64> = s
                .reception
                .of(true)
                .filter(|x| x.packets > 0)
                .map(|x| ms(x.jitter()))
                .collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        }),
        latency_ms,
        freezes_per_receiver: over_receivers(&|s| {
            Some(s.reception.of(true).map(|x| x.freezes as f64).sum())
        }),
        freezes: live_receivers
            .iter()
            .map(|s| s.reception.of(true).map(|x| x.freezes as u64).sum::<u64>())
            .sum(),
        receivers_with_freezes: live_receivers
            .iter()
            .filter(|s| s.reception.of(true).any(|x| x.freezes > 0))
            .count(),
        freeze_ratio_percent: {
            let videos = live_receivers.iter().flat_map(|s| s.reception.of(true));
            let (frozen, streams) = videos.fold((0.0, 0usize), |(f, n), x| {
                (f + x.frozen.as_secs_f64(), n + 1)
            });
            if streams == 0 || secs <= 0.0 {
                0.0
            } else {
                100.0 * frozen / (secs * streams as f64)
            }
        },
        total_video_loss_percent: total(true),
        total_audio_loss_percent: total(false),
        packets_sent: i.states.iter().map(|s| s.sent_in_window().0).sum(),
        packets_received,
        light: i.scenario.light_receivers.then(|| {
            live_receivers
                .iter()
                .fold(LightCounts::default(), |mut t, s| {
                    let l = &s.reception.light;
                    t.header_only += l.header_only;
                    t.sampled += l.sampled;
                    t.unreadable += l.unreadable;
                    t.authenticated += l.authenticated;
                    t.own_transport += l.own_transport;
                    t
                })
        }),
        keyframe_requests: i.states.iter().map(|s| s.sent_in_window().1).sum(),
        sfu,
        sfu_processes,
        sfu_cpu_per_subscriber_percent: sfu
            .filter(|_| connected_receivers > 0)
            .map(|u| u.cpu_percent / connected_receivers as f64),
        loadtest,
        loadtest_kb_per_peer: i
            .own
            .zip(i.rss_before)
            .filter(|_| n > 0)
            .map(|((_, end), before)| end.rss_bytes.saturating_sub(before) as f64 / 1e3 / n as f64),
        loadtest_cpu_us_per_packet: i.own.filter(|_| packets_received > 0).map(|(a, b)| {
            b.cpu.saturating_sub(a.cpu).as_secs_f64() * 1e6 / packets_received as f64
        }),
        others_cpu_percent: i.machine.map(|(a, b)| {
            let all = b.saturating_sub(a).as_secs_f64() / secs * 100.0;
            let ours = sfu.map_or(0.0, |u| u.cpu_percent) + loadtest.map_or(0.0, |u| u.cpu_percent);
            (all - ours).max(0.0)
        }),
        series: i.series,
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.scenario;
        writeln!(
            f,
            "{:?} {}: {} rooms, {} peers ({} publishers, {} receivers): {} connected, {} failed; window {:.1} s",
            s.target.kind,
            s.target.url,
            s.rooms,
            self.peers,
            self.publishers,
            self.receivers,
            self.peers_connected,
            self.peers_failed,
            self.window_s
        )?;
        if self.join_retries > 0 {
            writeln!(
                f,
                "joins told to come back later (429) and retried: {}",
                self.join_retries
            )?;
        }
        if self.peers_per_server.len() > 1 {
            let per: Vec<String> = self
                .peers_per_server
                .iter()
                .map(|(server, n)| format!("{server} {n}"))
                .collect();
            writeln!(f, "peers per server: {}", per.join(", "))?;
        }
        for e in &self.failures {
            writeln!(f, "  failure: {e}")?;
        }
        writeln!(
            f,
            "receivers with every stream: {} of {}; with every stream under 1 % loss: {}",
            self.receivers_complete, self.receivers, self.receivers_under_1pct_loss
        )?;
        writeln!(
            f,
            "{:<28}{:>10}{:>10}{:>10}{:>10}",
            "per peer", "p50", "p90", "p99", "max"
        )?;
        let rows: [(&str, Option<Percentiles>); 10] = [
            ("join time (ms)", self.join_time_ms),
            ("time to first media (ms)", self.first_media_ms),
            ("video received (kbps)", self.video_kbps),
            ("audio received (kbps)", self.audio_kbps),
            ("video loss (%)", self.video_loss_percent),
            ("audio loss (%)", self.audio_loss_percent),
            ("jitter (ms)", self.jitter_ms),
            ("freezes (> 500 ms)", self.freezes_per_receiver),
            ("latency, every packet (ms)", self.latency_ms),
            ("", None),
        ];
        for (name, p) in rows.iter().filter(|(n, _)| !n.is_empty()) {
            match p {
                Some(p) => writeln!(
                    f,
                    "{name:<28}{:>10.2}{:>10.2}{:>10.2}{:>10.2}",
                    p.p50, p.p90, p.p99, p.max
                )?,
                None => writeln!(f, "{name:<28}{:>10}", "-")?,
            }
        }
        writeln!(
            f,
            "loss over all receivers: video {:.3} %, audio {:.3} %; freezes {} ({} receivers, \
             {:.3} % of the time); sent {} packets, {} keyframe requests",
            self.total_video_loss_percent,
            self.total_audio_loss_percent,
            self.freezes,
            self.receivers_with_freezes,
            self.freeze_ratio_percent,
            self.packets_sent,
            self.keyframe_requests
        )?;
        if let Some(l) = self.light {
            writeln!(
                f,
                "light receivers: {} packets measured from the header alone, {} of {} sampled \
                 packets authenticated ({} failed; {} by their own transport), {} datagrams read \
                 short and unreadable",
                l.header_only,
                l.authenticated,
                l.sampled,
                l.sampled.saturating_sub(l.authenticated),
                l.own_transport,
                l.unreadable
            )?;
        }
        if self.sfu_processes.len() > 1 {
            for (pid, u) in &self.sfu_processes {
                writeln!(
                    f,
                    "  process {pid}: {:.1} % of a core, {:.1} MB RSS",
                    u.cpu_percent, u.rss_mb
                )?;
            }
        }
        if let Some(u) = self.sfu {
            writeln!(
                f,
                "watched process(es): {:.1} % of a core, {:.1} MB RSS, {:.3} % of a core per receiver",
                u.cpu_percent,
                u.rss_mb,
                self.sfu_cpu_per_subscriber_percent.unwrap_or(0.0)
            )?;
        }
        if let Some(o) = self.others_cpu_percent {
            writeln!(f, "other processes on this machine: {o:.1} % of a core")?;
        }
        if let Some(u) = self.loadtest {
            writeln!(
                f,
                "load tester: {:.1} % of a core, {:.1} MB RSS ({:.0} KB per peer), {:.1} µs of CPU per received packet ({} received)",
                u.cpu_percent,
                u.rss_mb,
                self.loadtest_kb_per_peer.unwrap_or(0.0),
                self.loadtest_cpu_us_per_packet.unwrap_or(0.0),
                self.packets_received
            )?;
        }
        Ok(())
    }
}
