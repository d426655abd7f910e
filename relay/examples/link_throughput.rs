//! How many media datagrams one relay link carries: two nodes on loopback, one QUIC link with
//! the cluster's TLS, datagrams of RTP size sent at rising rates; reports what arrives.
//!
//! `cargo run --release -p sfu-relay --example link_throughput`

use bytes::Bytes;
use sfu_proto::relay::Frame;
use sfu_relay::certs::{create_ca, issue_node};
use sfu_relay::core::NodeId;
use sfu_relay::quic::{Identity, Link, LinkHandler, LinkManager};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Counter {
    received: AtomicU64,
    link: Mutex<Option<Link>>,
}

impl LinkHandler for Counter {
    fn link_up(&self, link: Link) {
        *self.link.lock().unwrap() = Some(link);
    }
    fn link_down(&self, _: &NodeId) {}
    fn frame(&self, _: &NodeId, _: Frame) {}
    fn datagram(&self, _: &NodeId, _: Bytes) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }
}

fn identity(ca: &sfu_relay::certs::Pem, node: &str) -> Identity {
    let p = issue_node(ca, node).unwrap();
    Identity::from_pem(
        node,
        ca.cert.as_bytes(),
        p.cert.as_bytes(),
        p.key.as_bytes(),
    )
    .unwrap()
}

#[tokio::main]
async fn main() {
    let ca = create_ca("bench").unwrap();
    let a_h = Arc::new(Counter::default());
    let b_h = Arc::new(Counter::default());
    let a = LinkManager::start(
        "127.0.0.1:0".parse().unwrap(),
        &identity(&ca, "a"),
        a_h.clone(),
    )
    .unwrap();
    let b = LinkManager::start(
        "127.0.0.1:0".parse().unwrap(),
        &identity(&ca, "b"),
        b_h.clone(),
    )
    .unwrap();
    let peers = vec![
        (NodeId::from("a"), a.local_addr().unwrap()),
        (NodeId::from("b"), b.local_addr().unwrap()),
    ];
    a.set_peers(&peers);
    b.set_peers(&peers);
    let link = loop {
        if let Some(l) = a_h.link.lock().unwrap().clone() {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A 1,100-byte RTP payload behind a flow id: the size of a full video packet.
    let datagram = sfu_relay::wire::encode_datagram(1, &[0x80; 1_112]);
    println!(
        "{:>12} {:>12} {:>12} {:>8}",
        "offered/s", "sent/s", "received/s", "loss"
    );
    for rate in [5_000u64, 10_000, 20_000, 40_000, 80_000, 160_000] {
        let before = b_h.received.load(Ordering::Relaxed);
        let seconds = 3;
        let start = Instant::now();
        let mut sent = 0u64;
        let total = rate * seconds;
        // Send in 1 ms bursts.
        let per_ms = rate / 1000;
        for ms in 0..seconds * 1000 {
            for _ in 0..per_ms {
                if link.send_datagram(datagram.clone()) {
                    sent += 1;
                }
            }
            let due = start + Duration::from_millis(ms + 1);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let received = b_h.received.load(Ordering::Relaxed) - before;
        let secs = seconds as f64;
        println!(
            "{:>12} {:>12.0} {:>12.0} {:>7.2}%",
            rate,
            sent as f64 / secs,
            received as f64 / secs,
            100.0 * (1.0 - received as f64 / total as f64)
        );
    }
    a.close();
    b.close();
}
