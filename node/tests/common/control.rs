//! A control-plane test cluster: a real etcd, in-process cluster nodes and the `sfu-control`
//! service on loopback, with helpers for its gRPC API and for WebSocket participants.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use sfu_control::auth::admin_claims;
use sfu_control::service::Control;
use sfu_control::testing::Etcd;
use sfu_node::{Config, Server};
use sfu_proto::control as pb;
use sfu_proto::control::node_service_client::NodeServiceClient;
use sfu_proto::control::room_service_client::RoomServiceClient;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

pub struct Cluster {
    pub etcd: Etcd,
    pub nodes: Vec<Server>,
    /// Where `sfu-control` serves gRPC and `/v1/join`.
    pub control: SocketAddr,
    /// The service's state, to drive what it otherwise does on a timer (the empty-room sweep).
    pub api: Arc<Control>,
    dir: PathBuf,
}

impl Cluster {
    /// `nodes` nodes (`cp1`, `cp2`, ...), each taking `capacity` participants before placement
    /// prefers others (0: no limit).
    pub async fn start(nodes: usize, capacity: u32) -> Cluster {
        Self::start_with(nodes, |_, c| c.cluster.capacity = capacity).await
    }

    /// Like [`Cluster::start`], with each node's configuration adjusted by `configure(index,
    /// config)`.
    pub async fn start_with(nodes: usize, configure: impl Fn(usize, &mut Config)) -> Cluster {
        let _ = super::tracing_subscriber_init();
        let etcd = Etcd::start().expect("etcd starts");
        let dir = std::env::temp_dir().join(format!(
            "sfu-cp-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let ids: Vec<String> = (1..=nodes).map(|i| format!("cp{i}")).collect();
        sfu_relay::certs::ensure_dev_certs(&dir, &ids).unwrap();
        let mut servers = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let mut config = Config::loopback();
            config.cluster.node_id = id.clone();
            config.cluster.etcd = vec![etcd.endpoint.clone()];
            config.dev = true;
            config.cluster.certs_dir = Some(dir.clone());
            config.cluster.name = "cp".to_owned();
            configure(i, &mut config);
            servers.push(Server::start(config).await.expect("node starts"));
        }
        let keys: BTreeMap<String, String> = [("devkey".to_owned(), "secret".to_owned())].into();
        let api = sfu_control::service::connect(std::slice::from_ref(&etcd.endpoint), "cp", &keys)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(sfu_control::service::serve(
            api.clone(),
            listener,
            std::future::pending(),
        ));
        let c = Cluster {
            etcd,
            nodes: servers,
            control: addr,
            api,
            dir,
        };
        // The control plane sees every node before the test starts.
        let mut nodes_client = NodeServiceClient::connect(c.grpc()).await.unwrap();
        for _ in 0..100 {
            let listed = nodes_client
                .list_nodes(authed(&admin(), pb::ListNodesRequest {}))
                .await
                .map(|r| r.into_inner().nodes.len())
                .unwrap_or(0);
            if listed == nodes {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the control plane did not see {nodes} nodes");
    }

    pub fn grpc(&self) -> String {
        format!("http://{}", self.control)
    }

    /// The HTTP base URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.nodes[i].http_addr)
    }

    /// Asks `POST /v1/join` as a browser does with `body` (`{"token", "region", "avoid"}`);
    /// returns the answer: `{"node", "url"}` or a problem.
    pub async fn place(&self, body: Value) -> Value {
        super::http()
            .post(format!("http://{}/v1/join", self.control))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn rooms(&self) -> RoomServiceClient<tonic::transport::Channel> {
        RoomServiceClient::connect(self.grpc()).await.unwrap()
    }

    pub async fn stop(self) {
        for n in self.nodes {
            n.stop().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An administrator token for the development key.
pub fn admin() -> String {
    sfu_control::auth::mint("secret", &admin_claims("devkey", Duration::from_secs(300))).unwrap()
}

/// A gRPC request carrying `token` as its bearer token (none if empty).
pub fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if !token.is_empty() {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    r
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects a WebSocket client to a node and joins without subscribing to anything; returns
/// the socket and the answer (`joined` or `error`).
pub async fn ws_join(http: &str, token: &str) -> (Ws, Value) {
    let host = http.trim_start_matches("http://");
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{host}/rtc?access_token={token}"))
            .await
            .expect("WebSocket connects");
    ws.send(Message::Text(
        r#"{"type":"join","auto_subscribe":false}"#.into(),
    ))
    .await
    .unwrap();
    let v = next_of(&mut ws, &["joined", "error"], Duration::from_secs(15)).await;
    (ws, v)
}

/// Sends one JSON message.
pub async fn ws_send(ws: &mut Ws, message: Value) {
    ws.send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
}

/// The next message whose `type` is one of `types`, skipping others; panics after `limit`.
pub async fn next_of(ws: &mut Ws, types: &[&str], limit: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {types:?} message within {limit:?}"))
            .expect("the socket is open")
            .expect("a readable frame");
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if types.iter().any(|ty| v["type"] == *ty) {
                return v;
            }
        }
    }
}

/// The participants of a room, as the control plane lists them (every page).
pub async fn participants(room: &str, grpc: &str) -> Vec<pb::ParticipantInfo> {
    let mut c = RoomServiceClient::connect(grpc.to_owned()).await.unwrap();
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = c
            .list_participants(authed(
                &admin(),
                pb::ListParticipantsRequest {
                    room: room.into(),
                    page_size: 0,
                    page_token,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        all.extend(page.participants);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
