//! The node's administrative HTTP API, used by the control plane (`sfu-control`) to act on
//! what lives on this node. Every request needs an access token with `roomAdmin` for the room
//! concerned; draining needs one for no particular room.
//!
//! | request | effect |
//! |---|---|
//! | `POST /admin/drain` `{"deadline_secs": 60}` | start draining |
//! | `DELETE /admin/rooms/{room}` | remove this node's participants of the room |
//! | `DELETE /admin/rooms/{room}/participants/{identity}` | remove a participant |
//! | `POST /admin/rooms/{room}/participants/{identity}/mute` `{"track": "TR_…", "muted": true}` | mute a track |
//! | `POST /admin/rooms/{room}/participants/{identity}/subscriptions` `{"tracks": […], "subscribe": true}` | change subscriptions |
//! | `POST /admin/rooms/{room}/participants/{identity}/permissions` `{"can_publish": true}` | promote to the stage, or demote |
//! | `POST /admin/rooms/{room}/participants/{identity}/metadata` `{"name": …, "metadata": …, "attributes": {…}}` | change name, metadata, attributes (absent: unchanged; an empty attribute is removed) |
//! | `POST /admin/rooms/{room}/data` `{"data": [bytes], "reliable": true, "topic": …, "destinations": […]}` | a data packet from the server to this node's participants of the room (LiveKit clients; to identities or sids named in `destinations` only, if any) |
//! | `GET /admin/rooms/{room}/participants?after=SID&limit=N` | this node's participants of the room, by sid, after `after` |
//!
//! Each acts on this node only (a participant elsewhere is `404`): finding the node is the
//! caller's part (see `sfu_control::node_api`).

use super::{AppState, Problem};
use crate::media::{AdminOp, Command};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::time::Duration;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/drain", post(drain))
        .route("/admin/rooms/{room}", delete(delete_room))
        .route(
            "/admin/rooms/{room}/participants/{identity}",
            delete(remove),
        )
        .route(
            "/admin/rooms/{room}/participants/{identity}/mute",
            post(mute),
        )
        .route(
            "/admin/rooms/{room}/participants/{identity}/subscriptions",
            post(subscriptions),
        )
        .route(
            "/admin/rooms/{room}/participants/{identity}/permissions",
            post(permissions),
        )
        .route(
            "/admin/rooms/{room}/participants/{identity}/metadata",
            post(metadata),
        )
        .route("/admin/rooms/{room}/participants", get(list))
        .route("/admin/rooms/{room}/data", post(send_data))
}

/// The most participants one page lists.
const MAX_PAGE: usize = 1000;

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    after: String,
    limit: Option<usize>,
}

async fn list(
    State(state): State<AppState>,
    Path(room): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Json<Vec<crate::media::LocalParticipantInfo>>, Problem> {
    state.bearer(&headers)?.may_admin(&room)?;
    let limit = q.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    // A page of each worker's, merged in sid order.
    let mut all = Vec::new();
    for worker in 0..state.media.worker_count() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        state.media.send_to(
            worker,
            Command::ListParticipants {
                room: room.clone(),
                after: q.after.clone(),
                limit,
                reply: tx,
            },
        )?;
        all.extend(rx.await.unwrap_or_default());
    }
    all.sort_by(|a, b| a.sid.cmp(&b.sid));
    all.truncate(limit);
    Ok(Json(all))
}

#[derive(Deserialize)]
struct PermissionsBody {
    can_publish: bool,
}

async fn permissions(
    State(state): State<AppState>,
    Path((room, identity)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<PermissionsBody>,
) -> Result<StatusCode, Problem> {
    state.bearer(&headers)?.may_admin(&room)?;
    let op = AdminOp::UpdatePermissions {
        room: room.clone(),
        identity,
        can_publish: body.can_publish,
    };
    run(&state, &room, op).await
}

#[derive(Deserialize)]
struct MetadataBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    metadata: Option<String>,
    #[serde(default)]
    attributes: std::collections::BTreeMap<String, String>,
}

async fn metadata(
    State(state): State<AppState>,
    Path((room, identity)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<MetadataBody>,
) -> Result<StatusCode, Problem> {
    state.bearer(&headers)?.may_admin(&room)?;
    let op = AdminOp::UpdateMetadata {
        room: room.clone(),
        identity,
        own: None,
        update: crate::media::MetadataUpdate {
            name: body.name,
            metadata: body.metadata,
            attributes: body.attributes,
        },
    };
    run(&state, &room, op).await
}

#[derive(Deserialize)]
struct DataBody {
    data: Vec<u8>,
    #[serde(default)]
    reliable: bool,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    destinations: Vec<String>,
}

async fn send_data(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    Json(body): Json<DataBody>,
) -> Result<StatusCode, Problem> {
    state.bearer(&headers)?.may_admin(&room)?;
    if body.data.len() > crate::media::MAX_DATA_PACKET || body.destinations.len() > 1000 {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "at most {} bytes of data to at most 1000 destinations",
                crate::media::MAX_DATA_PACKET
            ),
        ));
    }
    let data = crate::media::UserData::from_server(
        body.data,
        body.reliable,
        body.topic,
        body.destinations,
    );
    run(
        &state,
        &room,
        AdminOp::SendData {
            room: room.clone(),
            data,
        },
    )
    .await
}

#[derive(Deserialize, Default)]
struct DrainBody {
    deadline_secs: Option<u64>,
}

async fn drain(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Option<Json<DrainBody>>,
) -> Result<StatusCode, Problem> {
    state.bearer(&headers)?.may_admin_cluster()?;
    let deadline = body
        .and_then(|Json(b)| b.deadline_secs)
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(state.config.drain_timeout_secs));
    state.drain.start(
        state.node_id.clone(),
        state.media.clone(),
        state.membership.clone(),
        deadline,
    );
    Ok(StatusCode::ACCEPTED)
}

/// Runs an operation on the workers of this node: on the one holding the participant, or on
/// every one for a whole room (a room spans them).
async fn run(state: &AppState, _room: &str, op: AdminOp) -> Result<StatusCode, Problem> {
    let every = matches!(op, AdminOp::DeleteRoom { .. } | AdminOp::SendData { .. });
    state
        .media
        .request_each(every, |reply| Command::Admin {
            op: op.clone(),
            reply,
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_room(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    state.bearer(&headers)?.may_admin(&room)?;
    run(&state, &room.clone(), AdminOp::DeleteRoom { room }).await
}

async fn remove(
    State(state): State<AppState>,
    Path((room, identity)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    state.bearer(&headers)?.may_admin(&room)?;
    run(
        &state,
        &room.clone(),
        AdminOp::RemoveParticipant { room, identity },
    )
    .await
}

#[derive(Deserialize)]
struct MuteBody {
    track: String,
    muted: bool,
}

async fn mute(
    State(state): State<AppState>,
    Path((room, identity)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<MuteBody>,
) -> Result<StatusCode, Problem> {
    state.bearer(&headers)?.may_admin(&room)?;
    let op = AdminOp::Mute {
        room: room.clone(),
        identity,
        track: body.track,
        muted: body.muted,
    };
    run(&state, &room, op).await
}

#[derive(Deserialize)]
struct SubscriptionsBody {
    tracks: Vec<String>,
    subscribe: bool,
}

async fn subscriptions(
    State(state): State<AppState>,
    Path((room, identity)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<SubscriptionsBody>,
) -> Result<StatusCode, Problem> {
    state.bearer(&headers)?.may_admin(&room)?;
    let op = AdminOp::Subscriptions {
        room: room.clone(),
        identity,
        tracks: body.tracks,
        subscribe: body.subscribe,
    };
    run(&state, &room, op).await
}
