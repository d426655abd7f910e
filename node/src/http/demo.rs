//! The demo web client (`/demo.html`, and `/` when the meeting app is not built: see
//! [`super::app`]) and, in development mode only, a token endpoint for it and the app.
//!
//! The pages are plain HTML and JavaScript compiled into the binary: nothing to build, nothing
//! to install.

use super::{AppState, Problem, check_room_name};
use crate::auth::join_claims;
use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;
use std::time::Duration;

const INDEX: &str = include_str!("../../web/index.html");
const APP: &str = include_str!("../../web/app.js");
const WHIP_PAGE: &str = include_str!("../../web/whip.html");
const WHEP_PAGE: &str = include_str!("../../web/whep.html");
const WHIP_WHEP_JS: &str = include_str!("../../web/whipwhep.js");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/demo.html", get(|| async { index() }))
        .route(
            "/app.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    APP,
                )
            }),
        )
        .route(
            "/whipwhep.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    WHIP_WHEP_JS,
                )
            }),
        )
        .route("/whip.html", get(|| async { html(WHIP_PAGE) }))
        .route("/whep.html", get(|| async { html(WHEP_PAGE) }))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/dev/token", get(dev_token))
        .route("/v1/admission", get(admission))
}

/// Whether a join would be admitted now (`204`), or when to come back (`429` with
/// `Retry-After`), without taking a join from the node's rate. A browser cannot read the
/// status of a refused WebSocket upgrade, so the demo page asks here first.
async fn admission(State(state): State<AppState>) -> Result<StatusCode, Problem> {
    match state.gate.peek() {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(wait) => Err(Problem::too_many_requests(wait)),
    }
}

/// The demo page.
pub(super) fn index() -> impl IntoResponse {
    html(INDEX)
}

fn html(body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body)
}

#[derive(Deserialize)]
struct TokenQuery {
    room: String,
    identity: String,
    #[serde(default = "yes")]
    publish: bool,
    #[serde(default = "yes")]
    subscribe: bool,
    /// Administer the room (see raised hands, promote and demote).
    #[serde(default)]
    admin: bool,
    /// Display name (default: the identity).
    #[serde(default)]
    name: Option<String>,
}

fn yes() -> bool {
    true
}

/// Mints a token with the development key, so the demo page works with no setup. Refused
/// unless the node runs in development mode: with real keys, tokens come from the application.
async fn dev_token(
    State(state): State<AppState>,
    Query(q): Query<TokenQuery>,
) -> Result<impl IntoResponse, Problem> {
    if !state.config.is_dev() {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the token endpoint exists only in development mode",
        ));
    }
    check_room_name(&q.room)?;
    if q.identity.is_empty() || q.identity.len() > 128 {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad_identity",
            "identity must be 1 to 128 characters",
        ));
    }
    let claims = join_claims(
        crate::config::DEV_API_KEY,
        &q.identity,
        &q.room,
        q.publish,
        q.subscribe,
        Duration::from_secs(6 * 3600),
    );
    let mut claims = claims;
    claims.video.room_admin = q.admin;
    if let Some(name) = q.name.filter(|n| !n.is_empty()) {
        if name.len() > 128 {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "bad_name",
                "name must be at most 128 characters",
            ));
        }
        claims.name = Some(name);
    }
    let token = state.auth.sign(&claims)?;
    Ok(Json(serde_json::json!({ "token": token })))
}
