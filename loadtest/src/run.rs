//! Runs a load test: publishers join, subscribers join at a set rate, a warm-up passes, then
//! everything is measured over a window and summarised.

use crate::peer::{self, PeerState, Role, Shared};
use crate::procstat;
use crate::report::{self, Report};
use crate::target::Target;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What to run.
pub struct Plan {
    /// Where publishers join (and subscribers, unless `subscriber_targets` is set).
    pub target: Arc<Target>,
    /// Where subscribers join, round robin (e.g. several nodes of a cluster).
    pub subscriber_targets: Vec<Arc<Target>>,
    pub bind: IpAddr,
    pub publishers: usize,
    pub publisher: Role,
    pub subscribers: usize,
    /// Peers started per second.
    pub join_rate: f64,
    pub warmup: Duration,
    pub duration: Duration,
    /// Processes on this machine whose CPU and memory to report (the SFU nodes).
    pub watch_pids: Vec<u32>,
    /// Print a progress line every second.
    pub progress: bool,
}

struct Running {
    publisher: bool,
    state: Shared,
    task: JoinHandle<()>,
}

fn snapshot(peers: &[Running]) -> Vec<(bool, PeerState)> {
    peers
        .iter()
        .map(|p| {
            (
                p.publisher,
                p.state.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            )
        })
        .collect()
}

fn progress(label: &str, started: Instant, peers: &[Running]) {
    let s = snapshot(peers);
    let subs: Vec<&PeerState> = s.iter().filter(|(p, _)| !*p).map(|(_, s)| s).collect();
    let connected = subs.iter().filter(|s| s.connected_at.is_some()).count();
    let failed = subs.iter().filter(|s| s.failed.is_some()).count();
    let receiving = subs
        .iter()
        .filter(|s| s.video.packets + s.audio.packets > 0)
        .count();
    eprintln!(
        "[{:>5.1}s] {label}: subscribers {connected}/{} connected, {receiving} receiving, {failed} failed",
        started.elapsed().as_secs_f64(),
        subs.len()
    );
}

/// Waits until every peer is connected or failed, or `limit` passes.
async fn settle(peers: &[Running], limit: Duration, started: Instant, show: bool) {
    let deadline = Instant::now() + limit;
    loop {
        let done = snapshot(peers)
            .iter()
            .all(|(_, s)| s.connected_at.is_some() || s.failed.is_some());
        if done || Instant::now() > deadline {
            return;
        }
        if show {
            progress("joining", started, peers);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn run(plan: Plan) -> Report {
    let started = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut peers = Vec::new();
    let spawn = |id: usize, role: Role| {
        let state: Shared = Arc::new(Mutex::new(PeerState::default()));
        let target = match role {
            Role::Subscriber if !plan.subscriber_targets.is_empty() => {
                plan.subscriber_targets[id % plan.subscriber_targets.len()].clone()
            }
            _ => plan.target.clone(),
        };
        let task = tokio::spawn(peer::run(
            id,
            role.clone(),
            target,
            plan.bind,
            state.clone(),
            stop_rx.clone(),
        ));
        Running {
            publisher: matches!(role, Role::Publisher { .. }),
            state,
            task,
        }
    };
    for i in 0..plan.publishers {
        peers.push(spawn(i, plan.publisher.clone()));
    }
    settle(&peers, Duration::from_secs(30), started, false).await;
    let gap = Duration::from_secs_f64(1.0 / plan.join_rate.max(0.1));
    let mut last_progress = Instant::now();
    for i in 0..plan.subscribers {
        peers.push(spawn(plan.publishers + i, Role::Subscriber));
        tokio::time::sleep(gap).await;
        if plan.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            progress("joining", started, &peers);
            last_progress = Instant::now();
        }
    }
    settle(&peers, Duration::from_secs(60), started, plan.progress).await;
    tokio::time::sleep(plan.warmup).await;

    for p in &peers {
        let mut s = p.state.lock().unwrap_or_else(|e| e.into_inner());
        s.video.start_window();
        s.audio.start_window();
    }
    let sfu_before: Vec<_> = plan
        .watch_pids
        .iter()
        .map(|p| procstat::sample(*p))
        .collect();
    let own_before = procstat::own();
    let window = Instant::now();
    while window.elapsed() < plan.duration {
        tokio::time::sleep(Duration::from_secs(1).min(plan.duration)).await;
        if plan.progress {
            progress("measuring", started, &peers);
        }
    }
    let elapsed = window.elapsed();
    let sfu_after: Vec<_> = plan
        .watch_pids
        .iter()
        .map(|p| procstat::sample(*p))
        .collect();
    let own_after = procstat::own();
    let states = snapshot(&peers);

    let _ = stop_tx.send(true);
    for p in peers {
        let _ = tokio::time::timeout(Duration::from_secs(5), p.task).await;
    }
    report::build(
        &plan,
        &states,
        elapsed,
        plan.watch_pids
            .iter()
            .zip(sfu_before.into_iter().zip(sfu_after))
            .filter_map(|(pid, (a, b))| Some((*pid, a?, b?)))
            .collect(),
        own_before.zip(own_after),
    )
}
