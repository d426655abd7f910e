//! A soak: hours-long behaviour in minutes. A steady room runs for the whole soak while short
//! rooms come and go beside it (joins and leaves throughout), and the node's resident memory,
//! open file descriptors and tokio tasks (`sfu_tasks`) are sampled every few seconds. At the
//! end the curves are drawn (SVG) and the averages of the second and of the last minute of
//! load printed: a leak shows as a slope that churn does not explain.
//!
//! ```sh
//! target/debug/sfu-node --bind 127.0.0.1:7980 --udp-port 7982 &
//! cargo run -p sfu-loadtest --example soak -- http://127.0.0.1:7980 $! 600 \
//!     docs/figures/soak-600s.svg
//! ```
//!
//! Arguments: the node's base URL, its pid, the soak's seconds, the plot's path. The samples
//! go to the same path with `.csv`.

use anyhow::{Context, anyhow, bail};
use plotters::prelude::*;
use sfu_loadtest::run::{Watch, run};
use sfu_loadtest::scenario::Scenario;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Between samples.
const EVERY: Duration = Duration::from_secs(5);

/// One sample of the node.
#[derive(Clone, Copy, Debug, Default)]
struct Point {
    t_s: f64,
    rss_mb: f64,
    fds: f64,
    tasks: f64,
    participants: f64,
}

fn scenario(url: &str, room: &str, subscribers: u32, secs: f64) -> anyhow::Result<Scenario> {
    Scenario::from_toml(&format!(
        r#"
room_prefix = "{room}"
publishers = 1
subscribers = {subscribers}
join_rate = 10
warmup_secs = 1
duration_secs = {secs}
light_receivers = true

[target]
kind = "sfu"
url = "{url}"

[video]
bitrate_kbps = 800

[audio]
bitrate_kbps = 32
"#
    ))
    .map_err(|e| anyhow!("{e}"))
}

/// Reads the node: `/proc/PID/statm`, `/proc/PID/fd`, and its metrics.
async fn sample(http: &reqwest::Client, url: &str, pid: u32, t_s: f64) -> Option<Point> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let rss_pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as f64;
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let metric = |name: &str| {
        metrics
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    Some(Point {
        t_s,
        rss_mb: rss_pages * 4096.0 / 1e6,
        fds,
        tasks: metric("sfu_tasks"),
        participants: metric("sfu_participants"),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, pid, secs, out] = args.as_slice() else {
        bail!("usage: soak NODE_URL NODE_PID SECONDS PLOT.svg");
    };
    let pid: u32 = pid.parse().context("NODE_PID")?;
    let secs: f64 = secs.parse().context("SECONDS")?;
    let out = PathBuf::from(out);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let watch = Watch {
        pids: vec![pid],
        progress: false,
    };

    // The steady room: one publisher and 10 subscribers for the whole soak.
    let steady = {
        let s = scenario(url, "soak-steady", 10, (secs - 10.0).max(5.0))?;
        let watch = watch.clone();
        tokio::spawn(async move { run(&s, &watch).await })
    };
    // Churn: rooms of a publisher and 6 subscribers that live 20 s each, one after another
    // (two at a time), so someone joins or leaves every second or two.
    let churn = {
        let url = url.clone();
        let watch = watch.clone();
        tokio::spawn(async move {
            let mut rounds = 0u32;
            let lane = |lane: u32, url: String, watch: Watch| async move {
                let mut n = 0u32;
                tokio::time::sleep(Duration::from_secs(10 * lane as u64)).await;
                while Instant::now() + Duration::from_secs(30) < deadline {
                    let s = scenario(&url, &format!("soak-churn-{lane}-{n}"), 6, 20.0)?;
                    let r = run(&s, &watch).await?;
                    if r.peers_failed > 0 {
                        eprintln!("churn room {lane}-{n}: {} peers failed", r.peers_failed);
                    }
                    n += 1;
                }
                anyhow::Ok(n)
            };
            let (a, b) = tokio::join!(
                lane(0, url.clone(), watch.clone()),
                lane(1, url.clone(), watch.clone())
            );
            rounds += a? + b?;
            anyhow::Ok(rounds)
        })
    };

    let http = sfu_control::tls::http_client(None, std::time::Duration::from_secs(30))?;
    let csv = out.with_extension("csv");
    let mut lines = vec!["t_s,rss_mb,fds,tasks,participants".to_owned()];
    let mut points = Vec::new();
    let mut ticker = tokio::time::interval(EVERY);
    loop {
        ticker.tick().await;
        let t_s = started.elapsed().as_secs_f64();
        if let Some(p) = sample(&http, url, pid, t_s).await {
            lines.push(format!(
                "{:.1},{:.2},{},{},{}",
                p.t_s, p.rss_mb, p.fds, p.tasks, p.participants
            ));
            std::fs::write(&csv, lines.join("\n") + "\n")
                .with_context(|| format!("writing {}", csv.display()))?;
            points.push(p);
        }
        if Instant::now() >= deadline && steady.is_finished() && churn.is_finished() {
            break;
        }
    }
    // Quiet again: what is left once everyone has gone.
    tokio::time::sleep(Duration::from_secs(10)).await;
    if let Some(p) = sample(&http, url, pid, started.elapsed().as_secs_f64()).await {
        lines.push(format!(
            "{:.1},{:.2},{},{},{}",
            p.t_s, p.rss_mb, p.fds, p.tasks, p.participants
        ));
        std::fs::write(&csv, lines.join("\n") + "\n")?;
        points.push(p);
    }
    let steady = steady.await?.context("the steady room")?;
    let rounds = churn.await??;
    println!("{steady}");
    println!("churn: {rounds} rooms of 7 peers came and went");
    summarise(&points);
    plot(&points, &out)?;
    println!("samples in {}, plot in {}", csv.display(), out.display());
    Ok(())
}

/// Averages of the first and last minute (after the first minute of joining).
fn summarise(points: &[Point]) {
    let avg = |from: f64, to: f64, f: &dyn Fn(&Point) -> f64| {
        let v: Vec<f64> = points
            .iter()
            .filter(|p| p.t_s >= from && p.t_s < to)
            .map(f)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let end = points.last().map_or(0.0, |p| p.t_s);
    for (name, f) in [
        (
            "RSS (MB)",
            &(|p: &Point| p.rss_mb) as &dyn Fn(&Point) -> f64,
        ),
        ("open fds", &|p: &Point| p.fds),
        ("tokio tasks", &|p: &Point| p.tasks),
        ("participants", &|p: &Point| p.participants),
    ] {
        println!(
            "{name:<14} minute 1-2: {:>8.1}   last minute of load: {:>8.1}   after: {:>8.1}",
            avg(60.0, 120.0, f),
            avg(end - 85.0, end - 15.0, f),
            points.last().map_or(f64::NAN, f)
        );
    }
}

/// Which value of a sample a line shows.
type Pick = fn(&Point) -> f64;
/// A panel: its caption, unit and lines (name, colour, value).
type Panel = (
    &'static str,
    &'static str,
    Vec<(&'static str, RGBColor, Pick)>,
);

fn plot(points: &[Point], out: &Path) -> anyhow::Result<()> {
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("{e}");
    let root = SVGBackend::new(out, (1000, 780)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((3, 1));
    let x_max = points.last().map_or(1.0, |p| p.t_s).max(1.0);
    let rows: [Panel; 3] = [
        (
            "sfu-node under churn: resident memory",
            "MB",
            vec![("RSS", BLUE, |p| p.rss_mb)],
        ),
        (
            "open file descriptors",
            "fds",
            vec![("/proc/PID/fd", RED, |p| p.fds)],
        ),
        (
            "tokio tasks and participants",
            "count",
            vec![
                ("sfu_tasks", GREEN, |p| p.tasks),
                ("sfu_participants", BLACK, |p| p.participants),
            ],
        ),
    ];
    for (area, (caption, unit, lines)) in panels.iter().zip(rows) {
        let y_max = points
            .iter()
            .flat_map(|p| lines.iter().map(move |l| l.2(p)))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            .max(1.0)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(unit)
            .draw()
            .map_err(err)?;
        for (name, color, pick) in lines {
            let series: Vec<(f64, f64)> = points
                .iter()
                .map(|p| (p.t_s, pick(p)))
                .filter(|p| p.1.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(series, color.stroke_width(2)))
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
