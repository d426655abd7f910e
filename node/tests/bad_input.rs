//! Bad input gets a precise answer and harms nothing: while a Chromium publisher and
//! subscriber stream in one room, this test throws malformed SDP, bad tokens, bad JSON and
//! garbage UDP at the node, checks each answer, and checks that the other room's subscriber kept
//! decoding video every second throughout.

mod common;

use common::{Browser, browser_lock, expect_media, start_node, stat, token, token_for};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use sfu_node::auth::join_claims;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

async fn post_sdp(
    base: &str,
    path: &str,
    bearer: Option<&str>,
    ctype: &str,
    body: String,
) -> (u16, Value) {
    let mut req = common::http()
        .post(format!("{base}{path}"))
        .header("content-type", ctype)
        .body(body);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let is_problem = r.headers().get("content-type").is_some_and(|v| {
        v.to_str()
            .unwrap_or("")
            .starts_with("application/problem+json")
    });
    let body = r.text().await.unwrap();
    let json = if is_problem {
        serde_json::from_str(&body).unwrap()
    } else {
        Value::String(body)
    };
    (status, json)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(addr: SocketAddr, token: Option<&str>) -> Result<Ws, u16> {
    let url = match token {
        Some(t) => format!("ws://{addr}/rtc?access_token={t}"),
        None => format!("ws://{addr}/rtc"),
    };
    match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("unexpected WebSocket error: {e}"),
    }
}

async fn ws_request(ws: &mut Ws, text: String) -> Value {
    ws.send(Message::Text(text.into())).await.unwrap();
    ws_next(ws).await
}

/// The next answer, past the room's events (others joining, leaving, counts, speakers),
/// which may come at any time.
async fn ws_next(ws: &mut Ws) -> Value {
    const EVENTS: [&str; 6] = [
        "participant_joined",
        "participant_left",
        "participant_updated",
        "participant_count",
        "speakers",
        "track_unpublished",
    ];
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer within 10 s")
            .expect("connection open")
            .unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if !EVENTS.contains(&v["type"].as_str().unwrap_or("")) {
                return v;
            }
        }
    }
}

fn assert_error(v: &Value, code: &str) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(!v["message"].as_str().unwrap_or("").is_empty(), "{v}");
}

/// Every kind of bad input, each checked against its expected answer.
async fn attack(base: String, addr: SocketAddr, udp: Vec<SocketAddr>) {
    let room = "victim";
    let offer = common::sdp::offer(true);
    let good = token("mallory", room, true, true);
    let whip = format!("/whip/{room}");

    // Malformed SDP, over WHIP and WHEP.
    let (s, p) = post_sdp(
        &base,
        &whip,
        Some(&good),
        "application/sdp",
        "v=0\r\nthis is not sdp".into(),
    )
    .await;
    assert_eq!((s, p["type"].as_str()), (400, Some("invalid_sdp")), "{p}");
    let (s, p) = post_sdp(
        &base,
        &format!("/whep/{room}"),
        Some(&good),
        "application/sdp",
        "garbage".into(),
    )
    .await;
    assert_eq!((s, p["type"].as_str()), (400, Some("invalid_sdp")), "{p}");
    // Wrong content type, oversized body.
    let (s, _) = post_sdp(&base, &whip, Some(&good), "text/plain", offer.clone()).await;
    assert_eq!(s, 415);
    let (s, p) = post_sdp(
        &base,
        &whip,
        Some(&good),
        "application/sdp",
        "a".repeat(200_000),
    )
    .await;
    assert_eq!((s, p["type"].as_str()), (413, Some("too_large")), "{p}");
    // An offer asking for 100 media sections is refused before it is parsed.
    let many: String = (2..100)
        .map(|i| format!("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:{i}\r\n"))
        .collect();
    let hundred = format!("{offer}{many}");
    let (s, p) = post_sdp(
        &base,
        &whip,
        Some(&good),
        "application/sdp",
        hundred.clone(),
    )
    .await;
    assert_eq!((s, p["type"].as_str()), (400, Some("invalid_sdp")), "{p}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("more than 16 media sections"),
        "{p}"
    );

    // Tokens: missing, expired, forged, for another room, without canPublish.
    let (s, p) = post_sdp(&base, &whip, None, "application/sdp", offer.clone()).await;
    assert_eq!(
        (s, p["detail"].as_str()),
        (401, Some("missing access token")),
        "{p}"
    );
    let mut expired = join_claims(
        "devkey",
        "mallory",
        room,
        true,
        true,
        Duration::from_secs(60),
    );
    expired.exp = 1_000_000;
    let expired = token_for(&expired, "secret");
    let (s, p) = post_sdp(
        &base,
        &whip,
        Some(&expired),
        "application/sdp",
        offer.clone(),
    )
    .await;
    assert_eq!(
        (s, p["detail"].as_str()),
        (401, Some("token expired")),
        "{p}"
    );
    let forged = token_for(
        &join_claims(
            "devkey",
            "mallory",
            room,
            true,
            true,
            Duration::from_secs(60),
        ),
        "not-the-secret",
    );
    let (s, p) = post_sdp(
        &base,
        &whip,
        Some(&forged),
        "application/sdp",
        offer.clone(),
    )
    .await;
    assert_eq!(
        (s, p["detail"].as_str()),
        (401, Some("invalid token signature")),
        "{p}"
    );
    let (s, p) = post_sdp(
        &base,
        &whip,
        Some("abc.def.ghi"),
        "application/sdp",
        offer.clone(),
    )
    .await;
    assert_eq!(
        (s, p["detail"].as_str()),
        (401, Some("malformed access token")),
        "{p}"
    );
    let other_room = token("mallory", "canary", true, true);
    let (s, p) = post_sdp(
        &base,
        &whip,
        Some(&other_room),
        "application/sdp",
        offer.clone(),
    )
    .await;
    assert_eq!(
        (s, p["detail"].as_str()),
        (403, Some("token is for another room")),
        "{p}"
    );
    let viewer = token("mallory", room, false, true);
    let (s, p) = post_sdp(
        &base,
        &whip,
        Some(&viewer),
        "application/sdp",
        offer.clone(),
    )
    .await;
    assert_eq!((s, p["type"].as_str()), (403, Some("forbidden")), "{p}");

    // The same over the WebSocket: refused before the upgrade.
    assert_eq!(ws_connect(addr, None).await.err(), Some(401));
    assert_eq!(ws_connect(addr, Some(&expired)).await.err(), Some(401));
    assert_eq!(ws_connect(addr, Some(&forged)).await.err(), Some(401));
    let canary_intruder = token("mallory", "canary", true, true);
    let wrong_room_claims = {
        let mut c = join_claims(
            "devkey",
            "mallory",
            "canary",
            true,
            true,
            Duration::from_secs(60),
        );
        c.video.room_join = false;
        c
    };
    assert_eq!(
        ws_connect(addr, Some(&token_for(&wrong_room_claims, "secret")))
            .await
            .err(),
        Some(403)
    );
    drop(canary_intruder);

    // A viewer token may join but not publish.
    let mut ws = ws_connect(addr, Some(&viewer)).await.unwrap();
    let v = ws_request(
        &mut ws,
        serde_json::json!({"type": "publish", "sdp": offer}).to_string(),
    )
    .await;
    assert_error(&v, "invalid_state");
    let v = ws_request(&mut ws, r#"{"type":"join"}"#.into()).await;
    assert_eq!(v["type"], "joined", "{v}");
    let v = ws_request(
        &mut ws,
        serde_json::json!({"type": "publish", "sdp": offer}).to_string(),
    )
    .await;
    assert_error(&v, "forbidden");
    // Malformed and oversized JSON, unknown messages, bad references.
    let v = ws_request(&mut ws, "{not json".into()).await;
    assert_error(&v, "bad_request");
    let v = ws_request(&mut ws, r#"{"type":"launch_missiles"}"#.into()).await;
    assert_error(&v, "bad_request");
    let v = ws_request(
        &mut ws,
        format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(100_000)),
    )
    .await;
    assert_error(&v, "too_large");
    let v = ws_request(
        &mut ws,
        r#"{"type":"subscribe","tracks":["TR_0000000000000001"]}"#.into(),
    )
    .await;
    assert_error(&v, "not_found");
    let v = ws_request(
        &mut ws,
        r#"{"type":"subscribe","tracks":["nonsense"]}"#.into(),
    )
    .await;
    assert_error(&v, "bad_request");
    let v = ws_request(&mut ws, r#"{"type":"answer","sdp":"v=0"}"#.into()).await;
    assert_error(&v, "invalid_state");
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_error(&ws_next(&mut ws).await, "bad_request");
    // The session still works after all that.
    let v = ws_request(&mut ws, r#"{"type":"ping","id":8}"#.into()).await;
    assert_eq!(
        (v["type"].as_str(), v["id"].as_u64()),
        (Some("pong"), Some(8)),
        "{v}"
    );
    // A publisher over the WebSocket with malformed SDP.
    let mut ws2 = ws_connect(addr, Some(&good)).await.unwrap();
    let v = ws_request(&mut ws2, r#"{"type":"join"}"#.into()).await;
    assert_eq!(v["type"], "joined", "{v}");
    let v = ws_request(
        &mut ws2,
        r#"{"type":"publish","sdp":"v=0\r\nm=video"}"#.into(),
    )
    .await;
    assert_error(&v, "invalid_sdp");
    ws2.send(Message::Text(
        serde_json::json!({"type": "publish", "sdp": hundred})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    // Room events (others leaving) may come first.
    let mut v = ws_next(&mut ws2).await;
    while v["type"] != "error" {
        v = ws_next(&mut ws2).await;
    }
    assert_error(&v, "invalid_sdp");
    assert!(
        v["message"].as_str().unwrap().contains("media sections"),
        "{v}"
    );

    // Garbage UDP at every worker socket: random bytes, fake STUN, RTP and DTLS from unknown
    // addresses, and empty datagrams.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut stun = vec![0x00, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[9; 12]);
    stun.extend_from_slice(&[0x00, 0x06, 0x00, 0x08]);
    stun.extend_from_slice(b"nope:abc");
    let mut junk: Vec<Vec<u8>> = vec![
        stun,
        vec![],
        vec![0x80; 40],
        vec![22; 100],
        vec![0xff; 1500],
    ];
    for i in 0..200u32 {
        junk.push(
            (0..(i % 300) as usize)
                .map(|j| (j as u32 * 31 + i * 17) as u8)
                .collect(),
        );
    }
    for target in &udp {
        for d in &junk {
            socket.send_to(d, target).await.unwrap();
        }
    }
    drop(ws);
    drop(ws2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_no_other_room_is_harmed() {
    let _guard = browser_lock().await;
    let node = start_node().await;
    let base = format!("http://{}", node.http_addr);
    let mut browser = Browser::launch(&[
        (
            "pub",
            format!("{base}/demo.html?room=canary&identity=alice&autojoin=1&publish=1&simulcast=0"),
        ),
        (
            "sub",
            format!("{base}/demo.html?room=canary&identity=bob&autojoin=1&publish=0"),
        ),
    ])
    .await;
    expect_media(&mut browser, &["sub"], 30.0, Duration::from_secs(60)).await;

    let udp = node.media.udp_addrs().to_vec();
    let attack = tokio::spawn(attack(base.clone(), node.http_addr, udp));
    let mut last = stat(&browser.sample().await, "sub", "framesDecoded");
    let mut seconds = 0;
    while !attack.is_finished() || seconds < 4 {
        let s = browser.sample().await;
        let now = stat(&s, "sub", "framesDecoded");
        assert!(
            now > last,
            "the canary subscriber stalled during the attack: {s:#}"
        );
        assert_eq!(common::state(&s, "sub"), "joined", "{s:#}");
        last = now;
        seconds += 1;
        assert!(seconds < 60, "attack did not finish");
    }
    attack
        .await
        .expect("every bad input got its expected answer");

    // Garbage datagrams are counted as drops.
    let metrics = common::metrics(&base).await;
    let dropped = |reason: &str| {
        common::metric(
            &metrics,
            &format!("sfu_dropped_packets_total{{reason=\"{reason}\"}}"),
        )
    };
    assert!(dropped("unknown_source") > 0.0, "{metrics}");
    assert!(dropped("unknown_ufrag") > 0.0, "{metrics}");
    browser.stop().await;
    node.stop().await;
}

/// A client that stops reading is disconnected once a message to it stalls, and leaves its
/// room, instead of holding the node's memory and its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected_and_leaves_its_room() {
    let node = start_node().await;
    let addr = node.http_addr;
    // A small receive buffer, so that the node's socket buffer is what fills.
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let stream = tcp.connect(addr).await.unwrap();
    let url = format!(
        "ws://{addr}/rtc?access_token={}",
        token("lazy", "slow", false, true)
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    ws.send(Message::Text(r#"{"type":"join"}"#.into()))
        .await
        .unwrap();
    let joined = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => break serde_json::from_str::<Value>(&t).unwrap(),
            _ => continue,
        }
    };
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(node.media.snapshot().await.participants, 1);

    // Requests whose answers (errors quoting a long unknown message type) it never reads.
    let ask = format!(r#"{{"type":"{}"}}"#, "x".repeat(16_000));
    let started = std::time::Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(40) {
        let sent = tokio::time::timeout(
            Duration::from_secs(1),
            ws.send(Message::Text(ask.clone().into())),
        )
        .await;
        if matches!(sent, Ok(Err(_))) {
            closed = true;
            break;
        }
        if node.media.snapshot().await.participants == 0 {
            closed = true;
            break;
        }
    }
    assert!(closed, "the node let the client go");
    let mut left = false;
    for _ in 0..50 {
        if node.media.snapshot().await.participants == 0 {
            left = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(left, "the client's participant left the room");
    let metrics = common::metrics(&format!("http://{addr}")).await;
    assert_eq!(
        common::metric(&metrics, "sfu_slow_clients_total"),
        1.0,
        "{metrics}"
    );
    node.stop().await;
}

/// A client from which nothing comes (not even the answers to the node's pings) is let go
/// after `limits.ws_idle_secs`; one that keeps reading answers the pings by itself and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_let_go_and_a_listening_one_stays() {
    let mut config = sfu_node::Config::loopback();
    config.limits.ws_idle_secs = 2;
    let node = sfu_node::Server::start(config).await.unwrap();
    let addr = node.http_addr;
    let mut silent = ws_connect(addr, Some(&token("silent", "quiet", false, true)))
        .await
        .unwrap();
    let v = ws_request(&mut silent, r#"{"type":"join"}"#.into()).await;
    assert_eq!(v["type"], "joined", "{v}");
    let mut listening = ws_connect(addr, Some(&token("listening", "quiet", false, true)))
        .await
        .unwrap();
    let v = ws_request(&mut listening, r#"{"type":"join"}"#.into()).await;
    assert_eq!(v["type"], "joined", "{v}");
    // Only the listening client reads (and so answers pings) for 5 s.
    let reading = tokio::spawn(async move {
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Some(m)) = tokio::time::timeout_at(until, listening.next()).await {
            m.expect("the listening client stays connected");
        }
        listening
    });
    let mut listening = reading.await.unwrap();
    assert_eq!(
        node.media.snapshot().await.participants,
        1,
        "the silent client left, the listening one stayed"
    );
    // Other messages may come first (its own connection quality, told every 5 s).
    listening
        .send(Message::Text(r#"{"type":"ping","id":1}"#.into()))
        .await
        .unwrap();
    let v = common::control::next_of(&mut listening, &["pong"], Duration::from_secs(5)).await;
    assert_eq!(v["type"], "pong", "{v}");
    let metrics = common::metrics(&format!("http://{addr}")).await;
    assert_eq!(
        common::metric(&metrics, "sfu_idle_clients_total"),
        1.0,
        "{metrics}"
    );
    drop(silent);
    node.stop().await;
}

/// While the media workers are saturated, joins are told to come back later (`429`,
/// `at_capacity`) instead of degrading everyone already in; once the load falls they are
/// admitted again. (The limit here is low, 2 % of a core, so that a flood of junk datagrams
/// saturates; not lower: an idle worker's timers and each join attempt's own work must stay
/// under it on a busy machine, as 0.1 % once did not.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_wait_while_the_media_workers_are_saturated() {
    let mut config = sfu_node::Config::loopback();
    config.rtc.workers = 1;
    config.limits.max_worker_cpu = 0.02;
    let node = sfu_node::Server::start(config).await.unwrap();
    let (addr, target) = (node.http_addr, node.media.udp_addrs()[0]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..200 {
                    let _ = socket.send_to(&[0x80; 200], target).await;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let t = token("late", "busy", false, true);
    let mut refused = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Err(status) = ws_connect(addr, Some(&t)).await {
            refused = Some(status);
            break;
        }
    }
    assert_eq!(
        refused,
        Some(429),
        "a join while the worker is saturated waits"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.await.unwrap();
    let mut admitted = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if ws_connect(addr, Some(&t)).await.is_ok() {
            admitted = true;
            break;
        }
    }
    assert!(admitted, "joins are admitted again once the load falls");
    node.stop().await;
}
