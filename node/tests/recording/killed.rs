//! A node killed with SIGKILL mid-recording leaves a file that ffmpeg decodes.

use super::common;
use super::common::process::{NodeProcess, free_port};
use super::common::recording::{RecordingApi, decode, first_stream};
use super::common::{Browser, browser_lock};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_recording_leaves_a_file_that_plays() {
    let _guard = browser_lock().await;
    let _ = common::tracing_subscriber_init();
    let etcd = sfu_control::testing::Etcd::start().expect("etcd starts");
    let dir = std::env::temp_dir().join(format!("sfu-reckill-{}", rand::random::<u32>()));
    sfu_relay::certs::ensure_dev_certs(&dir.join("certs"), &["k1".to_owned()]).unwrap();
    let recordings = dir.join("recordings");
    let mut node = NodeProcess::start(
        "k1",
        &etcd.endpoint,
        &dir.join("certs"),
        &dir,
        free_port(),
        None,
        &["--recordings-dir", recordings.to_str().unwrap()],
    );
    node.wait_ready().await;
    let room = "rec-kill";
    let mut browser = Browser::launch(&[(
        "pub",
        format!(
            "{}/demo.html?room={room}&identity=bob&autojoin=1&publish=1",
            node.url()
        ),
    )])
    .await;
    // The camera's track, from the node's own admin API.
    let api = RecordingApi::new(&node.url());
    let video = api.wait_track(room, "video").await;
    let (status, info) = api.start_track(room, &video).await;
    assert_eq!(status, 201, "{info}");
    let _ = browser.until(Duration::from_secs(8), |_| false).await;
    node.signal("KILL");
    assert!(node.exited_within(Duration::from_secs(5)).await.is_some());
    browser.stop().await;

    let file = Path::new(info["file"].as_str().unwrap());
    let (codec, _) = first_stream(file);
    assert_eq!(codec, "vp8", "{info}");
    let (ok, errors) = decode(file);
    eprintln!("decoding the killed node's file: ok {ok}, errors: {errors:?}");
    assert!(ok, "ffmpeg decodes what was written: {errors}");
    // Frames decoded: most of the 8 s before the kill.
    let frames = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(file)
        .output()
        .unwrap();
    let frames: u64 = String::from_utf8_lossy(&frames.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(frames >= 100, "{frames} frames decoded from 8 s at ~30 fps");
    let _ = std::fs::remove_dir_all(&dir);
}
