//! The `sfuctl` binary against a real `sfu-control` process and etcd: tokens, rooms,
//! participants and nodes, as tables and as JSON, and errors stated plainly.

use serde_json::Value;
use sfu_control::auth::Authenticator;
use sfu_control::records::{Keys, Load, NodeRecord, NodeState, ParticipantRecord, RoomNodeRecord};
use sfu_control::registry::{EtcdRegistry, Registry};
use sfu_control::testing::Etcd;
use std::collections::BTreeMap;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `sfu-control` serving on a free loopback port; stopped when dropped.
struct Service {
    child: Child,
    url: String,
}

impl Service {
    async fn start(etcd: &str) -> Service {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sfu-control"))
            .args(["--etcd", etcd, "--cluster", "ctl", "--dev"])
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sfu-control runs");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = sfu_control::tls::http_client(None, Duration::from_secs(30))
                .unwrap()
                .get(format!("{url}/healthz"))
                .send()
                .await
                && r.status() == 200
            {
                return Service { child, url };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("sfu-control did not serve");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Without keys the control plane does not fall back to the public development key.
#[test]
fn the_control_plane_refuses_to_start_without_keys() {
    let run = |args: &[&str]| {
        // Bounded: a control plane that wrongly starts would otherwise wait for etcd.
        let out = std::process::Command::new("timeout")
            .args(["20", env!("CARGO_BIN_EXE_sfu-control")])
            .args(["--etcd", "http://127.0.0.1:9", "--bind", "127.0.0.1:0"])
            .args(args)
            .env_remove("SFU_KEYS")
            .env_remove("SFU_DEV")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&[]);
    assert!(e.contains("no API keys") && e.contains("--dev"), "{e}");
    let e = run(&["--keys", "prod:short"]);
    assert!(e.contains("at least 32 bytes"), "{e}");
    let e = run(&["--keys", ""]);
    assert!(e.contains("empty"), "{e}");
}

fn sfuctl(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sfuctl"))
        .args(["--url", url])
        .args(args)
        .env_remove("SFU_API_KEY")
        .env_remove("SFU_API_SECRET")
        .output()
        .expect("sfuctl runs")
}

/// Runs a command that must succeed; its standard output.
fn ok(url: &str, args: &[&str]) -> String {
    let out = sfuctl(url, args);
    assert!(
        out.status.success(),
        "sfuctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command with `--json`; its output parsed.
fn json(url: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = ok(url, &all);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("sfuctl {args:?} prints JSON ({e}): {text}"))
}

/// Polls `sfuctl --json ARGS` until `done` holds (the service's view follows etcd).
async fn json_until(url: &str, args: &[&str], done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = json(url, args);
        if done(&v) || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn room<'a>(rooms: &'a Value, name: &str) -> Option<&'a Value> {
    rooms.as_array()?.iter().find(|r| r["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sfuctl_operates_a_cluster_through_sfu_control() {
    let etcd = Etcd::start().expect("etcd starts");
    let service = Service::start(&etcd.endpoint).await;
    let url = service.url.as_str();

    // A node registered as nodes register, with a participant in a room.
    let registry = EtcdRegistry::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    let lease = registry.grant(Duration::from_secs(60)).await.unwrap();
    let keys = Keys::new("ctl");
    let put = |key: String, value: Value| {
        let registry = registry.clone();
        async move {
            registry
                .put(&key, serde_json::to_vec(&value).unwrap(), lease)
                .await
                .unwrap()
        }
    };
    let node = NodeRecord {
        id: "n1".into(),
        region: "eu".into(),
        http_url: "http://127.0.0.1:9".into(),
        relay_addr: None,
        state: NodeState::Active,
        capacity: 0,
        limits: Default::default(),
        load: Load {
            rooms: 1,
            participants: 1,
            tracks: 0,
            cpu: 0.25,
            ..Default::default()
        },
        updated_ms: 0,
    };
    put(keys.node("n1"), serde_json::to_value(&node).unwrap()).await;
    put(
        keys.room_node("lobby", "n1"),
        serde_json::to_value(RoomNodeRecord::default()).unwrap(),
    )
    .await;
    let alice = ParticipantRecord {
        sid: "PA_1".into(),
        identity: "alice".into(),
        name: "Alice".into(),
        node: "n1".into(),
        kind: "client".into(),
        joined_ms: 0,
        stage: true,
        worker: 0,
        metadata: String::new(),
        attributes: Default::default(),
        quality: None,
    };
    put(
        keys.participant("lobby", "PA_1"),
        serde_json::to_value(&alice).unwrap(),
    )
    .await;

    // Tokens are signed locally with the (development) key.
    let keys_in_use: BTreeMap<String, String> = [("devkey".to_owned(), "secret".to_owned())].into();
    let auth = Authenticator::new(&keys_in_use);
    let join = ok(
        url,
        &["token", "create", "--identity", "bob", "--room", "lobby"],
    );
    let g = auth.verify(join.trim()).unwrap();
    assert_eq!(
        (g.identity.as_str(), g.room.as_deref()),
        ("bob", Some("lobby"))
    );
    assert!(g.room_join && g.can_publish && !g.room_admin);
    let admin = ok(url, &["token", "create", "--admin"]);
    assert!(auth.verify(admin.trim()).unwrap().room_admin);

    // Nodes, as JSON and as a table.
    let nodes = json_until(url, &["nodes", "list"], |v| {
        v.as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    assert_eq!(nodes[0]["id"], "n1", "{nodes}");
    assert_eq!(nodes[0]["region"], "eu");
    assert_eq!(nodes[0]["state"], "active");
    assert_eq!(nodes[0]["participants"], 1);
    let table = ok(url, &["nodes", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NODE") && lines[0].contains("REGION"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("n1") && lines[1].contains("eu"),
        "{table}"
    );

    // Rooms: create, list (with the participant the registry holds), delete.
    let created = json(
        url,
        &[
            "rooms",
            "create",
            "town-hall",
            "--max-participants",
            "5",
            "--empty-timeout",
            "60",
        ],
    );
    assert_eq!(
        created,
        serde_json::json!({"name": "town-hall", "max_participants": 5})
    );
    let rooms = json_until(url, &["rooms", "list"], |v| {
        room(v, "town-hall").is_some() && room(v, "lobby").is_some()
    })
    .await;
    let hall = room(&rooms, "town-hall").expect("the new room is listed");
    assert_eq!(
        (&hall["max_participants"], &hall["participants"]),
        (&5.into(), &0.into())
    );
    let lobby = room(&rooms, "lobby").expect("the room with a participant is listed");
    assert_eq!(lobby["participants"], 1);
    assert_eq!(lobby["nodes"], serde_json::json!(["n1"]));
    let table = ok(url, &["rooms", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("town-hall") && l.contains('5')),
        "{table}"
    );
    // The node is not really there: what the registry records of it is listed.
    let people = json(url, &["participants", "list", "lobby"]);
    assert_eq!(people["participants"][0]["identity"], "alice", "{people}");
    assert_eq!(people["participants"][0]["node"], "n1");
    assert_eq!(people["participants"][0]["stage"], true);
    assert_eq!(
        json(url, &["rooms", "delete", "town-hall"]),
        serde_json::json!({"deleted": "town-hall"})
    );
    let rooms = json_until(url, &["rooms", "list"], |v| room(v, "town-hall").is_none()).await;
    assert!(room(&rooms, "town-hall").is_none(), "deleted: {rooms}");
    assert!(room(&rooms, "lobby").is_some());

    // Errors are plain: a wrong secret, an unknown participant, no service.
    let out = sfuctl(url, &["--api-secret", "wrong", "rooms", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: unauthenticated"), "{err}");
    let out = sfuctl(url, &["participants", "remove", "lobby", "nobody"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: not found"), "{err}");
    let out = sfuctl("http://127.0.0.1:9", &["nodes", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the control service"), "{err}");
}

/// `sfuctl recordings`: listing, and unknown rooms and recordings named in plain errors (the
/// recordings themselves are tested end to end in `node/tests/recording.rs`,
/// `room_recording.rs` and `live_stream.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sfuctl_recordings_list_and_refuse_what_does_not_exist() {
    let etcd = Etcd::start().expect("etcd starts");
    let service = Service::start(&etcd.endpoint).await;
    let url = &service.url;
    assert_eq!(json(url, &["recordings", "list"]), serde_json::json!([]));
    let table = ok(url, &["recordings", "list"]);
    assert!(
        table.starts_with("ID  ROOM  KIND  STATE  NODE  FILE"),
        "{table}"
    );
    let out = sfuctl(url, &["recordings", "start", "nowhere", "--track", "TR_1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not found: no room nowhere"), "{err}");
    // A room recording (no --track), streamed live: the same.
    let out = sfuctl(
        url,
        &[
            "recordings",
            "start",
            "nowhere",
            "--stream",
            "rtmp://127.0.0.1/live/x",
            "--hls",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not found: no room nowhere"), "{err}");
    let out = sfuctl(url, &["recordings", "stop", "EG_missing"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not found: no recording EG_missing"), "{err}");
}

/// `sfuctl federation peers add|list|remove`: a peer added at runtime is kept in etcd and
/// listed as `added` (what gateways do with it is tested in `node/tests/federation.rs`); bad
/// input is refused plainly; a room can be mapped to an added peer; an unknown track cannot be
/// stopped nor resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sfuctl_adds_and_removes_federation_peers() {
    let etcd = Etcd::start().expect("etcd starts");
    let service = Service::start(&etcd.endpoint).await;
    let url = &service.url;
    let dir = std::env::temp_dir().join(format!("sfuctl-fed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("b-ca.pem");
    std::fs::write(
        &ca,
        sfu_relay::certs::create_ca("b.example CA").unwrap().cert,
    )
    .unwrap();
    let ca = ca.to_str().unwrap();
    let bad = sfuctl(
        url,
        &[
            "federation",
            "peers",
            "add",
            "b.example",
            "--addr",
            "b1:7443",
            "--ca",
            ca,
        ],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("IP:PORT"), "{err}");
    let added = json(
        url,
        &[
            "federation",
            "peers",
            "add",
            "b.example",
            "--addr",
            "192.0.2.7:7443",
            "--addr",
            "192.0.2.8:7443",
            "--ca",
            ca,
        ],
    );
    assert_eq!(added["source"], "added", "{added}");
    let listed = json(url, &["federation", "peers", "list"]);
    assert_eq!(listed[0]["name"], "b.example", "{listed}");
    assert_eq!(listed[0]["source"], "added");
    assert_eq!(listed[0]["addrs"][1], "192.0.2.8:7443");
    let table = ok(url, &["federation", "peers", "list"]);
    let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        words(lines[0]),
        ["PEER", "SOURCE", "GATEWAYS", "LINKED"],
        "{table}"
    );
    assert_eq!(words(lines[1]), ["b.example", "added"], "{table}");
    // A room can be mapped to it before any gateway links.
    ok(
        url,
        &["federation", "rooms", "map", "joint", "--peer", "b.example"],
    );
    // Only a track a peer announced in the room can be stopped (stopping and resuming one is
    // tested with real gateways in node/tests/federation); none is stopped yet.
    let unknown = sfuctl(
        url,
        &[
            "federation",
            "rooms",
            "stop",
            "joint",
            "TR_0000000000000001",
        ],
    );
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(err.contains("no federated track"), "{err}");
    let resume = sfuctl(
        url,
        &[
            "federation",
            "rooms",
            "resume",
            "joint",
            "TR_0000000000000001",
        ],
    );
    assert!(!resume.status.success());
    let err = String::from_utf8_lossy(&resume.stderr);
    assert!(err.contains("is not stopped"), "{err}");
    assert_eq!(
        json(url, &["federation", "rooms", "stopped", "joint"]),
        serde_json::json!([])
    );
    ok(url, &["federation", "peers", "remove", "b.example"]);
    assert_eq!(
        json(url, &["federation", "peers", "list"]),
        serde_json::json!([])
    );
    let again = sfuctl(url, &["federation", "peers", "remove", "b.example"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("not an added federation peer"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
