//! What a track recording costs (an ignored measurement, see BENCHMARKS.md).

use super::common;
use super::common::media::measure;
use super::common::recording::RecordingApi;
use super::common::{Browser, browser_lock};
use std::time::Duration;

/// What a track recording costs the node against a subscriber of the same tracks (see
/// BENCHMARKS.md). `cargo test --release -p sfu-node --test recording -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn recording_cost() {
    const N: usize = 4;
    const WINDOW: Duration = Duration::from_secs(15);
    let _guard = browser_lock().await;
    let _ = common::tracing_subscriber_init();
    let dir = std::env::temp_dir().join(format!("sfu-recbench-{}", rand::random::<u32>()));
    let mut config = sfu_node::Config::loopback();
    config.recording.dir = dir.clone();
    let node = sfu_node::Server::start(config).await.unwrap();
    let base = format!("http://{}", node.http_addr);
    let room = "rec-bench";
    let mut browser = Browser::launch(&[(
        "pub",
        format!("{base}/demo.html?room={room}&identity=alice&autojoin=1&publish=1"),
    )])
    .await;
    let api = RecordingApi::new(&base);
    let tracks: Vec<String> = api
        .wait_tracks(room, 2)
        .await
        .iter()
        .filter_map(|t| Some(t["sid"].as_str()?.to_owned()))
        .collect();
    assert_eq!(tracks.len(), 2);
    let _ = browser.until(Duration::from_secs(5), |_| false).await;
    let (idle, idle_rss) = measure(&mut browser, WINDOW).await;

    // N recordings of the publisher's audio and video.
    let mut ids = Vec::new();
    for _ in 0..N {
        for t in &tracks {
            ids.push(api.started(room, serde_json::json!({ "track": t })).await);
        }
    }
    let _ = browser.until(Duration::from_secs(3), |_| false).await;
    let (recording, recording_rss) = measure(&mut browser, WINDOW).await;
    let mut bytes = 0;
    let mut secs = 0.0;
    for id in &ids {
        let r = api.stop(id).await;
        bytes += r["size_bytes"].as_u64().unwrap();
        // The average duration of the 2N recordings.
        secs += r["duration_ms"].as_u64().unwrap() as f64 / 1000.0 / (2 * N) as f64;
    }

    // N subscribers of the same two tracks (Chromium pages).
    for i in 0..N {
        browser
            .open(
                &format!("sub{i}"),
                &format!("{base}/demo.html?room={room}&identity=v{i}&autojoin=1&publish=0"),
            )
            .await;
    }
    let _ = browser.until(Duration::from_secs(8), |_| false).await;
    let (subscribed, subscribed_rss) = measure(&mut browser, WINDOW).await;
    browser.stop().await;
    println!(
        "publisher only: {idle:.1} % of a core, RSS {} MB",
        idle_rss >> 20
    );
    println!(
        "{N} recordings of audio + video: {recording:.1} % ({:.2} % each), RSS {} MB (+{:.1} MB each); {:.0} kbit/s written per recording",
        (recording - idle) / N as f64,
        recording_rss >> 20,
        (recording_rss as f64 - idle_rss as f64) / N as f64 / 1e6,
        bytes as f64 * 8.0 / secs / 1000.0 / N as f64,
    );
    println!(
        "{N} subscribers of audio + video: {subscribed:.1} % ({:.2} % each), RSS {} MB",
        (subscribed - idle) / N as f64,
        subscribed_rss >> 20,
    );
    node.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
