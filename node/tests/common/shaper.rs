//! An in-process bandwidth limiter for media: a UDP proxy in front of a node's media port that
//! delivers what the node sends to each client at a limited rate, through a drop-tail queue,
//! as a slow access link would. Client-to-node traffic passes unchanged, unless told to lose
//! some of it ([`Shaper::set_drop_up_every`]).
//!
//! The node announces the proxy's address as its ICE candidate; each client gets its own
//! upstream socket, so the node still sees one address per client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Packets that would wait longer than this in the limiter's queue are dropped.
const QUEUE: Duration = Duration::from_millis(300);
/// Bytes on the wire beyond the UDP payload.
const IP_UDP_OVERHEAD: u64 = 28;

pub struct Shaper {
    rate_bps: Arc<AtomicU64>,
    drop_every: Arc<AtomicU64>,
    drop_up_every: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Shaper {
    /// Listens on `listen` and forwards to `node`, limiting node-to-client traffic to
    /// `rate_bps` per client.
    pub async fn start(listen: SocketAddr, node: SocketAddr, rate_bps: u64) -> Shaper {
        let front = Arc::new(UdpSocket::bind(listen).await.expect("limiter binds"));
        let rate = Arc::new(AtomicU64::new(rate_bps));
        let drop_every = Arc::new(AtomicU64::new(0));
        let drop_up_every = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(
            front,
            node,
            rate.clone(),
            drop_every.clone(),
            drop_up_every.clone(),
        ));
        Shaper {
            rate_bps: rate,
            drop_every,
            drop_up_every,
            task,
        }
    }

    /// Drops every `n`th packet towards clients (0: none), as a lossy link would.
    pub fn set_drop_every(&self, n: u64) {
        self.drop_every.store(n, Ordering::Relaxed);
    }

    /// Drops every `n`th packet from clients to the node (0: none), as a lossy uplink would.
    pub fn set_drop_up_every(&self, n: u64) {
        self.drop_up_every.store(n, Ordering::Relaxed);
    }

    /// Changes the limit (for every client, at once).
    pub fn set_rate(&self, bps: u64) {
        self.rate_bps.store(bps, Ordering::Relaxed);
    }
}

impl Drop for Shaper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    front: Arc<UdpSocket>,
    node: SocketAddr,
    rate: Arc<AtomicU64>,
    drop_every: Arc<AtomicU64>,
    drop_up_every: Arc<AtomicU64>,
) {
    let mut upstream: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut count = 0u64;
    let mut tasks = Vec::new();
    let mut buf = vec![0u8; 2048];
    while let Ok((n, client)) = front.recv_from(&mut buf).await {
        let socket = match upstream.get(&client) {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(
                    UdpSocket::bind("127.0.0.1:0")
                        .await
                        .expect("upstream socket"),
                );
                upstream.insert(client, s.clone());
                tasks.push(tokio::spawn(downstream(
                    s.clone(),
                    front.clone(),
                    client,
                    rate.clone(),
                    drop_every.clone(),
                )));
                s
            }
        };
        count += 1;
        let every = drop_up_every.load(Ordering::Relaxed);
        if every > 0 && count.is_multiple_of(every) {
            continue;
        }
        let _ = socket.send_to(&buf[..n], node).await;
    }
}

/// Node → client: paced at the rate, dropped when the queue is full.
async fn downstream(
    from_node: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    rate: Arc<AtomicU64>,
    drop_every: Arc<AtomicU64>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let sender = tokio::spawn(async move {
        while let Some((at, packet)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            let _ = front.send_to(&packet, client).await;
        }
    });
    let mut link_free = Instant::now();
    let mut buf = vec![0u8; 2048];
    let mut count = 0u64;
    while let Ok(n) = from_node.recv(&mut buf).await {
        count += 1;
        let every = drop_every.load(Ordering::Relaxed);
        if every > 0 && count.is_multiple_of(every) {
            continue;
        }
        let now = Instant::now();
        let start = link_free.max(now);
        if start - now > QUEUE {
            continue;
        }
        let bps = rate.load(Ordering::Relaxed).max(1);
        let bits = (n as u64 + IP_UDP_OVERHEAD) * 8;
        link_free = start + Duration::from_nanos(bits * 1_000_000_000 / bps);
        if tx.send((link_free, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    sender.abort();
}
