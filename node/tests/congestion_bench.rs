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

use common::limited::{LOW_HEIGHT, LimitedRoom};
use common::{Sample, stat};
use std::time::{Duration, Instant};

struct Bench(LimitedRoom);

async fn start(room: &str, limit: u64) -> Bench {
    Bench(LimitedRoom::start(room, limit).await)
}

impl Bench {
    async fn samples(&mut self, secs: u64) -> Vec<Sample> {
        let mut v = Vec::new();
        for _ in 0..secs {
            v.push(self.0.browser.sample().await);
        }
        v
    }

    /// Seconds until `done` holds (at most `limit`).
    async fn time_until(&mut self, limit: u64, done: impl Fn(&Sample) -> bool) -> Option<f64> {
        let start = Instant::now();
        let (ok, _) = self
            .0
            .browser
            .until(Duration::from_secs(limit), |s| done(s))
            .await;
        ok.then(|| start.elapsed().as_secs_f64())
    }

    async fn stop(self) {
        self.0.stop().await;
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
    b.0.limiter.set_rate(50_000_000);
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
    b.0.limiter.set_rate(300_000);
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
