//! LiveKit's own JavaScript SDK, `livekit-client` from npm and unchanged, against a real
//! two-node cluster (etcd, two nodes, the control plane) in headless Chromium: participants
//! on different nodes publish camera and microphone over LiveKit's signaling protocol and
//! decode each other's video, see a mute, resume a broken signaling connection, an audience
//! member receives, and a leave is seen. LiveKit's protocol without a browser: `livekit_wire.rs`.

mod common;

use common::control::Cluster;
use common::{Browser, Sample, browser_lock, stat, state, token, token_for};
use serde_json::Value;
use sfu_node::auth::join_claims;
use std::time::Duration;

const ROOM: &str = "lk-e2e";

fn browser_file(name: &str) -> String {
    format!("{}/tests/browser/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Loads livekit-client's UMD build and the test participant into a page.
async fn load(b: &mut Browser, page: &str) {
    let umd = browser_file("node_modules/livekit-client/dist/livekit-client.umd.js");
    assert!(
        std::path::Path::new(&umd).exists(),
        "livekit-client is missing: run `npm ci --prefix node/tests/browser` (test.sh does)"
    );
    b.script(page, &umd).await;
    b.script(page, &browser_file("livekit-page.js")).await;
}

/// Connects a page's participant to `node` (its `http://` base URL) with livekit-client.
async fn join(b: &mut Browser, page: &str, node: &str, identity: &str, publish: bool) {
    join_with(
        b,
        page,
        node,
        &token(identity, ROOM, publish, true),
        publish,
    )
    .await;
}

/// Like [`join`], with a token of its own.
async fn join_with(b: &mut Browser, page: &str, node: &str, token: &str, publish: bool) {
    let url = node.replacen("http://", "ws://", 1);
    let js = format!(
        "(async () => {{ while (!window.lkJoin) await new Promise(r => setTimeout(r, 20)); \
         await window.lkJoin({url:?}, {token:?}, {publish}); }})()"
    );
    b.eval(page, &js).await;
}

fn events(s: &Sample, page: &str) -> Vec<String> {
    s["pages"][page]["stats"]["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// What a page sees of another participant.
fn remote<'a>(s: &'a Sample, page: &str, identity: &str) -> Option<&'a Value> {
    s["pages"][page]["stats"]["remote"]
        .as_array()?
        .iter()
        .find(|p| p["identity"] == identity)
}

/// Alice's token: metadata and attributes, and the grant to change them herself.
fn alice_token() -> String {
    let mut claims = join_claims(
        "devkey",
        "alice",
        ROOM,
        true,
        true,
        Duration::from_secs(600),
    );
    claims.metadata = Some("from the token".into());
    claims.attributes = Some([("team".to_owned(), "red".to_owned())].into());
    claims.video.can_update_own_metadata = true;
    token_for(&claims, "secret")
}

/// One call of LiveKit's server SDK (`tests/browser/server-sdk.mjs`) to the control plane;
/// what it printed.
async fn server_sdk(cluster: &Cluster, args: &[&str]) -> Value {
    let script = browser_file("server-sdk.mjs");
    let run = tokio::process::Command::new("node")
        .arg(script)
        .args([&cluster.grpc(), "devkey", "secret"])
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the server SDK finishes")
        .expect("node runs");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the server SDK printed no JSON ({e}): {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// What a page sees of another participant's track of `source` (`camera`, `microphone`).
fn remote_track<'a>(s: &'a Sample, page: &str, identity: &str, source: &str) -> Option<&'a Value> {
    s["pages"][page]["stats"]["remote"]
        .as_array()?
        .iter()
        .find(|p| p["identity"] == identity)?["tracks"]
        .as_array()?
        .iter()
        .find(|t| t["source"] == source)
}

/// Sends a chat message with livekit-client's `publishData` (topic `chat`).
async fn send_data(b: &mut Browser, page: &str, text: &str, reliable: bool, to: &[&str]) {
    let js = format!(
        "window.lkRoom.localParticipant.publishData(new TextEncoder().encode({text:?}), \
         {{ reliable: {reliable}, topic: 'chat', destinationIdentities: {to:?} }})"
    );
    b.eval(page, &js).await;
}

/// Runs `tests/python/livekit_receive.py` with the Python SDK installed by test.sh (a venv
/// under `target/lk-venv`) for `seconds`; returns what it printed.
async fn python_receive(node: &str, identity: &str, seconds: u32) -> Value {
    let python = format!(
        "{}/../target/lk-venv/bin/python",
        env!("CARGO_MANIFEST_DIR")
    );
    assert!(
        std::path::Path::new(&python).exists(),
        "LiveKit's Python SDK is missing: run ./test.sh (it makes target/lk-venv)"
    );
    // The SDK's native library (the `livekit` 1.2 wheel's) aborts now and then while joining:
    // "panic in a function that cannot unwind" right after its /rtc/v1 attempt falls back to
    // /rtc, in 1 of 24 runs of `python_sdk_times` on a loaded machine (BENCHMARKS.md). A crash
    // of the SDK is run again once; any other failure fails the test.
    let mut attempt = 0;
    let out = loop {
        let run = tokio::process::Command::new(&python)
            .arg(format!(
                "{}/tests/python/livekit_receive.py",
                env!("CARGO_MANIFEST_DIR")
            ))
            .arg(node.replacen("http://", "ws://", 1))
            .arg(token(identity, ROOM, false, true))
            .arg(seconds.to_string())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(u64::from(seconds) + 30), run)
            .await
            .expect("the Python SDK finishes")
            .expect("python runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && stderr.contains("non-unwinding panic") && attempt == 0 {
            eprintln!("the Python SDK crashed in its native library; once more: {stderr}");
            attempt += 1;
            continue;
        }
        assert!(out.status.success(), "Python SDK: {stderr}");
        break out;
    };
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "Python SDK printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Waits until every page decodes video (a picture with a width, frames decoded and the
/// video element's clock advancing) and receives audio.
async fn expect_decoding(b: &mut Browser, pages: &[&str], limit: Duration) -> Sample {
    let mut first: Option<Sample> = None;
    let (ok, last) = b
        .until(limit, |s| {
            let base = first.get_or_insert_with(|| s.clone());
            pages.iter().all(|p| {
                stat(s, p, "videoWidth") > 0.0
                    && stat(s, p, "framesDecoded") >= stat(base, p, "framesDecoded") + 30.0
                    && stat(s, p, "currentTime") > stat(base, p, "currentTime") + 0.5
                    && stat(s, p, "audioPackets") > 0.0
            })
        })
        .await;
    assert!(ok, "media did not reach {pages:?}; last sample: {last:#}");
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn livekit_client_participants_on_two_nodes_see_and_hear_each_other() {
    let _browser = browser_lock().await;
    // Rooms of two or more are large: an audience member is counted, not announced.
    let cluster = Cluster::start_with(2, |_, c| c.room.large_room_threshold = 2).await;
    let (a, b_node) = (cluster.url(0), cluster.url(1));
    // Pages of the nodes' own origin (loopback is a secure context for the camera).
    let mut b = Browser::launch(&[
        ("alice", format!("{a}/healthz")),
        ("bob", format!("{b_node}/healthz")),
    ])
    .await;
    load(&mut b, "alice").await;
    load(&mut b, "bob").await;
    join_with(&mut b, "alice", &a, &alice_token(), true).await;
    join(&mut b, "bob", &b_node, "bob", true).await;
    let s = expect_decoding(&mut b, &["alice", "bob"], Duration::from_secs(40)).await;
    for page in ["alice", "bob"] {
        assert_eq!(state(&s, page), "published", "{s:#}");
        eprintln!(
            "livekit-client {page}: connected in {} ms, published in {} ms, first remote frame at {} ms",
            stat(&s, page, "joinMs"),
            stat(&s, page, "publishedMs"),
            stat(&s, page, "firstFrameMs")
        );
    }
    // Connection quality: on loopback each is told its own as excellent or good (LiveKit's
    // clients start at unknown; the node scores every 5 s), and the other's, scored on the
    // other node (carried in its registry record).
    let fine = |q: &Value| q == "excellent" || q == "good";
    let (ok, s) = b
        .until(Duration::from_secs(15), |s| {
            [("alice", "bob"), ("bob", "alice")]
                .iter()
                .all(|(p, other)| {
                    fine(&s["pages"][p]["stats"]["quality"])
                        && remote(s, p, other).is_some_and(|o| fine(&o["quality"]))
                })
        })
        .await;
    assert!(ok, "no connection quality: {s:#}");
    let cam = remote_track(&s, "bob", "alice", "camera").expect("bob sees alice's camera");
    assert_eq!(cam["muted"], false, "{s:#}");
    assert!(
        remote_track(&s, "alice", "bob", "microphone").is_some(),
        "{s:#}"
    );

    // Chat over the data channels, across nodes: to everyone on the reliable channel, and to
    // one identity on the lossy one.
    send_data(&mut b, "alice", "hello everyone", true, &[]).await;
    send_data(&mut b, "bob", "psst alice", false, &["alice"]).await;
    let (ok, s) = b
        .until(Duration::from_secs(10), |s| {
            events(s, "bob").contains(&"data alice chat hello everyone".to_owned())
                && events(s, "alice").contains(&"data bob chat psst alice".to_owned())
        })
        .await;
    assert!(ok, "the chat messages did not arrive: {s:#}");

    // Metadata and attributes, across nodes: alice's from her token, then her own changes
    // (her token grants canUpdateOwnMetadata; bob's does not, and he is told so at once),
    // then an administrator's through the control plane with LiveKit's server SDK.
    let alice_seen = remote(&s, "bob", "alice").cloned().unwrap_or_default();
    assert_eq!(alice_seen["metadata"], "from the token", "{s:#}");
    assert_eq!(alice_seen["attributes"]["team"], "red", "{s:#}");
    b.eval(
        "alice",
        "window.lkTry('update', async r => { await r.localParticipant.setMetadata('hello from alice'); \
         await r.localParticipant.setAttributes({ hand: 'up', team: '' }); })",
    )
    .await;
    b.eval(
        "bob",
        "window.lkTry('update', r => r.localParticipant.setMetadata('not allowed'))",
    )
    .await;
    let (ok, s) = b
        .until(Duration::from_secs(10), |s| {
            let bob = events(s, "bob");
            bob.contains(&"metadata alice hello from alice".to_owned())
                && bob.contains(&r#"attributes alice {"hand":"up","team":""}"#.to_owned())
                && bob.contains(&"failed update NOT_ALLOWED".to_owned())
                && events(s, "alice").contains(&"done update".to_owned())
        })
        .await;
    assert!(
        ok,
        "metadata and attributes did not go as they should: {s:#}"
    );
    let at = |page: &str, event: &str| s["pages"][page]["stats"]["at"][event].as_f64();
    if let (Some(start), Some(seen)) = (
        at("alice", "start update"),
        at("bob", "metadata alice hello from alice"),
    ) {
        eprintln!(
            "metadata: alice's setMetadata seen by bob on the other node after {} ms",
            seen - start
        );
    }
    let sdk = server_sdk(
        &cluster,
        &[
            "update",
            ROOM,
            "bob",
            r#"{"metadata": "from the server", "attributes": {"role": "host"}}"#,
        ],
    )
    .await;
    assert_eq!(sdk["ok"]["metadata"], "from the server", "{sdk}");
    let (ok, s) = b
        .until(Duration::from_secs(10), |s| {
            events(s, "alice").contains(&"metadata bob from the server".to_owned())
                && remote(s, "alice", "bob").is_some_and(|p| p["attributes"]["role"] == "host")
        })
        .await;
    assert!(ok, "the server SDK's update did not reach alice: {s:#}");

    // Data from the server (the SDK's sendData): to everyone on both nodes, then to bob only.
    for args in [
        &["send", ROOM, "hello from the server", "true", "server"][..],
        &["send", ROOM, "for bob", "false", "server", "bob"],
    ] {
        let sdk = server_sdk(&cluster, args).await;
        assert_eq!(sdk["ok"], "sent", "{sdk}");
    }
    let (ok, s) = b
        .until(Duration::from_secs(10), |s| {
            ["alice", "bob"]
                .iter()
                .all(|p| events(s, p).contains(&"data ? server hello from the server".to_owned()))
                && events(s, "bob").contains(&"data ? server for bob".to_owned())
        })
        .await;
    assert!(ok, "the server's data did not arrive: {s:#}");
    assert!(
        !events(&s, "alice").iter().any(|e| e.contains("for bob")),
        "data for bob reached alice: {s:#}"
    );

    // Alice mutes her camera: bob, on the other node, sees it muted.
    b.eval(
        "alice",
        "window.lkRoom.localParticipant.setCameraEnabled(false)",
    )
    .await;
    let (ok, s) = b
        .until(Duration::from_secs(10), |s| {
            remote_track(s, "bob", "alice", "camera").is_some_and(|t| t["muted"] == true)
                && events(s, "bob").iter().any(|e| e == "muted alice camera")
        })
        .await;
    assert!(ok, "bob did not see alice's camera muted: {s:#}");
    b.eval(
        "alice",
        "window.lkRoom.localParticipant.setCameraEnabled(true)",
    )
    .await;

    // Bob's signaling connection breaks (livekit-client closes its WebSocket): he resumes
    // (`reconnect=1`) with the same sid and his peer connections, the publisher's after an ICE
    // restart; alice sees no leave and no second join, and media flows both ways again.
    let bob_sid = s["pages"]["bob"]["stats"]["sid"].clone();
    let bob_joins = |s: &Sample| {
        events(s, "alice")
            .iter()
            .filter(|e| *e == "joined bob")
            .count()
    };
    let joins_before = bob_joins(&s);
    b.eval("bob", "window.lkRoom.simulateScenario('signal-reconnect')")
        .await;
    let (ok, s) = b
        .until(Duration::from_secs(15), |s| {
            events(s, "bob").contains(&"reconnected".to_owned())
        })
        .await;
    assert!(ok, "bob did not resume: {s:#}");
    let bob_events = events(&s, "bob");
    assert!(
        bob_events.contains(&"signal-reconnecting".to_owned())
            && !bob_events.contains(&"reconnecting".to_owned()),
        "a resume, not a full reconnection: {s:#}"
    );
    assert_eq!(s["pages"]["bob"]["stats"]["sid"], bob_sid, "{s:#}");
    let at = |event: &str| s["pages"]["bob"]["stats"]["at"][event].as_f64();
    if let (Some(lost), Some(back)) = (at("signal-reconnecting"), at("reconnected")) {
        eprintln!(
            "resume: bob reconnected {} ms after his signaling connection closed",
            back - lost
        );
    }
    let s = expect_decoding(&mut b, &["alice", "bob"], Duration::from_secs(20)).await;
    assert!(
        !events(&s, "alice").contains(&"left bob".to_owned()) && bob_joins(&s) == joins_before,
        "alice saw bob leave or join again: {s:#}"
    );

    // A third participant joins as audience (no publish permission, in a large room) and
    // receives both; the others count it without being told who it is.
    b.open("carol", &format!("{a}/healthz")).await;
    // The driver runs commands as they come: the page must exist before its scripts.
    let (ok, s) = b
        .until(Duration::from_secs(10), |s| s["pages"]["carol"].is_object())
        .await;
    assert!(ok, "carol's page did not open: {s:#}");
    load(&mut b, "carol").await;
    join(&mut b, "carol", &a, "carol", false).await;
    let s = expect_decoding(&mut b, &["carol"], Duration::from_secs(30)).await;
    assert_eq!(state(&s, "carol"), "connected", "{s:#}");
    assert!(
        remote_track(&s, "carol", "bob", "camera").is_some()
            && remote_track(&s, "carol", "alice", "camera").is_some(),
        "{s:#}"
    );
    let (ok, s) = b
        .until(Duration::from_secs(10), |s| {
            ["alice", "bob"]
                .iter()
                .all(|p| stat(s, p, "numParticipants") == 3.0)
        })
        .await;
    assert!(ok, "the audience member was not counted: {s:#}");
    assert!(
        ["alice", "bob"]
            .iter()
            .all(|p| !s["pages"][p]["stats"]["remote"]
                .to_string()
                .contains("carol")),
        "an audience member of a large room was announced: {s:#}"
    );

    // The audience chats too (its data-only publisher connection), and a message for carol
    // reaches her alone.
    send_data(&mut b, "carol", "hi from the audience", true, &[]).await;
    send_data(&mut b, "bob", "for carol only", true, &["carol"]).await;
    let (ok, s) = b
        .until(Duration::from_secs(10), |s| {
            // Its sender is not one of their participants (a large room's audience is not
            // announced): livekit-client gives no participant for it.
            ["alice", "bob"]
                .iter()
                .all(|p| events(s, p).contains(&"data ? chat hi from the audience".to_owned()))
                && events(s, "carol").contains(&"data bob chat for carol only".to_owned())
        })
        .await;
    assert!(ok, "the audience's chat did not arrive: {s:#}");
    assert!(
        !events(&s, "alice")
            .iter()
            .any(|e| e.contains("for carol only")),
        "a message for carol reached alice: {s:#}"
    );

    // LiveKit's Python SDK (PyPI, its wheel's native library) joins bob's node and decodes
    // the first video it is sent.
    let py = python_receive(&b_node, "py", 6).await;
    assert!(
        py["frames"].as_u64().unwrap_or(0) >= 30 && py["width"].as_u64().unwrap_or(0) > 0,
        "the Python SDK decoded too little: {py}"
    );
    assert_eq!(
        py["identities"],
        serde_json::json!(["alice", "bob"]),
        "{py}"
    );
    eprintln!("python SDK: joined in {} ms, {py}", py["join_ms"]);

    // Alice leaves: bob and carol (the audience sees the stage) see her go. Bob's node holds a registry deletion about a
    // node it has a relay link to for up to 10 s (`LINKED_GRACE`, against flapping records),
    // as for every client.
    b.eval("alice", "window.lkRoom.disconnect()").await;
    let (ok, s) = b
        .until(Duration::from_secs(20), |s| {
            ["bob", "carol"].iter().all(|p| {
                events(s, p).iter().any(|e| e == "left alice")
                    && remote_track(s, p, "alice", "camera").is_none()
            })
        })
        .await;
    assert!(ok, "alice's leave was not seen: {s:#}");

    // A forged token: the client reports it as not allowed (from /rtc/validate) and stops,
    // rather than taking the refusal for an old server and retrying.
    let forged = token_for(
        &join_claims(
            "devkey",
            "mallory",
            ROOM,
            true,
            true,
            Duration::from_secs(60),
        ),
        "wrong-secret",
    );
    b.eval(
        "alice",
        &format!(
            "window.lkJoin({:?}, {forged:?}, false)",
            a.replacen("http://", "ws://", 1)
        ),
    )
    .await;
    let (ok, s) = b
        .until(Duration::from_secs(15), |s| state(s, "alice") == "failed")
        .await;
    let errors = s["pages"]["alice"]["errors"].to_string();
    assert!(ok && errors.contains("401"), "{s:#}");
    b.stop().await;
    cluster.stop().await;
}

/// Join time, livekit-client against the demo page's JSON protocol: a viewer joins a room
/// whose publisher is on the other node, `RUNS` times each way, and the time from starting
/// to join to its first decoded video frame is taken in the page. Run by hand (BENCHMARKS.md):
/// `cargo test --release -p sfu-node --test livekit_client join_time -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn join_time_against_the_json_protocol() {
    const RUNS: usize = 10;
    let _browser = browser_lock().await;
    let cluster = Cluster::start(2, 0).await;
    let (a, b_node) = (cluster.url(0), cluster.url(1));
    let mut b = Browser::launch(&[("pub", format!("{a}/healthz"))]).await;
    load(&mut b, "pub").await;
    join(&mut b, "pub", &a, "pub", true).await;
    let (ok, s) = b
        .until(Duration::from_secs(20), |s| state(s, "pub") == "published")
        .await;
    assert!(ok, "{s:#}");
    let mut results: Vec<(&str, Vec<f64>)> = Vec::new();
    for (way, options) in [
        ("livekit-client (default: /rtc/v1 refused, then /rtc)", "{}"),
        (
            "livekit-client (singlePeerConnection: false, /rtc directly)",
            "{singlePeerConnection: false}",
        ),
        ("demo page, JSON protocol", ""),
    ] {
        let mut times = Vec::new();
        // livekit-client's `room.connect()` alone (signaling, and the publisher connection it
        // waits for), where the refused `/rtc/v1` attempt shows.
        let mut connects = Vec::new();
        for i in 0..RUNS {
            let name = format!("v{i}");
            let identity = format!("viewer-{}-{i}", results.len());
            if options.is_empty() {
                // The demo page, loaded first; then its own join function, timed as lkJoin is.
                b.open(&name, &format!("{b_node}/?room={ROOM}&identity={identity}"))
                    .await;
                let (ok, s) = b
                    .until(Duration::from_secs(10), |s| s["pages"][&name].is_object())
                    .await;
                assert!(ok, "{s:#}");
                let token = token(&identity, ROOM, false, true);
                b.eval(
                    &name,
                    &format!(
                        "(async () => {{ const t0 = performance.now(); \
                         join({ROOM:?}, {identity:?}, false, undefined, {token:?}); \
                         for (;;) {{ const s = await window.sfuStats(); \
                         if (s.framesDecoded > 0) {{ window.sfu.marks.firstFrameMs = performance.now() - t0; return; }} \
                         await new Promise(r => setTimeout(r, 5)); }} }})()"
                    ),
                )
                .await;
            } else {
                b.open(&name, &format!("{b_node}/healthz")).await;
                let (ok, s) = b
                    .until(Duration::from_secs(10), |s| s["pages"][&name].is_object())
                    .await;
                assert!(ok, "{s:#}");
                load(&mut b, &name).await;
                let token = token(&identity, ROOM, false, true);
                let url = b_node.replacen("http://", "ws://", 1);
                b.eval(
                    &name,
                    &format!(
                        "(async () => {{ while (!window.lkJoin) await new Promise(r => setTimeout(r, 20)); \
                         await window.lkJoin({url:?}, {token:?}, false, {options}); }})()"
                    ),
                )
                .await;
            }
            let (ok, s) = b
                .until(Duration::from_secs(20), |s| {
                    s["pages"][&name]["stats"]["firstFrameMs"].is_number()
                        || s["pages"][&name]["stats"]["marks"]["firstFrameMs"].is_number()
                })
                .await;
            assert!(ok, "{way}: no frame: {s:#}");
            let st = &s["pages"][&name]["stats"];
            let ms = st["firstFrameMs"]
                .as_f64()
                .or(st["marks"]["firstFrameMs"].as_f64())
                .unwrap();
            times.push(ms);
            connects.extend(st["joinMs"].as_f64());
            b.close_page(&name).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        times.sort_by(f64::total_cmp);
        eprintln!(
            "{way}: join to first frame p50 {:.0} ms, min {:.0}, max {:.0} ({RUNS} runs)",
            times[RUNS / 2],
            times[0],
            times[RUNS - 1]
        );
        if !connects.is_empty() {
            connects.sort_by(f64::total_cmp);
            eprintln!(
                "{way}: room.connect() p50 {:.0} ms, min {:.0}, max {:.0}",
                connects[connects.len() / 2],
                connects[0],
                connects[connects.len() - 1]
            );
        }
        results.push((way, times));
    }
    b.stop().await;
    cluster.stop().await;
}

/// How long LiveKit's Python SDK takes to join, be subscribed and decode a first frame, with
/// publishers on both nodes in a large room (as in the test above), `RUNS` times. Run by hand:
/// `cargo test -p sfu-node --test livekit_client python_sdk_times -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn python_sdk_times() {
    const RUNS: usize = 12;
    let _browser = browser_lock().await;
    // A large room, as in the test above: the Python SDK joins as an audience member.
    let cluster = Cluster::start_with(2, |_, c| c.room.large_room_threshold = 2).await;
    let (a, b_node) = (cluster.url(0), cluster.url(1));
    let mut b = Browser::launch(&[
        ("alice", format!("{a}/healthz")),
        ("bob", format!("{b_node}/healthz")),
    ])
    .await;
    load(&mut b, "alice").await;
    load(&mut b, "bob").await;
    join(&mut b, "alice", &a, "alice", true).await;
    join(&mut b, "bob", &b_node, "bob", true).await;
    expect_decoding(&mut b, &["alice", "bob"], Duration::from_secs(40)).await;
    // What the node dropped or asked for during a run (a freeze shows there).
    let counters = |m: &str| -> Vec<(String, f64)> {
        m.lines()
            .filter(|l| {
                l.starts_with("sfu_dropped_packets_total")
                    || l.starts_with("sfu_keyframe")
                    || l.starts_with("sfu_pli")
                    || l.starts_with("sfu_nack")
            })
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    };
    for i in 0..RUNS {
        let before = counters(&common::metrics(&b_node).await);
        let node = b_node.clone();
        let run = tokio::spawn(async move { python_receive(&node, &format!("py{i}"), 6).await });
        match run.await {
            Ok(py) => eprintln!("python SDK run {i}: {py}"),
            Err(e) => eprintln!("python SDK run {i} failed: {e}"),
        }
        let after = counters(&common::metrics(&b_node).await);
        let grew: Vec<String> = after
            .iter()
            .filter_map(|(k, v)| {
                let was = before.iter().find(|(b, _)| b == k).map_or(0.0, |(_, b)| *b);
                (*v > was).then(|| format!("{k} +{}", v - was))
            })
            .collect();
        eprintln!("  node B meanwhile: {grew:?}");
    }
    b.stop().await;
    cluster.stop().await;
}
