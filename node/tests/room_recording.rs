//! Room recordings end to end: two real Chromium publishers on two nodes, each with its own
//! camera colour and tone, take turns to speak (one mutes its microphone while the other
//! talks; the second joins and leaves while the recording runs). The room is recorded through
//! the control plane's gRPC API; the file must have one video and one audio stream as long as
//! the recording, decode without error, and show both publishers' colours in speaking order.

mod common;

use common::Browser;
use common::browser_lock;
use common::control::{Cluster, admin, authed};
use common::media::{camera_and_tone, probe, run_for};
use sfu_proto::control as pb;
use sfu_proto::control::recording_service_client::RecordingServiceClient;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Turns a publisher's microphone on or off (a muted track sends silence, level 127).
async fn microphone(browser: &mut Browser, page: &str, on: bool) {
    let js = format!("window.sfu.media.getAudioTracks().forEach((t) => (t.enabled = {on}))");
    browser.eval(page, &js).await;
}

/// Whether a page shows a recording running (the demo page's `recording` events).
fn shows_recording(s: &common::Sample, page: &str) -> bool {
    s["pages"][page]["stats"]["recordings"]
        .as_array()
        .is_some_and(|r| !r.is_empty())
}

/// A participant's token for `room`, with `roomRecord` or not.
fn participant_token(identity: &str, room: &str, record: bool) -> String {
    let mut c = sfu_control::auth::join_claims(
        "devkey",
        identity,
        room,
        true,
        true,
        Duration::from_secs(600),
    );
    c.video.room_record = record;
    common::token_for(&c, "secret")
}

/// Published tracks in the room, as the registry lists them, once there are `n`.
async fn wait_tracks(cluster: &Cluster, browsers: &mut [&mut Browser], room: &str, n: usize) {
    for _ in 0..60 {
        if cluster.api.membership.room(room).1.len() >= n {
            return;
        }
        run_for(browsers, Duration::from_millis(500)).await;
    }
    panic!("{room} did not get {n} tracks");
}

/// The colour of each decoded video frame, in order: 'r', 'b' or '?' (its average pixel).
fn frame_colours(file: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(file)
        // Each frame once, as stored (not repeated to a constant rate).
        .args(["-an", "-vsync", "passthrough"])
        .args(["-vf", "scale=1:1:flags=area,format=rgb24"])
        .args(["-f", "rawvideo", "-"])
        .output()
        .expect("ffmpeg is installed");
    out.stdout
        .chunks_exact(3)
        .map(|p| match (p[0], p[2]) {
            (r, b) if r > 150 && b < 100 => 'r',
            (r, b) if b > 150 && r < 100 => 'b',
            _ => '?',
        })
        .collect()
}

/// Runs of the same colour, shorter runs (a few frames while switching) left out:
/// `"rrrrbbbbrr"` → `"rbr"`.
fn sequence(colours: &str, min_run: usize) -> String {
    let mut runs: Vec<(char, usize)> = Vec::new();
    for c in colours.chars() {
        match runs.last_mut() {
            Some((last, n)) if *last == c => *n += 1,
            _ => runs.push((c, 1)),
        }
    }
    let mut out = String::new();
    for (c, n) in runs {
        if n >= min_run && c != '?' && !out.ends_with(c) {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_recording_follows_the_speaker_and_mixes_everyone() {
    let _guard = browser_lock().await;
    let dir = std::env::temp_dir().join(format!("sfu-roomrec-{}", rand::random::<u32>()));
    let recordings: PathBuf = dir.join("recordings");
    let cluster = Cluster::start_with(2, |_, c| c.recording.dir = recordings.clone()).await;
    let room = "roomrec";
    // Different picture sizes: the file's video changes resolution at each switch.
    let red = camera_and_tone(&dir, "red", "red", "320x240", 440);
    let blue = camera_and_tone(&dir, "blue", "blue", "640x360", 660);
    let page = |node: usize, who: &str| {
        format!(
            "{}/demo.html?room={room}&identity={who}&autojoin=1&publish=1",
            cluster.url(node)
        )
    };
    let mut alice = Browser::launch_with_args(&[("alice", page(0, "alice"))], &red).await;
    wait_tracks(&cluster, &mut [&mut alice], room, 2).await;
    run_for(&mut [&mut alice], Duration::from_secs(2)).await;

    let mut api = RecordingServiceClient::connect(cluster.grpc())
        .await
        .unwrap();
    // An unknown room is named.
    let e = api
        .start_recording(authed(
            &admin(),
            pb::StartRecordingRequest {
                room: "no-such-room".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("no-such-room"), "{e:?}");

    // Recorded on alice's node (the room's first participant's), without --track.
    let r = api
        .start_recording(authed(
            &admin(),
            pb::StartRecordingRequest {
                room: room.into(),
                ..Default::default()
            },
        ))
        .await
        .expect("room recording starts")
        .into_inner();
    let started = Instant::now();
    assert_eq!(
        (r.kind.as_str(), r.state.as_str()),
        ("room", "active"),
        "{r:?}"
    );
    assert_eq!(r.node, "cp1", "{r:?}");

    // Alice's page shows the recording.
    let (shown, s) = alice
        .until(Duration::from_secs(5), |s| shows_recording(s, "alice"))
        .await;
    assert!(shown, "the demo page shows the recording: {s}");

    // Alice talks alone; bob joins on the other node, muted, then they take turns; bob
    // leaves while alice talks again.
    run_for(&mut [&mut alice], Duration::from_secs(3)).await;
    let mut bob = Browser::launch_with_args(&[("bob", page(1, "bob"))], &blue).await;
    wait_tracks(&cluster, &mut [&mut alice, &mut bob], room, 4).await;
    // Bob, on the other node and joining while it runs, is told at his join.
    let (shown, s) = bob
        .until(Duration::from_secs(5), |s| shows_recording(s, "bob"))
        .await;
    assert!(
        shown,
        "a late joiner on another node sees the recording: {s}"
    );
    microphone(&mut bob, "bob", false).await;
    run_for(&mut [&mut alice, &mut bob], Duration::from_secs(2)).await;
    microphone(&mut alice, "alice", false).await;
    microphone(&mut bob, "bob", true).await;
    run_for(&mut [&mut alice, &mut bob], Duration::from_secs(5)).await;
    microphone(&mut alice, "alice", true).await;
    bob.stop().await;
    run_for(&mut [&mut alice], Duration::from_secs(4)).await;

    let done = api
        .stop_recording(authed(&admin(), pb::StopRecordingRequest { id: r.id }))
        .await
        .expect("recording stops")
        .into_inner();
    let truth = started.elapsed().as_secs_f64();
    let (hidden, s) = alice
        .until(Duration::from_secs(5), |s| !shows_recording(s, "alice"))
        .await;
    assert!(hidden, "the demo page shows the recording ended: {s}");
    participant_records(&cluster, &mut alice, room).await;
    alice.stop().await;
    assert_eq!(done.state, "complete", "{done:?}");
    let file = Path::new(&done.file);
    assert!(file.starts_with(&recordings), "{done:?}");
    let (streams, duration) = probe(file);
    eprintln!(
        "room recording: {streams:?}, {duration:.2} s in the file, {truth:.2} s recorded: {done:?}"
    );
    assert_eq!(
        streams,
        [
            ("video".to_owned(), "vp8".to_owned()),
            ("audio".to_owned(), "opus".to_owned())
        ],
        "one video and one audio stream"
    );
    assert!(
        (duration - truth).abs() < 1.0,
        "ffprobe says {duration:.2} s, recorded for {truth:.2} s"
    );
    common::recording::assert_decodes(file, "the room recording");
    // The picture follows the speaker: alice (red), bob (blue), alice again.
    let colours = frame_colours(file);
    let red_frames = colours.matches('r').count();
    let blue_frames = colours.matches('b').count();
    eprintln!(
        "{red_frames} red and {blue_frames} blue frames of {}",
        colours.len()
    );
    let runs = sequence(&colours, 10);
    assert!(red_frames > 60 && blue_frames > 30, "{runs}");
    assert_eq!(runs, "rbr", "{colours}");
    cluster.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starting and stopping through a node's API with a participant's token: `roomRecord` for
/// the room is needed; without it, a 403 says which grant for which room. The recording runs
/// on the other node than alice's: her page is told when it starts and ends.
async fn participant_records(cluster: &Cluster, alice: &mut Browser, room: &str) {
    let http = common::http();
    let url = format!("{}/admin/rooms/{room}/recordings", cluster.url(1));
    for (token, why) in [
        (participant_token("carol", room, false), "roomRecord"),
        (
            participant_token("carol", "elsewhere", true),
            "another room",
        ),
    ] {
        let r = http
            .post(&url)
            .bearer_auth(token)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403);
        let body: serde_json::Value = r.json().await.unwrap();
        let detail = body["detail"].as_str().unwrap_or("");
        assert!(detail.contains(room) && detail.contains(why), "{body}");
    }
    let host = participant_token("carol", room, true);
    let r = http
        .post(&url)
        .bearer_auth(&host)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let started: serde_json::Value = r.json().await.unwrap();
    assert_eq!(started["kind"], "room", "{started}");
    assert_eq!(started["node"], "cp2", "{started}");
    let (shown, s) = alice
        .until(Duration::from_secs(5), |s| shows_recording(s, "alice"))
        .await;
    assert!(shown, "alice is told of a recording on the other node: {s}");
    run_for(&mut [alice], Duration::from_secs(1)).await;
    let id = started["id"].as_str().unwrap();
    let r = http
        .delete(format!("{}/admin/recordings/{id}", cluster.url(1)))
        .bearer_auth(&host)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let done: serde_json::Value = r.json().await.unwrap();
    assert_eq!(done["state"], "complete", "{done}");
    let (hidden, s) = alice
        .until(Duration::from_secs(5), |s| !shows_recording(s, "alice"))
        .await;
    assert!(hidden, "alice is told it ended: {s}");
}

/// The times (seconds) of each video frame of `file`, in the order `frame_colours` reads
/// them.
fn frame_times(file: &Path) -> Vec<f64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(["-show_entries", "frame=pts_time", "-of", "csv=p=0"])
        .arg(file)
        .output()
        .expect("ffprobe is installed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect()
}

/// A host starts the room recording before anyone publishes (the demo page joined without
/// publishing); alice publishes a few seconds later. The file has the speaker's video from
/// when it came (a placeholder picture before), in time with the audio recorded from the
/// start, and decodes without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_recording_started_before_any_video_gets_it_when_it_comes() {
    let _guard = browser_lock().await;
    let dir = std::env::temp_dir().join(format!("sfu-latevideo-{}", rand::random::<u32>()));
    let mut config = sfu_node::Config::loopback();
    config.recording.dir = dir.join("recordings");
    let node = sfu_node::Server::start(config).await.unwrap();
    let base = format!("http://{}", node.http_addr);
    let room = "latevideo";
    let red = camera_and_tone(&dir, "red", "red", "320x240", 440);
    let page = |who: &str, publish: u8| {
        format!("{base}/demo.html?room={room}&identity={who}&autojoin=1&publish={publish}")
    };
    let mut browser = Browser::launch_with_args(&[("host", page("host", 0))], &red).await;
    let http = common::http();
    let participants = |http: reqwest::Client| {
        let url = format!("{base}/admin/rooms/{room}/participants");
        async move {
            let listed: serde_json::Value = http
                .get(url)
                .bearer_auth(admin())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap_or_default();
            listed
        }
    };
    for _ in 0..60 {
        if participants(http.clone()).await[0]["identity"] == "host" {
            break;
        }
        run_for(&mut [&mut browser], Duration::from_millis(300)).await;
    }
    let r = http
        .post(format!("{base}/admin/rooms/{room}/recordings"))
        .bearer_auth(admin())
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let started_info: serde_json::Value = r.json().await.unwrap();
    let started = Instant::now();
    assert_eq!(
        started_info["codec"], "video/VP8+audio/opus",
        "{started_info}"
    );
    // Nobody publishes for 5 s (the placeholder comes after 3), then alice does.
    run_for(&mut [&mut browser], Duration::from_secs(5)).await;
    browser.open("alice", &page("alice", 1)).await;
    let mut published = None;
    for _ in 0..100 {
        let listed = participants(http.clone()).await;
        let tracks = listed
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["tracks"].as_array())
            .map(Vec::len)
            .sum::<usize>();
        if tracks == 2 {
            published = Some(started.elapsed().as_secs_f64());
            break;
        }
        run_for(&mut [&mut browser], Duration::from_millis(200)).await;
    }
    let published = published.expect("alice publishes");
    run_for(&mut [&mut browser], Duration::from_secs(6)).await;
    let id = started_info["id"].as_str().unwrap();
    let done: serde_json::Value = http
        .delete(format!("{base}/admin/recordings/{id}"))
        .bearer_auth(admin())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let truth = started.elapsed().as_secs_f64();
    browser.stop().await;
    assert_eq!(done["state"], "complete", "{done}");
    let file = Path::new(done["file"].as_str().unwrap());
    let (streams, duration) = probe(file);
    eprintln!(
        "{streams:?}, {duration:.2} s in the file, {truth:.2} s recorded, alice published at {published:.2} s: {done}"
    );
    assert_eq!(
        streams,
        [
            ("video".to_owned(), "vp8".to_owned()),
            ("audio".to_owned(), "opus".to_owned())
        ],
        "one video and one audio stream"
    );
    assert!(
        (duration - truth).abs() < 1.0,
        "ffprobe says {duration:.2} s, recorded for {truth:.2} s"
    );
    common::recording::assert_decodes(file, "the room recording");
    // Alice's red picture, from when she published (audio, recorded from the start, keeps
    // the file's clock: a picture put at the start would show red seconds too early).
    let colours = frame_colours(file);
    let times = frame_times(file);
    assert_eq!(colours.len(), times.len(), "{colours} {times:?}");
    let red = colours.matches('r').count();
    let first_red = colours.find('r').map(|i| times[i]);
    eprintln!(
        "{red} red frames of {}, the first at {first_red:?} s",
        colours.len()
    );
    assert!(red > 60, "{colours}");
    let first_red = first_red.unwrap();
    assert!(
        first_red > published - 1.0 && first_red < published + 3.0,
        "the first red frame at {first_red:.2} s, alice published at {published:.2} s"
    );
    node.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
