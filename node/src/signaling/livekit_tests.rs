//! Unit tests of the LiveKit encoding ([`super`]): requests in, responses out.

use super::*;
use prost::Message;

fn codec() -> LiveKitCodec {
    LiveKitCodec::new(
        ServerSide {
            node_id: "n1".into(),
            version: "1.9.0".into(),
            ping_interval: 10,
            ping_timeout: 30,
        },
        "room".into(),
    )
}

fn request(m: signal_request::Message) -> Vec<u8> {
    lk::SignalRequest { message: Some(m) }.encode_to_vec()
}

#[test]
fn an_announced_track_gets_its_sid_now_and_goes_to_the_node_with_the_offer() {
    let mut c = codec();
    let d = c
        .decode(&request(signal_request::Message::AddTrack(
            lk::AddTrackRequest {
                cid: "cam-1".into(),
                r#type: lk::TrackType::Video as i32,
                source: lk::TrackSource::Camera as i32,
                ..Default::default()
            },
        )))
        .unwrap();
    let [Decoded::Reply(r)] = &d[..] else {
        panic!("{d:?}")
    };
    let Some(signal_response::Message::TrackPublished(p)) = &r.message else {
        panic!("{r:?}")
    };
    assert_eq!(p.cid, "cam-1");
    let sid = p.track.as_ref().unwrap().sid.clone();
    assert!(sid.starts_with("TR_"), "{sid}");
    let d = c
        .decode(&request(signal_request::Message::Offer(
            lk::SessionDescription {
                r#type: "offer".into(),
                sdp: "v=0".into(),
                id: 3,
                ..Default::default()
            },
        )))
        .unwrap();
    let [
        Decoded::Request(ClientMessage::Publish {
            track_sids,
            sources,
            ..
        }),
    ] = &d[..]
    else {
        panic!("{d:?}")
    };
    assert_eq!(track_sids["cam-1"].to_string(), sid);
    assert_eq!(sources["cam-1"], TrackSourceName::Camera);
    let answer = c.encode(&serde_json::json!({"type": "publish_answer", "sdp": "v=0"}));
    let Some(signal_response::Message::Answer(a)) = &answer[0].message else {
        panic!("{answer:?}")
    };
    assert_eq!((a.id, a.r#type.as_str()), (3, "answer"));
}

#[test]
fn participants_are_sent_whole_and_leaves_by_identity() {
    let mut c = codec();
    c.encode(&serde_json::json!({"type": "joined", "room": "room",
        "participant": {"sid": "PA_1", "identity": "me", "name": "", "stage": true, "tracks": []},
        "participants": [{"sid": "PA_2", "identity": "bob", "name": "Bob", "stage": true, "tracks": []}],
        "permissions": {"can_publish": true, "can_subscribe": true, "admin": false},
        "counts": {"stage": 2, "audience": 0, "raised_hands": 0}}));
    let out = c.encode(&serde_json::json!({"type": "track_published", "track": {
        "sid": "TR_1", "participant": "PA_2", "kind": "video", "codec": "video/VP8",
        "layers": ["q", "h", "f"], "name": "x", "muted": false, "source": "camera"}}));
    let Some(signal_response::Message::Update(u)) = &out[0].message else {
        panic!()
    };
    assert_eq!(u.participants[0].identity, "bob");
    assert_eq!(u.participants[0].tracks[0].layers.len(), 3);
    let out = c.encode(&serde_json::json!({"type": "track_muted", "track": "TR_1", "participant": "PA_2", "muted": true}));
    let Some(signal_response::Message::Update(u)) = &out[0].message else {
        panic!()
    };
    assert!(u.participants[0].tracks[0].muted);
    let out = c.encode(&serde_json::json!({"type": "participant_left", "participant": "PA_2"}));
    let Some(signal_response::Message::Update(u)) = &out[0].message else {
        panic!()
    };
    assert_eq!(u.participants[0].identity, "bob");
    assert_eq!(
        u.participants[0].state,
        lk::participant_info::State::Disconnected as i32
    );
    assert!(
        c.encode(&serde_json::json!({"type": "participant_left", "participant": "PA_2"}))
            .is_empty()
    );
}

#[test]
fn metadata_updates_are_requests_and_refusals_are_request_responses() {
    let mut c = codec();
    c.encode(&serde_json::json!({"type": "joined", "room": "room",
        "participant": {"sid": "PA_1", "identity": "me", "name": "me", "stage": true, "tracks": [],
            "metadata": "from the token", "attributes": {"team": "red"}},
        "participants": [],
        "permissions": {"can_publish": true, "can_subscribe": true, "admin": false, "can_update_metadata": false},
        "counts": {"stage": 1, "audience": 0, "raised_hands": 0}}));
    let d = c
        .decode(&request(signal_request::Message::UpdateMetadata(
            lk::UpdateParticipantMetadata {
                metadata: "new".into(),
                name: String::new(),
                attributes: [("hand".to_owned(), "up".to_owned())].into(),
                request_id: 5,
            },
        )))
        .unwrap();
    let [
        Decoded::Request(ClientMessage::UpdateMetadata {
            name,
            metadata,
            attributes,
        }),
    ] = &d[..]
    else {
        panic!("{d:?}")
    };
    assert_eq!(
        (name, metadata.as_deref()),
        (&None, Some("new")),
        "an empty name stays"
    );
    assert_eq!(attributes["hand"], "up");
    let out = c.encode(&serde_json::json!({"type": "error", "code": "forbidden",
        "message": "no", "request": "update_metadata"}));
    let Some(signal_response::Message::RequestResponse(r)) = &out[0].message else {
        panic!("{out:?}")
    };
    assert_eq!(r.request_id, 5);
    assert_eq!(r.reason, lk::request_response::Reason::NotAllowed as i32);
    // An accepted change comes back as this participant's own update.
    let out = c.encode(
        &serde_json::json!({"type": "participant_updated", "participant":
        {"sid": "PA_1", "identity": "me", "name": "me", "stage": true, "tracks": [],
         "metadata": "new", "attributes": {"team": "red", "hand": "up"}}}),
    );
    let Some(signal_response::Message::Update(u)) = &out[0].message else {
        panic!("{out:?}")
    };
    assert_eq!(u.participants[0].metadata, "new");
    assert_eq!(u.participants[0].attributes.len(), 2);
    assert!(
        u.participants[0].permission.as_ref().unwrap().can_publish,
        "kept"
    );
}

#[test]
fn speakers_who_stop_are_sent_inactive_and_bad_frames_are_errors() {
    let mut c = codec();
    c.encode(&serde_json::json!({"type": "speakers", "speakers": [{"participant": "PA_1", "track": "TR_1", "level": 0.5}]}));
    let out = c.encode(&serde_json::json!({"type": "speakers", "speakers": []}));
    let Some(signal_response::Message::SpeakersChanged(s)) = &out[0].message else {
        panic!()
    };
    assert_eq!(
        (s.speakers[0].sid.as_str(), s.speakers[0].active),
        ("PA_1", false)
    );
    assert_eq!(
        c.decode(&[0xff, 0xff, 0xff]).unwrap_err().code,
        ErrorCode::BadRequest
    );
    let d = c
        .decode(&request(signal_request::Message::PingReq(lk::Ping {
            timestamp: 7,
            rtt: 0,
        })))
        .unwrap();
    let [Decoded::Reply(r)] = &d[..] else {
        panic!()
    };
    assert!(
        matches!(&r.message, Some(signal_response::Message::PongResp(p)) if p.last_ping_timestamp == 7)
    );
}

#[test]
fn recordings_are_told_as_the_rooms_active_recording_and_stay_told() {
    let mut c = codec();
    let room = |out: Vec<lk::SignalResponse>| match &out[0].message {
        Some(signal_response::Message::RoomUpdate(u)) => u.room.clone().unwrap(),
        m => panic!("{m:?}"),
    };
    let r = room(
        c.encode(&serde_json::json!({"type": "participant_count", "stage": 2, "audience": 1})),
    );
    assert!(!r.active_recording);
    let r = room(c.encode(
        &serde_json::json!({"type": "recording", "id": "EG_1", "kind": "room", "active": true}),
    ));
    assert!(r.active_recording);
    assert_eq!(r.num_participants, 3, "a recording update keeps the counts");
    let r = room(
        c.encode(&serde_json::json!({"type": "participant_count", "stage": 2, "audience": 2})),
    );
    assert!(r.active_recording, "a count update keeps the recording");
    c.encode(
        &serde_json::json!({"type": "recording", "id": "EG_2", "kind": "track", "active": true}),
    );
    let r = room(c.encode(
        &serde_json::json!({"type": "recording", "id": "EG_1", "kind": "room", "active": false}),
    ));
    assert!(r.active_recording, "EG_2 still runs");
    let r = room(c.encode(
        &serde_json::json!({"type": "recording", "id": "EG_2", "kind": "track", "active": false}),
    ));
    assert!(!r.active_recording);
}
