//! The node's HTTP surface: WebSocket signaling, WHIP and WHEP, the meeting app and the demo
//! page, health, readiness and metrics. Runs on the multi-threaded tokio runtime; media stays
//! on the workers.

mod admin;
mod app;
mod demo;
pub mod gate;
mod problem;
mod recordings;
pub(crate) mod whip;
mod ws;

use crate::auth::{Authenticator, Grants};
use crate::config::Config;
use crate::media::{Command, JoinRequest, Joined, MediaPlane};
use crate::metrics::Metrics;
use crate::signaling::protocol::SignalError;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
pub use problem::Problem;
use std::sync::Arc;
use tower_http::cors::{Any, CorsLayer};

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub auth: Arc<Authenticator>,
    pub media: MediaPlane,
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<whip::Sessions>,
    /// LiveKit sessions waiting for their client to resume them.
    pub parked: Arc<ws::Parked>,
    pub membership: sfu_control::Membership,
    pub node_id: Arc<str>,
    pub drain: Arc<crate::drain::Drain>,
    pub admission: Arc<crate::admission::Admission>,
    pub gate: Arc<gate::JoinGate>,
    pub sources: Arc<gate::SourceGate>,
    /// Other nodes' admin API, to act for an administrator connected here.
    pub nodes: sfu_control::node_api::NodeApi,
}

impl AppState {
    /// `outgoing` calls other nodes' admin API (HTTPS verified with `tls.ca`).
    pub fn new(
        config: Arc<Config>,
        outgoing: reqwest::Client,
        media: MediaPlane,
        metrics: Arc<Metrics>,
        membership: sfu_control::Membership,
        node_id: Arc<str>,
        drain: Arc<crate::drain::Drain>,
    ) -> Self {
        let keys = config.effective_keys();
        Self {
            auth: Arc::new(Authenticator::new(&keys)),
            admission: Arc::new(crate::admission::Admission::new(
                membership.clone(),
                node_id.to_string(),
            )),
            gate: Arc::new(
                gate::JoinGate::new(config.joins_per_sec())
                    .with_max_worker_cpu(config.limits.max_worker_cpu),
            ),
            sources: Arc::new(gate::SourceGate::new(
                config.limits.joins_per_sec_per_source,
            )),
            nodes: {
                let (key, secret) = keys
                    .iter()
                    .next()
                    .map(|(k, s)| (k.clone(), s.clone()))
                    .unwrap_or_default();
                sfu_control::node_api::NodeApi::new(key, secret, outgoing)
            },
            config,
            media,
            metrics,
            sessions: Arc::default(),
            parked: Arc::default(),
            membership,
            node_id,
            drain,
        }
    }

    /// Admits a participant (taking a place if the room has a limit) and joins it; the place
    /// is given back if joining fails.
    pub async fn admit_and_join(&self, mut request: JoinRequest) -> Result<Joined, SignalError> {
        request.place = self.admission.admit(&self.media, &request).await?;
        let place = request.place;
        let room = request.room.clone();
        // The participant lives on the worker with the fewest (a room spans the workers).
        let worker = self.media.join_worker();
        let joined = self
            .media
            .request_to(worker, |reply| Command::Join(request, reply))
            .await;
        if joined.is_err() && place {
            self.membership.release(&room);
        }
        joined
    }

    /// Lets a participant of `room` on stage or takes it off, on whichever node it is
    /// connected to.
    pub async fn update_permissions(
        &self,
        room: &str,
        identity: &str,
        can_publish: bool,
    ) -> Result<(), SignalError> {
        let found = self
            .media
            .request_each(false, |reply| Command::Admin {
                op: crate::media::AdminOp::UpdatePermissions {
                    room: room.to_owned(),
                    identity: identity.to_owned(),
                    can_publish,
                },
                reply,
            })
            .await;
        match found {
            Err(e) if e.code == crate::signaling::protocol::ErrorCode::NotFound => {}
            other => return other.map(|_| ()),
        }
        let path = sfu_control::node_api::participant_path(room, identity, "/permissions");
        self.nodes
            .on_participant(
                &self.membership,
                room,
                identity,
                reqwest::Method::POST,
                &path,
                Some(serde_json::json!({ "can_publish": can_publish })),
            )
            .await
            .map_err(|e| {
                use sfu_control::node_api::NodeCallError;
                let code = match e {
                    NodeCallError::NotFound(_) => crate::signaling::protocol::ErrorCode::NotFound,
                    _ => crate::signaling::protocol::ErrorCode::Internal,
                };
                SignalError::new(code, e.to_string())
            })
    }

    /// A node that lost its registry lease admits no one (fencing): its view of the cluster
    /// may be stale and other nodes may already consider it gone. Past its join rate it asks
    /// joiners to come back later (`429` with `Retry-After`).
    fn admitting(&self, source: std::net::IpAddr) -> Result<(), Problem> {
        if let Err(wait) = self.sources.try_admit(source) {
            self.metrics.joins_throttled.inc();
            return Err(Problem::too_many_requests(wait));
        }
        if self.gate.saturated() {
            self.metrics.joins_throttled.inc();
            // 429, as for the join rate: clients already come back after `Retry-After`.
            return Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "at_capacity",
                "this node's media workers are saturated; retry, or join another node",
            )
            .retry_after(gate::BUSY_RETRY));
        }
        if let Err(wait) = self.gate.try_admit() {
            self.metrics.joins_throttled.inc();
            return Err(Problem::too_many_requests(wait));
        }
        if self.drain.is_draining() {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "this node is draining; join another node",
            ));
        }
        if self.membership.registered() {
            Ok(())
        } else {
            Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_registered",
                "this node is not registered in the cluster right now; try another node or retry",
            ))
        }
    }

    /// Verifies a bearer token from the `Authorization` header.
    fn bearer(&self, headers: &HeaderMap) -> Result<Grants, Problem> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .unwrap_or("");
        Ok(self.auth.verify(token.trim())?)
    }
}

/// Room names: 1 to 128 printable characters without `/`.
pub fn check_room_name(room: &str) -> Result<(), Problem> {
    if room.is_empty() || room.len() > 128 || room.chars().any(|c| c.is_control() || c == '/') {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad_room",
            "room names are 1 to 128 printable characters without '/'",
        ));
    }
    Ok(())
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    // WHIP/WHEP players and SDKs run on other origins; they need to read these headers.
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods(Any)
        .allow_headers(Any)
        .expose_headers([
            header::LOCATION,
            header::ETAG,
            header::LINK,
            header::HeaderName::from_static("accept-patch"),
        ]);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/rtc", get(ws::upgrade))
        .route("/rtc/validate", get(ws::validate))
        .route("/rtc/v1", get(ws::v1::upgrade))
        .route("/rtc/v1/validate", get(ws::v1::validate))
        .merge(whip::routes())
        .merge(admin::routes())
        .merge(recordings::routes())
        .merge(demo::routes())
        .merge(app::routes(&state.config.web.app_dir))
        .layer(cors)
        .with_state(state)
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    if !state.membership.registered() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not registered in the cluster",
        );
    }
    let stopped = state.media.stopped_workers();
    if !stopped.is_empty() {
        tracing::error!(workers = ?stopped, "media workers stopped");
        return (StatusCode::SERVICE_UNAVAILABLE, "a media worker stopped");
    }
    // The workers answer a snapshot only if their loops are running.
    let probe = tokio::time::timeout(std::time::Duration::from_secs(2), state.media.snapshot());
    match probe.await {
        Ok(_) => (StatusCode::OK, "ready"),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "media workers not responding",
        ),
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
