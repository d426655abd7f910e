//! Every API of the control plane and the nodes refuses bad credentials: no token, a forged
//! one, an expired one, and a participant's token where an administrator's is needed.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_api_refuses_bad_credentials() {
    let cluster = Cluster::start(1, 0).await;
    let grpc = cluster.grpc();
    let mut expired = admin_claims("devkey", Duration::from_secs(60));
    expired.exp = 1_000_000;
    let expired = token_for(&expired, "secret");
    let forged = token_for(
        &admin_claims("devkey", Duration::from_secs(60)),
        "wrong-secret",
    );
    let participant = token("someone", "r", true, true);
    let cases: [(&str, &str, tonic::Code); 4] = [
        ("none", "", tonic::Code::Unauthenticated),
        ("forged", &forged, tonic::Code::Unauthenticated),
        ("expired", &expired, tonic::Code::Unauthenticated),
        ("not admin", &participant, tonic::Code::PermissionDenied),
    ];
    let mut rooms = RoomServiceClient::connect(grpc.clone()).await.unwrap();
    let mut nodes = NodeServiceClient::connect(grpc.clone()).await.unwrap();
    for (what, t, code) in cases {
        let mut results: HashMap<&str, tonic::Code> = HashMap::new();
        let c = |r: Result<tonic::Response<_>, tonic::Status>| {
            r.err().map(|s| s.code()).unwrap_or(tonic::Code::Ok)
        };
        results.insert(
            "CreateRoom",
            c(rooms
                .create_room(authed(
                    t,
                    pb::CreateRoomRequest {
                        name: "r".into(),
                        ..Default::default()
                    },
                ))
                .await
                .map(|_| tonic::Response::new(()))),
        );
        results.insert(
            "ListRooms",
            c(rooms
                .list_rooms(authed(t, pb::ListRoomsRequest::default()))
                .await
                .map(|_| tonic::Response::new(()))),
        );
        results.insert(
            "DeleteRoom",
            c(rooms
                .delete_room(authed(t, pb::DeleteRoomRequest { room: "r".into() }))
                .await
                .map(|_| tonic::Response::new(()))),
        );
        results.insert(
            "ListParticipants",
            c(rooms
                .list_participants(authed(
                    t,
                    pb::ListParticipantsRequest {
                        room: "r".into(),
                        ..Default::default()
                    },
                ))
                .await
                .map(|_| tonic::Response::new(()))),
        );
        results.insert(
            "RemoveParticipant",
            c(rooms
                .remove_participant(authed(
                    t,
                    pb::RoomParticipantIdentity {
                        room: "r".into(),
                        identity: "x".into(),
                    },
                ))
                .await
                .map(|_| tonic::Response::new(()))),
        );
        results.insert(
            "MutePublishedTrack",
            c(rooms
                .mute_published_track(authed(
                    t,
                    pb::MuteRoomTrackRequest {
                        room: "r".into(),
                        identity: "x".into(),
                        track_sid: "TR_0".into(),
                        muted: true,
                    },
                ))
                .await
                .map(|_| tonic::Response::new(()))),
        );
        results.insert(
            "UpdateSubscriptions",
            c(rooms
                .update_subscriptions(authed(
                    t,
                    pb::UpdateSubscriptionsRequest {
                        room: "r".into(),
                        identity: "x".into(),
                        track_sids: vec![],
                        subscribe: true,
                    },
                ))
                .await
                .map(|_| tonic::Response::new(()))),
        );
        results.insert(
            "ListNodes",
            c(nodes
                .list_nodes(authed(t, pb::ListNodesRequest {}))
                .await
                .map(|_| tonic::Response::new(()))),
        );
        results.insert(
            "DrainNode",
            c(nodes
                .drain_node(authed(t, pb::DrainNodeRequest { node: "cp1".into() }))
                .await
                .map(|_| tonic::Response::new(()))),
        );
        for (rpc, got) in &results {
            assert_eq!(*got, code, "{rpc} with a {what} token");
        }
    }
    // Join takes the participant's own token: a bad one is refused, over gRPC and JSON.
    let mut join = JoinServiceClient::connect(grpc.clone()).await.unwrap();
    for t in [String::new(), forged.clone(), expired.clone()] {
        let r = join
            .join(pb::JoinRequest {
                token: t.clone(),
                region: String::new(),
                avoid: vec![],
            })
            .await;
        assert_eq!(r.unwrap_err().code(), tonic::Code::Unauthenticated);
        let status = common::http()
            .post(format!("http://{}/v1/join", cluster.control))
            .json(&serde_json::json!({ "token": t }))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401);
    }
    let no_join = {
        let mut c = join_claims("devkey", "x", "r", true, true, Duration::from_secs(60));
        c.video.room_join = false;
        token_for(&c, "secret")
    };
    let r = join
        .join(pb::JoinRequest {
            token: no_join,
            region: String::new(),
            avoid: vec![],
        })
        .await;
    assert_eq!(r.unwrap_err().code(), tonic::Code::PermissionDenied);
    // The nodes' admin API too.
    let node = format!("http://{}", cluster.nodes[0].http_addr);
    let http = common::http();
    for (t, status) in [
        ("", 401),
        (forged.as_str(), 401),
        (expired.as_str(), 401),
        (participant.as_str(), 403),
    ] {
        let mut req = http.post(format!("{node}/admin/drain"));
        if !t.is_empty() {
            req = req.bearer_auth(t);
        }
        assert_eq!(req.send().await.unwrap().status(), status);
        let mut req = http.delete(format!("{node}/admin/rooms/r/participants/x"));
        if !t.is_empty() {
            req = req.bearer_auth(t);
        }
        assert_eq!(req.send().await.unwrap().status(), status);
    }
    cluster.stop().await;
}
