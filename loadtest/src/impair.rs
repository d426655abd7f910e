//! An impaired network path in process: a UDP proxy that loses and delays datagrams, as
//! `tc netem loss 5% delay 0ms 30ms` would, for machines where netem is not available.
//!
//! Put it in front of any UDP service (a node's relay endpoint, its media port) and point
//! the clients at [`ImpairProxy::addr`]: each client gets its own upstream socket, so the
//! service still sees one address per client, and both directions are impaired.
//!
//! Loss and delay are drawn from a seeded generator, so a run is reproducible for a given
//! seed and packet order. Each datagram is delayed independently by a uniform amount below
//! the jitter, so datagrams reorder, as on a path whose queues vary. The counters say what
//! the proxy did, so a test can check that the impairment really happened.

use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the path does to each datagram.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Impairment {
    /// Fraction of datagrams dropped (0..=1), independently of each other.
    pub loss: f64,
    /// Each datagram is delayed by a uniform amount in `[0, jitter)`.
    pub jitter: Duration,
    /// Seeds the loss and delay draws.
    pub seed: u64,
}

impl Impairment {
    /// A path that does nothing (the counters still count).
    pub fn none() -> Self {
        Self {
            loss: 0.0,
            jitter: Duration::ZERO,
            seed: 1,
        }
    }
}

/// What the proxy did so far, both directions together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImpairCounts {
    /// Datagrams that reached the proxy.
    pub received: u64,
    /// Of those, dropped on purpose.
    pub dropped: u64,
    /// Delivered after a datagram that reached the proxy later (reordered).
    pub reordered: u64,
}

impl ImpairCounts {
    /// Fraction of received datagrams dropped.
    pub fn loss(&self) -> f64 {
        if self.received == 0 {
            0.0
        } else {
            self.dropped as f64 / self.received as f64
        }
    }
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    dropped: AtomicU64,
    reordered: AtomicU64,
}

/// See the module documentation. Dropping it stops the proxy.
pub struct ImpairProxy {
    addr: SocketAddr,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl ImpairProxy {
    /// Binds `listen` (port 0: any) for a proxy to `target`.
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        impairment: Impairment,
    ) -> std::io::Result<ImpairProxy> {
        let front = UdpSocket::bind(listen).await?;
        Ok(Self::with_socket(front, target, impairment))
    }

    /// A proxy on a socket already bound (to know its address before the target exists,
    /// e.g. to give it to the target as the address it advertises).
    pub fn with_socket(front: UdpSocket, target: SocketAddr, impairment: Impairment) -> Self {
        let front = Arc::new(front);
        let addr = front.local_addr().expect("a bound socket has an address");
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(run(front, target, impairment, counters.clone()));
        ImpairProxy {
            addr,
            counters,
            task,
        }
    }

    /// Where clients send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn counts(&self) -> ImpairCounts {
        let c = &self.counters;
        ImpairCounts {
            received: c.received.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            reordered: c.reordered.load(Ordering::Relaxed),
        }
    }
}

impl Drop for ImpairProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A seeded generator (SplitMix64): small, fast, and the same draws on every platform.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One direction of the path: drops, then hands the survivors to a delay line.
struct Direction {
    draws: Draws,
    impairment: Impairment,
    counters: Arc<Counters>,
    delay_line: mpsc::UnboundedSender<(Instant, Vec<u8>)>,
}

impl Direction {
    fn new(
        impairment: Impairment,
        stream: u64,
        counters: Arc<Counters>,
        out: Arc<UdpSocket>,
        to: Option<SocketAddr>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(delay_line(rx, out, to, counters.clone()));
        let draws = Draws(impairment.seed ^ stream.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let d = Direction {
            draws,
            impairment,
            counters,
            delay_line: tx,
        };
        (d, task)
    }

    fn pass(&mut self, datagram: &[u8]) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        if self.draws.unit() < self.impairment.loss {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let delay = self.impairment.jitter.mul_f64(self.draws.unit());
        let _ = self
            .delay_line
            .send((Instant::now() + delay, datagram.to_vec()));
    }
}

/// Largest UDP payload: relay links discover MTUs up to a jumbo frame's and loopback takes
/// more.
const MAX_DATAGRAM: usize = 65_536;

/// One client's side of the proxy: its client-to-target direction and the tasks serving it.
type Client = (Direction, [tokio::task::JoinHandle<()>; 3]);

async fn run(front: Arc<UdpSocket>, target: SocketAddr, imp: Impairment, counters: Arc<Counters>) {
    let mut clients: HashMap<SocketAddr, Client> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut streams = 0u64;
    while let Ok((n, from)) = front.recv_from(&mut buf).await {
        let (up, _) = match clients.entry(from) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                streams += 2;
                let Ok(c) = open(&front, from, target, imp, streams, &counters).await else {
                    continue;
                };
                e.insert(c)
            }
        };
        up.pass(&buf[..n]);
    }
    for (_, (_, tasks)) in clients {
        for t in tasks {
            t.abort();
        }
    }
}

/// A new client: its own upstream socket to the target, and both directions.
async fn open(
    front: &Arc<UdpSocket>,
    client: SocketAddr,
    target: SocketAddr,
    imp: Impairment,
    streams: u64,
    counters: &Arc<Counters>,
) -> std::io::Result<Client> {
    let back = UdpSocket::bind(SocketAddr::new(target.ip(), 0)).await?;
    back.connect(target).await?;
    let back = Arc::new(back);
    let (up, up_task) = Direction::new(imp, streams, counters.clone(), back.clone(), None);
    let (down, down_task) = Direction::new(
        imp,
        streams + 1,
        counters.clone(),
        front.clone(),
        Some(client),
    );
    let reader = tokio::spawn(upstream_reader(back, down));
    Ok((up, [up_task, down_task, reader]))
}

/// Target to client: what the target answers on a client's upstream socket.
async fn upstream_reader(back: Arc<UdpSocket>, mut down: Direction) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while let Ok(n) = back.recv(&mut buf).await {
        down.pass(&buf[..n]);
    }
}

/// Holds datagrams until their time and sends them in time order (so later arrivals with
/// shorter delays overtake earlier ones); `to` is `None` on a connected socket.
async fn delay_line(
    mut rx: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    out: Arc<UdpSocket>,
    to: Option<SocketAddr>,
    counters: Arc<Counters>,
) {
    // (due, arrival number): the heap pops the earliest due first.
    let mut queue: BinaryHeap<std::cmp::Reverse<(Instant, u64, Vec<u8>)>> = BinaryHeap::new();
    let mut arrivals = 0u64;
    let mut last_sent = None;
    loop {
        let next_due = queue.peek().map(|e| e.0.0);
        tokio::select! {
            got = rx.recv() => {
                let Some((due, d)) = got else { return };
                queue.push(std::cmp::Reverse((due, arrivals, d)));
                arrivals += 1;
            }
            _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)),
                if next_due.is_some() => {}
        }
        let now = Instant::now();
        while queue.peek().is_some_and(|e| e.0.0 <= now) {
            let std::cmp::Reverse((_, n, d)) = queue.pop().expect("peeked");
            if last_sent.is_some_and(|l| n < l) {
                counters.reordered.fetch_add(1, Ordering::Relaxed);
            }
            last_sent = Some(last_sent.map_or(n, |l: u64| l.max(n)));
            let _ = match to {
                Some(to) => out.send_to(&d, to).await,
                None => out.send(&d).await,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drops_about_the_loss_and_reorders_within_the_jitter() {
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                let _ = echo.send_to(&buf[..n], from).await;
            }
        });
        let imp = Impairment {
            loss: 0.05,
            jitter: Duration::from_millis(20),
            seed: 7,
        };
        let proxy = ImpairProxy::start("127.0.0.1:0".parse().unwrap(), echo_addr, imp)
            .await
            .unwrap();
        let client = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        client.connect(proxy.addr()).await.unwrap();
        // Read while sending: a socket's receive buffer holds only a few hundred datagrams.
        let reader = {
            let client = client.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 64];
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(300), client.recv(&mut buf)).await
                {
                    got.push(u32::from_be_bytes(buf[..n].try_into().unwrap()));
                }
                got
            })
        };
        for i in 0..2_000u32 {
            client.send(&i.to_be_bytes()).await.unwrap();
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let got = reader.await.unwrap();
        let c = proxy.counts();
        // Each echoed datagram crossed twice: about 1 - 0.95^2 of them are gone.
        let lost = 1.0 - got.len() as f64 / 2_000.0;
        assert!((0.07..0.13).contains(&lost), "lost {lost}, {c:?}");
        assert!((0.04..0.06).contains(&c.loss()), "{c:?}");
        assert!(c.reordered > 0, "{c:?}");
        assert!(got.windows(2).any(|w| w[1] < w[0]), "reordered on arrival");
    }
}
