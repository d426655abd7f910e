//! Loss repair end to end: a Chromium publisher whose packets to the node pass a lossy UDP
//! proxy in the test (every 100th datagram lost), its camera recorded. The node NACKs the
//! publisher, whose retransmissions (RTX of a simulcast layer) are put back into the layer
//! (`media::repair`), and the recording's jitter buffer waits for them: most frames the
//! publisher encoded are in the file (about 30 % were before, each loss costing the picture
//! until a keyframe), which decodes without an error. Chromium's own counters say it was
//! NACKed and sent packets again; the node's count the same, and the recording's requests
//! (it is the track's only subscriber).

use super::common::media::run_for;
use super::common::recording::{RecordingApi, assert_decodes, first_stream};
use super::common::shaper::Shaper;
use super::common::{Browser, browser_lock};
use sfu_node::{Config, Server};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// What the publishing page's Chromium says it did: frames encoded (its largest layer), NACKs
/// received and packets sent again.
fn publisher(sample: &serde_json::Value) -> [f64; 3] {
    let s = &sample["pages"]["pub"]["stats"];
    let frames = s["layerFramesEncoded"].as_object().map_or(0.0, |o| {
        o.values().filter_map(|v| v.as_f64()).fold(0.0, f64::max)
    });
    let n = |k: &str| s[k].as_f64().unwrap_or(0.0);
    [frames, n("nackCount"), n("retransmittedPacketsSent")]
}

const LOSS_EVERY: u64 = 100;

/// A counter of the node's Prometheus metrics (0 when absent).
async fn metric(base: &str, name: &str) -> f64 {
    let text = super::common::http()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_of_a_lossy_publisher_decodes_and_asks_for_what_it_lost() {
    let _guard = browser_lock().await;
    let dir = std::env::temp_dir().join(format!("sfu-recloss-{}", rand::random::<u32>()));
    // The node binds 127.0.0.1 and announces 127.0.0.2, where the proxy listens.
    let port = super::common::process::free_port();
    let mut config = Config::loopback();
    config.rtc.workers = 1;
    config.rtc.udp_port = port;
    config.rtc.bind_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    config.rtc.node_ips = vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))];
    config.recording.dir = dir.clone();
    let node = Server::start(config).await.expect("node starts");
    let proxy = Shaper::start(
        SocketAddr::from(([127, 0, 0, 2], port)),
        SocketAddr::from(([127, 0, 0, 1], port)),
        1_000_000_000,
    )
    .await;
    let base = format!("http://{}", node.http_addr);
    let room = "rec-loss";
    let mut browser = Browser::launch(&[(
        "pub",
        format!("{base}/demo.html?room={room}&identity=alice&autojoin=1&publish=1"),
    )])
    .await;
    let api = RecordingApi::new(&base);
    let video = api.wait_track(room, "video").await;
    run_for(&mut [&mut browser], Duration::from_secs(2)).await;
    let (status, info) = api.start_track(room, &video).await;
    assert_eq!(status, 201, "{info}");
    let start = publisher(&browser.latest().await);
    let started = std::time::Instant::now();
    run_for(&mut [&mut browser], Duration::from_secs(1)).await;
    let (nacks, keyframes, asked, repaired) = (
        metric(&base, "sfu_nacks_received").await,
        metric(&base, "sfu_keyframe_requests_received").await,
        metric(&base, "sfu_publisher_nacked_packets").await,
        metric(&base, "sfu_publisher_retransmissions_total").await,
    );
    // 1 % of the publisher's datagrams lost from now on.
    proxy.set_drop_up_every(LOSS_EVERY);
    run_for(&mut [&mut browser], Duration::from_secs(8)).await;
    proxy.set_drop_up_every(0);
    let id = info["id"].as_str().unwrap();
    let end = publisher(&browser.latest().await);
    let elapsed = started.elapsed().as_secs_f64();
    let done = api.stop(id).await;
    // The counters are summed from the workers about once a second.
    run_for(&mut [&mut browser], Duration::from_secs(2)).await;
    let nacks = metric(&base, "sfu_nacks_received").await - nacks;
    let keyframes = metric(&base, "sfu_keyframe_requests_received").await - keyframes;
    let asked = metric(&base, "sfu_publisher_nacked_packets").await - asked;
    let repaired = metric(&base, "sfu_publisher_retransmissions_total").await - repaired;
    browser.stop().await;
    eprintln!(
        "lossy publisher: {nacks} NACKed packets and {keyframes} keyframe requests from the recording; \
         {asked} packets NACKed to the publisher, {repaired} retransmitted: {done}"
    );
    assert_eq!(done["state"], "complete", "{done}");
    let file = Path::new(done["file"].as_str().unwrap());
    let (codec, duration) = first_stream(file);
    assert_eq!(codec, "vp8", "{done}");
    assert!(duration > 6.0, "{duration} s recorded");
    assert_decodes(file, "the recording of a lossy publisher");
    // Each decoded frame's time: the picture goes on to the end, with most of the frames the
    // publisher encoded.
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(["-show_entries", "frame=pts_time", "-of", "csv=p=0"])
        .arg(file)
        .output()
        .unwrap();
    let times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect();
    let last = times.iter().copied().fold(0.0, f64::max);
    let [encoded, nacked, resent] = [0, 1, 2].map(|i| end[i] - start[i]);
    // The frames the camera's layer had over the file's duration, at the rate Chromium encoded.
    let expected = encoded / elapsed * duration;
    let kept = times.len() as f64 / expected;
    eprintln!(
        "{} frames decoded of about {expected:.0} encoded ({:.0} %), the last at {last:.2} s of \
         {duration:.2} s; Chromium received {nacked} NACKs and sent {resent} packets again",
        times.len(),
        kept * 100.0
    );
    assert!(
        kept > 0.8,
        "most frames are kept: {} of about {expected:.0}",
        times.len()
    );
    assert!(
        last > duration - 2.5,
        "the picture goes on to the end: the last frame at {last:.2} s of {duration:.2} s"
    );
    assert!(
        nacks > 0.0 && keyframes > 0.0,
        "the recording asked for what it lost: {nacks} NACKed, {keyframes} keyframe requests"
    );
    assert!(
        nacked > 0.0 && resent > 0.0 && asked > 0.0 && repaired > 0.0,
        "the node asked the publisher for what it lost, and got it: Chromium received {nacked} \
         NACKs and resent {resent} packets; the node NACKed {asked}, {repaired} came back"
    );
    node.stop().await;
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
