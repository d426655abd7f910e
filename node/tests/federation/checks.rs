//! What the federation test checks on the pages and the nodes: media flowing or stopped
//! (with the nodes' counters printed when media does not flow, to tell where it was lost),
//! and an administrator of A stopping a federated track in A only.

use crate::common::{self, Browser, Sample, stat};
use crate::setup::Side;
use reqwest::Method;
use std::time::{Duration, Instant};

/// Every page in `pages` decodes `frames` more video frames and has received audio within
/// `limit`; if not, prints the nodes' drop, relay and federation counters and fails.
pub async fn expect_media(
    browser: &mut Browser,
    pages: &[&str],
    frames: f64,
    limit: Duration,
    sides: [&Side; 2],
) -> Sample {
    expect_media_but(browser, pages, &[], frames, limit, sides).await
}

/// [`expect_media`], except that the pages in `no_audio` need not have received audio (their
/// peer's microphone is stopped on their side).
pub async fn expect_media_but(
    browser: &mut Browser,
    pages: &[&str],
    no_audio: &[&str],
    frames: f64,
    limit: Duration,
    sides: [&Side; 2],
) -> Sample {
    let mut baseline: Option<Vec<f64>> = None;
    let (ok, last) = browser
        .until(limit, |s| {
            let decoded: Vec<f64> = pages.iter().map(|p| stat(s, p, "framesDecoded")).collect();
            let base = baseline.get_or_insert_with(|| decoded.clone());
            pages
                .iter()
                .zip(decoded.iter().zip(base.iter()))
                .all(|(p, (now, start))| {
                    now - start >= frames
                        && (no_audio.contains(p) || stat(s, p, "audioPacketsReceived") > 0.0)
                })
        })
        .await;
    if !ok {
        for side in sides {
            for server in [&side.node, &side.plain] {
                let m = common::metrics(&format!("http://{}", server.http_addr)).await;
                let counters = m.lines().filter(|l| {
                    !l.starts_with('#')
                        && ["dropped", "relay", "federation"]
                            .iter()
                            .any(|k| l.contains(k))
                });
                for l in counters {
                    println!("{}: {l}", server.http_addr);
                }
            }
        }
        panic!("media did not flow to {pages:?} within {limit:?}; last sample: {last:#}");
    }
    last
}

/// Waits until the pages' decoded frames stop growing (two samples alike, within 10 s);
/// returns how long that took from `since`, less the stillness observed.
pub async fn media_stops(browser: &mut Browser, pages: &[&str], since: Instant) -> f64 {
    let (mut prev, mut still) = (Vec::new(), 0);
    let (stopped, s) = browser
        .until(Duration::from_secs(10), |s| {
            let now: Vec<f64> = pages.iter().map(|p| stat(s, p, "framesDecoded")).collect();
            still = if now == prev { still + 1 } else { 0 };
            prev = now;
            still >= 2
        })
        .await;
    assert!(stopped, "media to {pages:?} kept flowing: {s:#}");
    since.elapsed().as_secs_f64() - 2.0
}

/// A's administrator stops B's camera (bob's) in A: alice stops decoding it while bob keeps
/// decoding alice's and B still lists it; forwarded again, alice decodes it again.
pub async fn stop_in_a_only(browser: &mut Browser, a: &Side, b: &Side) {
    let (_, tracks) = a.node.membership.room("joint");
    let camera = tracks
        .iter()
        .find(|t| t.kind == "video" && t.origin.contains('~'))
        .expect("B's camera in A's registry")
        .track
        .clone();
    let path = format!("rooms/joint/stopped/{camera}");
    let (status, v) = a
        .call(Method::PUT, "rooms/joint/stopped/TR_0000000000000001", None)
        .await;
    assert_eq!((status, v["type"].as_str()), (404, Some("unknown_track")));
    let stopped = Instant::now();
    let (status, v) = a.call(Method::PUT, &path, None).await;
    assert_eq!(status, 204, "{v}");
    let (_, v) = a.call(Method::GET, "rooms/joint/stopped", None).await;
    assert_eq!(v["tracks"], serde_json::json!([camera]));
    let secs = media_stops(browser, &["alice"], stopped).await;
    println!("A stopped B's camera in A: alice stopped decoding it within {secs:.1} s");
    expect_media(browser, &["bob"], 30.0, Duration::from_secs(20), [a, b]).await;
    let (_, b_tracks) = b.node.membership.room("joint-with-a");
    assert!(
        b_tracks.iter().any(|t| t.track == camera),
        "B still publishes the camera A stopped"
    );
    let (status, v) = a.call(Method::DELETE, &path, None).await;
    assert_eq!(status, 204, "{v}");
    let (status, _) = a.call(Method::DELETE, &path, None).await;
    assert_eq!(status, 404, "forwarding a track that is not stopped");
    let again = Instant::now();
    expect_media(browser, &["alice"], 30.0, Duration::from_secs(30), [a, b]).await;
    println!(
        "forwarded again: alice decodes B's camera {:.1} s later",
        again.elapsed().as_secs_f64()
    );
}
