//! The two clusters of the federation test: each side's etcd, gateway, other node (and A's
//! standby gateway), certificates and keys, the webhook receiver, and requests to a side's
//! admin API and to B's control plane.

use crate::common::{self, control::authed, http};
use reqwest::Method;
use serde_json::{Value, json};
use sfu_control::auth::{admin_claims, join_claims, mint};
use sfu_control::testing::Etcd;
use sfu_node::federation::{FederationConfig, Identities, PeerConfig};
use sfu_node::{Config, Server};
use sfu_proto::control as pb;
use sfu_proto::control::federation_service_client::FederationServiceClient;
use sfu_relay::certs::{create_ca, issue_node};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// One cluster: its etcd, its gateway node and its secrets.
pub struct Side {
    pub etcd: Etcd,
    /// The federation gateway (`a1`).
    pub node: Server,
    /// Another node of the cluster (`a2`), not a gateway.
    pub plain: Server,
    /// A's second gateway (`a3`), on standby until the first stops.
    pub standby: Option<Server>,
    pub key: String,
    pub secret: String,
    pub dir: PathBuf,
    pub fed_addr: SocketAddr,
}

impl Side {
    pub fn url(&self) -> String {
        format!("http://{}", self.node.http_addr)
    }

    pub fn plain_url(&self) -> String {
        format!("http://{}", self.plain.http_addr)
    }

    pub fn admin(&self) -> String {
        mint(
            &self.secret,
            &admin_claims(&self.key, Duration::from_secs(600)),
        )
        .unwrap()
    }

    pub fn token(&self, identity: &str, room: &str) -> String {
        mint(
            &self.secret,
            &join_claims(
                &self.key,
                identity,
                room,
                true,
                true,
                Duration::from_secs(600),
            ),
        )
        .unwrap()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The demo page of `identity` in `room` on the side's non-gateway node, publishing.
    pub fn page(&self, room: &str, identity: &str) -> String {
        format!(
            "{}/demo.html?room={room}&identity={identity}&autojoin=1&publish=1&token={}",
            self.plain_url(),
            self.token(identity, room)
        )
    }

    /// A request to the gateway's federation admin API: its status and JSON body (`null` if
    /// none).
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        admin_call(&self.url(), &self.admin(), method, path, body).await
    }

    pub async fn map(&self, room: &str, peer: &str, peer_room: &str) {
        let body = json!({"peer": peer, "peer_room": peer_room});
        let (status, v) = self
            .call(Method::PUT, &format!("rooms/{room}"), Some(body))
            .await;
        assert_eq!(status, 200, "{v}");
    }

    pub async fn unmap(&self, room: &str) {
        let (status, v) = self
            .call(Method::DELETE, &format!("rooms/{room}"), None)
            .await;
        assert_eq!(status, 204, "{v}");
    }

    pub async fn active(&self, room: &str) -> bool {
        let (_, v) = self.call(Method::GET, "rooms", None).await;
        v["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["room"] == room && m["active"] == true)
    }
}

/// B's control plane's `FederationService`, with B's administrator token.
pub struct Control {
    pub fed: FederationServiceClient<Channel>,
    pub token: String,
}

impl Control {
    /// Starts B's control plane on loopback and connects to it.
    pub async fn start(b: &Side) -> Control {
        let keys: std::collections::BTreeMap<String, String> =
            [(b.key.clone(), b.secret.clone())].into();
        let control =
            sfu_control::service::connect(std::slice::from_ref(&b.etcd.endpoint), "b", &keys)
                .await
                .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(sfu_control::service::serve(
            control,
            listener,
            std::future::pending(),
        ));
        Control {
            fed: FederationServiceClient::connect(grpc).await.unwrap(),
            token: b.admin(),
        }
    }

    pub async fn map(&self, room: &str, peer: &str, peer_room: &str) -> Result<(), tonic::Status> {
        let r = pb::MapRoomRequest {
            room: room.into(),
            peer: peer.into(),
            peer_room: peer_room.into(),
        };
        self.fed.clone().map_room(authed(&self.token, r)).await?;
        Ok(())
    }

    pub async fn remove_peer(&self, name: &str) -> Result<(), tonic::Status> {
        let r = pb::RemovePeerRequest { name: name.into() };
        self.fed.clone().remove_peer(authed(&self.token, r)).await?;
        Ok(())
    }

    pub async fn add_peer(
        &self,
        r: pb::AddPeerRequest,
    ) -> Result<pb::FederationPeer, tonic::Status> {
        Ok(self
            .fed
            .clone()
            .add_peer(authed(&self.token, r))
            .await?
            .into_inner())
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Creates each side's mesh certificates and federation CA and certificate, then starts both
/// gateways, each trusting only the other's federation CA.
pub async fn start_pair() -> (Side, Side, mpsc::UnboundedReceiver<Value>) {
    let _ = common::tracing_subscriber_init();
    let root = std::env::temp_dir().join(format!(
        "sfu-fed-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut plans = Vec::new();
    for short in ["a", "b"] {
        let dir = root.join(short);
        sfu_relay::certs::ensure_dev_certs(
            &dir.join("mesh"),
            &[
                format!("{short}1"),
                format!("{short}2"),
                format!("{short}3"),
            ],
        )
        .unwrap();
        let name = format!("{short}.example");
        let ca = create_ca(&format!("{name} federation CA")).unwrap();
        let cert = issue_node(&ca, &name).unwrap();
        write(&dir.join("fed-ca.pem"), &ca.cert);
        write(&dir.join("fed-ca.key"), &ca.key);
        write(&dir.join("fed.pem"), &cert.cert);
        write(&dir.join("fed.key"), &cert.key);
        let port = common::process::free_udp_port();
        plans.push((short, name, dir, SocketAddr::from(([127, 0, 0, 1], port))));
    }
    let (hooks_tx, hooks) = mpsc::unbounded_channel::<Value>();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let tx = hooks_tx.clone();
            async move {
                if let Ok(v) = serde_json::from_str::<Value>(&body) {
                    let _ = tx.send(v);
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut sides = Vec::new();
    for i in 0..2 {
        let (short, name, dir, fed_addr): (&str, String, PathBuf, SocketAddr) = plans[i].clone();
        let (_, peer_name, peer_dir, peer_addr) = plans[1 - i].clone();
        let etcd = Etcd::start().expect("etcd starts");
        let key = format!("{short}key");
        let secret = format!("{short}-secret-{:032x}", rand::random::<u128>());
        let config = |id: String| {
            let mut config = Config::loopback();
            config.cluster.node_id = id;
            config.cluster.etcd = vec![etcd.endpoint.clone()];
            config.cluster.certs_dir = Some(dir.join("mesh"));
            config.cluster.name = short.to_owned();
            config.keys = [(key.clone(), secret.clone())].into();
            // The relay's direct media path is on by default; SFU_TEST_DIRECT_MEDIA=0 turns it
            // off (with it on, the races of docs/federation.md's fixed bugs were more frequent).
            if std::env::var("SFU_TEST_DIRECT_MEDIA").as_deref() == Ok("0") {
                config.cluster.direct_media = false;
            }
            config
        };
        // B has no configured peer: the test adds A through B's control plane.
        let peers = if short == "a" {
            vec![PeerConfig {
                name: peer_name,
                addrs: vec![peer_addr],
                ca: peer_dir.join("fed-ca.pem"),
                identities: None,
            }]
        } else {
            vec![]
        };
        let federation = FederationConfig {
            name: name.clone(),
            bind: fed_addr,
            cert: dir.join("fed.pem"),
            key: dir.join("fed.key"),
            peers,
            // B shows A pseudonyms instead of its participants' identities.
            identities: if short == "b" {
                Identities::Pseudonym
            } else {
                Identities::Identity
            },
        };
        let mut gateway = config(format!("{short}1"));
        gateway.federation = Some(federation.clone());
        if short == "b" {
            gateway.webhook.urls = vec![hook.clone()];
        }
        let node = Server::start(gateway).await.expect("gateway starts");
        let plain = Server::start(config(format!("{short}2")))
            .await
            .expect("node starts");
        let standby = if short == "a" {
            let mut c = config(format!("{short}3"));
            c.federation = Some(FederationConfig {
                bind: SocketAddr::from(([127, 0, 0, 1], common::process::free_udp_port())),
                ..federation
            });
            Some(Server::start(c).await.expect("second gateway starts"))
        } else {
            None
        };
        sides.push(Side {
            etcd,
            node,
            plain,
            standby,
            key,
            secret,
            dir,
            fed_addr,
        });
    }
    let b = sides.pop().unwrap();
    let a = sides.pop().unwrap();
    (a, b, hooks)
}

/// Waits for a webhook `event` about participant `identity`.
pub async fn hook_about(hooks: &mut mpsc::UnboundedReceiver<Value>, event: &str, identity: &str) {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(v) = hooks.recv().await {
            if v["event"] == event && v["participant"]["identity"] == identity {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no {event} webhook for {identity}");
}

/// The identities a `joined` message lists.
pub fn identities(joined: &Value) -> Vec<String> {
    joined["participants"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["identity"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A request to the federation admin API of the node at `base` with the admin token `admin`:
/// its status and JSON body (`null` if none).
pub async fn admin_call(
    base: &str,
    admin: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http()
        .request(method, format!("{base}/admin/federation/{path}"))
        .bearer_auth(admin);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}
