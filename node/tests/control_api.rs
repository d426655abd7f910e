//! The control plane's operations doing what they say, against real etcd and real nodes:
//! rooms listed with their participants summed over nodes, then deleted; participants
//! removed, muted and re-subscribed by an administrator; empty rooms forgotten after their
//! timeout; the client's region honoured by placement, end to end, and a new meeting's joins
//! asked at once kept on one node.

mod common;

use common::control::{
    Cluster, Ws, admin, authed, eventually, next_of, participants, ws_join, ws_send,
};
use common::sdp::{Answerer, offer};
use common::token;
use serde_json::Value;
use sfu_proto::control as pb;
use sfu_proto::control::join_service_client::JoinServiceClient;
use sfu_proto::control::node_service_client::NodeServiceClient;
use std::time::Duration;

/// Publishes audio and video over WHIP; returns the session URL.
async fn whip_publish(node: &str, room: &str, identity: &str) -> String {
    let r = common::http()
        .post(format!("{node}/whip/{room}"))
        .header("content-type", "application/sdp")
        .bearer_auth(token(identity, room, true, false))
        .body(offer(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "WHIP publish to {node}");
    format!("{node}{}", r.headers()["location"].to_str().unwrap())
}

async fn list_rooms(cluster: &Cluster, names: &[&str]) -> Vec<pb::Room> {
    cluster
        .rooms()
        .await
        .list_rooms(authed(
            &admin(),
            pb::ListRoomsRequest {
                names: names.iter().map(|n| n.to_string()).collect(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .rooms
}

async fn create_room(cluster: &Cluster, name: &str, max_participants: u32, empty_timeout: u32) {
    cluster
        .rooms()
        .await
        .create_room(authed(
            &admin(),
            pb::CreateRoomRequest {
                name: name.into(),
                max_participants,
                empty_timeout,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
}

async fn joined(node: &str, identity: &str, room: &str) -> Ws {
    let (ws, v) = ws_join(node, &token(identity, room, true, true)).await;
    assert_eq!(v["type"], "joined", "{identity} joins {room}: {v}");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rooms_are_listed_with_participants_summed_over_nodes_then_deleted() {
    let cluster = Cluster::start(2, 0).await;
    create_room(&cluster, "summed", 10, 0).await;
    let mut a = joined(&cluster.url(0), "a", "summed").await;
    let mut b = joined(&cluster.url(0), "b", "summed").await;
    let mut c = joined(&cluster.url(1), "c", "summed").await;
    let whip = whip_publish(&cluster.url(1), "summed", "obs").await;
    let _other = joined(&cluster.url(0), "d", "other").await;

    let room = eventually(Duration::from_secs(15), || async {
        let rooms = list_rooms(&cluster, &["summed"]).await;
        rooms
            .into_iter()
            .find(|r| r.num_participants == 4 && r.num_publishers == 1 && r.nodes.len() == 2)
    })
    .await
    .expect("ListRooms counts the participants of both nodes");
    assert_eq!(room.name, "summed");
    assert_eq!(room.max_participants, 10);
    assert_eq!(room.nodes, ["cp1", "cp2"]);
    // Listing every room: "other" was joined last, and its node registers it in etcd
    // asynchronously, so it is waited for.
    let all = eventually(Duration::from_secs(15), || async {
        let all = list_rooms(&cluster, &[]).await;
        let other = all
            .iter()
            .any(|r| r.name == "other" && r.num_participants == 1);
        other.then_some(all)
    })
    .await
    .expect("ListRooms without a filter lists both rooms");
    let count = |name: &str| {
        all.iter()
            .find(|r| r.name == name)
            .map(|r| r.num_participants)
    };
    assert_eq!(count("summed"), Some(4), "{all:?}");
    assert_eq!(count("other"), Some(1), "{all:?}");

    cluster
        .rooms()
        .await
        .delete_room(authed(
            &admin(),
            pb::DeleteRoomRequest {
                room: "summed".into(),
            },
        ))
        .await
        .unwrap();
    for ws in [&mut a, &mut b, &mut c] {
        let left = next_of(ws, &["left"], Duration::from_secs(10)).await;
        assert_eq!(left["reason"], "the room was deleted");
    }
    let http = common::http();
    let ended = eventually(Duration::from_secs(10), || async {
        (http.delete(&whip).send().await.unwrap().status() == 404).then_some(())
    })
    .await;
    assert!(ended.is_some(), "the WHIP session ended with the room");
    let gone = eventually(Duration::from_secs(15), || async {
        let listed = list_rooms(&cluster, &[]).await;
        let names: Vec<String> = listed.iter().map(|r| r.name.clone()).collect();
        (!names.contains(&"summed".to_owned())).then_some(names)
    })
    .await
    .expect("the deleted room disappears from ListRooms");
    assert_eq!(gone, ["other"], "other rooms stay");
    assert!(participants("summed", &cluster.grpc()).await.is_empty());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_administrator_removes_mutes_and_changes_subscriptions() {
    let cluster = Cluster::start(2, 0).await;
    let room = "managed";
    let _whip = whip_publish(&cluster.url(0), room, "obs").await;
    let mut sub = joined(&cluster.url(1), "sub", room).await;
    let mut victim = joined(&cluster.url(1), "victim", room).await;
    let obs = eventually(Duration::from_secs(10), || async {
        participants(room, &cluster.grpc())
            .await
            .into_iter()
            .find(|p| p.identity == "obs" && p.tracks.len() == 2)
    })
    .await
    .expect("the control plane lists obs with its two tracks");
    assert_eq!(obs.node, "cp1");
    let video = obs
        .tracks
        .iter()
        .find(|t| t.kind == "video")
        .unwrap()
        .sid
        .clone();
    let mut rooms = cluster.rooms().await;

    // Mute and unmute obs's video: the answer, the subscriber on the other node and the
    // listing all say so.
    for muted in [true, false] {
        let r = rooms
            .mute_published_track(authed(
                &admin(),
                pb::MuteRoomTrackRequest {
                    room: room.into(),
                    identity: "obs".into(),
                    track_sid: video.clone(),
                    muted,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let t = r.track.expect("the track in the answer");
        assert_eq!((t.sid.as_str(), t.muted), (video.as_str(), muted));
        let m = next_of(&mut sub, &["track_muted"], Duration::from_secs(10)).await;
        assert_eq!(
            (&m["track"], &m["muted"]),
            (&Value::from(video.clone()), &Value::from(muted))
        );
        let listed = eventually(Duration::from_secs(10), || async {
            participants(room, &cluster.grpc())
                .await
                .into_iter()
                .find(|p| p.identity == "obs")?
                .tracks
                .into_iter()
                .find(|t| t.sid == video && t.muted == muted)
        })
        .await;
        assert!(listed.is_some(), "ListParticipants shows muted = {muted}");
    }

    // Subscribe the subscriber (who joined without auto-subscription) to the video, then
    // unsubscribe it: each time the node offers what it now sends.
    let mut answerer = Answerer::default();
    for subscribe in [true, false] {
        rooms
            .update_subscriptions(authed(
                &admin(),
                pb::UpdateSubscriptionsRequest {
                    room: room.into(),
                    identity: "sub".into(),
                    track_sids: vec![video.clone()],
                    subscribe,
                },
            ))
            .await
            .unwrap();
        let o = next_of(&mut sub, &["offer"], Duration::from_secs(10)).await;
        let carries = o["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["track"] == video.as_str());
        assert_eq!(
            carries, subscribe,
            "the offer after subscribe={subscribe}: {o}"
        );
        let answer = answerer.answer(o["sdp"].as_str().unwrap());
        ws_send(
            &mut sub,
            serde_json::json!({"type": "answer", "sdp": answer}),
        )
        .await;
    }

    // Remove the victim: told so, and gone from the listing; the others stay.
    rooms
        .remove_participant(authed(
            &admin(),
            pb::RoomParticipantIdentity {
                room: room.into(),
                identity: "victim".into(),
            },
        ))
        .await
        .unwrap();
    let left = next_of(&mut victim, &["left"], Duration::from_secs(10)).await;
    assert_eq!(left["reason"], "removed by an administrator");
    let remaining = eventually(Duration::from_secs(10), || async {
        let ids: Vec<String> = participants(room, &cluster.grpc())
            .await
            .into_iter()
            .map(|p| p.identity)
            .collect();
        (!ids.contains(&"victim".to_owned())).then_some(ids)
    })
    .await
    .expect("the removed participant leaves the listing");
    assert_eq!(remaining.len(), 2, "{remaining:?}");
    let missing = rooms
        .remove_participant(authed(
            &admin(),
            pb::RoomParticipantIdentity {
                room: room.into(),
                identity: "nobody".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn empty_rooms_are_forgotten_after_their_timeout() {
    let cluster = Cluster::start(1, 0).await;
    create_room(&cluster, "brief", 5, 1).await;
    create_room(&cluster, "busy", 5, 1).await;
    create_room(&cluster, "lasting", 5, 0).await;
    let busy = joined(&cluster.url(0), "someone", "busy").await;
    let names = || async {
        let mut n: Vec<String> = list_rooms(&cluster, &[])
            .await
            .into_iter()
            .map(|r| r.name)
            .collect();
        n.sort();
        n
    };
    eventually(Duration::from_secs(10), || async {
        (names().await == ["brief", "busy", "lasting"]
            && participants("busy", &cluster.grpc()).await.len() == 1)
            .then_some(())
    })
    .await
    .expect("the control plane sees the rooms and the participant");
    // The sweep runs every 10 s in the service; here it runs as often as the test likes.
    let sweep_until_gone = |room: &'static str| {
        let api = cluster.api.clone();
        async move {
            eventually(Duration::from_secs(15), || async {
                api.sweep().await;
                (!names().await.contains(&room.to_owned())).then_some(())
            })
            .await
        }
    };
    assert!(
        sweep_until_gone("brief").await.is_some(),
        "an empty room with a 1 s timeout is forgotten"
    );
    assert_eq!(
        names().await,
        ["busy", "lasting"],
        "a room with a participant, and an empty one with the default timeout (300 s), stay"
    );
    drop(busy);
    assert!(
        sweep_until_gone("busy").await.is_some(),
        "once empty, the busy room goes too"
    );
    assert_eq!(names().await, ["lasting"]);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_honours_the_clients_region() {
    let regions = ["us", "eu", "eu"];
    let cluster = Cluster::start_with(3, |i, c| c.cluster.region = regions[i].into()).await;
    let listed = NodeServiceClient::connect(cluster.grpc())
        .await
        .unwrap()
        .list_nodes(authed(&admin(), pb::ListNodesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .nodes;
    let mut listed: Vec<(String, String)> = listed.into_iter().map(|n| (n.id, n.region)).collect();
    listed.sort();
    assert_eq!(
        listed,
        [("cp1", "us"), ("cp2", "eu"), ("cp3", "eu")].map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    let mut join = JoinServiceClient::connect(cluster.grpc()).await.unwrap();
    for i in 0..6 {
        let t = token(&format!("traveller{i}"), "regional", true, true);
        let place = |region: &str| pb::JoinRequest {
            token: t.clone(),
            region: region.into(),
            avoid: vec![],
        };
        let us = join.join(place("us")).await.unwrap().into_inner();
        assert_eq!(us.node, "cp1", "the only node in us");
        let eu = join.join(place("eu")).await.unwrap().into_inner();
        assert!(["cp2", "cp3"].contains(&eu.node.as_str()), "{eu:?}");
        let elsewhere = join.join(place("ap")).await.unwrap().into_inner();
        assert!(!elsewhere.node.is_empty(), "no node in ap: any node");
        // Browsers ask over JSON, then connect where they were sent.
        let r = cluster
            .place(serde_json::json!({ "token": t, "region": "eu" }))
            .await;
        let node = r["node"].as_str().unwrap().to_owned();
        assert!(["cp2", "cp3"].contains(&node.as_str()), "{r}");
        let index = if node == "cp2" { 1 } else { 2 };
        assert_eq!(r["url"], cluster.url(index));
        let ws = joined(
            r["url"].as_str().unwrap(),
            &format!("traveller{i}"),
            "regional",
        )
        .await;
        let on = eventually(Duration::from_secs(10), || async {
            participants("regional", &cluster.grpc())
                .await
                .into_iter()
                .find(|p| p.identity == format!("traveller{i}"))
                .map(|p| p.node)
        })
        .await;
        assert_eq!(on.as_deref(), Some(node.as_str()));
        drop(ws);
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joins_of_a_new_meeting_asked_at_once_go_to_one_node() {
    // A participant capacity makes each join count against its node until the next report:
    // without the meeting's recent joins, four at once would be spread over the three nodes.
    let cluster = Cluster::start(3, 10).await;
    let place = async |who: String| -> String {
        let r = cluster
            .place(serde_json::json!({ "token": token(&who, "burst", true, true) }))
            .await;
        r["node"].as_str().expect("a node").to_owned()
    };
    // Nobody has connected yet: the registry shows every one of them an empty room.
    let placed = futures_util::future::join_all((0..4).map(|i| place(format!("early{i}")))).await;
    assert!(
        placed.iter().all(|n| *n == placed[0]),
        "one meeting, one node: {placed:?}"
    );
    cluster.stop().await;
}
