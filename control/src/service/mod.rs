//! The `sfu-control` service: the cluster's API for operators and applications.
//!
//! Stateless: everything it knows comes from etcd (a read-only [`Membership`] view, plus room
//! configuration it writes), and what it does to a room it asks the nodes hosting it to do
//! (their `/admin` HTTP API through [`NodeApi`], with an administrator token it mints).
//! Several replicas can run side by side; each keeps only soft state (the joins it placed
//! since nodes last reported, and its share of each node's join rate). gRPC (tonic) for
//! operators and servers; `POST /v1/join` as JSON for browsers, which cannot speak plain gRPC.
//!
//! - [`rooms`]: the `RoomService` (rooms, participants, roles).
//! - [`nodes`]: the `NodeService` (nodes, draining).
//! - [`join`]: placement of joining participants, gRPC and JSON.
//! - [`recordings`]: the `RecordingService` (track recordings, run by the nodes).

mod federation;
mod join;
mod nodes;
mod recordings;
mod rooms;
mod twirp;

use crate::auth::{AuthError, Authenticator, Grants};
use crate::http_server::ServeOptions;
use crate::membership::Membership;
use crate::node_api::{NodeApi, NodeCallError};
use crate::placement::Policy;
use crate::records::{Key, NodeRecord, RoomConfig};
use crate::registry::{EtcdAccess, EtcdRegistry, Registry};
use sfu_proto::control as pb;
use sfu_proto::control::federation_service_server::FederationServiceServer;
use sfu_proto::control::join_service_server::JoinServiceServer;
use sfu_proto::control::node_service_server::NodeServiceServer;
use sfu_proto::control::recording_service_server::RecordingServiceServer;
use sfu_proto::control::room_service_server::RoomServiceServer;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::{Request, Status};

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
    pub policy: Policy,
    /// The nodes' admin API.
    pub nodes: NodeApi,
    /// Soft state of placement (see [`join`]).
    placed: Mutex<join::Placed>,
}

fn status(e: AuthError) -> Status {
    if e.is_forbidden() {
        Status::permission_denied(e.to_string())
    } else {
        Status::unauthenticated(e.to_string())
    }
}

fn node_status(e: NodeCallError) -> Status {
    match e {
        NodeCallError::NotFound(m) => Status::not_found(m),
        NodeCallError::Unavailable { .. } => Status::unavailable(e.to_string()),
        // Out of disk space for a recording.
        NodeCallError::Failed { status: 507, .. } => Status::resource_exhausted(e.to_string()),
        // The node refused what was asked (too large, malformed): the caller's error.
        NodeCallError::Failed {
            status: 400 | 413 | 422,
            ..
        } => Status::invalid_argument(e.to_string()),
        NodeCallError::Failed { .. } => Status::internal(e.to_string()),
    }
}

/// What the registry says a room holds.
struct RoomCounts {
    stage: u32,
    audience: u32,
    hands: u32,
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

    fn room_names(&self) -> BTreeSet<String> {
        let prefix = self.membership.keys().rooms_prefix();
        self.membership
            .list(&prefix)
            .into_iter()
            .filter_map(|(k, _)| Some(k.strip_prefix(&prefix)?.split('/').next()?.to_owned()))
            .collect()
    }

    /// Stage and audience of a room: its announced participants, plus each node's counted
    /// audience. O(stage + nodes), whatever the audience.
    fn counts(&self, room: &str) -> RoomCounts {
        let (participants, _) = self.membership.room(room);
        let stage = participants.iter().filter(|p| p.stage).count() as u32;
        let counted: u32 = self.membership.audience(room).iter().map(|(_, c)| c).sum();
        RoomCounts {
            stage,
            audience: participants.len() as u32 - stage + counted,
            hands: self.membership.hands(room).len() as u32,
        }
    }

    /// The nodes hosting part of a room (each of a node's workers that does writes its own
    /// key, `node#wN`).
    fn room_nodes(&self, room: &str) -> Vec<String> {
        let prefix = self.membership.keys().room_nodes_prefix(room);
        let mut nodes: Vec<String> = self
            .membership
            .list(&prefix)
            .into_iter()
            .filter_map(|(k, _)| Some(crate::records::node_of(k.strip_prefix(&prefix)?).to_owned()))
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    fn room(&self, name: &str) -> pb::Room {
        let (_, tracks) = self.membership.room(name);
        let config = self.membership.room_config(name).unwrap_or_default();
        let counts = self.counts(name);
        let publishers: BTreeSet<&str> = tracks.iter().map(|t| t.participant.as_str()).collect();
        pb::Room {
            name: name.to_owned(),
            max_participants: config.max_participants,
            empty_timeout: config.empty_timeout,
            num_participants: counts.stage + counts.audience,
            num_publishers: publishers.len() as u32,
            nodes: self.room_nodes(name),
            creation_time_ms: config.created_ms,
            num_stage: counts.stage,
            num_audience: counts.audience,
            num_raised_hands: counts.hands,
            large_room_threshold: config.large_room_threshold,
        }
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
    ) -> Result<String, Status> {
        let record = self.node(node)?;
        self.nodes
            .call(&record, method, path, body)
            .await
            .map_err(node_status)
    }

    /// Calls the admin API of the node `identity` of `room` is connected to.
    async fn on_participant(
        &self,
        room: &str,
        identity: &str,
        method: reqwest::Method,
        rest: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(), Status> {
        let path = crate::node_api::participant_path(room, identity, rest);
        self.nodes
            .on_participant(&self.membership, room, identity, method, &path, body)
            .await
            .map_err(node_status)
    }

    /// Forgets the configuration of API-created rooms that stayed empty past their timeout.
    pub async fn sweep(&self) {
        for name in self.room_names() {
            let Some(mut config) = self.membership.room_config(&name) else {
                continue;
            };
            let prefix = self.membership.keys().participants_prefix(&name);
            let empty = self.membership.list(&prefix).into_iter().all(|(k, _)| {
                !matches!(
                    self.membership.keys().parse(&k),
                    Some(Key::Participant { .. } | Key::Audience { .. })
                )
            });
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

/// Serves gRPC and the JSON join endpoint on one listener until `shutdown` resolves.
pub async fn serve(
    control: Arc<Control>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(control, listener, ServeOptions::default(), shutdown).await
}

/// [`serve`] with TLS and timeouts of its own.
pub async fn serve_with(
    control: Arc<Control>,
    listener: tokio::net::TcpListener,
    options: ServeOptions,
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
        .add_service(RecordingServiceServer::new(api.clone()))
        .add_service(FederationServiceServer::new(api.clone()))
        .into_axum_router();
    let json = axum::Router::new()
        .route("/v1/join", axum::routing::post(join::join_json))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .layer(
            tower_http::cors::CorsLayer::permissive()
                .expose_headers([axum::http::header::RETRY_AFTER]),
        )
        .with_state(api.clone());
    let app = grpc.merge(json).merge(twirp::router(api));
    crate::http_server::serve(listener, app, options, shutdown).await;
    sweeper.abort();
    Ok(())
}

/// Connects to etcd and builds the service state.
pub async fn connect(
    etcd: &[String],
    cluster: &str,
    keys: &BTreeMap<String, String>,
) -> anyhow::Result<Arc<Control>> {
    connect_with(etcd, &EtcdAccess::default(), None, cluster, keys).await
}

/// [`connect`] to a secured etcd (`access`), calling nodes over HTTPS verified with the
/// platform's roots and `tls_ca`.
pub async fn connect_with(
    etcd: &[String],
    access: &EtcdAccess,
    tls_ca: Option<&std::path::Path>,
    cluster: &str,
    keys: &BTreeMap<String, String>,
) -> anyhow::Result<Arc<Control>> {
    let registry = EtcdRegistry::connect_with(etcd, access).await?;
    let http = crate::tls::http_client(tls_ca, Duration::from_secs(5))?;
    let (events, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The view is read on demand; events are not needed.
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let membership =
        Membership::observe(registry.clone(), crate::records::Keys::new(cluster), events);
    let (key, secret) = keys
        .iter()
        .next()
        .map(|(k, s)| (k.clone(), s.clone()))
        .ok_or_else(|| anyhow::anyhow!("no API key configured"))?;
    Ok(Arc::new(Control {
        membership,
        registry,
        auth: Authenticator::new(keys),
        policy: Policy::default(),
        nodes: NodeApi::new(key, secret, http),
        placed: Mutex::default(),
    }))
}

/// The address the service listens on by default.
pub fn default_bind() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7900))
}

/// A room's configuration as created through the API.
fn room_config(req: &pb::CreateRoomRequest) -> RoomConfig {
    RoomConfig {
        name: req.name.clone(),
        max_participants: req.max_participants,
        empty_timeout: req.empty_timeout,
        created_ms: now_ms(),
        empty_since_ms: None,
        large_room_threshold: req.large_room_threshold,
    }
}
