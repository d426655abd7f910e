//! A large room on a real cluster: real etcd, three nodes, the control plane placing every
//! peer, and 300 audience peers of the load tester joining a room with two stage publishers.
//!
//! What it shows: the room spreads over the nodes when their capacity is low; nobody is told
//! about each audience member (an observer's WebSocket gets a few dozen messages over the
//! whole ramp: the stage, its tracks, and a count at most once a second); the audience is in
//! the registry as counts, not records; and the control plane still pages through everyone.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use sfu_control::auth::{admin_claims, join_claims, mint};
use sfu_control::testing::Etcd;
use sfu_loadtest::run::{Watch, run};
use sfu_loadtest::scenario::Scenario;
use sfu_node::{Config, Server};
use sfu_proto::control as pb;
use sfu_proto::control::room_service_client::RoomServiceClient;
use std::collections::HashMap;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const ROOM: &str = "town-hall";
const THRESHOLD: u32 = 20;

fn token(identity: &str, publish: bool) -> String {
    let claims = join_claims(
        "devkey",
        identity,
        ROOM,
        publish,
        true,
        Duration::from_secs(600),
    );
    mint("secret", &claims).unwrap()
}

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    let t = mint("secret", &admin_claims("devkey", Duration::from_secs(60))).unwrap();
    r.metadata_mut()
        .insert("authorization", format!("Bearer {t}").parse().unwrap());
    r
}

/// The most the monitor saw while the room was full.
#[derive(Default)]
struct Seen {
    records: usize,
    counted: u32,
    listed: Vec<pb::ParticipantInfo>,
    pages: usize,
}

/// Every participant of the room, page by page (100 a page), and the number of pages.
async fn list_everyone(
    rooms: &mut RoomServiceClient<tonic::transport::Channel>,
) -> (Vec<pb::ParticipantInfo>, usize) {
    let mut everyone = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = rooms
            .list_participants(authed(pb::ListParticipantsRequest {
                room: ROOM.into(),
                page_size: 100,
                page_token,
            }))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.participants.len() <= 100);
        everyone.extend(page.participants);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let before = everyone.len();
    everyone.sort_by(|a, b| a.sid.cmp(&b.sid));
    everyone.dedup_by(|a, b| a.sid == b.sid);
    assert_eq!(before, everyone.len(), "no one listed twice");
    (everyone, pages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_audience_peers_spread_over_nodes_and_are_counted_not_announced() {
    let etcd = Etcd::start().expect("etcd starts");
    let dir = std::env::temp_dir().join(format!("sfu-large-{}", std::process::id()));
    let ids = ["big1", "big2", "big3"];
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    sfu_relay::certs::ensure_dev_certs(&dir, &ids).unwrap();
    let mut nodes = Vec::new();
    for id in &ids {
        let mut c = Config::loopback();
        c.cluster.node_id = id.clone();
        c.cluster.etcd = vec![etcd.endpoint.clone()];
        c.dev = true;
        c.cluster.certs_dir = Some(dir.clone());
        c.cluster.name = "large".into();
        // A low capacity: placement must spread the room before a node fills.
        c.cluster.capacity = 150;
        nodes.push(Server::start(c).await.expect("node starts"));
    }
    // The control plane sees every node (with a load report) before the room starts.
    let (api, control) = sfu_control::testing::serve_control(&etcd.endpoint, "large", 3)
        .await
        .unwrap();
    // Large from its 20th participant on: past that, the audience is counted.
    let mut rooms = RoomServiceClient::connect(control.clone()).await.unwrap();
    rooms
        .create_room(authed(pb::CreateRoomRequest {
            name: ROOM.into(),
            large_room_threshold: THRESHOLD,
            ..Default::default()
        }))
        .await
        .unwrap();

    // An audience member watching from the start: what does it hear during the ramp?
    let http = sfu_control::tls::http_client(None, std::time::Duration::from_secs(30)).unwrap();
    let observer_token = token("observer", false);
    let placed: Value = http
        .post(format!("{control}/v1/join"))
        .json(&serde_json::json!({ "token": observer_token }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ws_url = format!(
        "{}/rtc?access_token={observer_token}",
        placed["url"].as_str().unwrap().replacen("http", "ws", 1)
    );
    let (mut observer, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    observer
        .send(Message::Text(
            r#"{"type":"join","auto_subscribe":false}"#.into(),
        ))
        .await
        .unwrap();
    let (stop_observer, mut stop) = tokio::sync::oneshot::channel::<()>();
    let heard = tokio::spawn(async move {
        let mut types: HashMap<String, usize> = HashMap::new();
        let mut last_count = Value::Null;
        loop {
            let m = tokio::select! {
                m = observer.next() => m,
                _ = &mut stop => break,
            };
            let Some(Ok(m)) = m else { break };
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                let ty = v["type"].as_str().unwrap_or("").to_owned();
                if ty == "participant_count" {
                    last_count = v.clone();
                }
                *types.entry(ty).or_default() += 1;
            }
        }
        let _ = observer.close(None).await;
        (types, last_count)
    });

    let scenario = Scenario::from_toml(&format!(
        r#"
room_prefix = "{ROOM}"
publishers = 2
subscribers = 300
join_rate = 100
warmup_secs = 3
duration_secs = 4

[target]
kind = "sfu"
url = "{url}"
control = "{control}"

[audio]
bitrate_kbps = 24
ptime_ms = 60
"#,
        url = placed["url"].as_str().unwrap(),
    ))
    .unwrap();
    // While the room is full, watch what the registry and the control plane hold.
    let monitor = {
        let api = api.clone();
        let control = control.clone();
        tokio::spawn(async move {
            let mut best = Seen::default();
            let mut rooms = RoomServiceClient::connect(control).await.unwrap();
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (records, _) = api.membership.room(ROOM);
                let counted: u32 = api.membership.audience(ROOM).iter().map(|(_, c)| c).sum();
                best.records = best.records.max(records.len());
                best.counted = best.counted.max(counted);
                if records.len() + counted as usize >= 303 {
                    let (listed, pages) = list_everyone(&mut rooms).await;
                    if listed.len() > best.listed.len() {
                        best.listed = listed;
                        best.pages = pages;
                    }
                    if best.listed.len() == 303 {
                        break;
                    }
                }
            }
            best
        })
    };
    let watch = Watch {
        pids: vec![std::process::id()],
        progress: false,
    };
    let report = run(&scenario, &watch).await.expect("the run completes");
    println!("{report}");
    assert_eq!(report.peers, 302, "{report}");
    assert_eq!(report.peers_failed, 0, "no join fails: {report}");
    assert_eq!(report.peers_connected, 302, "{report}");
    assert!(
        report.peers_per_server.len() >= 2,
        "the room spread over more than one node: {:?}",
        report.peers_per_server
    );
    assert!(
        report.peers_per_server.iter().all(|(_, n)| *n < 302),
        "{:?}",
        report.peers_per_server
    );

    let seen = monitor.await.unwrap();
    // The registry holds the stage one by one and the audience as counts.
    // Each node judges the room's size from its view, a moment behind the others' joins, so
    // a few more than the first 50 may have been announced while it filled.
    assert!(
        seen.records <= THRESHOLD as usize + 20,
        "records: the stage and about the room's first {THRESHOLD}: {}",
        seen.records
    );
    assert!(
        seen.counted >= 250,
        "the audience is counted per node: {}",
        seen.counted
    );
    // The control plane pages through everyone, on every node.
    assert_eq!(
        seen.listed.len(),
        303,
        "300 audience, 2 stage, the observer, in {} pages",
        seen.pages
    );
    assert!(seen.pages >= 4, "{} pages", seen.pages);
    assert_eq!(seen.listed.iter().filter(|p| p.stage).count(), 2);

    let _ = stop_observer.send(());
    let (types, last_count) = heard.await.unwrap();
    for n in nodes {
        n.stop().await;
    }
    let total: usize = types.values().sum();
    println!("the observer heard {total} messages: {types:?}; last count {last_count}");
    // Participants are announced while the room is small (each node judging its size from
    // its view, a moment behind), the stage always; nobody after that.
    let announced = types.get("participant_joined").copied().unwrap_or(0);
    assert!(
        announced <= THRESHOLD as usize + 20,
        "only the first and the stage are announced: {types:?}"
    );
    assert!(
        types.get("participant_left").copied().unwrap_or(0) <= announced,
        "only announced participants are told leaving (when the run ends): {types:?}"
    );
    let counts = types.get("participant_count").copied().unwrap_or(0);
    assert!(
        (1..=20).contains(&counts),
        "counts come coalesced, at most one a second: {counts}"
    );
    assert!(
        types.get("speakers").copied().unwrap_or(0) <= 2 * 20,
        "speaker changes come at most twice a second: {types:?}"
    );
    assert!(
        total - announced <= 60,
        "a few dozen messages for 300 joins, besides the first announced: {types:?}"
    );
    assert!(
        last_count["audience"].as_u64().unwrap_or(0) >= 250,
        "the count reached the audience: {last_count}"
    );
}
