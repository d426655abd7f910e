//! A real cluster on loopback: etcd, three node processes linked over QUIC, and headless
//! Chromium at the ends.
//!
//! Publishers on nodes 1, 2 and 3 reach each other's pages; node 2 is killed with SIGKILL
//! (its registry keys expire within the lease TTL, the pages on nodes 1 and 3 are told that
//! its participant and tracks are gone, and keep decoding each other); node 3's relay links
//! are cut and restored (media resumes); etcd is frozen (SIGSTOP) for longer than a lease
//! (media from node 1 to node 3 keeps flowing throughout, both nodes fence themselves and
//! refuse joins) and then resumed (both register again, admit joins, and media still flows).

mod common;

use common::process::{NodeProcess, free_udp_port};
use common::{Browser, browser_lock, expect_media, stat};
use sfu_control::registry::{EtcdRegistry, Registry};
use sfu_control::testing::Etcd;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// A UDP proxy in front of a node's relay port, to cut and restore its links.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let (f, c) = (front.clone(), cut.clone());
        tokio::spawn(async move {
            let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, client)) = f.recv_from(&mut buf).await else {
                    return;
                };
                if c.load(Ordering::Relaxed) {
                    continue;
                }
                let back = match backs.get(&client) {
                    Some(b) => b.clone(),
                    None => {
                        let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        b.connect(target).await.unwrap();
                        let (b2, f2, c2) = (b.clone(), f.clone(), c.clone());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok(n) = b2.recv(&mut buf).await {
                                if !c2.load(Ordering::Relaxed) {
                                    let _ = f2.send_to(&buf[..n], client).await;
                                }
                            }
                        });
                        backs.insert(client, b.clone());
                        b
                    }
                };
                let _ = back.send(&buf[..n]).await;
            }
        });
        Proxy { addr, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }
}

/// framesDecoded of a page, after at most `limit`, once it is above `above`.
async fn decoding_past(browser: &mut Browser, page: &str, above: f64, limit: Duration) -> f64 {
    let (ok, s) = browser
        .until(limit, |s| stat(s, page, "framesDecoded") > above)
        .await;
    assert!(ok, "{page} did not decode past {above}: {s:#}");
    stat(&s, page, "framesDecoded")
}

/// What a page was told: identities in its `left` or `unpublished` list (see `app.js`).
fn told(s: &common::Sample, page: &str, list: &str) -> Vec<String> {
    s["pages"][page]["stats"][list]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The status a node answers a WebSocket join with when it is not an upgrade: 426 if it
/// admits joins, 503 if it refuses them.
async fn join_status(node: &NodeProcess, room: &str) -> u16 {
    let token = common::token("probe", room, false, true);
    match common::http()
        .get(format!("{}/rtc?access_token={token}", node.url()))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_three_nodes_and_survives_failures() {
    let _guard = browser_lock().await;
    let etcd = Etcd::start().expect("etcd starts (Debian package etcd-server)");
    let dir = std::env::temp_dir().join(format!("sfu-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let certs = dir.join("certs");
    let ids = ["n1".to_owned(), "n2".to_owned(), "n3".to_owned()];
    sfu_relay::certs::ensure_dev_certs(&certs, &ids).unwrap();

    // Node 3's relay is reached through a proxy we can cut.
    let relay3 = free_udp_port();
    let proxy = Proxy::start(format!("127.0.0.1:{relay3}").parse().unwrap()).await;
    let e = &etcd.endpoint;
    let n1 = NodeProcess::start("n1", e, &certs, &dir, free_udp_port(), None, &[]);
    let mut n2 = NodeProcess::start("n2", e, &certs, &dir, free_udp_port(), None, &[]);
    let n3 = NodeProcess::start("n3", e, &certs, &dir, relay3, Some(proxy.addr), &[]);
    for n in [&n1, &n2, &n3] {
        n.wait_ready().await;
    }

    let room = "spanning";
    let page = |node: &NodeProcess, who: &str| {
        format!(
            "{}/demo.html?room={room}&identity={who}&autojoin=1&publish=1&simulcast=0",
            node.url()
        )
    };
    let mut browser = Browser::launch(&[
        ("alice", page(&n1, "alice")),
        ("carol", page(&n3, "carol")),
        ("bob", page(&n2, "bob")),
    ])
    .await;
    // Everyone decodes everyone else, across nodes.
    expect_media(
        &mut browser,
        &["alice", "carol", "bob"],
        60.0,
        Duration::from_secs(90),
    )
    .await;
    let (_, s) = browser
        .until(Duration::from_secs(30), |s| {
            ["alice", "carol", "bob"]
                .iter()
                .all(|p| stat(s, p, "videoTracks") == 2.0)
        })
        .await;
    for p in ["alice", "carol", "bob"] {
        assert_eq!(
            stat(&s, p, "videoTracks"),
            2.0,
            "{p} receives both other publishers: {s:#}"
        );
    }
    let failures = |s: &common::Sample| {
        s["pages"]
            .as_object()
            .unwrap()
            .iter()
            .any(|(_, p)| !p["errors"].as_array().unwrap().is_empty())
    };
    assert!(!failures(&s), "{s:#}");

    // SIGKILL node 2, whose bob publishes: its keys expire with its lease (TTL 5 s); the
    // pages on nodes 1 and 3 learn that bob and his two tracks are gone, and keep decoding
    // each other.
    let registry = EtcdRegistry::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    let node_key = "/sfu/it/nodes/n2";
    assert!(registry.list(node_key).await.unwrap().0.len() == 1);
    n2.child.kill().unwrap();
    let killed = Instant::now();
    let s = browser.sample().await;
    assert!(
        told(&s, "alice", "left").is_empty() && told(&s, "carol", "left").is_empty(),
        "nobody left before the kill: {s:#}"
    );
    let before = |p| stat(&s, p, "framesDecoded");
    let (alice_before, carol_before) = (before("alice"), before("carol"));
    let mut gone_after = None;
    while killed.elapsed() < Duration::from_secs(15) {
        let (kvs, _) = registry.list("/sfu/it/").await.unwrap();
        if !kvs
            .iter()
            .any(|(k, _)| k == node_key || k.contains("/nodes/n2"))
        {
            gone_after = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gone_after = gone_after.expect("node 2's keys expire");
    assert!(
        gone_after <= Duration::from_secs(7),
        "within the lease TTL: {gone_after:?}"
    );
    let bob_gone = |s: &common::Sample, p: &str| {
        told(s, p, "left") == ["bob"]
            && told(s, p, "unpublished")
                .iter()
                .filter(|i| *i == "bob")
                .count()
                == 2
    };
    let (told_all, s) = browser
        .until(Duration::from_secs(30), |s| {
            bob_gone(s, "alice") && bob_gone(s, "carol")
        })
        .await;
    assert!(
        told_all,
        "the pages on nodes 1 and 3 are told bob left and his audio and video tracks were \
         unpublished: {s:#}"
    );
    decoding_past(
        &mut browser,
        "alice",
        alice_before + 60.0,
        Duration::from_secs(20),
    )
    .await;
    decoding_past(
        &mut browser,
        "carol",
        carol_before + 60.0,
        Duration::from_secs(20),
    )
    .await;

    // Cut node 3's relay links; once they are down, restore them: media resumes. Relayed media
    // on the direct path (`cluster.direct_media`) goes worker to worker beside the proxy and
    // stops only when the link is declared down (its QUIC connection idle for 5 s): the check
    // waits for that, whichever path media takes.
    let downs = |n: &NodeProcess| n.log_text().matches("relay link down").count();
    let downs_before = downs(&n3);
    proxy.set_cut(true);
    let cut = Instant::now();
    while downs(&n3) == downs_before {
        assert!(
            cut.elapsed() < Duration::from_secs(30),
            "the cut link goes down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stalled = stat(&browser.latest().await, "carol", "framesDecoded");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = stat(&browser.latest().await, "carol", "framesDecoded");
    assert!(
        still - stalled < 10.0,
        "the cut stopped media to node 3: {stalled} -> {still}"
    );
    proxy.set_cut(false);
    decoding_past(&mut browser, "carol", still + 60.0, Duration::from_secs(40)).await;
    let log3 = n3.log_text();
    assert!(
        log3.contains("relay link down"),
        "the link really went down"
    );

    etcd_outage(&etcd, &registry, &mut browser, &n1, &n3, room).await;
    browser.stop().await;
    drop((n1, n3));
    let _ = std::fs::remove_dir_all(&dir);
}

/// etcd frozen for longer than a lease: media from node 1 to node 3 keeps flowing, both
/// nodes fence themselves (not ready, joins refused); etcd back: both register again.
async fn etcd_outage(
    etcd: &Etcd,
    registry: &EtcdRegistry,
    browser: &mut Browser,
    n1: &NodeProcess,
    n3: &NodeProcess,
    room: &str,
) {
    let frames = |s: &common::Sample| stat(s, "carol", "framesDecoded");
    let mut decoded = vec![frames(&browser.sample().await)];
    etcd.pause();
    let paused = Instant::now();
    let (mut fenced1, mut fenced3, mut refused) = (false, false, false);
    // At least two lease TTLs, and until both nodes noticed.
    while paused.elapsed() < Duration::from_secs(10) || !(fenced1 && fenced3 && refused) {
        assert!(
            paused.elapsed() < Duration::from_secs(40),
            "both nodes fence themselves while etcd is away (n1: {fenced1}, n3: {fenced3}, \
             join refused on n3: {refused})"
        );
        decoded.push(frames(&browser.sample().await));
        fenced1 |= n1.readyz().await == 503;
        fenced3 |= n3.readyz().await == 503;
        refused |= fenced3 && join_status(n3, room).await == 503;
    }
    // Media kept flowing throughout: every three seconds, carol decoded more of alice.
    for w in decoded.windows(4) {
        assert!(
            w[3] - w[0] >= 10.0,
            "carol kept decoding while etcd was away: {decoded:?}"
        );
    }
    etcd.resume();
    let resumed = Instant::now();
    for n in [n1, n3] {
        let mut ready = false;
        while !ready && resumed.elapsed() < Duration::from_secs(30) {
            ready = n.readyz().await == 200;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(ready, "{} registers again once etcd is back", n.id);
        assert_eq!(
            join_status(n, room).await,
            426,
            "{} admits joins again (a plain GET is no WebSocket upgrade)",
            n.id
        );
    }
    let (kvs, _) = registry.list("/sfu/it/nodes/").await.unwrap();
    let nodes: Vec<&str> = kvs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        nodes,
        ["/sfu/it/nodes/n1", "/sfu/it/nodes/n3"],
        "both node records are in etcd again"
    );
    // Past the grace period for registry deletions about linked nodes, alice is still in
    // carol's room and her video still arrives.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let now = frames(&browser.sample().await);
    decoding_past(browser, "carol", now + 60.0, Duration::from_secs(20)).await;
    let s = browser.sample().await;
    assert!(
        !told(&s, "carol", "left").contains(&"alice".to_owned()),
        "the outage did not remove alice from carol's room: {s:#}"
    );
}
