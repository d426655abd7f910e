//! The `sfu-control` service: the cluster's API for operators and applications.
//!
//! Stateless: everything it knows comes from etcd (a read-only [`Membership`] view, plus room
//! configuration it writes), and what it does to a room it asks the nodes hosting it to do
//! (their `/admin` HTTP API, with an administrator token it mints). Several replicas can run
//! side by side. gRPC (tonic) for operators and servers; `POST /v1/join` as JSON for browsers,
//! which cannot speak plain gRPC.

use crate::auth::{AuthError, Authenticator, Grants, admin_claims};
use crate::membership::Membership;
use crate::placement::{self, NodeView, Policy};
use crate::records::{NodeRecord, NodeState, ParticipantRecord, RoomConfig, TrackRecord};
use crate::registry::{EtcdRegistry, Registry};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sfu_proto::control as pb;
use sfu_proto::control::join_service_server::{JoinService, JoinServiceServer};
use sfu_proto::control::node_service_server::{NodeService, NodeServiceServer};
use sfu_proto::control::room_service_server::{RoomService, RoomServiceServer};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::{Request, Response as GrpcResponse, Status};

/// Empty rooms created through the API are kept this long unless they say otherwise.
const DEFAULT_EMPTY_TIMEOUT: Duration = Duration::from_secs(300);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Shared by all the service's handlers.
pub struct Control {
    pub membership: Membership,
    pub registry: EtcdRegistry,
    pub auth: Authenticator,
    /// (API key, secret) used to mint administrator tokens for the nodes.
    pub admin_key: (String, String),
    pub policy: Policy,
    pub http: reqwest::Client,
}

fn status(e: AuthError) -> Status {
    if e.is_forbidden() {
        Status::permission_denied(e.to_string())
    } else {
        Status::unauthenticated(e.to_string())
    }
}

impl Control {
    /// The grants of the bearer token in a request's metadata.
    fn grants<T>(&self, request: &Request<T>) -> Result<Grants, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .unwrap_or("");
        self.auth.verify(token.trim()).map_err(status)
    }

    fn admin_token(&self) -> String {
        let claims = admin_claims(&self.admin_key.0, Duration::from_secs(60));
        crate::auth::mint(&self.admin_key.1, &claims).unwrap_or_default()
    }

    fn room_names(&self) -> BTreeSet<String> {
        let prefix = self.membership.keys().rooms_prefix();
        self.membership
            .list(&prefix)
            .into_iter()
            .filter_map(|(k, _)| Some(k.strip_prefix(&prefix)?.split('/').next()?.to_owned()))
            .collect()
    }

    fn room(&self, name: &str) -> pb::Room {
        let (participants, tracks) = self.membership.room(name);
        let config = self.membership.room_config(name).unwrap_or_default();
        let prefix = format!("{}rooms/{name}/nodes/", self.membership.keys().prefix());
        let nodes = self
            .membership
            .list(&prefix)
            .into_iter()
            .filter_map(|(k, _)| Some(k.strip_prefix(&prefix)?.to_owned()))
            .collect();
        let publishers: BTreeSet<&str> = tracks.iter().map(|t| t.participant.as_str()).collect();
        pb::Room {
            name: name.to_owned(),
            max_participants: config.max_participants,
            empty_timeout: config.empty_timeout,
            num_participants: participants.len() as u32,
            num_publishers: publishers.len() as u32,
            nodes,
            creation_time_ms: config.created_ms,
        }
    }

    fn participant(
        &self,
        room: &str,
        identity: &str,
    ) -> Result<(ParticipantRecord, Vec<TrackRecord>), Status> {
        let (participants, tracks) = self.membership.room(room);
        let p = participants
            .into_iter()
            .find(|p| p.identity == identity)
            .ok_or_else(|| {
                Status::not_found(format!("no participant {identity} in room {room}"))
            })?;
        let tracks = tracks
            .into_iter()
            .filter(|t| t.participant == p.sid)
            .collect();
        Ok((p, tracks))
    }

    fn node(&self, id: &str) -> Result<NodeRecord, Status> {
        self.membership
            .nodes()
            .into_iter()
            .find(|n| n.id == id)
            .ok_or_else(|| Status::not_found(format!("no node {id}")))
    }

    /// Calls a node's admin API.
    async fn call_node(
        &self,
        node: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(), Status> {
        let record = self.node(node)?;
        let mut req = self
            .http
            .request(method, format!("{}{path}", record.http_url))
            .bearer_auth(self.admin_token());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req
            .send()
            .await
            .map_err(|e| Status::unavailable(format!("node {node} unreachable: {e}")))?;
        match r.status().as_u16() {
            200..=299 => Ok(()),
            404 => Err(Status::not_found(r.text().await.unwrap_or_default())),
            code => Err(Status::internal(format!(
                "node {node} answered {code}: {}",
                r.text().await.unwrap_or_default()
            ))),
        }
    }

    /// Nodes as placement sees them for `room`.
    fn views(&self, room: &str) -> Vec<NodeView> {
        let (in_room, _) = self.membership.room(room);
        let all: Vec<ParticipantRecord> = self
            .membership
            .list(&self.membership.keys().rooms_prefix())
            .into_iter()
            .filter(|(k, _)| k.contains("/participants/"))
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect();
        let mut per_node: BTreeMap<&str, u32> = BTreeMap::new();
        for p in &all {
            *per_node.entry(p.node.as_str()).or_default() += 1;
        }
        self.membership
            .nodes()
            .into_iter()
            .map(|n| {
                let room_participants = in_room.iter().filter(|p| p.node == n.id).count() as u32;
                // Participant records are written at once; load reports every few seconds.
                let participants = per_node
                    .get(n.id.as_str())
                    .copied()
                    .unwrap_or(0)
                    .max(n.load.participants);
                NodeView {
                    http_url: n.http_url,
                    region: n.region,
                    state: n.state,
                    capacity: n.capacity,
                    participants,
                    room_participants,
                    cpu: n.load.cpu,
                    updated_ms: n.updated_ms,
                    id: n.id,
                }
            })
            .collect()
    }

    /// The join decision for a participant's token.
    pub fn join(&self, token: &str, region: &str) -> Result<pb::JoinResponse, Status> {
        let grants = self.auth.verify(token).map_err(status)?;
        let room = grants.room.clone().unwrap_or_default();
        grants.may_join(&room).map_err(status)?;
        if let Some(c) = self.membership.room_config(&room)
            && c.max_participants > 0
            && self.membership.room(&room).0.len() as u32 >= c.max_participants
        {
            return Err(Status::resource_exhausted(format!("room {room} is full")));
        }
        let views = self.views(&room);
        let region = (!region.is_empty()).then_some(region);
        let node = placement::place(&self.policy, now_ms(), &views, region)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(pb::JoinResponse {
            node: node.id.clone(),
            url: node.http_url.clone(),
        })
    }

    /// Forgets the configuration of API-created rooms that stayed empty past their timeout.
    pub async fn sweep(&self) {
        for name in self.room_names() {
            let Some(mut config) = self.membership.room_config(&name) else {
                continue;
            };
            let empty = self.membership.room(&name).0.is_empty();
            let timeout = if config.empty_timeout > 0 {
                Duration::from_secs(config.empty_timeout as u64)
            } else {
                DEFAULT_EMPTY_TIMEOUT
            };
            let key = self.membership.keys().room_config(&name);
            match (empty, config.empty_since_ms) {
                (false, Some(_)) => {
                    config.empty_since_ms = None;
                    let _ = self
                        .registry
                        .put_persistent(&key, serde_json::to_vec(&config).unwrap_or_default())
                        .await;
                }
                (true, None) => {
                    config.empty_since_ms = Some(now_ms());
                    let _ = self
                        .registry
                        .put_persistent(&key, serde_json::to_vec(&config).unwrap_or_default())
                        .await;
                }
                (true, Some(since))
                    if now_ms().saturating_sub(since) > timeout.as_millis() as u64 =>
                {
                    tracing::info!(room = name, "empty room timed out");
                    let _ = self.registry.delete(&key).await;
                }
                _ => {}
            }
        }
    }
}

/// The gRPC services, all backed by one [`Control`].
#[derive(Clone)]
pub struct Api(pub Arc<Control>);

#[tonic::async_trait]
impl RoomService for Api {
    async fn create_room(
        &self,
        r: Request<pb::CreateRoomRequest>,
    ) -> Result<GrpcResponse<pb::Room>, Status> {
        let g = self.0.grants(&r)?;
        if !g.room_create {
            return Err(Status::permission_denied("token does not grant roomCreate"));
        }
        let req = r.into_inner();
        if req.name.is_empty()
            || req.name.len() > 128
            || req.name.contains('/')
            || req.name.chars().any(char::is_control)
        {
            return Err(Status::invalid_argument(
                "room names are 1 to 128 printable characters without '/'",
            ));
        }
        let config = RoomConfig {
            name: req.name.clone(),
            max_participants: req.max_participants,
            empty_timeout: req.empty_timeout,
            created_ms: now_ms(),
            empty_since_ms: None,
        };
        let key = self.0.membership.keys().room_config(&req.name);
        self.0
            .registry
            .put_persistent(&key, serde_json::to_vec(&config).unwrap_or_default())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut room = self.0.room(&req.name);
        room.max_participants = config.max_participants;
        room.empty_timeout = config.empty_timeout;
        room.creation_time_ms = config.created_ms;
        Ok(GrpcResponse::new(room))
    }

    async fn list_rooms(
        &self,
        r: Request<pb::ListRoomsRequest>,
    ) -> Result<GrpcResponse<pb::ListRoomsResponse>, Status> {
        let g = self.0.grants(&r)?;
        if !g.room_list {
            return Err(Status::permission_denied("token does not grant roomList"));
        }
        let wanted = r.into_inner().names;
        let rooms = self
            .0
            .room_names()
            .into_iter()
            .filter(|n| wanted.is_empty() || wanted.contains(n))
            .map(|n| self.0.room(&n))
            .collect();
        Ok(GrpcResponse::new(pb::ListRoomsResponse { rooms }))
    }

    async fn delete_room(
        &self,
        r: Request<pb::DeleteRoomRequest>,
    ) -> Result<GrpcResponse<pb::DeleteRoomResponse>, Status> {
        let g = self.0.grants(&r)?;
        let room = r.into_inner().room;
        g.may_admin(&room).map_err(status)?;
        let key = self.0.membership.keys().room_config(&room);
        let _ = self.0.registry.delete(&key).await;
        for node in self.0.room(&room).nodes {
            // A node that has no one left in the room answers 404: nothing to do there.
            match self
                .0
                .call_node(
                    &node,
                    reqwest::Method::DELETE,
                    &format!("/admin/rooms/{room}"),
                    None,
                )
                .await
            {
                Ok(()) => {}
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(GrpcResponse::new(pb::DeleteRoomResponse {}))
    }

    async fn list_participants(
        &self,
        r: Request<pb::ListParticipantsRequest>,
    ) -> Result<GrpcResponse<pb::ListParticipantsResponse>, Status> {
        let g = self.0.grants(&r)?;
        let room = r.into_inner().room;
        g.may_admin(&room).map_err(status)?;
        let (participants, tracks) = self.0.membership.room(&room);
        let participants = participants
            .into_iter()
            .map(|p| pb::ParticipantInfo {
                tracks: tracks
                    .iter()
                    .filter(|t| t.participant == p.sid)
                    .map(track_info)
                    .collect(),
                sid: p.sid,
                identity: p.identity,
                name: p.name,
                node: p.node,
            })
            .collect();
        Ok(GrpcResponse::new(pb::ListParticipantsResponse {
            participants,
        }))
    }

    async fn remove_participant(
        &self,
        r: Request<pb::RoomParticipantIdentity>,
    ) -> Result<GrpcResponse<pb::RemoveParticipantResponse>, Status> {
        let g = self.0.grants(&r)?;
        let req = r.into_inner();
        g.may_admin(&req.room).map_err(status)?;
        let (p, _) = self.0.participant(&req.room, &req.identity)?;
        let path = format!("/admin/rooms/{}/participants/{}", req.room, req.identity);
        self.0
            .call_node(&p.node, reqwest::Method::DELETE, &path, None)
            .await?;
        Ok(GrpcResponse::new(pb::RemoveParticipantResponse {}))
    }

    async fn mute_published_track(
        &self,
        r: Request<pb::MuteRoomTrackRequest>,
    ) -> Result<GrpcResponse<pb::MuteRoomTrackResponse>, Status> {
        let g = self.0.grants(&r)?;
        let req = r.into_inner();
        g.may_admin(&req.room).map_err(status)?;
        let (p, tracks) = self.0.participant(&req.room, &req.identity)?;
        let mut track = tracks
            .into_iter()
            .find(|t| t.track == req.track_sid)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "{} publishes no track {}",
                    req.identity, req.track_sid
                ))
            })?;
        let path = format!(
            "/admin/rooms/{}/participants/{}/mute",
            req.room, req.identity
        );
        let body = serde_json::json!({ "track": req.track_sid, "muted": req.muted });
        self.0
            .call_node(&p.node, reqwest::Method::POST, &path, Some(body))
            .await?;
        track.muted = req.muted;
        Ok(GrpcResponse::new(pb::MuteRoomTrackResponse {
            track: Some(track_info(&track)),
        }))
    }

    async fn update_subscriptions(
        &self,
        r: Request<pb::UpdateSubscriptionsRequest>,
    ) -> Result<GrpcResponse<pb::UpdateSubscriptionsResponse>, Status> {
        let g = self.0.grants(&r)?;
        let req = r.into_inner();
        g.may_admin(&req.room).map_err(status)?;
        let (p, _) = self.0.participant(&req.room, &req.identity)?;
        let path = format!(
            "/admin/rooms/{}/participants/{}/subscriptions",
            req.room, req.identity
        );
        let body = serde_json::json!({ "tracks": req.track_sids, "subscribe": req.subscribe });
        self.0
            .call_node(&p.node, reqwest::Method::POST, &path, Some(body))
            .await?;
        Ok(GrpcResponse::new(pb::UpdateSubscriptionsResponse {}))
    }
}

fn track_info(t: &TrackRecord) -> pb::TrackInfo {
    pb::TrackInfo {
        sid: t.track.clone(),
        kind: t.kind.clone(),
        codec: t.codec_mime.clone(),
        layers: t.rids.clone(),
        muted: t.muted,
    }
}

#[tonic::async_trait]
impl NodeService for Api {
    async fn list_nodes(
        &self,
        r: Request<pb::ListNodesRequest>,
    ) -> Result<GrpcResponse<pb::ListNodesResponse>, Status> {
        self.0.grants(&r)?.may_admin_cluster().map_err(status)?;
        let nodes = self
            .0
            .membership
            .nodes()
            .into_iter()
            .map(|n| pb::NodeInfo {
                id: n.id,
                region: n.region,
                http_url: n.http_url,
                state: match n.state {
                    NodeState::Active => "active".into(),
                    NodeState::Draining => "draining".into(),
                },
                capacity: n.capacity,
                rooms: n.load.rooms,
                participants: n.load.participants,
                tracks: n.load.tracks,
                cpu: n.load.cpu,
                updated_ms: n.updated_ms,
            })
            .collect();
        Ok(GrpcResponse::new(pb::ListNodesResponse { nodes }))
    }

    async fn drain_node(
        &self,
        r: Request<pb::DrainNodeRequest>,
    ) -> Result<GrpcResponse<pb::DrainNodeResponse>, Status> {
        self.0.grants(&r)?.may_admin_cluster().map_err(status)?;
        let node = r.into_inner().node;
        self.0
            .call_node(&node, reqwest::Method::POST, "/admin/drain", None)
            .await?;
        Ok(GrpcResponse::new(pb::DrainNodeResponse {}))
    }
}

#[tonic::async_trait]
impl JoinService for Api {
    async fn join(
        &self,
        r: Request<pb::JoinRequest>,
    ) -> Result<GrpcResponse<pb::JoinResponse>, Status> {
        let req = r.into_inner();
        self.0.join(&req.token, &req.region).map(GrpcResponse::new)
    }
}

#[derive(serde::Deserialize)]
struct JoinJson {
    token: String,
    #[serde(default)]
    region: String,
}

/// `POST /v1/join` for browsers: `{"token": "...", "region": "..."}` → `{"node", "url"}`.
async fn join_json(State(api): State<Api>, Json(body): Json<JoinJson>) -> Response {
    match api.0.join(&body.token, &body.region) {
        Ok(j) => Json(serde_json::json!({ "node": j.node, "url": j.url })).into_response(),
        Err(s) => {
            let code = match s.code() {
                tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                tonic::Code::ResourceExhausted | tonic::Code::Unavailable => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::BAD_REQUEST,
            };
            let problem = serde_json::json!({
                "type": format!("{:?}", s.code()).to_lowercase(),
                "title": code.canonical_reason().unwrap_or("error"),
                "status": code.as_u16(),
                "detail": s.message(),
            });
            (
                code,
                [("content-type", "application/problem+json")],
                problem.to_string(),
            )
                .into_response()
        }
    }
}

/// Serves gRPC and the JSON join endpoint on one listener until `shutdown` resolves.
pub async fn serve(
    control: Arc<Control>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let api = Api(control.clone());
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            control.sweep().await;
        }
    });
    let grpc = tonic::service::Routes::new(RoomServiceServer::new(api.clone()))
        .add_service(NodeServiceServer::new(api.clone()))
        .add_service(JoinServiceServer::new(api.clone()))
        .into_axum_router();
    let json = axum::Router::new()
        .route("/v1/join", axum::routing::post(join_json))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .layer(tower_http::cors::CorsLayer::permissive())
        .with_state(api);
    let app = grpc.merge(json);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    sweeper.abort();
    result.map_err(Into::into)
}

/// Connects to etcd and builds the service state.
pub async fn connect(
    etcd: &[String],
    cluster: &str,
    keys: &BTreeMap<String, String>,
) -> anyhow::Result<Arc<Control>> {
    let registry = EtcdRegistry::connect(etcd).await?;
    let (events, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The view is read on demand; events are not needed.
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let membership =
        Membership::observe(registry.clone(), crate::records::Keys::new(cluster), events);
    let admin_key = keys
        .iter()
        .next()
        .map(|(k, s)| (k.clone(), s.clone()))
        .ok_or_else(|| anyhow::anyhow!("no API key configured"))?;
    Ok(Arc::new(Control {
        membership,
        registry,
        auth: Authenticator::new(keys),
        admin_key,
        policy: Policy::default(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?,
    }))
}

/// The address the service listens on by default.
pub fn default_bind() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7900))
}
