//! WHIP/WHEP at the HTTP level (RFC 9725): status codes, headers, CORS, trickle PATCH and
//! DELETE. The offers come from webrtc-rs acting as a client.

mod common;

use common::sdp::offer;
use common::{start_node, token};

fn ufrag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("an ice-ufrag line")
        .trim()
        .to_owned()
}

#[tokio::test]
async fn whip_and_whep_sessions_follow_rfc_9725() {
    let node = start_node().await;
    let base = format!("http://{}", node.http_addr);
    let http = common::http();
    let room = "whip http";
    let path = "whip%20http";

    for (endpoint, send) in [("whip", true), ("whep", false)] {
        let offer = offer(send);
        let r = http
            .post(format!("{base}/{endpoint}/{path}"))
            .header("content-type", "application/sdp")
            .header("origin", "https://player.example")
            .bearer_auth(token(&format!("{endpoint}-client"), room, true, true))
            .body(offer.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{endpoint}: {:?}", r.text().await);
        let h = r.headers().clone();
        assert_eq!(h["content-type"], "application/sdp");
        assert_eq!(h["accept-patch"], "application/trickle-ice-sdpfrag");
        assert_eq!(h["access-control-allow-origin"], "*");
        let exposed = h["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(
            exposed.contains("location") && exposed.contains("etag"),
            "{exposed}"
        );
        let location = h["location"].to_str().unwrap().to_owned();
        assert!(
            location.starts_with(&format!("/{endpoint}/{path}/")),
            "{location}"
        );
        let etag = h["etag"].to_str().unwrap().to_owned();
        let answer = r.text().await.unwrap();
        assert!(answer.starts_with("v=0"), "{answer}");
        assert!(
            answer.contains("a=ice-lite"),
            "the node is an ICE-lite endpoint: {answer}"
        );
        assert!(answer.contains("a=candidate:"), "{answer}");
        let session = format!("{base}{location}");

        // Trickle: wrong type, stale ETag, ICE restart, then a good fragment.
        let frag = |ufrag: &str| {
            format!(
                "a=ice-ufrag:{ufrag}\r\na=ice-pwd:0123456789012345678901\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n"
            )
        };
        let patch = |ctype: &'static str, if_match: &str, body: String| {
            http.patch(&session)
                .header("content-type", ctype)
                .header("if-match", if_match)
                .body(body)
                .send()
        };
        let client_ufrag = ufrag(&offer);
        assert_eq!(
            patch("text/plain", "*", frag(&client_ufrag))
                .await
                .unwrap()
                .status(),
            415
        );
        assert_eq!(
            patch(
                "application/trickle-ice-sdpfrag",
                "\"stale\"",
                frag(&client_ufrag)
            )
            .await
            .unwrap()
            .status(),
            412
        );
        assert_eq!(
            patch("application/trickle-ice-sdpfrag", &etag, frag("restarted"))
                .await
                .unwrap()
                .status(),
            422
        );
        assert_eq!(
            patch(
                "application/trickle-ice-sdpfrag",
                &etag,
                frag(&client_ufrag)
            )
            .await
            .unwrap()
            .status(),
            204
        );

        // CORS preflight for the session URL.
        let pre = http
            .request(reqwest::Method::OPTIONS, &session)
            .header("origin", "https://player.example")
            .header("access-control-request-method", "DELETE")
            .send()
            .await
            .unwrap();
        assert!(pre.status().is_success());
        assert_eq!(pre.headers()["access-control-allow-origin"], "*");

        // DELETE ends it; a second DELETE and a PATCH find nothing.
        assert_eq!(http.delete(&session).send().await.unwrap().status(), 200);
        assert_eq!(http.delete(&session).send().await.unwrap().status(), 404);
        assert_eq!(
            patch("application/trickle-ice-sdpfrag", "*", frag(&client_ufrag))
                .await
                .unwrap()
                .status(),
            404
        );
    }
    let snapshot = node.media.snapshot().await;
    assert_eq!(
        (snapshot.participants, snapshot.peers, snapshot.tracks),
        (0, 0, 0)
    );
    node.stop().await;
}

#[tokio::test]
async fn garbage_sent_to_a_live_peer_is_dropped() {
    let node = start_node().await;
    let base = format!("http://{}", node.http_addr);
    let r = common::http()
        .post(format!("{base}/whip/junk"))
        .header("content-type", "application/sdp")
        .bearer_auth(token("target", "junk", true, true))
        .body(offer(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let answer = r.text().await.unwrap();
    let server_ufrag = ufrag(&answer);
    // A STUN request naming the live peer (no valid integrity), then junk from the same
    // address, which the worker now routes to that peer connection.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let username = format!("{server_ufrag}:evil");
    let mut stun = vec![0x00, 0x01];
    let attr_len = username.len().div_ceil(4) * 4;
    stun.extend_from_slice(&((4 + attr_len) as u16).to_be_bytes());
    stun.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    stun.extend_from_slice(&[3; 12]);
    stun.extend_from_slice(&[0x00, 0x06]);
    stun.extend_from_slice(&(username.len() as u16).to_be_bytes());
    stun.extend_from_slice(username.as_bytes());
    stun.resize(20 + 4 + attr_len, 0);
    for target in node.media.udp_addrs() {
        socket.send_to(&stun, target).await.unwrap();
        for i in 0..300u32 {
            let first = [0u8, 22, 128, 144, 200][i as usize % 5];
            let mut d: Vec<u8> = (0..(i % 700 + 1)).map(|j| (j * 7 + i) as u8).collect();
            d[0] = first;
            socket.send_to(&d, target).await.unwrap();
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The node is alive and the session still exists.
    let snapshot = node.media.snapshot().await;
    assert_eq!((snapshot.participants, snapshot.tracks), (1, 2));
    assert_eq!(
        common::http()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    node.stop().await;
}

/// One viewer token opens at most `limits.whep_sessions_per_token` WHEP sessions at once; a
/// session that ends frees its place.
#[tokio::test]
async fn a_viewer_token_opens_a_limited_number_of_sessions() {
    let mut config = sfu_node::Config::loopback();
    config.limits.whep_sessions_per_token = 2;
    let node = sfu_node::Server::start(config).await.unwrap();
    let base = format!("http://{}", node.http_addr);
    let http = common::http();
    let viewer = token("viewer", "limited", false, true);
    let play = |t: String| {
        http.post(format!("{base}/whep/limited"))
            .header("content-type", "application/sdp")
            .bearer_auth(t)
            .body(offer(false))
            .send()
    };
    let first = play(viewer.clone()).await.unwrap();
    assert_eq!(first.status(), 201);
    let location = first.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(play(viewer.clone()).await.unwrap().status(), 201);
    let third = play(viewer.clone()).await.unwrap();
    assert_eq!(third.status(), 429);
    let problem: serde_json::Value = third.json().await.unwrap();
    assert_eq!(problem["type"], "too_many_sessions", "{problem}");
    // Another token is not affected; ending a session frees a place.
    let other = token("other-viewer", "limited", false, true);
    assert_eq!(play(other).await.unwrap().status(), 201);
    let deleted = http
        .delete(format!("{base}{location}"))
        .bearer_auth(viewer.clone())
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let mut again = 0;
    for _ in 0..50 {
        again = play(viewer.clone()).await.unwrap().status().as_u16();
        if again == 201 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(again, 201, "the ended session's place is free again");
    node.stop().await;
}
