//! The meeting app (`app/`: LiveKit's React components, built with npm and esbuild) served by a
//! node at `/`, in headless Chromium: two people pass the pre-join screen and join, each sees
//! the other's video play, a chat message sent by one is shown by the other, an audience
//! member sees the stage without a tile of their own, raises a hand and is brought on stage
//! by the host, the viewer-only page plays the video, and a screenshot (saved under `target/meeting-app/`) is not blank.

mod common;

use common::{Browser, Sample, browser_lock, http, stat, state, token, tracing_subscriber_init};
use serde_json::Value;
use sfu_node::{Config, Server};
use std::path::{Path, PathBuf};
use std::time::Duration;

const ROOM: &str = "meeting";

/// The repository's built app (test.sh builds it).
fn app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../app/dist")
}

fn stats<'a>(s: &'a Sample, page: &str) -> &'a Value {
    &s["pages"][page]["stats"]
}

fn texts(s: &Sample, page: &str, key: &str) -> Vec<String> {
    stats(s, page)[key]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Opens the app for `room` in a new page and joins as `name` through the pre-join screen.
async fn join(b: &mut Browser, page: &str, base: &str, name: &str, extra: &str) {
    b.open(page, &format!("{base}/?room={ROOM}{extra}")).await;
    let (ok, s) = b
        .until(Duration::from_secs(15), |s| {
            stats(s, page)["prejoin"].as_bool() == Some(true)
        })
        .await;
    assert!(ok, "{page}: no pre-join screen: {s:#}");
    b.fill(page, "#username", name).await;
    b.click(page, ".lk-join-button").await;
}

/// Waits until each page plays a remote video: a picture with a width and a clock that moves.
async fn expect_playing(b: &mut Browser, pages: &[&str], limit: Duration) -> Sample {
    let mut first: Option<Sample> = None;
    let (ok, last) = b
        .until(limit, |s| {
            let base = first.get_or_insert_with(|| s.clone());
            pages.iter().all(|p| {
                stat(s, p, "videoWidth") > 0.0
                    && stat(s, p, "currentTime") > stat(base, p, "currentTime") + 0.5
            })
        })
        .await;
    assert!(
        ok,
        "video does not play in {pages:?}; last sample: {last:#}"
    );
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn meeting_app_joins_plays_video_chats_and_embeds() {
    let dir = app_dir();
    assert!(
        dir.join("index.html").is_file() && dir.join("meeting.js").is_file(),
        "the meeting app is not built in {}: run `npm ci --prefix app && npm run --prefix app \
         build` (./test.sh does)",
        dir.display()
    );
    let _browser = browser_lock().await;
    let _ = tracing_subscriber_init();
    let mut config = Config::loopback();
    config.web.app_dir = dir;
    let node = Server::start(config).await.expect("node starts");
    let base = format!("http://{}", node.http_addr);

    // `/` is the app, the demo page moved to /demo.html, unknown files are 404.
    let get = |path: &str| http().get(format!("{base}{path}")).send();
    let index = get("/").await.unwrap();
    assert_eq!(index.status(), 200);
    assert!(index.text().await.unwrap().contains("/meeting.js"));
    let gzipped = http()
        .get(format!("{base}/meeting.js"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    let bundle = get("/meeting.js").await.unwrap();
    assert_eq!(bundle.status(), 200);
    assert!(
        bundle.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    let demo = get("/demo.html").await.unwrap().text().await.unwrap();
    assert!(demo.contains("/app.js"), "the demo page at /demo.html");
    assert_eq!(get("/no-such-file.js").await.unwrap().status(), 404);

    let started = std::time::Instant::now();
    let mut b = Browser::launch(&[]).await;
    join(&mut b, "alice", &base, "alice", "&host=1").await;
    join(&mut b, "bob", &base, "bob", "").await;
    let s = expect_playing(&mut b, &["alice", "bob"], Duration::from_secs(30)).await;
    for (page, other) in [("alice", "bob"), ("bob", "alice")] {
        assert_eq!(state(&s, page), "connected", "{s:#}");
        assert!(
            texts(&s, page, "names").contains(&other.to_owned()),
            "{s:#}"
        );
        assert_eq!(stat(&s, page, "localTiles"), 1.0, "{s:#}");
    }
    println!(
        "two joined and play each other's video in {:?}",
        started.elapsed()
    );

    // Chat over the data channel: alice opens the chat and sends, bob shows it.
    b.click("alice", ".lk-chat-toggle").await;
    b.fill("alice", ".lk-chat-form-input", "hello from alice")
        .await;
    b.click("alice", ".lk-chat-form-button").await;
    b.click("bob", ".lk-chat-toggle").await;
    let (ok, s) = b
        .until(Duration::from_secs(10), |s| {
            texts(s, "bob", "chat").contains(&"hello from alice".to_owned())
        })
        .await;
    assert!(ok, "bob does not show alice's chat message: {s:#}");
    println!("chat shown at {:?}", started.elapsed());

    // The audience (no publish permission) sees the stage, with no tile of their own; the
    // viewer-only page plays a video and nothing else.
    join(&mut b, "carol", &base, "carol", "&audience=1").await;
    // The viewer comes with a token of its own (as an embedding site gives it), not the
    // development endpoint's.
    let viewer = token("embed-viewer", ROOM, false, true);
    b.open(
        "view",
        &format!("{base}/view.html?room={ROOM}&token={viewer}"),
    )
    .await;
    let s = expect_playing(&mut b, &["carol", "view"], Duration::from_secs(30)).await;
    assert_eq!(state(&s, "carol"), "connected", "{s:#}");
    assert_eq!(
        stat(&s, "carol", "localTiles"),
        0.0,
        "carol has no tile: {s:#}"
    );
    assert!(
        stat(&s, "carol", "tiles") >= 2.0,
        "carol sees the stage: {s:#}"
    );
    assert!(
        stat(&s, "alice", "tiles") == 2.0,
        "alice sees no audience tiles: {s:#}"
    );
    println!("audience and viewer play at {:?}", started.elapsed());

    // A screenshot of the meeting, for people to look at; it is not blank (a blank page has one
    // colour and no deviation; this one is tiles of the fake camera, names, chat, controls).
    let out = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("target/meeting-app");
    std::fs::create_dir_all(&out).unwrap();
    let png = out.join("bob.png");
    let json = out.join("bob.png.json");
    let _ = std::fs::remove_file(&json);
    b.screenshot("bob", &png).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !json.exists() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shot: Value = serde_json::from_slice(&std::fs::read(&json).expect("screenshot taken"))
        .expect("screenshot statistics");
    println!(
        "screenshot {}: {shot} at {:?}",
        png.display(),
        started.elapsed()
    );
    assert!(shot["bytes"].as_f64().unwrap() > 20_000.0, "{shot}");
    assert!(shot["colours"].as_f64().unwrap() > 20.0, "{shot}");
    assert!(shot["stddev"].as_f64().unwrap() > 10.0, "{shot}");

    // Bob shares his screen (Chromium's fake capture): alice's view switches to the focus
    // layout with the share in it.
    b.click("bob", ".lk-control-bar [data-lk-source=\"screen_share\"]")
        .await;
    let (ok, s) = b
        .until(Duration::from_secs(15), |s| {
            stats(s, "alice")["focus"].as_bool() == Some(true)
                && stat(s, "alice", "remoteVideos") == 2.0
        })
        .await;
    assert!(ok, "alice does not focus on bob's screen share: {s:#}");
    println!("screen share in focus at {:?}", started.elapsed());
    b.click("bob", ".lk-control-bar [data-lk-source=\"screen_share\"]")
        .await;

    // Carol raises her hand; alice, the host, brings her on stage; carol turns her camera on
    // and alice sees it.
    b.click("carol", ".hand-button").await;
    let (ok, s) = b
        .until(Duration::from_secs(10), |s| {
            texts(s, "alice", "hands")
                .iter()
                .any(|h| h.contains("carol"))
        })
        .await;
    assert!(ok, "alice does not see carol's hand: {s:#}");
    println!("alice sees carol's hand at {:?}", started.elapsed());
    b.click("alice", ".promote-button").await;
    let (ok, s) = b
        .until(Duration::from_secs(10), |s| {
            stats(s, "carol")["cameraButton"].as_bool() == Some(true)
                && texts(s, "carol", "handButton").is_empty()
        })
        .await;
    assert!(ok, "carol is not on stage: {s:#}");
    println!("carol may publish at {:?}", started.elapsed());
    b.click("carol", ".lk-control-bar [data-lk-source=\"camera\"]")
        .await;
    let (ok, s) = b
        .until(Duration::from_secs(15), |s| {
            stat(s, "alice", "tiles") == 3.0 && stat(s, "alice", "remoteVideos") == 2.0
        })
        .await;
    assert!(ok, "alice does not see carol on stage: {s:#}");
    println!(
        "carol raised her hand and is on stage at {:?}",
        started.elapsed()
    );

    // Leaving ends bob's session; alice's grid loses his tile.
    b.click("bob", ".lk-disconnect-button").await;
    let (ok, s) = b
        .until(Duration::from_secs(10), |s| {
            state(s, "bob") == "disconnected" && !texts(s, "alice", "names").contains(&"bob".into())
        })
        .await;
    assert!(ok, "bob's leave: {s:#}");
    println!("meeting app test done in {:?}", started.elapsed());
    b.stop().await;
    node.stop().await;
}
