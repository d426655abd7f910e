//! The gateway's federation admin API (a cluster administrator's token, `roomAdmin` for no
//! particular room):
//!
//! | request | effect |
//! |---|---|
//! | `GET /admin/federation/peers` | peers (configured or added), and whether each is linked |
//! | `GET /admin/federation/rooms` | our mappings, each with whether the peer maps it back |
//! | `PUT /admin/federation/rooms/{room}` `{"peer": "b.example", "peer_room": "joint"}` | map |
//! | `DELETE /admin/federation/rooms/{room}` | unmap: media of the room stops crossing |
//! | `PUT /admin/federation/rooms/{room}/stopped/{track}` | stop forwarding a peer's track in our cluster (kept in the registry; see [`super::mapping`]) |
//! | `DELETE /admin/federation/rooms/{room}/stopped/{track}` | forward it again |
//! | `GET /admin/federation/rooms/{room}/stopped` | the tracks stopped in the room |
//!
//! Mappings and stops live in the cluster's etcd, so any gateway of the cluster serves the same
//! ones and every gateway applies them.

use super::Federation;
use super::mapping::{RoomMapping, Stop};
use crate::http::Problem;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sfu_control::auth::Authenticator;
use std::sync::Arc;

#[derive(Clone)]
struct Api {
    federation: Arc<Federation>,
    auth: Arc<Authenticator>,
}

/// The routes, with their own state (merged into the node's router).
pub fn routes(federation: Arc<Federation>, auth: Authenticator) -> Router {
    Router::new()
        .route("/admin/federation/peers", get(peers_list))
        .route("/admin/federation/rooms", get(rooms_list))
        .route(
            "/admin/federation/rooms/{room}",
            axum::routing::put(map).delete(unmap),
        )
        .route("/admin/federation/rooms/{room}/stopped", get(stopped_list))
        .route(
            "/admin/federation/rooms/{room}/stopped/{track}",
            axum::routing::put(stop).delete(forward),
        )
        .with_state(Api {
            federation,
            auth: Arc::new(auth),
        })
}

fn admin(api: &Api, headers: &HeaderMap) -> Result<(), Problem> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    api.auth.verify(token.trim())?.may_admin_cluster()?;
    Ok(())
}

fn unavailable(e: impl std::fmt::Display) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "registry_unavailable",
        format!("the registry did not answer: {e}"),
    )
}

async fn peers_list(State(api): State<Api>, headers: HeaderMap) -> Result<Json<Value>, Problem> {
    admin(&api, &headers)?;
    let linked = api.federation.state.linked();
    Ok(Json(json!({
        "name": api.federation.name,
        "peers": api.federation.state.peer_names().into_iter().map(|(p, source)| json!({
            "name": p, "source": source.as_str(), "linked": linked.contains(&p),
        })).collect::<Vec<_>>(),
    })))
}

async fn rooms_list(State(api): State<Api>, headers: HeaderMap) -> Result<Json<Value>, Problem> {
    admin(&api, &headers)?;
    api.federation
        .mappings
        .refresh()
        .await
        .map_err(unavailable)?;
    let rooms: Vec<Value> = api
        .federation
        .mappings
        .read()
        .into_values()
        .map(|m| {
            let active = api.federation.state.active(&m.peer).get(&m.room) == Some(&m.peer_room);
            json!({"room": m.room, "peer": m.peer, "peer_room": m.peer_room, "active": active})
        })
        .collect();
    Ok(Json(json!({ "rooms": rooms })))
}

#[derive(Deserialize)]
struct MapBody {
    peer: String,
    peer_room: String,
}

async fn map(
    State(api): State<Api>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Result<Json<MapBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, Problem> {
    admin(&api, &headers)?;
    let Json(body) = body.map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("expected {{\"peer\": NAME, \"peer_room\": ROOM}}: {e}"),
        )
    })?;
    crate::http::check_room_name(&room)?;
    crate::http::check_room_name(&body.peer_room)?;
    let peers: Vec<String> = api
        .federation
        .state
        .peer_names()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    if !peers.contains(&body.peer) {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "unknown_peer",
            format!(
                "{:?} is not a federation peer (peers: {})",
                body.peer,
                peers.join(", ")
            ),
        ));
    }
    let m = RoomMapping {
        room,
        peer: body.peer,
        peer_room: body.peer_room,
    };
    api.federation
        .mappings
        .map(m.clone())
        .await
        .map_err(unavailable)?;
    tracing::info!(room = %m.room, peer = %m.peer, peer_room = %m.peer_room, "federation: room mapped");
    Ok(Json(json!(m)))
}

async fn unmap(
    State(api): State<Api>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    admin(&api, &headers)?;
    if !api
        .federation
        .mappings
        .unmap(&room)
        .await
        .map_err(unavailable)?
    {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not_mapped",
            format!("room {room:?} is not mapped"),
        ));
    }
    tracing::info!(%room, "federation: room unmapped");
    Ok(StatusCode::NO_CONTENT)
}

/// Stops forwarding a peer's track in our cluster (the peer is not affected).
async fn stop(
    State(api): State<Api>,
    Path((room, track)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    admin(&api, &headers)?;
    let stop = api
        .federation
        .mappings
        .stop(&room, &track)
        .await
        .map_err(unavailable)?;
    match stop {
        Stop::Stopped | Stop::Already => Ok(StatusCode::NO_CONTENT),
        Stop::Unknown => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "unknown_track",
            format!("no federated track {track:?} in room {room:?}"),
        )),
    }
}

/// Forwards a stopped track again (the active gateway applies it within a sync period).
async fn forward(
    State(api): State<Api>,
    Path((room, track)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    admin(&api, &headers)?;
    let resumed = api
        .federation
        .mappings
        .resume(&room, &track)
        .await
        .map_err(unavailable)?;
    if resumed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not_stopped",
            format!("track {track:?} of room {room:?} is not stopped"),
        ))
    }
}

async fn stopped_list(
    State(api): State<Api>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    admin(&api, &headers)?;
    let tracks = api
        .federation
        .mappings
        .stopped(&room)
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({ "tracks": tracks })))
}
