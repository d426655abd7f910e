//! Dynacast in a real cluster (real etcd, two nodes, a QUIC relay link, Chromium at both
//! ends): a subscriber on the second node renders the publisher's video small, so nobody in
//! the cluster needs the publisher's larger simulcast layer; it stops at the publisher (the
//! node tells it to pause the layer, and its sent bytes stop growing) and so cannot flow over
//! the link. When the subscriber renders it large, the layer comes back and reaches it.

mod common;

use common::control::Cluster;
use common::noise::noise_camera;
use common::{Browser, browser_lock, expect_media, stat};
use std::time::Duration;

fn layer_bytes(s: &common::Sample, rid: &str) -> f64 {
    s["pages"]["pub"]["stats"]["layerBytesSent"][rid]
        .as_f64()
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_nobody_watches_is_paused_at_the_publisher_and_comes_back_when_wanted() {
    let _guard = browser_lock().await;
    let cluster = Cluster::start(2, 0).await;
    let dir = std::env::temp_dir().join(format!("sfu-dynacast-{}", std::process::id()));
    let (b1, b2) = (cluster.url(0), cluster.url(1));
    let room = "dynacast";
    let mut browser = Browser::launch_with_args(
        &[
            (
                "pub",
                format!(
                    "{b1}/demo.html?room={room}&identity=alice&autojoin=1&publish=1&simulcast=1"
                ),
            ),
            (
                "sub",
                // 160 pixels wide: the 160x120 layer is all it needs.
                format!(
                    "{b2}/demo.html?room={room}&identity=bob&autojoin=1&publish=0&tilewidth=160"
                ),
            ),
        ],
        &[noise_camera(&dir)],
    )
    .await;
    expect_media(&mut browser, &["sub"], 30.0, Duration::from_secs(60)).await;

    // The publisher is told to send only the low layer, and stops sending the other.
    let (paused, s) = browser
        .until(Duration::from_secs(30), |s| {
            s["pages"]["pub"]["stats"]["publisherLayers"] == serde_json::json!(["q"])
        })
        .await;
    assert!(paused, "dynacast pauses the unwatched layer: {s:#}");
    let before = browser.sample().await;
    let mut last = before.clone();
    for _ in 0..5 {
        last = browser.sample().await;
    }
    let grew = layer_bytes(&last, "h") - layer_bytes(&before, "h");
    assert!(
        grew < 2_000.0,
        "the publisher sends nothing of it: {grew} bytes in 5 s; {last:#}"
    );
    assert!(
        layer_bytes(&last, "q") > layer_bytes(&before, "q"),
        "the watched layer flows: {last:#}"
    );
    assert_eq!(stat(&last, "sub", "frameHeight"), 120.0, "{last:#}");

    // The subscriber renders it large: the layer is turned on again and reaches it.
    browser
        .eval(
            "sub",
            "document.getElementById('grid').style.gridTemplateColumns = 'repeat(auto-fill, 640px)'",
        )
        .await;
    let (back, s) = browser
        .until(Duration::from_secs(40), |s| {
            stat(s, "sub", "frameHeight") >= 240.0
        })
        .await;
    assert!(
        back,
        "the larger layer comes back for the subscriber: {s:#}"
    );
    browser.stop().await;
    cluster.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
