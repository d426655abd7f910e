//! Measures bandwidth adaptation with real Chromium (not a test: run it on a quiet machine and
//! copy the tables into BENCHMARKS.md):
//!
//! ```sh
//! cargo test --release -p sfu-node --test congestion_bench -- --ignored --nocapture
//! ```
//!
//! A Chromium publisher sends simulcast (640x480 noise: two layers, 150 and 500 kbps, plus RED
//! audio) to a node; a Chromium subscriber renders it large behind an in-process limiter.
//! For each limit: the layer it settles on, the video it receives, its audio loss; then how
//! long switching up and down takes when the limit changes, and the audio lost meanwhile.

mod common;

use common::noise::noise_camera;
use common::shaper::Shaper;
use common::{Browser, Sample, stat};
use sfu_node::{Config, Server};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const LOW_HEIGHT: f64 = 120.0;

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Bench {
    node: Server,
    limiter: Shaper,
    browser: Browser,
    dir: std::path::PathBuf,
}

async fn start(room: &str, limit: u64) -> Bench {
    let port = free_port();
    let mut config = Config::loopback();
    config.rtc.workers = 1;
    config.rtc.udp_port = port;
    config.rtc.bind_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    config.rtc.node_ips = vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))];
    let node = Server::start(config).await.expect("node starts");
    let limiter = Shaper::start(
        SocketAddr::from(([127, 0, 0, 2], port)),
        SocketAddr::from(([127, 0, 0, 1], port)),
        limit,
    )
    .await;
    let dir = std::env::temp_dir().join(format!("sfu-bench-{}-{room}", std::process::id()));
    let camera = noise_camera(&dir);
    let base = format!("http://{}", node.http_addr);
    let browser = Browser::launch_with_args(
        &[
            (
                "pub",
                format!("{base}/?room={room}&identity=alice&autojoin=1&publish=1&simulcast=1"),
            ),
            (
                "sub",
                format!("{base}/?room={room}&identity=bob&autojoin=1&publish=0&tilewidth=640"),
            ),
        ],
        &[camera],
    )
    .await;
    Bench {
        node,
        limiter,
        browser,
        dir,
    }
}

impl Bench {
    async fn samples(&mut self, secs: u64) -> Vec<Sample> {
        let mut v = Vec::new();
        for _ in 0..secs {
            v.push(self.browser.sample().await);
        }
        v
    }

    /// Seconds until `done` holds (at most `limit`).
    async fn time_until(&mut self, limit: u64, done: impl Fn(&Sample) -> bool) -> Option<f64> {
        let start = Instant::now();
        let (ok, _) = self
            .browser
            .until(Duration::from_secs(limit), |s| done(s))
            .await;
        ok.then(|| start.elapsed().as_secs_f64())
    }

    async fn stop(self) {
        self.browser.stop().await;
        self.node.stop().await;
        drop(self.limiter);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn delta(a: &Sample, b: &Sample, name: &str) -> f64 {
    stat(b, "sub", name) - stat(a, "sub", name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it by hand on a quiet machine"]
async fn bandwidth_adaptation_with_chromium() {
    println!("| limit | height (last 10 s) | video received | frames decoded | audio lost |");
    println!("|---:|---|---:|---:|---:|");
    for kbps in [200u64, 300, 500, 800, 1_500, 3_000] {
        let mut b = start(&format!("limit-{kbps}"), kbps * 1000).await;
        b.samples(20).await;
        let s = b.samples(11).await;
        let (first, last) = (&s[0], &s[s.len() - 1]);
        let mut heights: Vec<i64> = s
            .iter()
            .map(|x| stat(x, "sub", "frameHeight") as i64)
            .collect();
        heights.dedup();
        let audio_lost = delta(first, last, "audioPacketsLost");
        let audio = delta(first, last, "audioPacketsReceived") + audio_lost;
        println!(
            "| {kbps} kbps | {heights:?} | {:.0} kbps | {:.0}/s | {:.2} % |",
            delta(first, last, "videoBytesReceived") * 8.0 / 10.0 / 1e3,
            delta(first, last, "framesDecoded") / 10.0,
            audio_lost * 100.0 / audio.max(1.0),
        );
        b.stop().await;
    }

    println!("\n| change | time to switch | audio lost in the 10 s after |");
    println!("|---|---:|---:|");
    let mut b = start("up", 300_000).await;
    b.samples(20).await;
    b.limiter.set_rate(50_000_000);
    let up = b
        .time_until(60, |s| stat(s, "sub", "frameHeight") > LOW_HEIGHT)
        .await;
    println!(
        "| 300 kbps → unlimited | {} | - |",
        up.map_or("> 60 s".into(), |t| format!("{t:.1} s"))
    );
    b.stop().await;

    let mut b = start("down", 50_000_000).await;
    b.samples(20).await;
    let before = b.samples(1).await.remove(0);
    b.limiter.set_rate(300_000);
    let down = b
        .time_until(60, |s| {
            let h = stat(s, "sub", "frameHeight");
            h > 0.0 && h <= LOW_HEIGHT
        })
        .await;
    let after = b.samples(10).await;
    let last = &after[after.len() - 1];
    let lost = delta(&before, last, "audioPacketsLost");
    let total = delta(&before, last, "audioPacketsReceived") + lost;
    println!(
        "| unlimited → 300 kbps | {} | {:.2} % ({lost} packets) |",
        down.map_or("> 60 s".into(), |t| format!("{t:.1} s")),
        lost * 100.0 / total.max(1.0)
    );
    b.stop().await;
}
