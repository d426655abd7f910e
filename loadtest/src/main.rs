//! `sfu-loadtest`: real WebRTC peers against an SFU, with a summary at the end.

use anyhow::Context;
use clap::Parser;
use sfu_loadtest::media::VideoProfile;
use sfu_loadtest::peer::Role;
use sfu_loadtest::run::{Plan, run};
use sfu_loadtest::target::{Target, Tokens};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(version, about = "Load-tests a WebRTC SFU with real WebRTC peers")]
struct Cli {
    /// Base URL of the WHIP/WHEP server.
    #[arg(long, default_value = "http://127.0.0.1:7880")]
    url: String,
    /// Base URLs subscribers join, round robin (default: --url). Use several nodes of a
    /// cluster to spread subscribers over them.
    #[arg(long, value_delimiter = ',')]
    subscriber_url: Vec<String>,
    /// Room to use (a run number is appended when several runs are swept).
    #[arg(long, default_value = "loadtest")]
    room: String,
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Subscribers; a comma-separated list runs one test per value (a sweep).
    #[arg(long, value_delimiter = ',', default_value = "10")]
    subscribers: Vec<usize>,
    /// Video bitrate of each publisher in kbps (0: no video).
    #[arg(long, default_value_t = 1500)]
    video_kbps: u32,
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Audio bitrate of each publisher in kbps (0: no audio).
    #[arg(long, default_value_t = 48)]
    audio_kbps: u32,
    /// Peers joining per second.
    #[arg(long, default_value_t = 20.0)]
    join_rate: f64,
    /// Seconds between the last join and the start of measuring.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Address the peers' sockets bind to.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    #[arg(long, env = "SFU_API_KEY", default_value = "devkey")]
    api_key: String,
    #[arg(
        long,
        env = "SFU_API_SECRET",
        default_value = "secret",
        hide_env_values = true
    )]
    api_secret: String,
    /// A fixed bearer token instead of minted ones.
    #[arg(long)]
    token: Option<String>,
    /// Report CPU and memory of the process with this command name (e.g. sfu-node).
    #[arg(long)]
    watch_process: Option<String>,
    /// Report CPU and memory of these processes (several: one per node, each reported).
    #[arg(long, value_delimiter = ',')]
    watch_pid: Vec<u32>,
    /// Write the reports as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    #[arg(long)]
    quiet: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SFU_LOG")
                .unwrap_or_else(|_| "warn,rtc=error,rtc_ice=error,rtc_dtls=error".into()),
        )
        .init();
    // Raise the open-file limit: every peer has a socket.
    raise_nofile();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut watch_pids = cli.watch_pid.clone();
        if let Some(name) = &cli.watch_process {
            watch_pids.push(
                sfu_loadtest::procstat::find(name)
                    .with_context(|| format!("no process named {name}"))?,
            );
        }
        let mut reports = Vec::new();
        for (i, &subscribers) in cli.subscribers.iter().enumerate() {
            let room = if cli.subscribers.len() > 1 {
                format!("{}-{i}", cli.room)
            } else {
                cli.room.clone()
            };
            let tokens = || match &cli.token {
                Some(t) => Tokens::Fixed(t.clone()),
                None => Tokens::Mint {
                    api_key: cli.api_key.clone(),
                    api_secret: cli.api_secret.clone(),
                },
            };
            let plan = Plan {
                target: Arc::new(Target::whip(&cli.url, &room, tokens())),
                subscriber_targets: cli
                    .subscriber_url
                    .iter()
                    .map(|u| Arc::new(Target::whip(u, &room, tokens())))
                    .collect(),
                bind: cli.bind,
                publishers: cli.publishers,
                publisher: Role::Publisher {
                    video: (cli.video_kbps > 0).then_some(VideoProfile {
                        bitrate_bps: cli.video_kbps * 1000,
                        fps: cli.fps,
                        keyframe_interval: cli.fps * 3,
                        keyframe_factor: 5,
                    }),
                    audio_bps: (cli.audio_kbps > 0).then_some(cli.audio_kbps * 1000),
                },
                subscribers,
                join_rate: cli.join_rate,
                warmup: Duration::from_secs(cli.warmup),
                duration: Duration::from_secs(cli.duration),
                watch_pids: watch_pids.clone(),
                progress: !cli.quiet,
            };
            let report = run(plan).await;
            println!("{report}");
            reports.push(report);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        if let Some(path) = &cli.json {
            std::fs::write(path, serde_json::to_string_pretty(&reports)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        anyhow::Ok(())
    })
}

fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a stack value.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
