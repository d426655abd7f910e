//! The node's recordings API, for administrators (the control plane uses it) and for
//! participants whose token grants `roomRecord` for their room (LiveKit's grant; `roomAdmin`
//! does too). Without it: `403` saying which grant is missing for which room.
//!
//! | request | effect |
//! |---|---|
//! | `POST /admin/rooms/{room}/recordings` `{"track": "TR_…"}` | record a track on this node: `201` and the recording |
//! | `POST /admin/rooms/{room}/recordings` `{}` | record the room (speaker's video, mixed audio) on this node |
//! | `GET /admin/recordings` | this node's recordings |
//! | `GET /admin/recordings/{id}` | one of them |
//! | `DELETE /admin/recordings/{id}` | stop it; answers once the file is finalised |
//!
//! The track may be published on any node of the cluster: this node pulls it like a
//! subscriber. An unknown room or track is `404` with what was not found; a codec that cannot
//! be recorded `400`; a pipeline that cannot start `500` with GStreamer's reason.

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
}

#[derive(Deserialize)]
struct StartBody {
    /// The track to record; none: the whole room.
    #[serde(default)]
    track: String,
}

async fn start(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    Json(body): Json<StartBody>,
) -> Result<(StatusCode, Json<RecordingInfo>), Problem> {
    may_record(&state, &headers, &room)?;
    // The registry's track directory says what the track is, wherever it is published.
    let (participants, tracks) = state.membership.room(&room);
    if body.track.is_empty() {
        if participants.is_empty() && tracks.is_empty() {
            let message = format!("no room {room} in the cluster");
            return Err(SignalError::new(ErrorCode::NotFound, message).into());
        }
        // The file has a video stream if there is VP8 video to show now (the muxer cannot
        // add one later).
        let with_video = tracks
            .iter()
            .any(|t| t.kind == "video" && t.codec_mime.eq_ignore_ascii_case("video/VP8"));
        let info = state.media.record_room(&room, with_video).await?;
        return Ok((StatusCode::CREATED, Json(info)));
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
