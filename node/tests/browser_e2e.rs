//! End to end in real headless Chromium: publishing and playing over the WebSocket protocol and
//! over WHIP/WHEP, with the node running in-process on loopback.

mod common;

use common::{Browser, browser_lock, expect_media, start_node, stat};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_publisher_reaches_three_subscribers_with_simulcast() {
    let _guard = browser_lock().await;
    let node = start_node().await;
    let base = format!("http://{}", node.http_addr);
    let room = "ws-e2e";
    let mut pages = vec![(
        "pub",
        format!("{base}/demo.html?room={room}&identity=alice&autojoin=1&publish=1&simulcast=1"),
    )];
    for i in 1..=3 {
        pages.push((
            ["sub1", "sub2", "sub3"][i - 1],
            format!("{base}/demo.html?room={room}&identity=viewer{i}&autojoin=1&publish=0"),
        ));
    }
    let mut browser = Browser::launch(&pages).await;
    let last = expect_media(&mut browser, &["sub1", "sub2", "sub3"], 60.0, LIMIT).await;
    // The room spans the node's two media workers: joins went to the one with fewer
    // participants, so subscribers on both decode the publisher's video, which the
    // publisher's worker handed once to the other.
    let each = node.media.snapshot_each().await;
    assert_eq!(each.len(), 2);
    assert!(
        each.iter().all(|w| w.participants >= 1 && w.rooms == 1),
        "the room is on both workers: {each:?}"
    );
    for sub in ["sub1", "sub2", "sub3"] {
        assert_eq!(
            stat(&last, sub, "videoTracks"),
            1.0,
            "one simulcast layer reaches the subscriber as one stream: {last:#}"
        );

        assert!(
            last["pages"][sub]["errors"].as_array().unwrap().is_empty(),
            "{last:#}"
        );
    }
    browser.stop().await;

    let metrics = common::metrics(&base).await;
    assert!(metrics.contains("sfu_packets_out_total"), "{metrics}");
    assert!(
        common::metric(&metrics, "sfu_relayed_packets_total") > 100.0,
        "packets crossed between the workers: {metrics}"
    );
    // Chromium published redundant audio (RED, which the node prefers), and the subscribers,
    // who negotiated RED too, received and played it (audio packets above).
    let red = common::metric(&metrics, "sfu_red_packets_total");
    assert!(red > 100.0, "RED audio arrived: {metrics}");
    // The workers' sockets sent it all, in as many messages or fewer (a frame's packets to one
    // subscriber share one where the kernel segments UDP).
    let datagrams = common::metric(&metrics, "sfu_udp_datagrams_out_total");
    let messages = common::metric(&metrics, "sfu_udp_messages_out_total");
    assert!(
        datagrams > 1000.0 && messages > 0.0 && messages <= datagrams,
        "{datagrams} datagrams in {messages} messages: {metrics}"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_publisher_reaches_whep_players_with_h264() {
    let _guard = browser_lock().await;
    let node = start_node().await;
    let base = format!("http://{}", node.http_addr);
    let room = "whip-e2e";
    let mut browser = Browser::launch(&[(
        "whip",
        format!("{base}/whip.html?room={room}&identity=obs&codec=h264"),
    )])
    .await;
    // Players that ask for the publisher by identity, and one that takes the default source.
    browser
        .open(
            "whep1",
            &format!("{base}/whep.html?room={room}&participant=obs"),
        )
        .await;
    browser
        .open(
            "whep2",
            &format!("{base}/whep.html?room={room}&participant=obs"),
        )
        .await;
    browser
        .open("whep3", &format!("{base}/whep.html?room={room}"))
        .await;
    expect_media(&mut browser, &["whep1", "whep2", "whep3"], 60.0, LIMIT).await;

    // Ending the publisher's session (DELETE on its Location) unpublishes its tracks; the
    // players stay connected, waiting for a source.
    assert_eq!(node.media.snapshot().await.tracks, 2);
    browser.eval("whip", "window.stopSession()").await;
    let (gone, last) = browser
        .until(Duration::from_secs(20), |s| {
            common::state(s, "whip") == "stopped"
        })
        .await;
    assert!(gone, "{last:#}");
    let mut tracks = usize::MAX;
    for _ in 0..50 {
        tracks = node.media.snapshot().await.tracks;
        if tracks == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(tracks, 0, "the WHIP session's tracks are unpublished");
    let after = browser.sample().await;
    for p in ["whep1", "whep2", "whep3"] {
        assert_eq!(common::state(&after, p), "connected", "{after:#}");
    }

    // A player that disappears without DELETE (its tab closes) does not stay in the room.
    assert_eq!(node.media.snapshot().await.participants, 3);
    browser.close_page("whep3").await;
    let mut participants = usize::MAX;
    for _ in 0..60 {
        participants = node.media.snapshot().await.participants;
        if participants == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(participants, 2, "the vanished player's session ends");
    browser.stop().await;
    node.stop().await;
}

/// The demo page with `&resume=1` resumes its session when its WebSocket breaks: both pages
/// close theirs, take their sessions over on the same node (`resumed`, peer connections kept,
/// nobody seen leaving), and media flows again to the viewer, whose forwarding was paused
/// while it was away. A resumable page that closes leaves at once (`leave` on `pagehide`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_page_resumes_its_session_when_its_websocket_breaks() {
    let _guard = browser_lock().await;
    let node = start_node().await;
    let base = format!("http://{}", node.http_addr);
    let room = "resume-e2e";
    let page = |identity: &str, publish: u8| {
        format!(
            "{base}/demo.html?room={room}&identity={identity}&autojoin=1&publish={publish}&resume=1"
        )
    };
    let mut browser = Browser::launch(&[("pub", page("alice", 1)), ("sub", page("bob", 0))]).await;
    expect_media(&mut browser, &["sub"], 30.0, LIMIT).await;
    for p in ["pub", "sub"] {
        browser.eval(p, "window.sfu.ws.close()").await;
    }
    let (ok, s) = browser
        .until(Duration::from_secs(20), |s| {
            ["pub", "sub"].iter().all(|p| stat(s, p, "resumes") == 1.0)
        })
        .await;
    assert!(ok, "both pages resumed: {s:#}");
    assert_eq!(stat(&s, "sub", "reconnects"), 0.0, "{s:#}");
    assert_eq!(node.media.snapshot().await.participants, 2);
    let last = expect_media(&mut browser, &["sub"], 30.0, LIMIT).await;
    for p in ["pub", "sub"] {
        assert!(
            last["pages"][p]["stats"]["left"]
                .as_array()
                .unwrap()
                .is_empty(),
            "nobody was seen leaving: {last:#}"
        );
    }
    eprintln!(
        "resume: the demo page resumed in {} ms (viewer), {} ms (publisher)",
        stat(&last, "sub", "lastResumeMs"),
        stat(&last, "pub", "lastResumeMs")
    );
    let metrics = common::metrics(&base).await;
    assert_eq!(
        common::metric(&metrics, "sfu_sessions_resumed_total"),
        2.0,
        "{metrics}"
    );
    // Closing the publisher's tab: the viewer sees it leave well before a parked session
    // would have expired (10 s).
    let closed = std::time::Instant::now();
    browser.close_page("pub").await;
    let (ok, s) = browser
        .until(Duration::from_secs(20), |s| {
            s["pages"]["sub"]["stats"]["left"]
                .as_array()
                .is_some_and(|l| !l.is_empty())
        })
        .await;
    assert!(ok, "the viewer saw alice leave: {s:#}");
    assert!(
        closed.elapsed() < Duration::from_secs(5),
        "a closed resumable page left at once, not after parking: {:?}",
        closed.elapsed()
    );
    browser.stop().await;
    node.stop().await;
}
