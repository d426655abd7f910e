//! Live streaming end to end: a Chromium publisher's room streamed to a real RTMP server
//! (Debian's nginx with its RTMP module, on a loopback port) and as HLS served by the node,
//! with a destination that does not answer; and what room recordings and streams cost.

mod common;

use common::media::{Nginx, camera_and_tone, measure, probe, run_for, run_limited};
use common::recording::{RecordingApi, assert_decodes};
use common::{Browser, browser_lock};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A node recording into a fresh directory, a real nginx-rtmp beside it, and alice publishing
/// a red camera (of `size`) and a tone in `room` from Chromium.
async fn live_node(
    prefix: &str,
    room: &str,
    size: &str,
) -> (PathBuf, Nginx, sfu_node::Server, String, Browser) {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", rand::random::<u32>()));
    let nginx = Nginx::start(&dir.join("nginx"));
    let mut config = sfu_node::Config::loopback();
    config.recording.dir = dir.join("recordings");
    let node = sfu_node::Server::start(config).await.unwrap();
    let base = format!("http://{}", node.http_addr);
    let red = camera_and_tone(&dir, "red", "red", size, 440);
    let alice = Browser::launch_with_args(
        &[(
            "alice",
            format!("{base}/demo.html?room={room}&identity=alice&autojoin=1&publish=1"),
        )],
        &red,
    )
    .await;
    (dir, nginx, node, base, alice)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_streams_live_to_rtmp_and_hls_and_a_dead_destination_fails_alone() {
    let _guard = browser_lock().await;
    let _ = common::tracing_subscriber_init();
    let room = "live";
    let (dir, nginx, node, base, mut alice) = live_node("sfu-live", room, "320x240").await;
    let api = RecordingApi::new(&base);
    // Once the publisher's two tracks are listed, and media flows.
    for _ in 0..60 {
        if api.tracks(room).await.len() == 2 {
            break;
        }
        run_for(&mut [&mut alice], Duration::from_millis(500)).await;
    }
    run_for(&mut [&mut alice], Duration::from_secs(2)).await;

    // Bad input: not an RTMP URL.
    let (status, _) = api
        .start(
            room,
            serde_json::json!({ "streams": ["http://example.com/x"] }),
        )
        .await;
    assert_eq!(status, 400);

    // One destination that works, one that does not answer (nothing listens on port 9), and
    // one that fails a moment later: it takes the connection and closes it 0.5 s later, in
    // the RTMP handshake, while the pipeline is still starting (its file's sink waits for
    // its first buffer), as a refusal that comes late on a loaded machine.
    let live = format!("rtmp://127.0.0.1:{}/live/x", nginx.port);
    let dead = "rtmp://127.0.0.1:9/live/nobody".to_owned();
    let late = format!(
        "rtmp://{}/live/late",
        drops_after(Duration::from_millis(500)).await
    );
    let (status, started) = api
        .start(
            room,
            serde_json::json!({ "streams": [live, dead, late], "hls": true }),
        )
        .await;
    assert_eq!(status, 201, "{started}");
    let since = Instant::now();
    let id = started["id"].as_str().unwrap().to_owned();
    let playlist = format!("{base}{}", started["hls"].as_str().unwrap());
    run_for(&mut [&mut alice], Duration::from_secs(4)).await;

    // The dead destinations failed with their reasons; the recording and the other go on
    // (a failure kept to itself: before, the late one's stopped the file's video and the
    // other destination's H.264 when the node was slow to take it out).
    let info = api.get(&id).await;
    eprintln!("streaming: {info}");
    assert_eq!(info["state"], "active", "{info}");
    assert_eq!(info["streams"][0]["state"], "active", "{info}");
    for dead in [1, 2] {
        assert_eq!(info["streams"][dead]["state"], "failed", "{info}");
        assert!(
            !info["streams"][dead]["error"]
                .as_str()
                .unwrap_or("")
                .is_empty(),
            "{info}"
        );
    }
    // The live RTMP stream as a player gets it from nginx: H.264 and AAC. A player that
    // connects while the transcoder has not yet sent its first picture (seen on a loaded
    // machine) finds only the audio, as a viewer joining early would: it looks again.
    let mut seen = (false, String::new(), String::new());
    for _ in 0..4 {
        let (ok, out, err) = run_limited(
            "ffprobe",
            &[
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name",
                "-of",
                "csv=p=0",
                &live,
            ],
            Duration::from_secs(20),
        )
        .await;
        eprintln!("ffprobe {live}: {out} {err}");
        let mut codecs: Vec<&str> = out.lines().map(str::trim).collect();
        codecs.sort();
        let both = ok && codecs == ["aac", "h264"];
        seen = (both, out, err);
        if both {
            eprintln!(
                "H.264 and AAC on the RTMP stream {:.1} s after the recording started",
                since.elapsed().as_secs_f64()
            );
            break;
        }
    }
    assert!(seen.0, "{} {}", seen.1, seen.2);
    run_for(&mut [&mut alice], Duration::from_secs(4)).await;
    // The room is unaffected: the publisher still publishes.
    let s = alice.sample().await;
    assert_eq!(common::state(&s, "alice"), "publishing", "{s}");

    let done = api.stop(&id).await;
    alice.stop().await;
    assert_eq!(done["state"], "complete", "{done}");
    assert_eq!(done["streams"][0]["state"], "ended", "{done}");
    // The file is there as for any room recording.
    let file = Path::new(done["file"].as_str().unwrap());
    let (streams, _) = probe(file);
    assert_eq!(streams.len(), 2, "{streams:?}");
    assert_decodes(file, "the room recording");

    // What nginx recorded plays.
    drop(nginx);
    let flv = dir.join("nginx/rec/x.flv");
    let (ok, _, err) = run_limited(
        "ffmpeg",
        &[
            "-nostdin",
            "-v",
            "error",
            "-i",
            flv.to_str().unwrap(),
            "-f",
            "null",
            "-",
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(ok && err.is_empty(), "nginx's recording decodes: {err}");
    let (_, duration) = probe(&flv);
    assert!(duration > 5.0, "{duration} s streamed to nginx");

    // The HLS playlist, served by the node, plays in ffmpeg.
    let http = common::http();
    let text = http
        .get(&playlist)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(".ts"), "{text}");
    let (ok, _, err) = run_limited(
        "ffmpeg",
        &[
            "-nostdin", "-v", "error", "-i", &playlist, "-f", "null", "-",
        ],
        Duration::from_secs(30),
    )
    .await;
    assert!(ok && err.is_empty(), "the HLS playlist plays: {err}");
    let r = http
        .get(format!("{base}/recordings/{id}/hls/..%2Fx.webm"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404, "only HLS files are served");
    node.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// An address that takes TCP connections and closes each `after` it came, unanswered: an RTMP
/// destination that fails once the program streams.
async fn drops_after(after: Duration) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                drop(socket);
            });
        }
    });
    addr
}

/// What room recordings and live streams cost the node (see BENCHMARKS.md), against
/// subscribers of the same tracks:
/// `cargo test --release -p sfu-node --test live_stream room_recording_cost -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn room_recording_cost() {
    const N: usize = 4;
    const WINDOW: Duration = Duration::from_secs(15);
    let _guard = browser_lock().await;
    let room = "bench";
    let (dir, nginx, node, base, mut browser) = live_node("sfu-livebench", room, "640x360").await;
    let api = RecordingApi::new(&base);
    run_for(&mut [&mut browser], Duration::from_secs(8)).await;
    let (idle, idle_rss) = measure(&mut browser, WINDOW).await;

    // N room recordings (files only).
    let mut ids = Vec::new();
    for _ in 0..N {
        ids.push(api.started(room, serde_json::json!({})).await);
    }
    run_for(&mut [&mut browser], Duration::from_secs(3)).await;
    let (rooms, rooms_rss) = measure(&mut browser, WINDOW).await;
    for id in ids.drain(..) {
        let r = api.stop(&id).await;
        assert_eq!(r["state"], "complete", "{r}");
    }

    // One room recording streaming to one RTMP destination (transcoded), then to two.
    for streams in [1usize, 2] {
        let urls: Vec<String> = (0..streams)
            .map(|i| format!("rtmp://127.0.0.1:{}/live/s{i}", nginx.port))
            .collect();
        let id = api
            .started(room, serde_json::json!({ "streams": urls }))
            .await;
        run_for(&mut [&mut browser], Duration::from_secs(3)).await;
        let (cpu, rss) = measure(&mut browser, WINDOW).await;
        let r = api.stop(&id).await;
        println!(
            "1 room recording + {streams} RTMP stream(s): {cpu:.1} % of a core (+{:.1} over idle), RSS {} MB (+{:.1} MB); streams: {}",
            cpu - idle,
            rss >> 20,
            (rss as f64 - idle_rss as f64) / 1e6,
            r["streams"]
        );
    }

    // N subscribers of the same tracks (Chromium pages).
    for i in 0..N {
        browser
            .open(
                &format!("sub{i}"),
                &format!("{base}/demo.html?room={room}&identity=v{i}&autojoin=1&publish=0"),
            )
            .await;
    }
    run_for(&mut [&mut browser], Duration::from_secs(8)).await;
    let (subscribed, subscribed_rss) = measure(&mut browser, WINDOW).await;
    browser.stop().await;
    println!(
        "publisher only: {idle:.1} % of a core, RSS {} MB",
        idle_rss >> 20
    );
    println!(
        "{N} room recordings: {rooms:.1} % ({:.2} % each), RSS {} MB (+{:.1} MB each)",
        (rooms - idle) / N as f64,
        rooms_rss >> 20,
        (rooms_rss as f64 - idle_rss as f64) / N as f64 / 1e6,
    );
    println!(
        "{N} subscribers of audio + video: {subscribed:.1} % ({:.2} % each), RSS {} MB",
        (subscribed - idle) / N as f64,
        subscribed_rss >> 20,
    );
    drop(nginx);
    node.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
