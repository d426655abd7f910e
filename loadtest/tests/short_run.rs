//! Short load tests against a node started in this process: 20 real WebRTC peers for 10 s.
//! Media flows both ways (two publishers that also subscribe get each other's media, and every
//! subscriber gets both), loss stays under 1 %, and every field of the report is filled; with
//! full receivers (every packet decrypted) and with light ones (headers, and a sample
//! decrypted); over our WebSocket protocol, WHIP/WHEP and LiveKit's protocol. And a panic in one room of a worker leaves another room on it flowing.

use sfu_loadtest::report::Report;
use sfu_loadtest::run::{Watch, run};
use sfu_loadtest::scenario::{Scenario, TargetKind};
use sfu_loadtest::stats::Percentiles;
use sfu_node::{Config, Server};

fn scenario(kind: TargetKind, url: String, room: &str, light: bool) -> Scenario {
    let text = format!(
        r#"
room_prefix = "{room}"
light_receivers = {light}
publishers = 2
publishers_subscribe = true
subscribers = 18
join_rate = 40
warmup_secs = 2
duration_secs = 10

[target]
kind = "{kind}"
url = "{url}"

[video]
bitrate_kbps = 300
fps = 15
keyframe_interval_secs = 2
simulcast = true

[audio]
bitrate_kbps = 32
"#,
        kind = match kind {
            TargetKind::Sfu => "sfu",
            TargetKind::LiveKit => "livekit",
            TargetKind::Whip => "whip",
            TargetKind::Janus => "janus",
        }
    );
    Scenario::from_toml(&text).expect("the test scenario is valid")
}

async fn run_against_node(kind: TargetKind, room: &str, light: bool) -> Report {
    let node = Server::start(Config::loopback())
        .await
        .expect("node starts");
    let s = scenario(kind, format!("http://{}", node.http_addr), room, light);
    let watch = Watch {
        // The node runs in this process: its CPU is this process's.
        pids: vec![std::process::id()],
        progress: false,
    };
    let r = run(&s, &watch).await.expect("the run completes");
    println!("{r}");
    node.stop().await;
    r
}

fn filled(name: &str, p: Option<Percentiles>, r: &Report) -> Percentiles {
    let p = p.unwrap_or_else(|| panic!("{name} is missing:\n{r}"));
    assert!(
        p.p50 <= p.p90 && p.p90 <= p.p99 && p.p99 <= p.max,
        "{name} percentiles out of order: {p:?}"
    );
    p
}

/// Checks what every short run must show; `video_streams` is how many video streams a
/// subscriber receives (one per publisher it plays).
fn check(r: &Report, video_streams: f64) {
    assert_eq!((r.peers, r.publishers, r.receivers), (20, 2, 20), "{r}");
    assert_eq!((r.peers_connected, r.peers_failed), (20, 0), "{r}");
    assert!(r.failures.is_empty(), "{r}");
    assert_eq!(r.peers_per_server.len(), 1, "{r}");
    assert_eq!(r.peers_per_server[0].1, 20, "{r}");
    // Every receiver, publishers included, got every stream it should, under 1 % loss.
    assert_eq!(r.receivers_complete, 20, "{r}");
    assert_eq!(r.receivers_under_1pct_loss, 20, "{r}");

    assert!(filled("join time", r.join_time_ms, r).p50 > 0.0);
    assert!(filled("time to first media", r.first_media_ms, r).p50 > 0.0);
    assert!(filled("latency", r.latency_ms, r).p50 > 0.0);
    filled("jitter", r.jitter_ms, r);
    filled("freezes", r.freezes_per_receiver, r);
    // Subscribers (most receivers) get the top layer, 300 kbps, of each publisher they play;
    // each publisher gets the other's.
    let video = filled("video bitrate", r.video_kbps, r);
    let want = 300.0 * video_streams;
    assert!(
        (0.8 * want..1.2 * want).contains(&video.p50),
        "video arrives at the sent rate: {video:?}"
    );
    assert!(video.p50 > 0.0 && filled("audio bitrate", r.audio_kbps, r).p50 > 0.0);
    assert!(
        filled("video loss", r.video_loss_percent, r).max < 1.0,
        "{r}"
    );
    assert!(
        filled("audio loss", r.audio_loss_percent, r).max < 1.0,
        "{r}"
    );
    assert!(r.total_video_loss_percent < 1.0 && r.total_audio_loss_percent < 1.0);
    assert!(r.packets_sent > 0);

    let sfu = r.sfu.expect("CPU and memory of the watched process");
    assert!(sfu.cpu_percent > 0.0 && sfu.rss_mb > 0.0, "{sfu:?}");
    assert!(r.sfu_cpu_per_subscriber_percent.is_some_and(|c| c > 0.0));
    let own = r.loadtest.expect("CPU and memory of the load tester");
    assert!(own.cpu_percent > 0.0 && own.rss_mb > 0.0, "{own:?}");
    assert!(r.loadtest_kb_per_peer.is_some());
    assert!(r.others_cpu_percent.is_some());
    assert!(r.packets_received > 0 && r.loadtest_cpu_us_per_packet.is_some_and(|c| c > 0.0));

    // The per-second series covers the window, with media in every second of it.
    let window: Vec<_> = r
        .series
        .iter()
        .filter(|s| s.t_s > r.window_started_s + 1.0 && s.t_s <= r.window_started_s + r.window_s)
        .collect();
    assert!(window.len() >= 8, "{} samples in the window", window.len());
    for s in window {
        assert_eq!(s.peers_connected, 20, "{s:?}");
        assert!(s.received_kbps > 0.0 && s.peers_receiving == 20, "{s:?}");
        assert!(
            s.latency_p50_ms.is_some() && s.latency_p99_ms.is_some(),
            "{s:?}"
        );
        assert!(s.loss_percent.is_some_and(|l| l < 5.0), "{s:?}");
        assert!(
            s.sfu_cpu_percent.is_some() && s.loadtest_cpu_percent.is_some(),
            "{s:?}"
        );
    }
}

/// What light receivers must show besides: they measured most packets from the header
/// alone, decrypted about one in 64, the sample authenticated (but for a packet or two
/// between reading and decrypting when the window opened or closed), and every datagram read
/// short was one they could measure.
fn check_light(r: &Report) {
    let l = r
        .light
        .unwrap_or_else(|| panic!("light receivers report how they read:\n{r}"));
    assert!(l.authenticated as f64 >= 0.99 * l.sampled as f64, "{l:?}");
    // The node is ICE-lite: every light receiver runs its own transport, not webrtc-rs's.
    assert_eq!(l.own_transport, l.authenticated, "{l:?}");
    let share = l.sampled as f64 / (l.sampled + l.header_only) as f64;
    assert!(
        (0.01..0.023).contains(&share),
        "one packet in 64 decrypted: {l:?}"
    );
    assert_eq!(l.header_only + l.authenticated, r.packets_received, "{l:?}");
    // Reads are short but for the sample: STUN and RTCP must still fit whole.
    assert_eq!(l.unreadable, 0, "nothing read short was lost: {l:?}");
}

/// This project's WebSocket protocol: publishers receive each other, subscribers both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_peers_over_websocket_fill_the_report() {
    let r = run_against_node(TargetKind::Sfu, "short-ws", false).await;
    check(&r, 2.0);
    assert!(r.light.is_none(), "full receivers unless asked");
}

/// WHIP and WHEP: a WHEP session plays one publisher, so each receiver gets one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_peers_over_whip_and_whep_fill_the_report() {
    let r = run_against_node(TargetKind::Whip, "short-whip", false).await;
    check(&r, 1.0);
}

/// Light receivers over the WebSocket protocol (the node offers; they answer): the same
/// figures, latency from the sample.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_light_peers_over_websocket_fill_the_report() {
    let r = run_against_node(TargetKind::Sfu, "short-ws-light", true).await;
    check(&r, 2.0);
    check_light(&r);
}

/// LiveKit's client protocol against our node (publishers announce their simulcast tracks
/// before offering; the node offers to receivers), light receivers: the same figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_light_peers_over_livekit_protocol_fill_the_report() {
    let r = run_against_node(TargetKind::LiveKit, "short-livekit", true).await;
    check(&r, 2.0);
    check_light(&r);
}

/// Light receivers over WHEP (they offer; the server answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_light_peers_over_whip_and_whep_fill_the_report() {
    let r = run_against_node(TargetKind::Whip, "short-whip-light", true).await;
    check(&r, 1.0);
    check_light(&r);
}

/// A panic while the worker handles one room closes that room (its participants are told and
/// its media stops) and another room on the same worker keeps flowing through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_one_room_leaves_another_on_the_same_worker_flowing() {
    use sfu_node::media::Command;
    let mut config = Config::loopback();
    config.rtc.workers = 1;
    let node = Server::start(config).await.expect("node starts");
    let url = format!("http://{}", node.http_addr);
    let room = |name: &str| {
        Scenario::from_toml(&format!(
            r#"
room_prefix = "{name}"
light_receivers = true
publishers = 1
subscribers = 4
join_rate = 40
warmup_secs = 2
duration_secs = 8

[target]
kind = "sfu"
url = "{url}"

[video]
bitrate_kbps = 300
fps = 15
keyframe_interval_secs = 2

[audio]
bitrate_kbps = 32
"#
        ))
        .expect("the test scenario is valid")
    };
    let watch = Watch {
        pids: vec![std::process::id()],
        progress: false,
    };
    let (failing, healthy) = (room("doomed"), room("healthy"));
    let (w1, w2) = (watch.clone(), watch.clone());
    let doomed = tokio::spawn(async move { run(&failing, &w1).await });
    let kept = tokio::spawn(async move { run(&healthy, &w2).await });
    // Inside both measurement windows (joins take ~0.2 s, then 2 s of warm-up).
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    node.media
        .send_to(
            0,
            Command::InjectPanic {
                room: "doomed".into(),
            },
        )
        .expect("the worker takes commands");
    let (doomed, kept) = (doomed.await.unwrap().unwrap(), kept.await.unwrap().unwrap());
    println!("{doomed}\n{kept}");

    let metrics = node.metrics.encode();
    assert!(
        metrics.contains("sfu_room_panics_total 1"),
        "the panic was caught and counted: {metrics}"
    );
    // The room that panicked was closed on the worker: nobody of it is left there.
    let (tx, rx) = tokio::sync::oneshot::channel();
    node.media
        .send_to(
            0,
            Command::ListParticipants {
                room: "doomed".into(),
                after: String::new(),
                limit: 100,
                reply: tx,
            },
        )
        .unwrap();
    assert!(rx.await.unwrap().is_empty(), "the failed room was closed");
    // Its participants were told why their sessions ended; the other room's media went on
    // all the way through its window.
    assert!(
        doomed.peers_failed == 5
            && doomed
                .failures
                .iter()
                .any(|f| f.contains("the room failed on this node")),
        "the failed room's participants were told:\n{doomed}"
    );
    let kbps = |r: &Report| r.video_kbps.as_ref().map_or(0.0, |p| p.p50);
    assert_eq!(kept.receivers_complete, 4, "{kept}");
    assert_eq!(kept.receivers_under_1pct_loss, 4, "{kept}");
    assert!(kbps(&kept) > 250.0, "the other room kept flowing:\n{kept}");
    assert!(
        node.media.stopped_workers().is_empty(),
        "the worker is still running"
    );
    node.stop().await;
}
