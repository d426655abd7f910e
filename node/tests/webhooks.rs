//! Webhooks: every room, participant and track event reaches the receiver, signed with a JWT
//! carrying the body's hash, and a failed delivery is retried; a room spanning nodes starts
//! and finishes once, however its participants race; dropped events are a metric. Over TLS:
//! a node serving HTTPS delivers to an HTTPS receiver it trusts through `tls.ca`, and lets
//! go of connections that never finish their handshake or their headers.

mod common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use sfu_node::{Config, Server};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Received {
    /// (authorization header, body) of every request, failed ones included.
    requests: Vec<(String, Vec<u8>)>,
    failed_once: bool,
}

async fn receive(
    State(r): State<Arc<Mutex<Received>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let mut r = r.lock().unwrap();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    r.requests.push((auth, body.to_vec()));
    if !r.failed_once {
        // The first delivery fails: it must be retried.
        r.failed_once = true;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_delivered_signed_and_retried() {
    let received = Arc::new(Mutex::new(Received::default()));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut config = Config::loopback();
    config.webhook.urls = vec![hook];
    let node = Server::start(config).await.unwrap();
    let base = format!("http://{}", node.http_addr);
    let http = common::http();
    let r = http
        .post(format!("{base}/whip/hooked"))
        .header("content-type", "application/sdp")
        .bearer_auth(common::token("obs", "hooked", true, false))
        .body(common::sdp::offer(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let session = format!("{base}{}", r.headers()["location"].to_str().unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(http.delete(&session).send().await.unwrap().status(), 200);

    let expected = [
        "room_started",
        "participant_joined",
        "track_published",
        "track_published",
        "track_unpublished",
        "track_unpublished",
        "participant_left",
        "room_finished",
    ];
    let mut events = Vec::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = received.lock().unwrap();
        // Deliveries can arrive in any order; the set of events must be complete.
        let mut delivered: Vec<String> = Vec::new();
        for (auth, body) in &r.requests {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            // The signature: a JWT from the API secret whose sha256 claim is the body's hash.
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
            validation.set_required_spec_claims(&["exp"]);
            let claims = jsonwebtoken::decode::<serde_json::Value>(
                auth,
                &jsonwebtoken::DecodingKey::from_secret(b"secret"),
                &validation,
            )
            .expect("a valid signature")
            .claims;
            assert_eq!(claims["iss"], "devkey");
            let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body));
            assert_eq!(claims["sha256"], hash, "the signature covers the body");
            assert_eq!(v["room"]["name"], "hooked");
            delivered.push(v["event"].as_str().unwrap().to_owned());
        }
        events = delivered;
        let mut counts = std::collections::HashMap::new();
        for e in &events {
            *counts.entry(e.as_str()).or_insert(0) += 1;
        }
        let complete = expected.iter().all(|e| {
            counts.get(e).copied().unwrap_or(0) >= expected.iter().filter(|x| *x == e).count()
        });
        if complete && events.len() == expected.len() + 1 {
            break;
        }
    }
    let mut sorted = events.clone();
    sorted.sort();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    // One event was delivered twice: refused, then retried.
    let first = received.lock().unwrap().requests[0].1.clone();
    let retried: serde_json::Value = serde_json::from_slice(&first).unwrap();
    want.push(retried["event"].as_str().unwrap().to_owned());
    want.sort();
    assert_eq!(sorted, want, "every event, and the refused one again");
    node.stop().await;
}

/// Accepts every webhook and keeps the bodies.
async fn accept_all(
    State(r): State<Arc<Mutex<Vec<serde_json::Value>>>>,
    body: axum::body::Bytes,
) -> StatusCode {
    if let Ok(v) = serde_json::from_slice(&body) {
        r.lock().unwrap().push(v);
    }
    StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_room_on_two_nodes_starts_and_finishes_once_however_its_participants_race() {
    let received = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(accept_all))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let cluster =
        common::control::Cluster::start_with(2, |_, c| c.webhook.urls = vec![hook.clone()]).await;
    let rooms: Vec<String> = (0..5).map(|i| format!("raced{i}")).collect();
    for room in &rooms {
        // One participant on each node, joining at the same moment; once both are in the
        // registry (the room's presence), they leave together.
        let (url_a, url_b) = (cluster.url(0), cluster.url(1));
        let (token_x, token_y) = (
            common::token("x", room, true, true),
            common::token("y", room, true, true),
        );
        let (a, b) = tokio::join!(
            common::control::ws_join(&url_a, &token_x),
            common::control::ws_join(&url_b, &token_y),
        );
        assert_eq!(
            (&a.1["type"], &b.1["type"]),
            (&"joined".into(), &"joined".into())
        );
        let both = common::control::eventually(Duration::from_secs(10), || async {
            (common::control::participants(room, &cluster.grpc())
                .await
                .len()
                == 2)
                .then_some(())
        })
        .await;
        assert!(both.is_some(), "both participants are registered");
        drop((a, b));
    }
    let count = |room: &str, event: &str| {
        received
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["room"]["name"] == room && v["event"] == event)
            .count()
    };
    let complete = |room: &str| {
        count(room, "participant_joined") == 2
            && count(room, "participant_left") == 2
            && count(room, "room_started") >= 1
            && count(room, "room_finished") >= 1
    };
    for _ in 0..100 {
        if rooms.iter().all(|r| complete(r)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Room events a node sent twice would arrive about as fast as the rest.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for room in &rooms {
        let counts: Vec<usize> = [
            "participant_joined",
            "participant_left",
            "room_started",
            "room_finished",
        ]
        .iter()
        .map(|e| count(room, e))
        .collect();
        assert_eq!(
            counts,
            [2, 2, 1, 1],
            "{room}: joined, left, started, finished: {:#?}",
            received.lock().unwrap()
        );
    }
    // Nothing was dropped, and the nodes say so.
    let metrics = common::metrics(&cluster.url(0)).await;
    assert!(
        metrics.contains("sfu_webhooks_dropped_total 0"),
        "{metrics}"
    );
    cluster.stop().await;
}

/// Keeps every webhook body.
async fn keep(State(r): State<Arc<Mutex<Vec<Vec<u8>>>>>, body: axum::body::Bytes) -> StatusCode {
    r.lock().unwrap().push(body.to_vec());
    StatusCode::OK
}

/// Reads until the server closes the connection; whether it did within `limit`.
async fn closed_within(mut io: impl tokio::io::AsyncRead + Unpin, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_node_delivers_to_an_https_receiver_and_drops_silent_connections() {
    use tokio::io::AsyncWriteExt;
    let dir = std::env::temp_dir().join(format!("sfu-webhook-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = sfu_relay::certs::create_ca("test CA").unwrap();
    let leaf = sfu_relay::certs::issue_node(&ca, "127.0.0.1").unwrap();
    let (ca_file, cert, key) = (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    );
    std::fs::write(&ca_file, &ca.cert).unwrap();
    std::fs::write(&cert, &leaf.cert).unwrap();
    std::fs::write(&key, &leaf.key).unwrap();

    // The receiver serves HTTPS only, with a certificate from a CA no system trusts.
    let received = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(keep))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("https://{}/hook", listener.local_addr().unwrap());
    let options = sfu_control::http_server::ServeOptions {
        tls: Some(sfu_control::tls::server_config(&cert, &key).unwrap()),
        ..Default::default()
    };
    tokio::spawn(sfu_control::http_server::serve(
        listener,
        app,
        options,
        std::future::pending(),
    ));

    let mut config = Config::loopback();
    config.webhook.urls = vec![hook];
    config.tls.cert = Some(cert.clone());
    config.tls.key = Some(key.clone());
    config.tls.ca = Some(ca_file.clone());
    config.limits.header_timeout_secs = 1;
    let node = Server::start(config).await.unwrap();
    let base = format!("https://{}", node.http_addr);

    // Signaling over HTTPS: trusted with the CA, refused without it.
    let http = sfu_control::tls::http_client(Some(&ca_file), Duration::from_secs(5)).unwrap();
    assert!(
        common::http()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err()
    );
    let r = http
        .post(format!("{base}/whip/secure"))
        .header("content-type", "application/sdp")
        .bearer_auth(common::token("obs", "secure", true, false))
        .body(common::sdp::offer(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // The join's events reach the HTTPS receiver.
    let mut events = Vec::new();
    for _ in 0..100 {
        events = received
            .lock()
            .unwrap()
            .iter()
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .map(|v| v["event"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>();
        // Deliveries run concurrently: either may arrive first.
        if events.iter().any(|e| e == "participant_joined")
            && events.iter().any(|e| e == "room_started")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        events.iter().any(|e| e == "room_started")
            && events.iter().any(|e| e == "participant_joined"),
        "webhooks over HTTPS: {events:?}"
    );

    // A connection that never starts its TLS handshake is closed after the header timeout...
    let silent = tokio::net::TcpStream::connect(node.http_addr)
        .await
        .unwrap();
    assert!(closed_within(silent, Duration::from_secs(8)).await);
    // ...and so is one that completes it but never finishes its request's headers.
    let mut tls = tokio_rustls::rustls::RootCertStore::empty();
    for c in sfu_control::tls::certificates(&ca_file).unwrap() {
        tls.add(c).unwrap();
    }
    let client =
        tokio_rustls::rustls::ClientConfig::builder_with_provider(sfu_control::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(tls)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(node.http_addr)
        .await
        .unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    assert!(closed_within(stream, Duration::from_secs(8)).await);

    node.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
