//! Real Chromium publishing simulcast; a subscriber behind an in-process bandwidth limiter of
//! 300 kbps receives the low layer and keeps decoding, with audio; when the limit lifts, it
//! climbs to a higher layer; on a lossy link its NACKs are answered from the node's cache.
//!
//! The fake camera plays noise (a generated Y4M file), which no encoder can compress: each
//! simulcast layer then runs at its configured maximum (150 and 500 kbps for the two layers
//! Chrome sends at 640x480), as real camera pictures with detail and motion do, rather than at
//! the few tens of kbps Chrome needs for its built-in test pattern.

mod common;

use common::limited::{LOW_HEIGHT, LimitedRoom};
use common::{Browser, browser_lock, expect_media, metric, metrics, stat};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_subscriber_gets_the_low_layer_and_keeps_decoding() {
    let _guard = browser_lock().await;
    common::tracing_subscriber_init();
    let mut room = LimitedRoom::start("congested", 300_000).await;
    let browser = &mut room.browser;
    expect_media(browser, &["sub"], 30.0, Duration::from_secs(60)).await;

    // Settled behind the limit: the low layer.
    let (settled, s) = browser
        .until(Duration::from_secs(30), |s| {
            let h = stat(s, "sub", "frameHeight");
            h > 0.0 && h <= LOW_HEIGHT
        })
        .await;
    assert!(settled, "the low layer within 30 s: {s:#}");
    let (start_frames, start_audio) = (
        stat(&s, "sub", "framesDecoded"),
        stat(&s, "sub", "audioPacketsReceived"),
    );
    let mut highest = 0.0f64;
    let mut last = s;
    for _ in 0..10 {
        last = browser.sample().await;
        highest = highest.max(stat(&last, "sub", "frameHeight"));
    }
    assert!(highest <= LOW_HEIGHT, "stays on the low layer: {last:#}");
    let frames = stat(&last, "sub", "framesDecoded") - start_frames;
    let audio = stat(&last, "sub", "audioPacketsReceived") - start_audio;
    // At least 5 frames a second: a frozen picture decodes next to none, and a busy 2-core
    // machine running Chromium's three encoders does not always reach 10.
    assert!(
        frames >= 50.0,
        "keeps decoding: {frames} frames in 10 s; {last:#}"
    );
    assert!(
        audio >= 300.0,
        "keeps receiving audio: {audio} packets in 10 s; {last:#}"
    );

    // The limit lifts: a higher layer follows.
    room.limiter.set_rate(50_000_000);
    let (climbed, s) = browser
        .until(Duration::from_secs(40), |s| {
            stat(s, "sub", "frameHeight") > LOW_HEIGHT
        })
        .await;
    assert!(climbed, "a higher layer once the limit lifted: {s:#}");

    // A lossy link: the subscriber's NACKs reach the node, which answers them from its cache
    // (on the RTX stream), and the picture keeps coming.
    // The frame rate without loss is the yardstick: on a busy 2-core machine Chromium encodes
    // and decodes well under 30 frames a second.
    let (clean, _) = frames_decoded(browser, 6).await;
    room.limiter.set_drop_every(25);
    let (lossy, last) = frames_decoded(browser, 10).await;
    room.limiter.set_drop_every(0);
    let (clean, lossy) = (clean / 6.0, lossy / 10.0);
    let metrics = metrics(&room.base).await;
    let counter = |name: &str| metric(&metrics, name);
    assert!(
        lossy >= 2.0 && lossy >= clean / 2.0,
        "decoding through 4% loss: {lossy} frames/s against {clean} without loss \
         ({} layer switches in all); {last:#}",
        counter("sfu_layer_switches_total")
    );
    // The subscriber's congestion feedback reached the node, and the node probed.
    assert!(
        counter("sfu_congestion_feedback_total") > 100.0,
        "{metrics}"
    );
    assert!(counter("sfu_probe_packets_total") > 0.0, "{metrics}");
    assert!(counter("sfu_layer_switches_total") > 0.0, "{metrics}");
    // About 4 % of some 50 video packets a second over 10 s were lost: a few dozen NACKs;
    // none at all would mean they never reached the node.
    assert!(counter("sfu_nacks_received_total") >= 5.0, "{metrics}");
    assert!(
        counter("sfu_retransmitted_packets_total") >= 5.0,
        "{metrics}"
    );
    room.stop().await;
}

/// Frames the subscriber decoded over `secs` one-second samples, and the last sample.
async fn frames_decoded(browser: &mut Browser, secs: usize) -> (f64, serde_json::Value) {
    let s0 = browser.sample().await;
    let mut last = s0.clone();
    for _ in 0..secs {
        last = browser.sample().await;
    }
    let frames = stat(&last, "sub", "framesDecoded") - stat(&s0, "sub", "framesDecoded");
    (frames, last)
}
