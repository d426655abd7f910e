//! Runs one scenario: publishers join, then subscribers, at the join rate (rooms fill side by
//! side); everyone settles; a warm-up passes; then a measurement window. A sample is taken
//! every second throughout. At the end every peer is stopped and the report is built.

use crate::media::VideoProfile;
use crate::peer::{self, CONNECT_TIMEOUT, PeerSpec, Role};
use crate::procstat::{self, ProcSample};
use crate::progress::Progress;
use crate::report::{self, PeerMeta, Report};
use crate::scenario::{Scenario, TargetKind};
use crate::sender::{AudioProfile, Publish, SpeakerTurn};
use crate::series::{Sample, Sampler};
use crate::signal::Endpoint;
use crate::state::{PeerState, Shared, lock};
use anyhow::Context;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How a run is watched, besides the scenario.
#[derive(Clone, Debug, Default)]
pub struct Watch {
    /// Processes on this machine whose CPU and memory to report (the systems under test).
    pub pids: Vec<u32>,
    /// Show a progress bar.
    pub progress: bool,
}

/// A peer to start: who it is and what the report needs to know about it.
struct Planned {
    spec: PeerSpec,
    meta: PeerMeta,
}

/// The peers of a scenario, in joining order: every room's publishers, then subscribers
/// taking turns over the rooms.
fn plan(s: &Scenario, http: &reqwest::Client) -> anyhow::Result<Vec<Planned>> {
    let bind: IpAddr = s.bind.parse().context("bind")?;
    let endpoints: Vec<Arc<Endpoint>> = (0..s.rooms)
        .map(|n| Arc::new(Endpoint::new(s, s.room(n), http.clone())))
        .collect();
    let publish = |index: u32| Publish {
        video: s.video.as_ref().map(|v| VideoProfile {
            bitrate_bps: v.bitrate_kbps * 1000,
            fps: v.fps,
            keyframe_interval: ((v.keyframe_interval_secs * v.fps as f64).round() as u32).max(1),
            keyframe_factor: v.keyframe_factor,
        }),
        simulcast: s.video.as_ref().is_some_and(|v| v.simulcast),
        audio: s.audio.as_ref().map(|a| AudioProfile {
            bitrate_bps: a.bitrate_kbps * 1000,
            ptime: Duration::from_millis(a.ptime_ms as u64),
            audio_level: a.audio_level,
        }),
        speaker: (s.speakers.turn_secs > 0.0).then(|| SpeakerTurn {
            index,
            count: s.publishers,
            turn: Duration::from_secs_f64(s.speakers.turn_secs),
        }),
    };
    // Streams one publisher sends a receiver (simulcast layers arrive as one stream).
    let kinds = s.audio.is_some() as usize + s.video.is_some() as usize;
    let expected = |others: usize| match s.target.kind {
        TargetKind::Sfu | TargetKind::LiveKit | TargetKind::Janus => others * kinds,
        // A WHEP session plays one publisher.
        TargetKind::Whip => kinds * (others > 0) as usize,
    };
    let subscriber_urls = if s.target.subscriber_urls.is_empty() {
        vec![s.target.url.clone()]
    } else {
        s.target.subscriber_urls.clone()
    };
    let p = s.publishers as usize;
    let mut out = Vec::new();
    for (room, e) in endpoints.iter().enumerate() {
        for i in 0..s.publishers {
            let others = p - 1;
            let subscribe = s.publishers_subscribe;
            out.push(Planned {
                spec: PeerSpec {
                    identity: format!("pub-{i}"),
                    role: Role {
                        publish: Some(publish(i)),
                        subscribe,
                        light: s.light_receivers,
                        light_gro: s.light_gro,
                    },
                    endpoint: e.clone(),
                    base: s.target.url.clone(),
                    bind,
                    watch: format!("pub-{}", (i as usize + 1) % p),
                    other_publishers: others,
                },
                meta: PeerMeta {
                    room,
                    publisher: true,
                    receiver: subscribe,
                    expected_streams: if subscribe { expected(others) } else { 0 },
                },
            });
        }
    }
    for j in 0..s.subscribers as usize {
        for (room, e) in endpoints.iter().enumerate() {
            let k = j * endpoints.len() + room;
            out.push(Planned {
                spec: PeerSpec {
                    identity: format!("sub-{j}"),
                    role: Role {
                        publish: None,
                        subscribe: true,
                        light: s.light_receivers,
                        light_gro: s.light_gro,
                    },
                    endpoint: e.clone(),
                    base: subscriber_urls[k % subscriber_urls.len()].clone(),
                    bind,
                    watch: format!("pub-{}", j % p.max(1)),
                    other_publishers: p,
                },
                meta: PeerMeta {
                    room,
                    publisher: false,
                    receiver: true,
                    expected_streams: expected(p),
                },
            });
        }
    }
    Ok(out)
}

/// Publishers run on a thread (and runtime) of their own: on the receivers' runtime their
/// sending would wait behind thousands of receiving tasks whenever the load tester is busy,
/// and the offered load would sag exactly when it matters.
struct PublisherThread {
    handle: Handle,
    /// Ends the thread (and its runtime, cancelling what still runs there) when dropped.
    _stop: oneshot::Sender<()>,
}

impl PublisherThread {
    fn start() -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the publishers' runtime")?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        // The runtime is dropped on its own thread once told to stop (or its sender is gone):
        // dropping a runtime inside async code would panic.
        std::thread::Builder::new()
            .name("publishers".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                })
            })
            .context("starting the publishers' thread")?;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }
}

/// The controller of one run.
struct Controller {
    peers: Vec<Shared>,
    tasks: Vec<JoinHandle<()>>,
    sampler: Sampler,
    series: Vec<Sample>,
    progress: Progress,
    ticker: tokio::time::Interval,
}

impl Controller {
    fn sample(&mut self) {
        let s = self.sampler.sample(&self.peers);
        self.progress.update(&s);
        self.series.push(s);
    }

    /// Samples every second until `deadline`, or until every peer is up or failed when
    /// `until_settled`.
    async fn pause_until(&mut self, deadline: Instant, until_settled: bool) {
        let sleep = tokio::time::sleep_until(deadline.into());
        tokio::pin!(sleep);
        loop {
            if until_settled && self.settled() {
                return;
            }
            tokio::select! {
                _ = self.ticker.tick() => self.sample(),
                _ = &mut sleep => return,
            }
        }
    }

    /// A phase of a fixed length, counted in seconds on the progress bar.
    async fn timed_phase(&mut self, name: &str, length: Duration) {
        self.progress.phase(name, length.as_secs(), "s");
        let start = Instant::now();
        let until = start + length;
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            self.pause_until(until.min(now + Duration::from_secs(1)), false)
                .await;
            self.progress.set_position(start.elapsed().as_secs());
        }
    }

    fn settled(&self) -> bool {
        self.peers.iter().all(|p| {
            let s = lock(p);
            s.connected_at.is_some() || s.failed.is_some()
        })
    }
}

/// Gives the pages the allocator holds free back to the system. Joining allocates much that
/// is short-lived (HTTP and WebSocket handshakes, DTLS flights, SDP parsing) between what
/// stays, and glibc's allocator keeps the pages of those holes: the memory per peer measured
/// in the window is then what the peers use, not what their joining left behind.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Peers that lost their node and joined again (see [`crate::peer`]): how many times, and how
/// long from the loss to media flowing again. Printed beside the report, on stderr.
fn print_reconnections(states: &[PeerState]) {
    let mut times = crate::stats::Histogram::default();
    let mut count = 0u64;
    for s in states {
        count += u64::from(s.reconnects);
        times.merge(&s.reconnect_time);
    }
    if count == 0 {
        return;
    }
    let ms = |q: f64| times.quantile(q).map_or(0, |d| d.as_millis());
    eprintln!(
        "reconnections: {count} by {} peers; loss to media again p50 {} ms, p99 {} ms, max {} ms",
        states.iter().filter(|s| s.reconnects > 0).count(),
        ms(0.5),
        ms(0.99),
        ms(1.0),
    );
}

/// Runs `s` and reports.
pub async fn run(s: &Scenario, watch: &Watch) -> anyhow::Result<Report> {
    let http = sfu_control::tls::http_client(None, Duration::from_secs(30))
        .context("creating the HTTP client")?;
    let planned = plan(s, &http)?;
    let publishers = planned.iter().filter(|p| p.meta.publisher).count();
    let total = planned.len();
    let started = Instant::now();
    let rss_before = procstat::own().map(|p| p.rss_bytes);
    let mut stops = Vec::with_capacity(total);
    let publisher_thread = PublisherThread::start()?;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut c = Controller {
        peers: Vec::with_capacity(total),
        tasks: Vec::with_capacity(total),
        sampler: Sampler::new(started, watch.pids.clone()),
        series: Vec::new(),
        progress: Progress::new(watch.progress),
        ticker,
    };
    let mut metas = Vec::with_capacity(total);
    c.progress.phase("joining", total as u64, "peers");
    let gap = Duration::from_secs_f64(1.0 / s.join_rate);
    let mut next = Instant::now();
    for (i, p) in planned.into_iter().enumerate() {
        if i == publishers && i > 0 {
            // Subscribers find the publishers in place (WHEP and Janus look them up).
            let limit = Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(2);
            c.pause_until(limit, true).await;
            next = next.max(Instant::now());
        }
        c.pause_until(next, false).await;
        next += gap;
        let shared: Shared = Arc::new(Mutex::new(PeerState::default()));
        let (stop, stopped) = oneshot::channel::<()>();
        stops.push(stop);
        let task = peer::run(p.spec, shared.clone(), stopped);
        c.tasks.push(if p.meta.publisher {
            publisher_thread.handle.spawn(task)
        } else {
            tokio::spawn(task)
        });
        c.peers.push(shared);
        metas.push(p.meta);
        c.progress.set_position(i as u64 + 1);
    }
    // Peers give up on their own after CONNECT_TIMEOUT.
    c.pause_until(
        Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(2),
        true,
    )
    .await;
    c.timed_phase("warm-up", Duration::from_secs_f64(s.warmup_secs))
        .await;

    release_free_memory();
    for p in &c.peers {
        lock(p).start_window();
    }
    let sfu_before: Vec<Option<ProcSample>> =
        watch.pids.iter().map(|p| procstat::sample(*p)).collect();
    let own_before = procstat::own();
    let machine_before = procstat::machine_busy();
    let window_start = Instant::now();
    let window_started_s = window_start
        .saturating_duration_since(started)
        .as_secs_f64();
    c.timed_phase("measuring", Duration::from_secs_f64(s.duration_secs))
        .await;
    let window = window_start.elapsed();
    let sfu: Vec<(u32, ProcSample, ProcSample)> = watch
        .pids
        .iter()
        .zip(sfu_before)
        .filter_map(|(pid, before)| Some((*pid, before?, procstat::sample(*pid)?)))
        .collect();
    let own = own_before.zip(procstat::own());
    let machine = machine_before.zip(procstat::machine_busy());
    let states: Vec<PeerState> = c.peers.iter().map(|p| lock(p).clone()).collect();
    c.progress.finish();

    drop(stops);
    // Ending sessions takes a round trip or two; do not wait on stuck ones for long.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for mut t in c.tasks.drain(..) {
        if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
            t.abort();
        }
    }
    drop(publisher_thread);
    print_reconnections(&states);
    Ok(report::build(report::Inputs {
        scenario: s,
        metas: &metas,
        states: &states,
        window,
        window_started_s,
        sfu,
        own,
        machine,
        rss_before,
        series: c.series,
    }))
}
