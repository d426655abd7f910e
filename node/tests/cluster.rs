//! A real cluster on loopback: etcd, three node processes linked over QUIC, and headless
//! Chromium at the ends.
//!
//! A publisher on node 1 reaches subscribers on nodes 2 and 3; participants on different
//! nodes see each other; node 2 is killed with SIGKILL (its registry keys expire, node 3 keeps
//! decoding); node 3's relay links are cut and restored (media resumes); etcd becomes
//! unreachable for longer than a lease (media keeps flowing, nodes re-register after).

mod common;

use common::{Browser, browser_lock, expect_media, stat};
use sfu_control::registry::{EtcdRegistry, Registry};
use sfu_control::testing::Etcd;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A node process.
struct Node {
    id: String,
    http: u16,
    child: Child,
    log: PathBuf,
}

impl Node {
    fn start(
        id: &str,
        etcd: &str,
        certs: &Path,
        dir: &Path,
        relay: u16,
        advertise: Option<SocketAddr>,
    ) -> Node {
        let http = free_port();
        let log = dir.join(format!("{id}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sfu-node"));
        cmd.args(["--node-id", id, "--etcd", etcd, "--cluster", "it"])
            .arg("--certs-dir")
            .arg(certs)
            .args(["--bind", &format!("127.0.0.1:{http}")])
            .args([
                "--udp-port",
                "0",
                "--node-ip",
                "127.0.0.1",
                "--workers",
                "2",
            ])
            .args(["--relay-bind", &format!("127.0.0.1:{relay}")])
            .env("SFU_LOG", "info,sfu_relay=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(a) = advertise {
            cmd.args(["--relay-advertise", &a.to_string()]);
        }
        let child = cmd.spawn().expect("node binary runs");
        Node {
            id: id.into(),
            http,
            child,
            log,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(format!("{}/readyz", self.url())).await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{} not ready; log:\n{}",
            self.id,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // Make a failure diagnosable from the test output alone.
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- last lines of {} ----", self.id);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

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
    let n1 = Node::start("n1", &etcd.endpoint, &certs, &dir, free_udp_port(), None);
    let mut n2 = Node::start("n2", &etcd.endpoint, &certs, &dir, free_udp_port(), None);
    let n3 = Node::start("n3", &etcd.endpoint, &certs, &dir, relay3, Some(proxy.addr));
    for n in [&n1, &n2, &n3] {
        n.wait_ready().await;
    }

    let room = "spanning";
    let mut browser = Browser::launch(&[
        (
            "alice",
            format!(
                "{}/?room={room}&identity=alice&autojoin=1&publish=1&simulcast=0",
                n1.url()
            ),
        ),
        (
            "carol",
            format!(
                "{}/?room={room}&identity=carol&autojoin=1&publish=1&simulcast=0",
                n3.url()
            ),
        ),
        (
            "bob",
            format!(
                "{}/?room={room}&identity=bob&autojoin=1&publish=0",
                n2.url()
            ),
        ),
    ])
    .await;
    // Everyone decodes: alice (node 1) sees carol (node 3) and the reverse; bob (node 2) both.
    let s = expect_media(
        &mut browser,
        &["alice", "carol", "bob"],
        60.0,
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(
        stat(&s, "bob", "videoTracks"),
        2.0,
        "bob receives both publishers: {s:#}"
    );
    let failures = |s: &common::Sample| {
        s["pages"]
            .as_object()
            .unwrap()
            .iter()
            .any(|(_, p)| !p["errors"].as_array().unwrap().is_empty())
    };
    assert!(!failures(&s), "{s:#}");

    // SIGKILL node 2: its keys expire with its lease (TTL 5 s); node 3 keeps decoding.
    let registry = EtcdRegistry::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    let node_key = "/sfu/it/nodes/n2";
    assert!(registry.list(node_key).await.unwrap().0.len() == 1);
    n2.child.kill().unwrap();
    let killed = Instant::now();
    let carol_before = stat(&browser.sample().await, "carol", "framesDecoded");
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
    decoding_past(
        &mut browser,
        "carol",
        carol_before + 60.0,
        Duration::from_secs(20),
    )
    .await;

    // Cut node 3's relay links; once they are down, restore them: media resumes.
    proxy.set_cut(true);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let stalled = stat(&browser.sample().await, "carol", "framesDecoded");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = stat(&browser.sample().await, "carol", "framesDecoded");
    assert!(
        still - stalled < 10.0,
        "the cut stopped media to node 3: {stalled} -> {still}"
    );
    proxy.set_cut(false);
    decoding_past(&mut browser, "carol", still + 60.0, Duration::from_secs(40)).await;
    let log3 = std::fs::read_to_string(&n3.log).unwrap_or_default();
    assert!(
        log3.contains("relay link down"),
        "the link really went down"
    );
    browser.stop().await;
    drop((n1, n3));
    let _ = std::fs::remove_dir_all(&dir);
}
