//! Track recordings end to end: a real Chromium publisher, recordings started and stopped
//! through the control plane's gRPC API (and by a drain) on the node that is not the
//! publisher's (so the tracks come over a relay link), files checked with ffprobe and decoded
//! by ffmpeg; a node killed mid-recording leaves a file ffmpeg decodes.

mod common;

use axum::extract::State;
use axum::http::StatusCode;
use common::control::{Cluster, admin, authed};
use common::media::measure;
use common::process::{NodeProcess, free_port};
use common::{Browser, browser_lock};
use sfu_proto::control as pb;
use sfu_proto::control::node_service_client::NodeServiceClient;
use sfu_proto::control::recording_service_client::RecordingServiceClient;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the publisher is recorded.
const RECORDED: Duration = Duration::from_secs(20);

/// `(codec name, duration in seconds)` of a file's first stream, as ffprobe reads it.
fn probe(file: &Path) -> (String, f64) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-print_format", "json"])
        .args(["-show_entries", "stream=codec_name:format=duration"])
        .arg(file)
        .output()
        .expect("ffprobe (Debian's ffmpeg) is installed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let codec = v["streams"][0]["codec_name"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let duration = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    (codec, duration)
}

/// What ffmpeg says (at level error) while decoding the whole file, and whether it succeeded.
///
/// An MP4 file is decoded with the demuxer's time base for ffmpeg's null output
/// (`-enc_time_base -1`), and its own frame times are checked to increase instead: MP4 cannot
/// say how fine a reader's ticks must be (Matroska's DefaultDuration can, see
/// recording/pipeline.rs), and by default ffmpeg ticks at a rate it guesses from the first
/// frames (20 fps for a 20 fps camera), so a frame that came early on a busy machine shares a
/// tick with the one before and the null output calls that "non monotonically increasing dts"
/// although the file's times increase. Seen in CI under load, never with a steady camera.
fn decode(file: &Path) -> (bool, String) {
    let mp4 = file.extension().is_some_and(|e| e == "mp4");
    let mut ffmpeg = Command::new("ffmpeg");
    ffmpeg.args(["-nostdin", "-v", "error", "-i"]).arg(file);
    if mp4 {
        ffmpeg.args(["-enc_time_base", "-1"]);
    }
    let out = ffmpeg
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg is installed");
    let mut errors = String::from_utf8_lossy(&out.stderr).into_owned();
    if mp4 {
        let times = Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
            .args(["packet=dts", "-of", "csv=p=0"])
            .arg(file)
            .output()
            .expect("ffprobe is installed");
        let dts: Vec<i64> = String::from_utf8_lossy(&times.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if dts.len() < 2 || dts.windows(2).any(|w| w[1] <= w[0]) {
            errors.push_str(&format!("video frame times do not increase: {dts:?}"));
        }
    }
    (out.status.success(), errors)
}

/// The room's published tracks as the registry lists them, once there are `n`.
async fn tracks(cluster: &Cluster, room: &str, n: usize) -> Vec<sfu_control::TrackRecord> {
    for _ in 0..300 {
        let (_, tracks) = cluster.api.membership.room(room);
        if tracks.len() >= n {
            return tracks;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{room} did not get {n} tracks");
}

/// Starts recording `track` through a node's admin API: the status and the answer.
async fn start_recording(
    http: &reqwest::Client,
    base: &str,
    room: &str,
    track: &str,
) -> (u16, serde_json::Value) {
    let r = http
        .post(format!("{base}/admin/rooms/{room}/recordings"))
        .bearer_auth(admin())
        .json(&serde_json::json!({ "track": track }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

async fn keep(State(r): State<Arc<Mutex<Vec<serde_json::Value>>>>, body: String) -> StatusCode {
    if let Ok(v) = serde_json::from_str(&body) {
        r.lock().unwrap().push(v);
    }
    StatusCode::OK
}

/// A minimum of free space no disk has (MB): the node's disk counts as full.
const FULL_MB: u64 = 1 << 40;

/// A recording on cp1 (its minimum lowered to start it) whose disk then counts as full (the
/// minimum raised above the free space, as a disk filling up would cross it): it stops by
/// itself, failed with "disk full", and its file is finalised and decodes. The recordings on
/// cp2 go on (the caller checks them whole). Returns its id.
async fn disk_fills_up(
    cluster: &Cluster,
    browser: &mut Browser,
    room: &str,
    published: &[sfu_control::TrackRecord],
) -> String {
    let http = common::http();
    let cp1 = cluster.nodes[0].media.recordings();
    cp1.set_min_free_mb(0);
    let video = published.iter().find(|t| t.kind == "video").unwrap();
    let (status, info) = start_recording(&http, &cluster.url(0), room, &video.track).await;
    assert_eq!(status, 201, "{info}");
    let id = info["id"].as_str().unwrap().to_owned();
    let _ = browser.until(Duration::from_secs(4), |_| false).await;
    cp1.set_min_free_mb(FULL_MB);
    let mut r = None;
    for _ in 0..50 {
        r = cp1.get(&id).filter(|r| r.state.finished());
        if r.is_some() {
            break;
        }
        let _ = browser.until(Duration::from_millis(100), |_| false).await;
    }
    let r = r.expect("a recording on a full disk stops within 5 s");
    assert_eq!(
        r.state,
        sfu_node::recording::RecordingState::Failed,
        "{r:?}"
    );
    assert!(r.error.starts_with("disk full: "), "{r:?}");
    let file = Path::new(&r.file);
    let (codec, duration) = probe(file);
    eprintln!("stopped by a full disk: {codec} {duration:.2} s: {r:?}");
    assert_eq!(codec, "vp8", "{r:?}");
    assert!(
        duration > 3.0,
        "the file has what was recorded: {duration:.2} s"
    );
    let (ok, errors) = decode(file);
    assert!(
        ok && errors.is_empty(),
        "the file is finalised and decodes: {errors}"
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_recorded_on_another_node_play_back_whole() {
    let _guard = browser_lock().await;
    let dir = std::env::temp_dir().join(format!("sfu-rec-{}", rand::random::<u32>()));
    let hooks = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(keep))
        .with_state(hooks.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let s3 = moto("recordings").await;
    let cluster = Cluster::start_with(2, |i, c| {
        c.recording.dir = dir.clone();
        c.webhook.urls = vec![hook.clone()];
        if i == 1 {
            // cp2 uploads its files.
            c.recording.s3 = Some(s3_config(&s3, "cluster/"));
        }
        if i == 0 {
            // cp1's disk is "full": it must keep more free space than any disk has.
            c.recording.min_free_mb = FULL_MB;
        }
    })
    .await;
    let room = "rec-e2e";
    let mut browser = Browser::launch(&[(
        "pub",
        format!(
            "{}/demo.html?room={room}&identity=alice&autojoin=1&publish=1",
            cluster.url(0)
        ),
    )])
    .await;
    let published = tracks(&cluster, room, 2).await;
    // Media flowing, and the recording node's view of the registry caught up.
    let _ = browser.until(Duration::from_secs(2), |_| false).await;
    let mut api = RecordingServiceClient::connect(cluster.grpc())
        .await
        .unwrap();

    // Bad input: what is unknown is named, and nothing is recorded.
    let start = |room: &str, track: &str| pb::StartRecordingRequest {
        room: room.into(),
        track: track.into(),
        node: "cp2".into(),
        ..Default::default()
    };
    let e = api
        .start_recording(authed(&admin(), start(room, "TR_nosuchtrack")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("TR_nosuchtrack"), "{e:?}");
    let e = api
        .start_recording(authed(&admin(), start("no-such-room", "TR_x")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("no-such-room"), "{e:?}");
    // A full disk is refused before anything starts: gRPC and the node's own API.
    let e = api
        .start_recording(authed(
            &admin(),
            pb::StartRecordingRequest {
                node: "cp1".into(),
                ..start(room, &published[0].track)
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("disk full"), "{e:?}");
    let http = common::http();
    let (status, problem) =
        start_recording(&http, &cluster.url(0), room, &published[0].track).await;
    assert_eq!(status, 507, "{problem}");
    let detail = problem["detail"].as_str().unwrap_or("");
    assert!(
        detail.starts_with("disk full: ") && detail.contains("recording.min_free_mb"),
        "{problem}"
    );
    assert!(
        cluster.nodes[0].media.recordings().list().is_empty(),
        "nothing was started"
    );

    // One recording per track, on cp2 (the publisher is on cp1).
    let mut ids = Vec::new();
    for t in &published {
        let r = api
            .start_recording(authed(&admin(), start(room, &t.track)))
            .await
            .expect("recording starts")
            .into_inner();
        assert_eq!(
            (r.node.as_str(), r.state.as_str()),
            ("cp2", "active"),
            "{r:?}"
        );
        ids.push((r.id, t.kind.clone()));
    }
    let started = Instant::now();
    let listed = api
        .list_recordings(authed(&admin(), pb::ListRecordingsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .recordings;
    assert_eq!(listed.len(), 2, "{listed:?}");
    // The browser keeps reporting while the recordings run (its output must be read).
    let full = disk_fills_up(&cluster, &mut browser, room, &published).await;
    let _ = browser
        .until(RECORDED.saturating_sub(started.elapsed()), |_| false)
        .await;
    // The first recording stopped through the API; the second by draining its node, which
    // stops its recordings cleanly before anything else.
    let mut done = Vec::new();
    let (id, kind) = &ids[0];
    let r = api
        .stop_recording(authed(
            &admin(),
            pb::StopRecordingRequest { id: id.clone() },
        ))
        .await
        .expect("recording stops")
        .into_inner();
    // Each recording's true length ends when it was stopped (a drain on a loaded machine
    // takes a second or more, which the first one must not be measured against).
    done.push((r, kind.clone(), started.elapsed().as_secs_f64()));
    let mut nodes = NodeServiceClient::connect(cluster.grpc()).await.unwrap();
    nodes
        .drain_node(authed(
            &admin(),
            pb::DrainNodeRequest { node: "cp2".into() },
        ))
        .await
        .expect("cp2 drains");
    let (id, kind) = &ids[1];
    let mut drained = None;
    for _ in 0..100 {
        let all = api
            .list_recordings(authed(&admin(), pb::ListRecordingsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .recordings;
        drained = all
            .into_iter()
            .find(|r| r.id == *id && r.state == "complete");
        if drained.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.push((
        drained.expect("the drain completes the recording"),
        kind.clone(),
        started.elapsed().as_secs_f64(),
    ));
    browser.stop().await;

    for (r, kind, truth) in &done {
        let truth = *truth;
        assert_eq!(r.state, "complete", "{r:?}");
        let file = Path::new(&r.file);
        assert!(file.starts_with(&dir), "{r:?}");
        assert_eq!(
            std::fs::metadata(file).unwrap().len(),
            r.size_bytes,
            "{r:?}"
        );
        let (codec, duration) = probe(file);
        eprintln!("{kind}: {duration:.2} s in the file, {truth:.2} s recorded: {r:?}");
        let expected = if kind == "video" { "vp8" } else { "opus" };
        assert_eq!(codec, expected, "{r:?}");
        assert!(
            (duration - truth).abs() < 1.0,
            "{kind}: ffprobe says {duration:.2} s, recorded for {truth:.2} s: {r:?}"
        );
        assert!(
            (r.duration_ms as f64 / 1000.0 - duration).abs() < 1.0,
            "the API's duration matches the file's: {r:?}, {duration:.2}"
        );
        let (ok, errors) = decode(file);
        assert!(ok && errors.is_empty(), "{kind} decodes cleanly: {errors}");
    }

    // cp2's files are uploaded: gRPC lists each object's URL.
    let mut urls = std::collections::HashMap::new();
    for _ in 0..100 {
        let all = api
            .list_recordings(authed(&admin(), pb::ListRecordingsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .recordings;
        urls = all
            .into_iter()
            .filter(|r| r.upload == "uploaded" && done.iter().any(|(d, _, _)| d.id == r.id))
            .map(|r| (r.id, r.url))
            .collect();
        if urls.len() == done.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(urls.len(), done.len(), "both files uploaded: {urls:?}");
    for (r, _, _) in &done {
        let name = Path::new(&r.file).file_name().unwrap().to_str().unwrap();
        assert_eq!(
            urls[&r.id],
            format!("{}/recordings/cluster/{name}", s3.endpoint)
        );
    }

    // The webhooks: started and ended for each, the end with the file, duration, size and
    // (cp2's, sent once uploaded) the object's URL.
    let mut ended = Vec::new();
    for _ in 0..50 {
        ended = hooks
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["event"] == "egress_ended")
            .cloned()
            .collect();
        if ended.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // cp2's two, and the one the full disk stopped.
    assert_eq!(ended.len(), 3, "{:?}", hooks.lock().unwrap());
    for (r, _, _) in &done {
        let e = ended
            .iter()
            .find(|e| e["egress"]["id"] == r.id.as_str())
            .unwrap_or_else(|| panic!("no egress_ended for {}: {ended:?}", r.id));
        assert_eq!(e["egress"]["file"], r.file.as_str(), "{e}");
        assert_eq!(e["egress"]["size_bytes"], r.size_bytes, "{e}");
        assert!(e["egress"]["duration_ms"].as_u64().unwrap() > 15_000, "{e}");
        assert_eq!(e["egress"]["url"], urls[&r.id].as_str(), "{e}");
    }
    let started_hooks = hooks
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["event"] == "egress_started")
        .count();
    assert_eq!(started_hooks, 3);
    let ended_full = hooks
        .lock()
        .unwrap()
        .iter()
        .any(|v| v["event"] == "egress_ended" && v["egress"]["id"] == full.as_str());
    assert!(
        ended_full,
        "egress_ended for the recording the full disk stopped"
    );
    cluster.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

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
    let http = common::http();
    let mut video = String::new();
    for _ in 0..300 {
        let listed: serde_json::Value = http
            .get(format!("{}/admin/rooms/{room}/participants", node.url()))
            .bearer_auth(admin())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        let found = listed[0]["tracks"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["kind"] == "video"))
            .and_then(|t| t["sid"].as_str());
        if let Some(sid) = found {
            video = sid.to_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!video.is_empty(), "the publisher's video is listed");
    // The node finds the track in the registry's directory, written moments after the roster
    // lists it.
    let mut answer = (0, serde_json::Value::Null);
    for _ in 0..50 {
        answer = start_recording(&http, &node.url(), room, &video).await;
        if answer.0 != 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, info) = answer;
    assert_eq!(status, 201, "{info}");
    let _ = browser.until(Duration::from_secs(8), |_| false).await;
    node.signal("KILL");
    assert!(node.exited_within(Duration::from_secs(5)).await.is_some());
    browser.stop().await;

    let file = Path::new(info["file"].as_str().unwrap());
    let (codec, _) = probe(file);
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

/// What a track recording costs the node against a subscriber of the same tracks (see
/// BENCHMARKS.md). `cargo test --release -p sfu-node --test recording -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn recording_cost() {
    const N: usize = 4;
    const WINDOW: Duration = Duration::from_secs(15);
    let _guard = browser_lock().await;
    let _ = common::tracing_subscriber_init();
    let dir = std::env::temp_dir().join(format!("sfu-recbench-{}", rand::random::<u32>()));
    let mut config = sfu_node::Config::loopback();
    config.recording.dir = dir.clone();
    let node = sfu_node::Server::start(config).await.unwrap();
    let base = format!("http://{}", node.http_addr);
    let room = "rec-bench";
    let mut browser = Browser::launch(&[(
        "pub",
        format!("{base}/demo.html?room={room}&identity=alice&autojoin=1&publish=1"),
    )])
    .await;
    let http = common::http();
    let mut tracks: Vec<String> = Vec::new();
    for _ in 0..300 {
        let listed: serde_json::Value = http
            .get(format!("{base}/admin/rooms/{room}/participants"))
            .bearer_auth(admin())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        tracks = listed[0]["tracks"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .filter_map(|t| Some(t["sid"].as_str()?.to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        if tracks.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(tracks.len(), 2);
    let _ = browser.until(Duration::from_secs(5), |_| false).await;
    let (idle, idle_rss) = measure(&mut browser, WINDOW).await;

    // N recordings of the publisher's audio and video.
    let mut ids = Vec::new();
    for _ in 0..N {
        for t in &tracks {
            let r: serde_json::Value = http
                .post(format!("{base}/admin/rooms/{room}/recordings"))
                .bearer_auth(admin())
                .json(&serde_json::json!({ "track": t }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            ids.push(r["id"].as_str().unwrap().to_owned());
        }
    }
    let _ = browser.until(Duration::from_secs(3), |_| false).await;
    let (recording, recording_rss) = measure(&mut browser, WINDOW).await;
    let mut bytes = 0;
    let mut secs = 0.0;
    for id in &ids {
        let r: serde_json::Value = http
            .delete(format!("{base}/admin/recordings/{id}"))
            .bearer_auth(admin())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        bytes += r["size_bytes"].as_u64().unwrap();
        // The average duration of the 2N recordings.
        secs += r["duration_ms"].as_u64().unwrap() as f64 / 1000.0 / (2 * N) as f64;
    }

    // N subscribers of the same two tracks (Chromium pages).
    for i in 0..N {
        browser
            .open(
                &format!("sub{i}"),
                &format!("{base}/demo.html?room={room}&identity=v{i}&autojoin=1&publish=0"),
            )
            .await;
    }
    let _ = browser.until(Duration::from_secs(8), |_| false).await;
    let (subscribed, subscribed_rss) = measure(&mut browser, WINDOW).await;
    browser.stop().await;
    println!(
        "publisher only: {idle:.1} % of a core, RSS {} MB",
        idle_rss >> 20
    );
    println!(
        "{N} recordings of audio + video: {recording:.1} % ({:.2} % each), RSS {} MB (+{:.1} MB each); {:.0} kbit/s written per recording",
        (recording - idle) / N as f64,
        recording_rss >> 20,
        (recording_rss as f64 - idle_rss as f64) / N as f64 / 1e6,
        bytes as f64 * 8.0 / secs / 1000.0 / N as f64,
    );
    println!(
        "{N} subscribers of audio + video: {subscribed:.1} % ({:.2} % each), RSS {} MB",
        (subscribed - idle) / N as f64,
        subscribed_rss >> 20,
    );
    node.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A real S3-compatible server on a loopback port: moto (PyPI's `moto[s3]` and its server,
/// which test.sh installs in `target/s3-venv`) checking request signatures, with one bucket
/// and one user allowed to use it. Stopped when dropped.
struct Moto {
    child: std::process::Child,
    endpoint: String,
    access_key: String,
    secret_key: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn venv(bin: &str) -> String {
    let path = format!("{}/../target/s3-venv/bin/{bin}", env!("CARGO_MANIFEST_DIR"));
    assert!(
        Path::new(&path).exists(),
        "moto is missing: run ./test.sh (it makes target/s3-venv)"
    );
    path
}

/// `application/x-www-form-urlencoded` (reqwest is built without its `form` feature).
fn form_body(form: &[(&str, &str)]) -> String {
    let encode = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let pairs: Vec<String> = form
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    pairs.join("&")
}

/// The text of `<tag>` in an XML answer.
fn xml_field(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    xml.split(&open)
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_else(|| panic!("no {tag} in {xml}"))
        .to_owned()
}

async fn moto(bucket: &str) -> Moto {
    let port = free_port();
    // Requests are authenticated (signatures checked against IAM's keys) after the first
    // four, which set it up.
    let child = Command::new(venv("moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "4")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moto_server starts");
    let mut m = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        access_key: String::new(),
        secret_key: String::new(),
    };
    let http = common::http();
    let mut up = false;
    for _ in 0..100 {
        if let Ok(r) = http.put(format!("{}/{bucket}", m.endpoint)).send().await {
            assert!(r.status().is_success(), "{r:?}");
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "moto did not answer on {}", m.endpoint);
    // IAM requests go to the same server; the (unchecked) scope says which service.
    let iam = |form: &[(&str, &str)]| {
        let mut form = form.to_vec();
        form.push(("Version", "2010-05-08"));
        http.post(&m.endpoint)
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
            )
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&form))
            .send()
    };
    let ok = |r: reqwest::Response| {
        assert!(r.status().is_success(), "{r:?}");
        r.text()
    };
    ok(iam(&[("Action", "CreateUser"), ("UserName", "rec")])
        .await
        .unwrap())
    .await
    .unwrap();
    let key = ok(iam(&[("Action", "CreateAccessKey"), ("UserName", "rec")])
        .await
        .unwrap())
    .await
    .unwrap();
    m.access_key = xml_field(&key, "AccessKeyId");
    m.secret_key = xml_field(&key, "SecretAccessKey");
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
    ok(iam(&[
        ("Action", "PutUserPolicy"),
        ("UserName", "rec"),
        ("PolicyName", "recordings"),
        ("PolicyDocument", policy),
    ])
    .await
    .unwrap())
    .await
    .unwrap();
    m
}

/// A node's `[recording.s3]` for moto's bucket `recordings`.
fn s3_config(s3: &Moto, prefix: &str) -> sfu_node::recording::upload::S3Config {
    sfu_node::recording::upload::S3Config {
        endpoint: s3.endpoint.clone(),
        bucket: "recordings".into(),
        region: "us-east-1".into(),
        access_key: s3.access_key.clone(),
        secret_key: s3.secret_key.clone(),
        prefix: prefix.into(),
    }
}

/// An object of moto's, read with boto3 (AWS's own client, in moto's venv).
fn s3_object(s3: &Moto, bucket: &str, key: &str) -> Vec<u8> {
    let script = "import sys, boto3\n\
        c = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1',\n\
            aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])\n\
        sys.stdout.buffer.write(c.get_object(Bucket=sys.argv[4], Key=sys.argv[5])['Body'].read())\n";
    let out = Command::new(venv("python"))
        .args(["-c", script])
        .args([&s3.endpoint, &s3.access_key, &s3.secret_key, bucket, key])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// H.264 (a WHIP publisher) goes to MP4, and the file is uploaded to S3-compatible storage
/// (moto): the listing and the `egress_ended` webhook say the object's URL, and the object's
/// bytes are the file's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_is_recorded_to_mp4() {
    let _guard = browser_lock().await;
    let _ = common::tracing_subscriber_init();
    let dir = std::env::temp_dir().join(format!("sfu-rec264-{}", rand::random::<u32>()));
    let s3 = moto("recordings").await;
    let hooks = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(keep))
        .with_state(hooks.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut config = sfu_node::Config::loopback();
    config.recording.dir = dir.clone();
    config.webhook.urls = vec![hook];
    config.recording.s3 = Some(s3_config(&s3, "e2e/"));
    let node = sfu_node::Server::start(config).await.unwrap();
    let base = format!("http://{}", node.http_addr);
    let room = "rec-h264";
    let mut browser = Browser::launch(&[(
        "whip",
        format!("{base}/whip.html?room={room}&identity=obs&codec=h264"),
    )])
    .await;
    let http = common::http();
    let mut answer = (0, serde_json::Value::Null);
    for _ in 0..300 {
        let listed: serde_json::Value = http
            .get(format!("{base}/admin/rooms/{room}/participants"))
            .bearer_auth(admin())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        let video = listed[0]["tracks"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["kind"] == "video"))
            .and_then(|t| t["sid"].as_str())
            .map(str::to_owned);
        if let Some(video) = video {
            answer = start_recording(&http, &base, room, &video).await;
            if answer.0 != 404 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, info) = answer;
    assert_eq!(status, 201, "{info}");
    let _ = browser.until(Duration::from_secs(6), |_| false).await;
    let id = info["id"].as_str().unwrap();
    let done: serde_json::Value = http
        .delete(format!("{base}/admin/recordings/{id}"))
        .bearer_auth(admin())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    browser.stop().await;
    assert_eq!(done["state"], "complete", "{done}");
    let file = Path::new(done["file"].as_str().unwrap());
    assert_eq!(file.extension().unwrap(), "mp4");
    let (codec, duration) = probe(file);
    eprintln!("h264: {codec} {duration:.2} s: {done}");
    assert_eq!(codec, "h264", "{done}");
    let (ok, errors) = decode(file);
    assert!(ok && errors.is_empty(), "{errors}");

    // Uploaded once finalised: the listing says where, and the object is the file.
    let mut listed = serde_json::Value::Null;
    for _ in 0..100 {
        listed = http
            .get(format!("{base}/admin/recordings/{id}"))
            .bearer_auth(admin())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if listed["upload"] != "uploading" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed["upload"], "uploaded", "{listed}");
    let url = listed["url"].as_str().unwrap();
    let name = file.file_name().unwrap().to_str().unwrap();
    assert_eq!(url, format!("{}/recordings/e2e/{name}", s3.endpoint));
    // moto checks signatures: a PUT signed with a wrong secret is refused.
    let forged = http
        .put(format!("{url}.forged"))
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/20260101/us-east-1/s3/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature={}",
                s3.access_key,
                "0".repeat(64)
            ),
        )
        .header("x-amz-date", "20260101T000000Z")
        .body("forged")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403, "{forged:?}");
    let object = s3_object(&s3, "recordings", &format!("e2e/{name}"));
    let local = std::fs::read(file).unwrap();
    assert_eq!(
        object.len(),
        local.len(),
        "the object is as long as the file"
    );
    assert!(object[..] == local[..], "the object's bytes are the file's");
    let mut ended = None;
    for _ in 0..50 {
        ended = hooks
            .lock()
            .unwrap()
            .iter()
            .find(|v| v["event"] == "egress_ended")
            .cloned();
        if ended.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ended = ended.expect("egress_ended is sent once the upload is over");
    assert_eq!(ended["egress"]["url"], url, "{ended}");
    node.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
