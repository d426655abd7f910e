//! Steps the recording and live streaming tests share: a node's recording API (start, look
//! at, stop), the tracks a room publishes as the node lists them, what ffprobe and ffmpeg say
//! of a file, and a webhook receiver.

use super::control::admin;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A node's admin API for recordings, with an administrator's token.
#[derive(Clone)]
pub struct RecordingApi {
    http: reqwest::Client,
    base: String,
}

impl RecordingApi {
    /// The API of the node at `base` (`http://host:port`).
    pub fn new(base: &str) -> RecordingApi {
        RecordingApi {
            http: super::http(),
            base: base.to_owned(),
        }
    }

    /// `POST /admin/rooms/{room}/recordings` with `body`: the status and the answer.
    pub async fn start(&self, room: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/admin/rooms/{room}/recordings", self.base))
            .bearer_auth(admin())
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    }

    /// Starts recording a track, once the node finds it (its registry directory is written
    /// moments after the roster lists it): the status and the answer.
    pub async fn start_track(&self, room: &str, track: &str) -> (u16, Value) {
        let mut answer = (0, Value::Null);
        for _ in 0..50 {
            answer = self
                .start(room, serde_json::json!({ "track": track }))
                .await;
            if answer.0 != 404 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        answer
    }

    /// A started recording's id (the start must have succeeded).
    pub async fn started(&self, room: &str, body: Value) -> String {
        let (status, info) = self.start(room, body).await;
        assert_eq!(status, 201, "{info}");
        info["id"].as_str().unwrap().to_owned()
    }

    /// `GET /admin/recordings/{id}`.
    pub async fn get(&self, id: &str) -> Value {
        self.http
            .get(format!("{}/admin/recordings/{id}", self.base))
            .bearer_auth(admin())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `DELETE /admin/recordings/{id}`: the recording once its file is finalised.
    pub async fn stop(&self, id: &str) -> Value {
        self.http
            .delete(format!("{}/admin/recordings/{id}", self.base))
            .bearer_auth(admin())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The tracks of every participant of `room` as the node lists them (`sid`, `kind`...).
    pub async fn tracks(&self, room: &str) -> Vec<Value> {
        let listed: Value = self
            .http
            .get(format!("{}/admin/rooms/{room}/participants", self.base))
            .bearer_auth(admin())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        listed
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["tracks"].as_array())
            .flatten()
            .cloned()
            .collect()
    }

    /// The `sid` of a track of `kind` (`audio`, `video`) in `room`, once there is one
    /// (within 30 s).
    pub async fn wait_track(&self, room: &str, kind: &str) -> String {
        for _ in 0..300 {
            let tracks = self.tracks(room).await;
            if tracks.iter().any(|t| t["kind"] == kind) {
                return sid_of(&tracks, kind);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{room} did not get a {kind} track");
    }

    /// The tracks of `room` once there are at least `n` (within 30 s).
    pub async fn wait_tracks(&self, room: &str, n: usize) -> Vec<Value> {
        for _ in 0..300 {
            let tracks = self.tracks(room).await;
            if tracks.len() >= n {
                return tracks;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{room} did not get {n} tracks");
    }
}

/// The `sid` of the first track of `kind` (`audio` or `video`).
pub fn sid_of(tracks: &[Value], kind: &str) -> String {
    tracks
        .iter()
        .find(|t| t["kind"] == kind)
        .and_then(|t| t["sid"].as_str())
        .unwrap_or_else(|| panic!("no {kind} track in {tracks:?}"))
        .to_owned()
}

/// `(codec name, duration in seconds)` of a file's first stream, as ffprobe reads it.
pub fn first_stream(file: &Path) -> (String, f64) {
    let (streams, duration) = super::media::probe(file);
    let codec = streams.first().map(|(_, c)| c.clone()).unwrap_or_default();
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
pub fn decode(file: &Path) -> (bool, String) {
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

/// Asserts that ffmpeg decodes `file` without a word at level error.
pub fn assert_decodes(file: &Path, what: &str) {
    let (ok, errors) = decode(file);
    assert!(ok && errors.is_empty(), "{what} decodes cleanly: {errors}");
}

/// A webhook receiver on a loopback port: its URL, and the events it got.
pub async fn webhooks() -> (String, Arc<Mutex<Vec<Value>>>) {
    async fn keep(State(r): State<Arc<Mutex<Vec<Value>>>>, body: String) -> StatusCode {
        if let Ok(v) = serde_json::from_str(&body) {
            r.lock().unwrap().push(v);
        }
        StatusCode::OK
    }
    let hooks = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(keep))
        .with_state(hooks.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hooks)
}
