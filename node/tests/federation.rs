//! Federation between two independent clusters, each with its own etcd, mesh CA, federation
//! CA and API keys; one node of each is its federation gateway. Real Chromium publishes on
//! each side and decodes the other side's camera; unmapping on one side stops the media; the
//! trust and admission boundaries hold (a mesh certificate, an unknown CA, an unconfigured
//! name, a foreign token, an unmapped room are each refused). A is configured with B as its
//! peer; B adds A at runtime through its control plane (`FederationService.AddPeer`) and
//! removes it later, which closes the link and stops the media.

#[path = "federation/bad_input.rs"]
mod bad_input;
mod common;

use common::control::{authed, eventually, ws_join};
use common::{Browser, browser_lock, expect_media, http, stat};
use serde_json::{Value, json};
use sfu_control::auth::{admin_claims, join_claims, mint};
use sfu_control::testing::Etcd;
use sfu_node::federation::{FederationConfig, PeerConfig};
use sfu_node::{Config, Server};
use sfu_proto::control as pb;
use sfu_proto::control::federation_service_client::FederationServiceClient;
use sfu_proto::relay::frame::Body;
use sfu_proto::relay::{Frame, Subscribe};
use sfu_relay::NodeId;
use sfu_relay::certs::{Pem, create_ca, issue_node};
use sfu_relay::quic::{Identity, Link, LinkHandler, LinkManager};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// One cluster: its etcd, its gateway node and its secrets.
struct Side {
    etcd: Etcd,
    /// The federation gateway (`a1`).
    node: Server,
    /// Another node of the cluster (`a2`), not a gateway.
    plain: Server,
    /// A's second gateway (`a3`), on standby until the first stops.
    standby: Option<Server>,
    key: String,
    secret: String,
    dir: PathBuf,
    fed_addr: SocketAddr,
}

impl Side {
    fn url(&self) -> String {
        format!("http://{}", self.node.http_addr)
    }

    fn plain_url(&self) -> String {
        format!("http://{}", self.plain.http_addr)
    }

    fn admin(&self) -> String {
        mint(
            &self.secret,
            &admin_claims(&self.key, Duration::from_secs(600)),
        )
        .unwrap()
    }

    fn token(&self, identity: &str, room: &str) -> String {
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

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    async fn map(&self, room: &str, peer: &str, peer_room: &str) {
        let r = http()
            .put(format!("{}/admin/federation/rooms/{room}", self.url()))
            .bearer_auth(self.admin())
            .json(&json!({"peer": peer, "peer_room": peer_room}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    async fn unmap(&self, room: &str) {
        let r = http()
            .delete(format!("{}/admin/federation/rooms/{room}", self.url()))
            .bearer_auth(self.admin())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    }

    async fn rooms(&self) -> Value {
        http()
            .get(format!("{}/admin/federation/rooms", self.url()))
            .bearer_auth(self.admin())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn active(&self, room: &str) -> bool {
        self.rooms().await["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["room"] == room && m["active"] == true)
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Creates each side's mesh certificates and federation CA and certificate, then starts both
/// gateways, each trusting only the other's federation CA.
async fn start_pair() -> (Side, Side, mpsc::UnboundedReceiver<Value>) {
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
            config
        };
        // B has no configured peer: the test adds A through B's control plane.
        let peers = if short == "a" {
            vec![PeerConfig {
                name: peer_name,
                addrs: vec![peer_addr],
                ca: peer_dir.join("fed-ca.pem"),
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
async fn hook_about(hooks: &mut mpsc::UnboundedReceiver<Value>, event: &str, identity: &str) {
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

/// A link manager outside both clusters, reporting what it is told.
struct Probe {
    up: mpsc::UnboundedSender<Link>,
    frames: mpsc::UnboundedSender<Frame>,
}

impl LinkHandler for Probe {
    fn link_up(&self, link: Link) {
        let _ = self.up.send(link);
    }
    fn link_down(&self, _: &NodeId) {}
    fn frame(&self, _: &NodeId, frame: Frame) {
        let _ = self.frames.send(frame);
    }
    fn datagram(&self, _: &NodeId, _: bytes::Bytes) {}
}

/// Dials `target` (named `target_name`) with `identity` (whose name must sort before it);
/// returns the link if one came up within 3 s, and the frames received on it.
async fn dial(
    identity: Identity,
    target_name: &str,
    target: SocketAddr,
) -> (
    Arc<LinkManager>,
    Option<Link>,
    mpsc::UnboundedReceiver<Frame>,
) {
    let (up, mut up_rx) = mpsc::unbounded_channel();
    let (frames, frames_rx) = mpsc::unbounded_channel();
    let m = LinkManager::start(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        Arc::new(Probe { up, frames }),
    )
    .unwrap();
    m.set_peers(&[(NodeId::from(target_name), target)]);
    let link = tokio::time::timeout(Duration::from_secs(3), up_rx.recv())
        .await
        .ok()
        .flatten();
    // A link the other side closes at once (an unconfigured name) came up here first: it
    // counts only if it stays up.
    let link = match link {
        Some(l) => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            l.connection.close_reason().is_none().then_some(l)
        }
        None => None,
    };
    (m, link, frames_rx)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// What must not link: B's mesh certificate at A's federation endpoint and at A's mesh, a
/// certificate for B's name from an unknown CA, and a certificate of B's federation CA for
/// a name A has not configured.
async fn refused_links(a: &Side, b: &Side) {
    let alpn = sfu_node::federation::ALPN;
    let a_fed_ca = read(&a.file("fed-ca.pem"));
    let b_mesh = sfu_relay::certs::node_files(&b.file("mesh"), "b1");
    let (b_mesh_cert, b_mesh_key) = (read(&b_mesh.cert), read(&b_mesh.key));

    // B's mesh certificate, at A's federation endpoint.
    let id = Identity::from_pem("0z", &a_fed_ca, &b_mesh_cert, &b_mesh_key)
        .unwrap()
        .with_alpn(alpn);
    let (m, link, _) = dial(id, "a.example", a.fed_addr).await;
    assert!(
        link.is_none(),
        "a mesh certificate opened a federation link"
    );
    m.close();

    // B's mesh certificate, at A's mesh (relay) endpoint.
    let a_mesh_ca = read(&a.file("mesh/ca.pem"));
    let id = Identity::from_pem("0z", &a_mesh_ca, &b_mesh_cert, &b_mesh_key).unwrap();
    let (m, link, _) = dial(id, "a1", a.node.relay_addr.unwrap()).await;
    assert!(link.is_none(), "B's mesh certificate joined A's mesh");
    m.close();
    // The same dial with a certificate of A's mesh CA links: the refusals above are the
    // certificates', not the harness's.
    sfu_relay::certs::ensure_dev_certs(&a.file("mesh"), &["0z".to_owned()]).unwrap();
    let own = sfu_relay::certs::node_files(&a.file("mesh"), "0z");
    let id = Identity::from_pem("0z", &a_mesh_ca, &read(&own.cert), &read(&own.key)).unwrap();
    let (m, link, _) = dial(id, "a1", a.node.relay_addr.unwrap()).await;
    assert!(
        link.is_some(),
        "a certificate of A's mesh CA links to A's mesh"
    );
    m.close();

    // A certificate naming B's federation name from a CA nobody configured.
    let rogue_ca = create_ca("rogue").unwrap();
    let rogue: Pem = issue_node(&rogue_ca, "0z").unwrap();
    let id = Identity::from_pem("0z", &a_fed_ca, rogue.cert.as_bytes(), rogue.key.as_bytes())
        .unwrap()
        .with_alpn(alpn);
    let (m, link, _) = dial(id, "a.example", a.fed_addr).await;
    assert!(
        link.is_none(),
        "an unknown CA's certificate opened a federation link"
    );
    m.close();

    // B's federation CA vouches for a name A does not peer with.
    let b_ca = Pem {
        cert: String::from_utf8(read(&b.file("fed-ca.pem"))).unwrap(),
        key: String::from_utf8(read(&b.file("fed-ca.key"))).unwrap(),
    };
    let other = issue_node(&b_ca, "0z").unwrap();
    let before = a
        .node
        .federation
        .as_ref()
        .unwrap()
        .stats()
        .links_refused
        .load(std::sync::atomic::Ordering::Relaxed);
    let id = Identity::from_pem("0z", &a_fed_ca, other.cert.as_bytes(), other.key.as_bytes())
        .unwrap()
        .with_alpn(alpn);
    let (m, link, _) = dial(id, "a.example", a.fed_addr).await;
    assert!(
        link.is_none(),
        "an unconfigured peer name kept a federation link"
    );
    m.close();
    let after = a
        .node
        .federation
        .as_ref()
        .unwrap()
        .stats()
        .links_refused
        .load(std::sync::atomic::Ordering::Relaxed);
    // The probe dials again after each refusal: each is counted.
    assert!(after > before, "the refusal is counted");
}

fn identities(joined: &Value) -> Vec<String> {
    joined["participants"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["identity"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_share_a_mapped_room() {
    let _guard = browser_lock().await;
    let started = Instant::now();
    let (a, b, mut hooks) = start_pair().await;
    let fa = a.node.federation.clone().unwrap();
    let fb = b.node.federation.clone().unwrap();
    // B's control plane; B adds A as a peer through it (A has B in its configuration).
    let keys: std::collections::BTreeMap<String, String> =
        [(b.key.clone(), b.secret.clone())].into();
    let control = sfu_control::service::connect(std::slice::from_ref(&b.etcd.endpoint), "b", &keys)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sfu_control::service::serve(
        control,
        listener,
        std::future::pending(),
    ));
    let mut fed = FederationServiceClient::connect(grpc).await.unwrap();
    let a_peer = pb::AddPeerRequest {
        name: "a.example".into(),
        addrs: vec![
            a.fed_addr.to_string(),
            a.standby
                .as_ref()
                .unwrap()
                .federation
                .as_ref()
                .unwrap()
                .local_addr()
                .unwrap()
                .to_string(),
        ],
        ca_pem: std::fs::read_to_string(a.file("fed-ca.pem")).unwrap(),
    };
    for (bad, what) in [
        (
            pb::AddPeerRequest {
                addrs: vec!["a1:7443".into()],
                ..a_peer.clone()
            },
            "a host name",
        ),
        (
            pb::AddPeerRequest {
                ca_pem: "not PEM".into(),
                ..a_peer.clone()
            },
            "no PEM",
        ),
        (
            pb::AddPeerRequest {
                name: "a example".into(),
                ..a_peer.clone()
            },
            "a bad name",
        ),
    ] {
        let e = fed.add_peer(authed(&b.admin(), bad)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{what}: {e:?}");
    }
    let added = fed
        .add_peer(authed(&b.admin(), a_peer.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((added.source.as_str(), added.addrs.len()), ("added", 2));
    let added_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || async {
            (fa.state.linked() == ["b.example"] && fb.state.linked() == ["a.example"]).then_some(())
        })
        .await
        .is_some(),
        "the gateways link"
    );
    println!(
        "B's gateway linked with A {:.1} s after AddPeer",
        added_at.elapsed().as_secs_f64()
    );
    let peers = http()
        .get(format!("{}/admin/federation/peers", a.url()))
        .bearer_auth(a.admin())
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(peers["peers"][0]["source"], "config", "{peers}");

    refused_links(&a, &b).await;

    // Each side's tokens admit to that side only.
    let refused = tokio_tungstenite::connect_async(format!(
        "ws://{}/rtc?access_token={}",
        a.node.http_addr,
        b.token("mallory", "joint")
    ))
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        Err(e) => panic!("a B token at A: expected 401, got {e}"),
        Ok(_) => panic!("A admitted a B token"),
    }

    // A room crosses only while both sides map it.
    a.map("joint", "b.example", "joint-with-a").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!a.active("joint").await, "one side's mapping is not enough");
    // B maps through its control plane's FederationService (A through its gateway's API).
    let unknown = fed
        .map_room(authed(
            &b.admin(),
            pb::MapRoomRequest {
                room: "joint-with-a".into(),
                peer: "c.example".into(),
                peer_room: "joint".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    let peers = eventually(Duration::from_secs(5), || {
        let mut fed = fed.clone();
        let token = b.admin();
        async move {
            let r = fed
                .list_peers(authed(&token, pb::ListFederationPeersRequest {}))
                .await
                .ok()?
                .into_inner();
            (r.peers.len() == 1
                && r.peers[0].linked_gateways == ["b1"]
                && r.peers[0].source == "added")
                .then_some(r)
        }
    })
    .await;
    assert!(
        peers.is_some(),
        "B's control plane lists a.example linked through b1"
    );
    fed.map_room(authed(
        &b.admin(),
        pb::MapRoomRequest {
            room: "joint-with-a".into(),
            peer: "a.example".into(),
            peer_room: "joint".into(),
        },
    ))
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            (a.active("joint").await && b.active("joint-with-a").await).then_some(())
        })
        .await
        .is_some(),
        "both sides see the mapping agreed"
    );

    // Chromium on each side publishes and decodes the other side's camera, both connected to
    // nodes that are not gateways: media crosses a relay link, the federation link and
    // another relay link.
    let page = |s: &Side, room: &str, identity: &str| {
        format!(
            "{}/demo.html?room={room}&identity={identity}&autojoin=1&publish=1&token={}",
            s.plain_url(),
            s.token(identity, room)
        )
    };
    let mut browser = Browser::launch(&[
        ("alice", page(&a, "joint", "alice")),
        ("bob", page(&b, "joint-with-a", "bob")),
    ])
    .await;
    let media_from = Instant::now();
    let last = expect_media(
        &mut browser,
        &["alice", "bob"],
        30.0,
        Duration::from_secs(60),
    )
    .await;
    println!(
        "federated media decoding on both sides {:.1} s after the pages opened",
        media_from.elapsed().as_secs_f64()
    );
    for p in ["alice", "bob"] {
        assert!(
            last["pages"][p]["errors"].as_array().unwrap().is_empty(),
            "{last:#}"
        );
    }

    // B's webhooks announce A's participant, namespaced.
    hook_about(&mut hooks, "participant_joined", "a.example/alice").await;

    // Metrics per peer: the link is up, one room is mapped, media arrives from the peer, and
    // the unconfigured name probed above was counted.
    let m = common::metrics(&a.url()).await;
    assert_eq!(
        common::metric(&m, r#"sfu_federation_linked{peer="b.example"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(
        common::metric(&m, r#"sfu_federation_mapped_rooms{peer="b.example"}"#),
        1.0
    );
    let bytes = |m: &str| common::metric(m, r#"sfu_federation_bytes_in_total{peer="b.example"}"#);
    assert!(bytes(&m) > 10_000.0, "{m}");
    assert!(
        common::metric(
            &m,
            r#"sfu_federation_refused_total{reason="unconfigured_peer"}"#
        ) >= 1.0
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let m2 = common::metrics(&a.url()).await;
    println!(
        "federation link B -> A carries {:.0} kbit/s of media for one camera and microphone",
        (bytes(&m2) - bytes(&m)) * 8.0 / 5.0 / 1000.0
    );

    // The other side's participants appear namespaced.
    let (_, joined) = ws_join(&b.plain_url(), &b.token("carol", "joint-with-a")).await;
    assert!(
        identities(&joined).contains(&"a.example/alice".to_owned()),
        "B sees A's alice as a.example/alice: {joined}"
    );
    let (_, joined) = ws_join(&a.url(), &a.token("dave", "joint")).await;
    assert!(
        identities(&joined).contains(&"b.example/bob".to_owned()),
        "A sees B's bob as b.example/bob: {joined}"
    );

    // Unmapping on one side (B) stops media both ways within seconds.
    let listed = fed
        .list_mappings(authed(&b.admin(), pb::ListMappingsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.mappings.len(), 1);
    assert!(listed.mappings[0].active, "{listed:?}");
    fed.unmap_room(authed(
        &b.admin(),
        pb::UnmapRoomRequest {
            room: "joint-with-a".into(),
        },
    ))
    .await
    .unwrap();
    let unmapped = Instant::now();
    let mut prev = (0.0, 0.0);
    let mut still = 0;
    let (stopped, s) = browser
        .until(Duration::from_secs(10), |s| {
            let now = (
                stat(s, "alice", "framesDecoded"),
                stat(s, "bob", "framesDecoded"),
            );
            still = if now == prev { still + 1 } else { 0 };
            prev = now;
            still >= 2
        })
        .await;
    let stop_secs = unmapped.elapsed().as_secs_f64() - 2.0;
    assert!(stopped, "media kept flowing after the unmap: {s:#}");
    println!("media stopped within {stop_secs:.1} s of the unmap (2 s of stillness observed)");
    assert!(
        stop_secs < 5.0,
        "media stopped {stop_secs:.1} s after the unmap"
    );
    assert!(!a.active("joint").await, "A sees the room unmapped");
    a.unmap("joint").await;
    hook_about(&mut hooks, "participant_left", "a.example/alice").await;

    // Failover: mapped again, media flows; A's active gateway (a1) goes (its lease and its
    // federation endpoint, as when it stops or dies), the standby gateway (a3) takes over and
    // media resumes both ways.
    let a3 = a.standby.as_ref().unwrap();
    let f3 = a3.federation.clone().unwrap();
    assert!(
        f3.state.linked().is_empty(),
        "the standby gateway holds no link"
    );
    a.map("joint", "b.example", "joint-with-a").await;
    fed.map_room(authed(
        &b.admin(),
        pb::MapRoomRequest {
            room: "joint-with-a".into(),
            peer: "a.example".into(),
            peer_room: "joint".into(),
        },
    ))
    .await
    .unwrap();
    expect_media(
        &mut browser,
        &["alice", "bob"],
        30.0,
        Duration::from_secs(60),
    )
    .await;
    let failed = Instant::now();
    fa.close();
    a.node.membership.leave().await;
    expect_media(
        &mut browser,
        &["alice", "bob"],
        30.0,
        Duration::from_secs(30),
    )
    .await;
    println!(
        "failover: both sides decoding 30 more frames {:.1} s after the active gateway went",
        failed.elapsed().as_secs_f64()
    );
    assert_eq!(f3.state.linked(), ["b.example"]);

    // B removes A as a peer: the link closes and media stops both ways.
    fed.remove_peer(authed(
        &b.admin(),
        pb::RemovePeerRequest {
            name: "a.example".into(),
        },
    ))
    .await
    .unwrap();
    let removed = Instant::now();
    let (mut prev, mut still) = ((0.0, 0.0), 0);
    let (stopped, s) = browser
        .until(Duration::from_secs(10), |s| {
            let now = (
                stat(s, "alice", "framesDecoded"),
                stat(s, "bob", "framesDecoded"),
            );
            still = if now == prev { still + 1 } else { 0 };
            prev = now;
            still >= 2
        })
        .await;
    assert!(
        stopped,
        "media kept flowing after the peer was removed: {s:#}"
    );
    println!(
        "media stopped within {:.1} s of RemovePeer (2 s of stillness observed)",
        removed.elapsed().as_secs_f64() - 2.0
    );
    assert!(fb.state.linked().is_empty(), "B's link to A is closed");
    let gone = fed
        .remove_peer(authed(
            &b.admin(),
            pb::RemovePeerRequest {
                name: "a.example".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    // A room of B alone, with one page on B's gateway: its media must keep flowing through
    // the bad input below.
    browser.close_page("alice").await;
    browser.close_page("bob").await;
    browser
        .open(
            "carol",
            &page(&b, "local", "carol").replace(&b.plain_url(), &b.url()),
        )
        .await;
    browser.open("dave", &page(&b, "local", "dave")).await;

    // A peer asking for a room that is not mapped is refused. The probe speaks as A's gateway
    // (its certificate), which stops first; B adds A again.
    f3.close();
    fed.add_peer(authed(&b.admin(), a_peer.clone()))
        .await
        .unwrap();
    let id = Identity::from_pem(
        "a.example",
        &read(&b.file("fed-ca.pem")),
        &read(&a.file("fed.pem")),
        &read(&a.file("fed.key")),
    )
    .unwrap()
    .with_alpn(sfu_node::federation::ALPN);
    let (m, link, mut frames) = dial(id, "b.example", b.fed_addr).await;
    let link = link.expect("A's federation certificate links to B");
    link.send_frame(Frame {
        body: Some(Body::Subscribe(Subscribe {
            room: "joint-with-a".into(),
            track: 1,
            layers: vec![0],
            origin: String::new(),
        })),
    });
    let answer = tokio::time::timeout(Duration::from_secs(3), frames.recv())
        .await
        .expect("an answer within 3 s")
        .unwrap();
    match answer.body {
        Some(Body::Refused(r)) => assert_eq!(r.detail, "room not mapped"),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(
        fb.stats()
            .subscriptions_refused
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    m.close();

    // Bad input from a raw client with A's certificate; B's local room keeps its media.
    expect_media(
        &mut browser,
        &["carol", "dave"],
        30.0,
        Duration::from_secs(60),
    )
    .await;
    let bad_from = Instant::now();
    bad_input::run(bad_input::Target {
        addr: b.fed_addr,
        name: "b.example",
        ca: &read(&b.file("fed-ca.pem")),
        as_name: "a.example",
        cert: &read(&a.file("fed.pem")),
        key: &read(&a.file("fed.key")),
        http: b.url(),
    })
    .await;
    println!(
        "bad input cases took {:.1} s",
        bad_from.elapsed().as_secs_f64()
    );
    expect_media(
        &mut browser,
        &["carol", "dave"],
        30.0,
        Duration::from_secs(20),
    )
    .await;
    browser.stop().await;

    for n in [a.node, a.plain, b.node, b.plain]
        .into_iter()
        .chain(a.standby)
    {
        n.stop().await;
    }
    drop((a.etcd, b.etcd));
    let _ = std::fs::remove_dir_all(a.dir.parent().unwrap());
    println!(
        "federation test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
