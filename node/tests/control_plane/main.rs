//! The control plane against real etcd and real nodes: the room limit under concurrent joins
//! (and against reloads and WHEP players sharing a token), one session per identity across
//! nodes, placement filling a node then spilling, draining a browser subscriber's node, every
//! API refusing bad credentials, an audience member promoted and demoted across nodes
//! (Chromium), a join storm told to come back later, and LiveKit's server SDK managing rooms
//! through the Twirp RoomService.

#[path = "../common/mod.rs"]
mod common;

mod credentials;

use common::control::{Cluster, Ws, admin, authed, eventually, next_of, participants, ws_join};
use common::{Browser, browser_lock, expect_media, stat, state, token, token_for};
use serde_json::Value;
use sfu_control::auth::{admin_claims, join_claims};
use sfu_proto::control as pb;
use sfu_proto::control::join_service_client::JoinServiceClient;
use sfu_proto::control::node_service_client::NodeServiceClient;
use sfu_proto::control::room_service_client::RoomServiceClient;
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_joins_into_a_room_of_twenty_admit_exactly_twenty() {
    let cluster = Cluster::start(3, 0).await;
    let mut rooms = RoomServiceClient::connect(cluster.grpc()).await.unwrap();
    rooms
        .create_room(authed(
            &admin(),
            pb::CreateRoomRequest {
                name: "limited".into(),
                max_participants: 20,
                empty_timeout: 0,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    // No pause: the rush starts as soon as the room exists, before some nodes have seen it.
    let urls: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("http://{}", n.http_addr))
        .collect();
    let joins = (0..50).map(|i| {
        let url = urls[i % urls.len()].clone();
        tokio::spawn(async move {
            ws_join(&url, &token(&format!("user{i}"), "limited", true, true)).await
        })
    });
    let results: Vec<(Ws, Value)> = futures_util::future::join_all(joins)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let admitted = results
        .iter()
        .filter(|(_, v)| v["type"] == "joined")
        .count();
    let refused: Vec<&Value> = results
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["type"] == "error")
        .collect();
    assert_eq!(admitted, 20, "exactly the limit is admitted");
    assert_eq!(refused.len(), 30);
    assert!(
        refused.iter().all(|v| v["code"] == "room_full"),
        "{refused:?}"
    );
    // The control plane agrees.
    let mut seen = 0;
    for _ in 0..50 {
        seen = participants("limited", &cluster.grpc()).await.len();
        if seen == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 20);
    drop(results);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_and_whep_players_sharing_a_token_stay_within_the_limit() {
    let cluster = Cluster::start(2, 0).await;
    let mut rooms = RoomServiceClient::connect(cluster.grpc()).await.unwrap();
    rooms
        .create_room(authed(
            &admin(),
            pb::CreateRoomRequest {
                name: "tight".into(),
                max_participants: 2,
                empty_timeout: 0,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let t = |who: &str| token(who, "tight", true, true);
    let (a, b) = (cluster.url(0), cluster.url(1));
    let (mut alice, j) = ws_join(&a, &t("alice")).await;
    assert_eq!(j["type"], "joined", "{j}");
    let (bob, j) = ws_join(&b, &t("bob")).await;
    assert_eq!(j["type"], "joined", "{j}");
    // Alice reloads: her new session replaces the old one, in a full room.
    let (alice2, j) = ws_join(&a, &t("alice")).await;
    assert_eq!(j["type"], "joined", "a reload gets in: {j}");
    let left = next_of(&mut alice, &["left"], Duration::from_secs(10)).await;
    assert_eq!(
        left["reason"],
        "another session joined with the same identity"
    );
    // Still two places taken: nobody else gets in, nor a second session of alice elsewhere.
    for (node, who) in [(&b, "carol"), (&a, "carol"), (&b, "alice")] {
        let (_ws, j) = ws_join(node, &t(who)).await;
        assert_eq!(j["code"], "room_full", "{who} on {node}: {j}");
    }
    drop((alice2, bob));
    let emptied = eventually(Duration::from_secs(10), || async {
        participants("tight", &cluster.grpc())
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(emptied.is_some());
    // WHEP players sharing one viewer token each take a place.
    let viewer = token("viewer", "tight", false, true);
    let http = common::http();
    let mut statuses = Vec::new();
    for node in [&a, &a, &b, &b] {
        // The places of the sessions that just left are released a moment after they go.
        let status = eventually(Duration::from_secs(10), || async {
            let r = http
                .post(format!("{node}/whep/tight"))
                .header("content-type", "application/sdp")
                .bearer_auth(&viewer)
                .body(common::sdp::offer(false))
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s == 201 || statuses.len() >= 2).then_some(s)
        })
        .await
        .expect("an answer");
        statuses.push(status);
    }
    assert_eq!(
        statuses,
        [201, 201, 503, 503],
        "two players, then room_full"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_identity_has_one_session_across_the_cluster() {
    let cluster = Cluster::start(2, 0).await;
    let t = |who: &str| token(who, "open", true, true);
    let (a, b) = (cluster.url(0), cluster.url(1));
    let (mut bob, j) = ws_join(&a, &t("bob")).await;
    assert_eq!(j["type"], "joined", "{j}");
    let (mut alice_a, j) = ws_join(&a, &t("alice")).await;
    assert_eq!(j["type"], "joined", "{j}");
    let first = j["participant"]["sid"].clone();
    // Alice opens the room again, placed on the other node: the session on node a ends.
    let (mut alice_b, j) = ws_join(&b, &t("alice")).await;
    assert_eq!(j["type"], "joined", "{j}");
    let second = j["participant"]["sid"].clone();
    let left = next_of(&mut alice_a, &["left"], Duration::from_secs(10)).await;
    assert_eq!(
        left["reason"],
        "another session joined with the same identity"
    );
    // Bob sees the old session leave, and the registry ends with the new one only.
    while next_of(&mut bob, &["participant_left"], Duration::from_secs(10)).await["participant"]
        != first
    {}
    assert!(
        only_session_on(&cluster, "alice", 1).await,
        "one alice, on node b"
    );
    // And back on node a: now the session on node b ends, whatever the nodes' clocks say.
    let (_alice_a2, j) = ws_join(&a, &t("alice")).await;
    assert_eq!(j["type"], "joined", "{j}");
    let left = next_of(&mut alice_b, &["left"], Duration::from_secs(10)).await;
    assert_eq!(
        left["reason"], "another session joined with the same identity",
        "{second}"
    );
    assert!(
        only_session_on(&cluster, "alice", 0).await,
        "one alice, on node a"
    );
    cluster.stop().await;
}

/// Whether the control plane comes to list exactly one session of `identity` in room `open`,
/// on node `node`, within ten seconds.
async fn only_session_on(cluster: &Cluster, identity: &str, node: usize) -> bool {
    let node = &cluster.nodes[node].node_id;
    eventually(Duration::from_secs(10), || async {
        let sessions: Vec<_> = participants("open", &cluster.grpc())
            .await
            .into_iter()
            .filter(|p| p.identity == identity)
            .collect();
        (sessions.len() == 1 && sessions[0].node == *node).then_some(())
    })
    .await
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_fills_a_node_up_to_capacity_then_spills_and_the_room_stays_one() {
    let cluster = Cluster::start(3, 5).await;
    let mut sockets = Vec::new();
    let mut placed: Vec<String> = Vec::new();
    let mut last = Value::Null;
    for i in 0..6 {
        let t = token(&format!("p{i}"), "placed", true, true);
        let r = cluster.place(serde_json::json!({ "token": t })).await;
        let url = r["url"].as_str().expect("a node URL").to_owned();
        placed.push(r["node"].as_str().unwrap().to_owned());
        let (ws, joined) = ws_join(&url, &t).await;
        assert_eq!(joined["type"], "joined", "{joined}");
        last = joined;
        sockets.push(ws);
        // Placement sees the participant before the next join.
        for _ in 0..100 {
            if participants("placed", &cluster.grpc()).await.len() == i + 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        placed[..5].iter().all(|n| *n == placed[0]),
        "the first five share a node: {placed:?}"
    );
    assert_ne!(
        placed[5], placed[0],
        "the sixth spills to another node: {placed:?}"
    );
    // The sixth's roster is its node's view of the registry; any of the first five that view
    // did not hold yet (its watch lags on a loaded machine) is announced right after.
    let mut others: Vec<String> = last["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["identity"].as_str().unwrap().to_owned())
        .collect();
    while others.len() < 5 {
        let m = next_of(
            &mut sockets[5],
            &["participant_joined"],
            Duration::from_secs(10),
        )
        .await;
        others.push(m["participant"]["identity"].as_str().unwrap().to_owned());
    }
    others.sort();
    assert_eq!(
        others,
        ["p0", "p1", "p2", "p3", "p4"],
        "the sixth sees the first five across nodes"
    );
    drop(sockets);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draining_a_subscribers_node_moves_it_and_its_video_resumes() {
    let _guard = browser_lock().await;
    let cluster = Cluster::start(3, 0).await;
    let url = |i: usize| format!("http://{}", cluster.nodes[i].http_addr);
    let room = "drained";
    let mut browser = Browser::launch(&[
        (
            "pub",
            format!(
                "{}/demo.html?room={room}&identity=alice&autojoin=1&publish=1&simulcast=0",
                url(0)
            ),
        ),
        (
            "sub",
            format!(
                "{}/demo.html?room={room}&identity=bob&autojoin=1&publish=0",
                url(1)
            ),
        ),
    ])
    .await;
    expect_media(&mut browser, &["sub"], 30.0, Duration::from_secs(60)).await;

    let mut nodes = NodeServiceClient::connect(cluster.grpc()).await.unwrap();
    nodes
        .drain_node(authed(
            &admin(),
            pb::DrainNodeRequest {
                node: cluster.nodes[1].node_id.clone(),
            },
        ))
        .await
        .unwrap();
    // The subscriber is told to move, reconnects elsewhere, and decodes video there.
    let (moved, s) = browser
        .until(Duration::from_secs(60), |s| {
            stat(s, "sub", "migrations") >= 1.0
                && s["pages"]["sub"]["stats"]["url"].as_str() != Some(url(1).as_str())
                && stat(s, "sub", "framesDecoded") >= 30.0
        })
        .await;
    assert!(moved, "the subscriber moved and its video resumed: {s:#}");
    // The drained node is empty and done.
    tokio::time::timeout(Duration::from_secs(30), cluster.nodes[1].drain.finished())
        .await
        .expect("the drain finishes once the node is empty");
    assert_eq!(cluster.nodes[1].media.snapshot().await.participants, 0);
    browser.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_audience_member_promoted_on_one_node_is_seen_on_another_and_demotion_unpublishes() {
    let _guard = browser_lock().await;
    let cluster = Cluster::start(3, 0).await;
    let url = |i: usize| format!("http://{}", cluster.nodes[i].http_addr);
    let room = "stage";
    // Both join without the right to publish: the audience.
    let mut browser = Browser::launch(&[
        (
            "carol",
            format!(
                "{}/demo.html?room={room}&identity=carol&autojoin=1&publish=0&simulcast=0",
                url(2)
            ),
        ),
        (
            "dave",
            format!(
                "{}/demo.html?room={room}&identity=dave&autojoin=1&publish=0",
                url(0)
            ),
        ),
    ])
    .await;
    let (joined, s) = browser
        .until(Duration::from_secs(30), |s| {
            state(s, "carol") == "joined" && state(s, "dave") == "joined"
        })
        .await;
    assert!(joined, "{s:#}");
    assert_eq!(
        s["pages"]["carol"]["stats"]["permissions"]["can_publish"], false,
        "{s:#}"
    );

    // Carol raises her hand on node 3; the control plane sees the queue.
    browser
        .eval("carol", "document.getElementById('hand').click()")
        .await;
    let grpc = cluster.grpc();
    let mut rooms = RoomServiceClient::connect(grpc.clone()).await.unwrap();
    let hands = eventually(Duration::from_secs(10), || {
        let mut rooms = rooms.clone();
        async move {
            let page = rooms
                .list_participants(authed(
                    &admin(),
                    pb::ListParticipantsRequest {
                        room: "stage".into(),
                        ..Default::default()
                    },
                ))
                .await
                .ok()?
                .into_inner();
            (!page.raised_hands.is_empty()).then_some(page.raised_hands)
        }
    })
    .await
    .expect("the raised hand is listed");
    assert_eq!(hands[0].identity, "carol");

    // An administrator lets her on stage: she publishes on her connection, and Dave, on
    // node 1, decodes her camera.
    rooms
        .update_participant(authed(
            &admin(),
            pb::UpdateParticipantRequest {
                room: room.into(),
                identity: "carol".into(),
                permission: Some(pb::ParticipantPermission {
                    can_publish: Some(true),
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let last = expect_media(&mut browser, &["dave"], 30.0, Duration::from_secs(60)).await;
    assert_eq!(
        last["pages"]["carol"]["stats"]["permissions"]["can_publish"], true,
        "{last:#}"
    );
    assert_eq!(
        last["pages"]["carol"]["stats"]["hands"],
        serde_json::json!([]),
        "promotion lowered her hand: {last:#}"
    );

    // A participant may not promote anyone.
    let (mut eve, j) = ws_join(&url(0), &token("eve", room, false, true)).await;
    assert_eq!(j["type"], "joined", "{j}");
    common::control::ws_send(
        &mut eve,
        serde_json::json!({"type": "update_participant", "identity": "dave", "can_publish": true}),
    )
    .await;
    let refused = next_of(&mut eve, &["error"], Duration::from_secs(10)).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");

    // Demoted, her tracks are unpublished and Dave is told.
    rooms
        .update_participant(authed(
            &admin(),
            pb::UpdateParticipantRequest {
                room: room.into(),
                identity: "carol".into(),
                permission: Some(pb::ParticipantPermission {
                    can_publish: Some(false),
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let (told, s) = browser
        .until(Duration::from_secs(30), |s| {
            let unpublished = s["pages"]["dave"]["stats"]["unpublished"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|i| *i == "carol").count());
            unpublished >= 2 && s["pages"]["carol"]["stats"]["permissions"]["can_publish"] == false
        })
        .await;
    assert!(told, "both of carol's tracks were unpublished: {s:#}");
    drop(eve);
    browser.stop().await;
    cluster.stop().await;
}

/// Opens a WebSocket to a node: the socket, or the status and `Retry-After` of a refusal.
async fn ws_connect(http: &str, token: &str) -> Result<Ws, (u16, Option<u64>)> {
    let host = http.trim_start_matches("http://");
    match tokio_tungstenite::connect_async(format!("ws://{host}/rtc?access_token={token}")).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err((
            r.status().as_u16(),
            r.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse().ok()),
        )),
        Err(e) => panic!("connecting: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_join_storm_is_told_to_come_back_and_every_join_gets_in() {
    let cluster = Cluster::start_with(2, |_, c| c.limits.joins_per_sec = 5).await;
    let node = format!("http://{}", cluster.nodes[0].http_addr);
    // Thirty joins at once into a node admitting five a second.
    let tries = (0..30).map(|i| {
        let node = node.clone();
        tokio::spawn(async move {
            let t = token(&format!("storm{i}"), "storm", false, true);
            let mut refusals = 0;
            loop {
                match ws_connect(&node, &t).await {
                    Ok(mut ws) => {
                        common::control::ws_send(&mut ws, serde_json::json!({"type": "join"}))
                            .await;
                        let j =
                            next_of(&mut ws, &["joined", "error"], Duration::from_secs(15)).await;
                        assert_eq!(j["type"], "joined", "{j}");
                        return (ws, refusals);
                    }
                    Err((429, Some(wait))) => {
                        assert!((1..=10).contains(&wait), "Retry-After {wait}");
                        refusals += 1;
                        tokio::time::sleep(Duration::from_millis(
                            wait * 1000 + rand::random::<u64>() % 1000,
                        ))
                        .await;
                    }
                    Err(other) => panic!("refused otherwise: {other:?}"),
                }
            }
        })
    });
    let results: Vec<(Ws, u32)> = futures_util::future::join_all(tries)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let refused = results.iter().filter(|(_, r)| *r > 0).count();
    assert!(refused >= 15, "most were told to come back: {refused}");
    assert_eq!(results.len(), 30, "and every join got in");
    let throttled = cluster.nodes[0].metrics.joins_throttled.get();
    assert!(throttled >= 15, "counted: {throttled}");
    drop(results);

    // The control plane knows each node's rate: past both, it says when to come back.
    let http = common::http();
    let asks = (0..30).map(|i| {
        let http = http.clone();
        let control = cluster.control;
        tokio::spawn(async move {
            let t = token(&format!("placed{i}"), "storm2", false, true);
            http.post(format!("http://{control}/v1/join"))
                .json(&serde_json::json!({ "token": t }))
                .send()
                .await
                .unwrap()
        })
    });
    let answers: Vec<reqwest::Response> = futures_util::future::join_all(asks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let placed = answers.iter().filter(|r| r.status() == 200).count();
    let busy: Vec<&reqwest::Response> = answers.iter().filter(|r| r.status() == 429).collect();
    assert!(
        (10..=12).contains(&placed),
        "two nodes' second's worth: {placed}"
    );
    assert_eq!(placed + busy.len(), 30);
    assert!(
        busy.iter().all(|r| r.headers().contains_key("retry-after")),
        "every 429 says when to come back"
    );
    cluster.stop().await;
}

/// LiveKit's server SDK for Node.js (`livekit-server-sdk` from npm), unchanged, manages the
/// rooms of a two-node cluster through the control plane's Twirp RoomService: a room spanning
/// both nodes lists its participants from both, one is removed, errors come back as Twirp's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn livekit_server_sdk_manages_rooms_through_twirp() {
    let cluster = Cluster::start(2, 0).await;
    let (_alice, joined) = ws_join(&cluster.url(0), &token("alice", "lk", true, true)).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let (_bob, joined) = ws_join(&cluster.url(1), &token("bob", "lk", true, true)).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    eventually(Duration::from_secs(10), || async {
        (participants("lk", &cluster.grpc()).await.len() == 2).then_some(())
    })
    .await
    .expect("both participants are registered");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/twirp.mjs");
    let run = tokio::process::Command::new("node")
        .arg(script)
        .args([&cluster.grpc(), "devkey", "secret", "lk", "bob"])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the SDK script finishes")
        .expect("node runs");
    assert!(
        out.status.success(),
        "livekit-server-sdk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["created"]["name"], "lk-new", "{seen}");
    assert_eq!(seen["created"]["maxParticipants"], 7, "{seen}");
    assert_eq!(seen["rooms"], serde_json::json!(["lk", "lk-new"]), "{seen}");
    assert_eq!(
        seen["before"],
        serde_json::json!(["alice", "bob"]),
        "{seen}"
    );
    assert_eq!(seen["one"]["identity"], "bob", "{seen}");
    assert_eq!(seen["one"]["node"], "cp2", "{seen}");
    assert_eq!(seen["after"], serde_json::json!(["alice"]), "{seen}");
    assert_eq!(seen["missing"]["status"], 404, "{seen}");
    assert_eq!(seen["missing"]["code"], "not_found", "{seen}");
    assert_eq!(seen["forged"]["status"], 401, "{seen}");
    assert_eq!(seen["sendData"], "succeeded", "{seen}");
    assert_eq!(
        seen["roomsAfterDelete"],
        serde_json::json!(["lk"]),
        "{seen}"
    );
    // Protobuf bodies work as JSON ones do, and a wrong content type is Twirp's bad_route.
    use prost::Message;
    let http = common::http();
    let url = format!("{}/twirp/livekit.RoomService/ListRooms", cluster.grpc());
    let r = http
        .post(&url)
        .bearer_auth(admin())
        .header("content-type", "application/protobuf")
        .body(livekit_protocol::ListRoomsRequest::default().encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/protobuf");
    let listed = livekit_protocol::ListRoomsResponse::decode(r.bytes().await.unwrap()).unwrap();
    assert_eq!(listed.rooms.len(), 1);
    assert_eq!(listed.rooms[0].name, "lk");
    assert_eq!(listed.rooms[0].num_participants, 1);
    let r = http
        .post(&url)
        .bearer_auth(admin())
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["code"], "bad_route", "{error}");

    // The removal holds for our own API too.
    let left: Vec<String> = participants("lk", &cluster.grpc())
        .await
        .into_iter()
        .map(|p| p.identity)
        .collect();
    assert_eq!(left, vec!["alice".to_owned()]);
    cluster.stop().await;
}
