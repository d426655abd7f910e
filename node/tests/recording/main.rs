//! Track recordings end to end: a real Chromium publisher, recordings started and stopped
//! through the control plane's gRPC API (and by a drain) on the node that is not the
//! publisher's (so the tracks come over a relay link), files checked with ffprobe and decoded
//! by ffmpeg (this file); a node killed mid-recording leaves a file ffmpeg decodes
//! (`killed`); H.264 to MP4 and the upload to S3-compatible storage (`h264`, `moto`); a
//! lossy publisher's recording (`loss`); what a recording costs (`cost`, ignored).

#[path = "../common/mod.rs"]
mod common;
mod cost;
mod h264;
mod killed;
mod loss;
mod moto;

use common::control::{Cluster, admin, authed};
use common::recording::{RecordingApi, assert_decodes, first_stream, webhooks};
use common::{Browser, browser_lock};
use moto::{moto, s3_config};
use sfu_proto::control as pb;
use sfu_proto::control::node_service_client::NodeServiceClient;
use sfu_proto::control::recording_service_client::RecordingServiceClient;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the publisher is recorded.
const RECORDED: Duration = Duration::from_secs(20);

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
    let cp1 = cluster.nodes[0].media.recordings();
    cp1.set_min_free_mb(0);
    let video = published.iter().find(|t| t.kind == "video").unwrap();
    let (status, info) = RecordingApi::new(&cluster.url(0))
        .start(room, serde_json::json!({ "track": video.track }))
        .await;
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
    let (codec, duration) = first_stream(file);
    eprintln!("stopped by a full disk: {codec} {duration:.2} s: {r:?}");
    assert_eq!(codec, "vp8", "{r:?}");
    assert!(
        duration > 3.0,
        "the file has what was recorded: {duration:.2} s"
    );
    assert_decodes(file, "the file stopped by a full disk (finalised)");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_recorded_on_another_node_play_back_whole() {
    let _guard = browser_lock().await;
    let dir = std::env::temp_dir().join(format!("sfu-rec-{}", rand::random::<u32>()));
    let (hook, hooks) = webhooks().await;
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
    let (status, problem) = RecordingApi::new(&cluster.url(0))
        .start(room, serde_json::json!({ "track": published[0].track }))
        .await;
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
    let listed = all_recordings(&mut api).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    // When each recording's media began: a track recording's file starts at its first packet
    // (its pipeline plays from then, so that retransmissions are waited for), which comes
    // after the pull from cp1 and a keyframe. An active recording's duration is the media
    // it holds, so its first media came `duration` before it was seen.
    let mut media_from = std::collections::HashMap::new();
    while media_from.len() < ids.len() && started.elapsed() < Duration::from_secs(5) {
        let all = all_recordings(&mut api).await;
        for r in all.iter().filter(|r| r.duration_ms > 0) {
            let seen = started.elapsed().as_secs_f64();
            media_from
                .entry(r.id.clone())
                .or_insert((seen - r.duration_ms as f64 / 1000.0).max(0.0));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (id, kind) in &ids {
        assert!(
            media_from.contains_key(id),
            "{kind}: no media recorded within 5 s of the start: {media_from:?}"
        );
    }
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
    done.push((
        r,
        kind.clone(),
        started.elapsed().as_secs_f64() - media_from[id],
    ));
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
        let all = all_recordings(&mut api).await;
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
        started.elapsed().as_secs_f64() - media_from[id],
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
        let (codec, duration) = first_stream(file);
        eprintln!(
            "{kind}: {duration:.2} s in the file, {truth:.2} s recorded from its first media: {r:?}"
        );
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
        assert_decodes(file, kind);
    }

    // cp2's files are uploaded: gRPC lists each object's URL.
    let mut urls = std::collections::HashMap::new();
    for _ in 0..100 {
        let all = all_recordings(&mut api).await;
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

/// Every recording of the cluster, as gRPC lists them.
async fn all_recordings(
    api: &mut RecordingServiceClient<tonic::transport::Channel>,
) -> Vec<pb::RecordingInfo> {
    api.list_recordings(authed(&admin(), pb::ListRecordingsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .recordings
}
