//! A short load test (20 real WebRTC peers for 10 s) against a node started in-process: media
//! flows from the publisher to every subscriber, and every field of the report is filled.

use sfu_loadtest::media::VideoProfile;
use sfu_loadtest::peer::Role;
use sfu_loadtest::run::{Plan, run};
use sfu_loadtest::target::{Target, Tokens};
use sfu_node::{Config, Server};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_peers_for_ten_seconds_fill_the_report() {
    let node = Server::start(Config::loopback()).await.unwrap();
    let plan = Plan {
        target: Arc::new(Target::whip(
            &format!("http://{}", node.http_addr),
            "short-run",
            Tokens::Mint {
                api_key: "devkey".into(),
                api_secret: "secret".into(),
            },
        )),
        subscriber_targets: Vec::new(),
        bind: "127.0.0.1".parse().unwrap(),
        publishers: 1,
        publisher: Role::Publisher {
            video: Some(VideoProfile {
                bitrate_bps: 300_000,
                fps: 15,
                keyframe_interval: 30,
                keyframe_factor: 4,
            }),
            audio_bps: Some(32_000),
        },
        subscribers: 19,
        join_rate: 20.0,
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(10),
        // The node runs in this process.
        watch_pids: vec![std::process::id()],
        progress: false,
    };
    let r = run(plan).await;
    println!("{r}");
    assert_eq!(
        (r.subscribers_connected, r.subscribers_failed),
        (19, 0),
        "{r}"
    );
    let filled = |name: &str, p: Option<sfu_loadtest::stats::Percentiles>| {
        let p = p.unwrap_or_else(|| panic!("{name} missing: {r}"));
        assert!(
            p.p50 > 0.0 && p.max >= p.p99 && p.p99 >= p.p50,
            "{name}: {p:?}"
        );
    };
    filled("join time", r.join_time_ms);
    filled("time to first media", r.first_media_ms);
    filled("latency", r.latency_ms);
    filled("video bitrate", r.video_kbps);
    filled("audio bitrate", r.audio_kbps);
    let video = r.video_kbps.unwrap();
    assert!(
        video.p50 > 250.0 && video.p50 < 350.0,
        "video arrives at the sent rate: {video:?}"
    );
    assert!(r.video_loss_percent.unwrap().max < 1.0, "{r}");
    assert!(r.audio_loss_percent.unwrap().max < 1.0, "{r}");
    assert!(r.jitter_ms.is_some(), "{r}");
    assert!(r.sfu.unwrap().cpu_percent > 0.0 && r.sfu_cpu_per_subscriber_percent.unwrap() > 0.0);
    assert!(r.loadtest.unwrap().rss_mb > 0.0 && r.loadtest_kb_per_peer.unwrap() > 0.0);
    assert_eq!(r.freezes, 0, "{r}");
    node.stop().await;
}
