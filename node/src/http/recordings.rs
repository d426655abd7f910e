//! The node's recordings API, for administrators (the control plane uses it) and for
//! participants whose token grants `roomRecord` for their room (LiveKit's grant; `roomAdmin`
//! does too). Without it: `403` saying which grant is missing for which room.
//!
//! | request | effect |
//! |---|---|
//! | `POST /admin/rooms/{room}/recordings` `{"track": "TR_…"}` | record a track on this node: `201` and the recording |
//! | `POST /admin/rooms/{room}/recordings` `{}` | record the room (speaker's video, mixed audio) on this node |
//! | … `{"streams": ["rtmp://…"], "hls": true}` | the same, streamed live to RTMP destinations and as HLS |
//! | `GET /recordings/{id}/hls/{file}` | a room recording's HLS playlist and segments (no token: the id is the capability) |
//! | `GET /admin/recordings` | this node's recordings |
//! | `GET /admin/recordings/{id}` | one of them |
//! | `DELETE /admin/recordings/{id}` | stop it; answers once the file is finalised |
//!
//! The track may be published on any node of the cluster: this node pulls it like a
//! subscriber. An unknown room or track is `404` with what was not found; a codec that cannot
//! be recorded `400`; a recordings filesystem below `recording.min_free_mb` free `507` with
//! the figures; a pipeline that cannot start `500` with GStreamer's reason.

use super::{AppState, Problem};
use crate::recording::{RecordingInfo, TrackSpec};
use crate::signaling::protocol::{ErrorCode, SignalError};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/rooms/{room}/recordings", post(start))
        .route("/admin/recordings", get(list))
        .route("/admin/recordings/{id}", get(one).delete(stop))
        .route("/recordings/{id}/hls/{file}", get(hls))
}

#[derive(Deserialize)]
struct StartBody {
    /// The track to record; none: the whole room.
    #[serde(default)]
    track: String,
    /// Room recordings: RTMP(S) destinations to stream the program to.
    #[serde(default)]
    streams: Vec<String>,
    /// Room recordings: also write HLS, served by this node.
    #[serde(default)]
    hls: bool,
}

/// Destinations a room recording streams to at most.
const MAX_STREAMS: usize = 8;

/// RTMP destinations must be `rtmp://` or `rtmps://` URLs with a host.
fn check_streams(streams: &[String]) -> Result<(), Problem> {
    if streams.len() > MAX_STREAMS {
        let m = format!("at most {MAX_STREAMS} streams per recording");
        return Err(SignalError::new(ErrorCode::BadRequest, m).into());
    }
    for s in streams {
        let host = s
            .strip_prefix("rtmp://")
            .or_else(|| s.strip_prefix("rtmps://"))
            .and_then(|rest| rest.split('/').next())
            .filter(|h| !h.is_empty());
        if host.is_none() || s.len() > 1024 || s.chars().any(char::is_control) {
            let m = format!("stream {s:?} is not an rtmp:// or rtmps:// URL");
            return Err(SignalError::new(ErrorCode::BadRequest, m).into());
        }
    }
    Ok(())
}

async fn start(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    Json(body): Json<StartBody>,
) -> Result<(StatusCode, Json<RecordingInfo>), Problem> {
    may_record(&state, &headers, &room)?;
    // Refused before anything is created when the disk is (nearly) full.
    if let Err(why) = state.media.recordings().check_space() {
        return Err(Problem::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            why,
        ));
    }
    // The registry's track directory says what the track is, wherever it is published.
    let (participants, tracks) = state.membership.room(&room);
    if body.track.is_empty() {
        check_streams(&body.streams)?;
        if participants.is_empty() && tracks.is_empty() {
            let message = format!("no room {room} in the cluster");
            return Err(SignalError::new(ErrorCode::NotFound, message).into());
        }
        let info = state
            .media
            .record_room(&room, body.streams, body.hls)
            .await?;
        return Ok((StatusCode::CREATED, Json(info)));
    }
    if !body.streams.is_empty() || body.hls {
        let m = "streams and HLS are for room recordings (no track)";
        return Err(SignalError::new(ErrorCode::BadRequest, m).into());
    }
    let Some(t) = tracks.iter().find(|t| t.track == body.track) else {
        let message = if participants.is_empty() && tracks.is_empty() {
            format!("no room {room} in the cluster")
        } else {
            format!("no track {} in room {room}", body.track)
        };
        return Err(SignalError::new(ErrorCode::NotFound, message).into());
    };
    let spec = TrackSpec {
        room: room.clone(),
        track: t.track.clone(),
        codec_mime: t.codec_mime.clone(),
        clock_rate: t.clock_rate,
    };
    let info = state.media.record_track(spec).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<RecordingInfo>>, Problem> {
    let grants = state.bearer(&headers)?;
    let all = state.media.recordings().list();
    Ok(Json(
        all.into_iter()
            .filter(|r| grants.may_record(&r.room).is_ok())
            .collect(),
    ))
}

fn not_found(id: &str) -> Problem {
    SignalError::new(
        ErrorCode::NotFound,
        format!("no recording {id} on this node"),
    )
    .into()
}

async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<RecordingInfo>, Problem> {
    Ok(Json(administered(&state, &headers, &id)?))
}

async fn stop(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<RecordingInfo>, Problem> {
    administered(&state, &headers, &id)?;
    Ok(Json(state.media.stop_recording(&id).await?))
}

/// Recording `id`, if the bearer may record its room.
fn administered(state: &AppState, headers: &HeaderMap, id: &str) -> Result<RecordingInfo, Problem> {
    let grants = state.bearer(headers)?;
    let info = state
        .media
        .recordings()
        .get(id)
        .ok_or_else(|| not_found(id))?;
    grants
        .may_record(&info.room)
        .map_err(|e| refused(&info.room, e))?;
    Ok(info)
}

/// The bearer may record `room` (`roomRecord` or `roomAdmin` for it).
fn may_record(state: &AppState, headers: &HeaderMap, room: &str) -> Result<(), Problem> {
    state
        .bearer(headers)?
        .may_record(room)
        .map_err(|e| refused(room, e))
}

/// A `403` naming the room and what the token lacks.
fn refused(room: &str, e: crate::auth::AuthError) -> Problem {
    SignalError::new(
        ErrorCode::Forbidden,
        format!("recording room {room} needs roomRecord or roomAdmin for it: {e}"),
    )
    .into()
}

/// A file of a room recording's HLS output.
async fn hls(
    State(state): State<AppState>,
    Path((id, file)): Path<(String, String)>,
) -> Result<axum::response::Response, Problem> {
    use axum::response::IntoResponse;
    let missing = || -> Problem {
        SignalError::new(ErrorCode::NotFound, format!("no HLS file {file} of {id}")).into()
    };
    // Only a recording this node knows, with HLS, and plain file names: nothing else of the
    // disk is reachable.
    let known = state
        .media
        .recordings()
        .get(&id)
        .is_some_and(|r| !r.hls.is_empty());
    if !known || !crate::recording::live::servable(&file) {
        return Err(missing());
    }
    let path = crate::recording::live::hls_dir(state.media.recordings().dir(), &id).join(&file);
    let body = tokio::fs::read(&path).await.map_err(|_| missing())?;
    let kind = if file.ends_with(".m3u8") {
        "application/vnd.apple.mpegurl"
    } else {
        "video/mp2t"
    };
    Ok(([(axum::http::header::CONTENT_TYPE, kind)], body).into_response())
}

/// Tells a participant who just joined `room` about the recordings running in it, on any
/// node (later starts and ends reach it as they happen: `media/record.rs`).
pub fn announce(state: &AppState, room: &str, events: &crate::signaling::Events) {
    for (id, kind) in state.media.running_recordings(room, &state.membership) {
        let told = crate::signaling::protocol::ServerMessage::Recording {
            id,
            kind,
            active: true,
        };
        events.send(crate::signaling::Outbound::Message(Box::new(told)));
    }
}
