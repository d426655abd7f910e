//! `sfu-loadtest`: real WebRTC peers against an SFU, with a live progress bar, a percentile
//! table at the end, and optionally JSON and an SVG plot. `sfu-loadtest --help` lists the
//! flags; docs/loadtest.md describes scenario files.

use anyhow::Context;
use clap::Parser;
use sfu_loadtest::cli::Cli;
use sfu_loadtest::run::{Watch, run};
use sfu_loadtest::{plot, procstat};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    sfu_control::tls::install_default_provider();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SFU_LOG")
                .unwrap_or_else(|_| "warn,rtc=error,rtc_ice=error,rtc_dtls=error".into()),
        )
        .init();
    let scenarios = cli.scenarios()?;
    let mut pids = cli.watch_pid.clone();
    for name in &cli.watch_process {
        let found = procstat::find_all(name);
        anyhow::ensure!(
            !found.is_empty(),
            "--watch-process: no process named {name}"
        );
        pids.extend(found);
    }
    let peers: u64 = scenarios.iter().map(|s| s.peers()).max().unwrap_or(0);
    raise_nofile(peers)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let watch = Watch {
        pids,
        progress: !cli.quiet,
    };
    let reports = runtime.block_on(async {
        let mut reports = Vec::new();
        for (i, s) in scenarios.iter().enumerate() {
            if i > 0 {
                // Let the server forget the previous run's sessions.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let report = run(s, &watch).await?;
            println!("{report}");
            reports.push(report);
        }
        anyhow::Ok(reports)
    })?;
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&reports)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &cli.plot {
        for (i, r) in reports.iter().enumerate() {
            let file = if reports.len() > 1 {
                numbered(path, i)
            } else {
                path.clone()
            };
            plot::write(r, &file)?;
        }
    }
    Ok(())
}

/// `plot.svg` → `plot-2.svg`.
fn numbered(path: &Path, i: usize) -> PathBuf {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plot");
    path.with_file_name(format!("{stem}-{i}.svg"))
}

/// Every peer holds a UDP socket or two and a TCP connection or two: raises the open-file
/// limit to its hard maximum, and says so if that is too low for the scenario.
fn raise_nofile(peers: u64) -> anyhow::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a stack value.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Ok(());
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let need = peers * 4 + 64;
    anyhow::ensure!(
        lim.rlim_cur >= need,
        "{peers} peers need about {need} file descriptors; the hard limit is {} (ulimit -Hn)",
        lim.rlim_cur
    );
    Ok(())
}
