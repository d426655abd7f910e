//! Signaling on the wire, without a browser (a WebSocket speaking LiveKit's protobuf
//! `SignalRequest`s, or our JSON): bad input is counted and the session goes on, metadata
//! updates are answered as LiveKit does, and a session of either protocol is resumed only by
//! its own identity, whether parked or still live. Each test runs one node in-process (about
//! a second).

mod common;

use common::{token, token_for};
use livekit_protocol as lk;
use lk::{signal_request, signal_response};
use sfu_node::auth::join_claims;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// The next binary `SignalResponse` with a message matching `want`, skipping others.
async fn next_response<T>(
    ws: &mut common::control::Ws,
    mut want: impl FnMut(signal_response::Message) -> Option<T>,
) -> T {
    use futures_util::StreamExt;
    use prost::Message as _;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("an answer within 10 s")
            .expect("the session is open")
            .expect("a frame");
        if let Message::Binary(bytes) = frame {
            let response = lk::SignalResponse::decode(bytes).expect("a SignalResponse");
            if let Some(found) = response.message.and_then(&mut want) {
                return found;
            }
        }
    }
}

/// LiveKit's protocol on the wire, without a browser: the connection is the join; a frame that
/// is not a `SignalRequest`, a text frame, announced tracks past the bound and a bad candidate
/// are each counted as signaling errors and the session goes on (it still answers a ping); a
/// metadata update without `canUpdateOwnMetadata` gets LiveKit's `RequestResponse`; a JSON
/// client on the same `/rtc` changes its name and attributes (an oversized metadata refused)
/// and the LiveKit client sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_protocol_bad_input_is_counted_and_the_session_goes_on() {
    use futures_util::SinkExt;
    use prost::Message as _;
    let node = common::start_node().await;
    let base = format!("http://{}", node.http_addr);
    let url = format!(
        "ws://{}/rtc?access_token={}&auto_subscribe=1&sdk=rust&protocol=16",
        node.http_addr,
        token("lk-wire", "wire", true, true)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let join = next_response(&mut ws, |m| match m {
        signal_response::Message::Join(j) => Some(j),
        _ => None,
    })
    .await;
    assert_eq!(join.room.unwrap().name, "wire");
    assert_eq!(join.participant.as_ref().unwrap().identity, "lk-wire");
    assert!(join.server_info.unwrap().protocol >= 16);
    assert!(join.ping_interval > 0 && join.ping_timeout > join.ping_interval);

    let before = common::metric(&common::metrics(&base).await, "sfu_signaling_errors_total");
    let request = |m: signal_request::Message| {
        Message::Binary(
            lk::SignalRequest { message: Some(m) }
                .encode_to_vec()
                .into(),
        )
    };
    ws.send(Message::Binary(vec![0xff, 0xff, 0xff, 0x0f].into()))
        .await
        .unwrap();
    ws.send(Message::Text(r#"{"type":"join"}"#.into()))
        .await
        .unwrap();
    ws.send(request(signal_request::Message::Trickle(
        lk::TrickleRequest {
            candidate_init: "not json".into(),
            target: lk::SignalTarget::Publisher as i32,
            r#final: false,
        },
    )))
    .await
    .unwrap();
    // 32 tracks may be announced and not offered; the 33rd is refused.
    let mut published = 0;
    for i in 0..33 {
        ws.send(request(signal_request::Message::AddTrack(
            lk::AddTrackRequest {
                cid: format!("cid-{i}"),
                r#type: lk::TrackType::Video as i32,
                ..Default::default()
            },
        )))
        .await
        .unwrap();
    }
    ws.send(request(signal_request::Message::PingReq(lk::Ping {
        timestamp: 42,
        rtt: 0,
    })))
    .await
    .unwrap();
    let pong = next_response(&mut ws, |m| match m {
        signal_response::Message::TrackPublished(_) => {
            published += 1;
            None
        }
        signal_response::Message::PongResp(p) => Some(p),
        _ => None,
    })
    .await;
    assert_eq!(pong.last_ping_timestamp, 42);
    assert_eq!(published, 32, "announced tracks are bounded");
    let after = common::metric(&common::metrics(&base).await, "sfu_signaling_errors_total");
    assert_eq!(after - before, 4.0, "four bad requests counted");

    // Metadata without canUpdateOwnMetadata: LiveKit's RequestResponse, with the request's id.
    ws.send(request(signal_request::Message::UpdateMetadata(
        lk::UpdateParticipantMetadata {
            metadata: "mine".into(),
            request_id: 9,
            ..Default::default()
        },
    )))
    .await
    .unwrap();
    let refused = next_response(&mut ws, |m| match m {
        signal_response::Message::RequestResponse(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(refused.request_id, 9);
    assert_eq!(
        refused.reason,
        lk::request_response::Reason::NotAllowed as i32,
        "{refused:?}"
    );

    // A JSON client joins the same room on the same path; with the grant it changes its
    // metadata and the LiveKit client sees it; too much is refused.
    let mut claims = join_claims(
        "devkey",
        "json",
        "wire",
        true,
        true,
        Duration::from_secs(60),
    );
    claims.video.can_update_own_metadata = true;
    let (mut json, joined) = common::control::ws_join(&base, &token_for(&claims, "secret")).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["participants"][0]["identity"], "lk-wire", "{joined}");
    assert_eq!(
        joined["permissions"]["can_update_metadata"], true,
        "{joined}"
    );
    common::control::ws_send(
        &mut json,
        serde_json::json!({"type": "update_metadata", "metadata": "x".repeat(17 * 1024)}),
    )
    .await;
    let error = common::control::next_of(&mut json, &["error"], Duration::from_secs(10)).await;
    assert_eq!(error["code"], "too_large", "{error}");
    common::control::ws_send(
        &mut json,
        serde_json::json!({"type": "update_metadata", "name": "Jason", "attributes": {"k": "v"}}),
    )
    .await;
    let mine =
        common::control::next_of(&mut json, &["participant_updated"], Duration::from_secs(10))
            .await;
    assert_eq!(mine["participant"]["name"], "Jason", "{mine}");
    let seen = next_response(&mut ws, |m| match m {
        signal_response::Message::Update(u) => u
            .participants
            .into_iter()
            .find(|p| p.identity == "json" && p.name == "Jason"),
        _ => None,
    })
    .await;
    assert_eq!(
        (seen.name.as_str(), seen.attributes["k"].as_str()),
        ("Jason", "v")
    );
    node.stop().await;
}

/// A resume on the wire: a LiveKit session whose WebSocket closed is parked, and the same
/// identity coming back with `reconnect=1` and its sid takes it over (`ReconnectResponse`, the
/// same participant, which missed no roster change meanwhile), as it takes over a session
/// whose WebSocket the node still holds; another identity's token, or a sid nobody parked, is
/// told to reconnect fully (`LeaveRequest` `RECONNECT`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_resume_takes_over_its_own_session_parked_or_live() {
    let node = common::start_node().await;
    let url = |identity: &str, extra: &str| {
        format!(
            "ws://{}/rtc?access_token={}&auto_subscribe=1&sdk=rust&protocol=16{extra}",
            node.http_addr,
            token(identity, "resume", true, true)
        )
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(url("anna", ""))
        .await
        .unwrap();
    let join = next_response(&mut ws, |m| match m {
        signal_response::Message::Join(j) => Some(j),
        _ => None,
    })
    .await;
    let sid = join.participant.unwrap().sid;
    ws.close(None).await.unwrap();
    // The node closes its side once the session is parked.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        use futures_util::StreamExt;
        while let Some(Ok(_)) = ws.next().await {}
    });
    drained.await.expect("the node closes the WebSocket");
    // Someone joins while anna is away: she hears of it once resumed.
    let (mut other, _) = tokio_tungstenite::connect_async(url("otto", ""))
        .await
        .unwrap();
    let joined = next_response(&mut other, |m| match m {
        signal_response::Message::Join(j) => Some(j),
        _ => None,
    })
    .await;
    assert!(
        joined.other_participants.iter().any(|p| p.sid == sid),
        "anna is still in the room while parked: {joined:?}"
    );
    let leave = |m| match m {
        signal_response::Message::Leave(l) => Some(l),
        signal_response::Message::Reconnect(_) => panic!("resumed someone else's session"),
        _ => None,
    };
    // Otto cannot take anna's session with his own token; nor can anyone resume a sid that
    // was never parked.
    let (mut thief, _) =
        tokio_tungstenite::connect_async(url("otto", &format!("&reconnect=1&sid={sid}")))
            .await
            .unwrap();
    let refused = next_response(&mut thief, leave).await;
    assert_eq!(refused.action, lk::leave_request::Action::Reconnect as i32);
    let (mut lost, _) = tokio_tungstenite::connect_async(url("anna", "&reconnect=1&sid=PA_0"))
        .await
        .unwrap();
    next_response(&mut lost, leave).await;
    let (mut back, _) =
        tokio_tungstenite::connect_async(url("anna", &format!("&reconnect=1&sid={sid}")))
            .await
            .unwrap();
    let mut resumed = false;
    let otto = next_response(&mut back, |m| match m {
        signal_response::Message::Reconnect(_) => {
            resumed = true;
            None
        }
        signal_response::Message::Update(u) => {
            u.participants.into_iter().find(|p| p.identity == "otto")
        }
        signal_response::Message::Leave(l) => panic!("not resumed: {l:?}"),
        _ => None,
    })
    .await;
    assert!(resumed, "the ReconnectResponse comes first");
    assert_eq!(otto.identity, "otto");
    // Anna's network breaks unnoticed by the node (her WebSocket stays open): her resume
    // takes the live session over, and the old WebSocket is closed.
    let (mut again, _) =
        tokio_tungstenite::connect_async(url("anna", &format!("&reconnect=1&sid={sid}")))
            .await
            .unwrap();
    next_response(&mut again, |m| match m {
        signal_response::Message::Reconnect(r) => Some(r),
        signal_response::Message::Leave(l) => panic!("a live session was not taken over: {l:?}"),
        _ => None,
    })
    .await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        use futures_util::StreamExt;
        while let Some(Ok(m)) = back.next().await {
            if m.is_close() {
                break;
            }
        }
    });
    closed.await.expect("the old WebSocket is closed");
    node.stop().await;
}

/// Our JSON protocol resumes with the same session logic: a session that joined `resumable`
/// and lost its WebSocket is parked (it stays in the room), and its own identity's `join` with
/// `resume` and its sid takes it over (`resumed`, then what it missed), parked or still live;
/// another identity's token gets a fresh join instead, a LiveKit client cannot take over a
/// JSON session, and a session that did not ask to be resumable leaves at once as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_resume_takes_over_its_own_session_parked_or_live() {
    use common::control::{Ws, next_of, ws_send};
    use futures_util::StreamExt;
    use serde_json::json;
    let node = common::start_node().await;
    let connect = |identity: &str| {
        let url = format!(
            "ws://{}/rtc?access_token={}",
            node.http_addr,
            token(identity, "json-resume", true, true)
        );
        async move { tokio_tungstenite::connect_async(url).await.unwrap().0 }
    };
    let join = |mut ws: Ws, message: serde_json::Value| async move {
        ws_send(&mut ws, message).await;
        let answer = next_of(
            &mut ws,
            &["joined", "resumed", "error"],
            Duration::from_secs(10),
        )
        .await;
        (ws, answer)
    };
    let closed = |mut ws: Ws| async move {
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(m)) = ws.next().await {
                if m.is_close() {
                    break;
                }
            }
        });
        drained.await.expect("the node closes the WebSocket");
    };
    let (mut anna, joined) = join(
        connect("anna").await,
        json!({"type": "join", "resumable": true}),
    )
    .await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let sid = joined["participant"]["sid"].as_str().unwrap().to_owned();
    anna.close(None).await.unwrap();
    closed(anna).await;
    let base = format!("http://{}", node.http_addr);
    let parked = || async { common::metric(&common::metrics(&base).await, "sfu_parked_sessions") };
    assert_eq!(
        parked().await,
        1.0,
        "the node closes the WebSocket once parked"
    );
    // Anna is still in the room while parked; Otto joins meanwhile.
    let (otto, joined) = join(connect("otto").await, json!({"type": "join"})).await;
    assert!(
        joined["participants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["sid"] == sid),
        "anna is in the room while parked: {joined}"
    );
    // Eve's token cannot take anna's session: her resume is a join of her own.
    let (_eve, answer) = join(connect("eve").await, json!({"type": "join", "resume": sid})).await;
    assert_eq!(answer["type"], "joined", "{answer}");
    assert_eq!(answer["participant"]["identity"], "eve", "{answer}");
    // A LiveKit client cannot take over a JSON session (its codec never told it anything).
    let url = format!(
        "ws://{}/rtc?access_token={}&sdk=rust&protocol=16&reconnect=1&sid={sid}",
        node.http_addr,
        token("anna", "json-resume", true, true)
    );
    let (mut lk, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    next_response(&mut lk, |m| match m {
        signal_response::Message::Leave(l) => Some(l),
        signal_response::Message::Reconnect(_) => panic!("a JSON session resumed by LiveKit"),
        _ => None,
    })
    .await;
    // Anna comes back: the same participant, told of the joins she missed.
    let (mut back, answer) = join(
        connect("anna").await,
        json!({"type": "join", "resume": sid}),
    )
    .await;
    assert_eq!(answer["type"], "resumed", "{answer}");
    assert_eq!(answer["participant"], sid.as_str(), "{answer}");
    let missed = next_of(&mut back, &["participant_joined"], Duration::from_secs(10)).await;
    assert_eq!(missed["participant"]["identity"], "otto", "{missed}");
    assert_eq!(parked().await, 0.0);
    let metrics = common::metrics(&base).await;
    assert_eq!(common::metric(&metrics, "sfu_sessions_resumed_total"), 1.0);
    // Her network breaks unnoticed by the node: a resume takes the live session over and the
    // old WebSocket is closed.
    let (_again, answer) = join(
        connect("anna").await,
        json!({"type": "join", "resume": sid}),
    )
    .await;
    assert_eq!(answer["type"], "resumed", "{answer}");
    closed(back).await;
    // Otto did not ask to be resumable: his leaving is seen at once.
    let started = std::time::Instant::now();
    let (mut watcher, _) = join(connect("watcher").await, json!({"type": "join"})).await;
    let otto_sid = joined["participant"]["sid"].as_str().unwrap().to_owned();
    drop(otto);
    let left = next_of(&mut watcher, &["participant_left"], Duration::from_secs(5)).await;
    assert_eq!(left["participant"], otto_sid.as_str(), "{left}");
    assert!(started.elapsed() < Duration::from_secs(5));
    node.stop().await;
}

/// `/rtc/v1` (LiveKit's single peer connection) is refused so that livekit-client falls back
/// to `/rtc` at once: the upgrade is a `404`, and so is `/rtc/v1/validate` for a good token,
/// without the words that would make the client give up ("requested room does not exist");
/// for a bad token the validate answers `401` as `/rtc/validate` does, so the client reports
/// it without trying `/rtc` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtc_v1_is_refused_so_that_livekit_clients_fall_back() {
    use tokio_tungstenite::tungstenite::Error;
    let node = common::start_node().await;
    let good = token("v1", "v1-room", true, true);
    let url = format!(
        "ws://{}/rtc/v1?access_token={good}&join_request=AAAA",
        node.http_addr
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(Error::Http(response)) => assert_eq!(response.status(), 404),
        other => panic!("the /rtc/v1 upgrade was not refused with 404: {other:?}"),
    }
    let http = common::http();
    let validate = |t: &str| {
        http.get(format!(
            "http://{}/rtc/v1/validate?access_token={t}",
            node.http_addr
        ))
        .send()
    };
    let response = validate(&good).await.unwrap();
    assert_eq!(response.status(), 404);
    let body = response.text().await.unwrap();
    assert!(
        body.contains("v1 RTC path not served") && !body.contains("requested room does not exist"),
        "{body}"
    );
    let response = validate("forged").await.unwrap();
    assert_eq!(response.status(), 401, "{:?}", response.text().await);
    // The v0 path still joins with the same token.
    let (_ws, joined) =
        common::control::ws_join(&format!("http://{}", node.http_addr), &good).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    node.stop().await;
}
