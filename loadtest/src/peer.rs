//! One simulated participant, driven by one tokio task: it signals with the system under test,
//! runs its peer connections (a publishing one, a receiving one, or both; each a real WebRTC
//! peer on its own UDP socket), sends media when it publishes, answers keyframe requests, and
//! measures what it receives into its shared [`PeerState`](crate::state::PeerState).
//!
//! How each target is joined:
//!
//! | target | publish | receive |
//! |---|---|---|
//! | `sfu` | `publish` offer on the WebSocket | the node offers (again on every change); we answer |
//! | `whip` | WHIP offer | WHEP offer (recvonly), watching one publisher |
//! | `janus` | `joinandconfigure` with our offer | `join` as subscriber to every publisher; Janus offers |
//! | `livekit` | `AddTrackRequest` per track, then our offer | the server offers (again on every change); we answer |
//!
//! An `sfu` or `livekit` peer whose signaling is lost ([`sfu::Lost`]: its node died, or asked it to move)
//! joins again as a browser would: after a random wait below an exponentially growing ceiling
//! (full jitter, so the thousand peers of a dead node do not return in the same instant),
//! placed away from the lost node, with the same identity; it publishes again and the node
//! subscribes it to everything again. The time from the loss to media flowing again is
//! recorded in its state ([`PeerState::reconnect_time`](crate::state::PeerState)).

use crate::conn::Conn;
use crate::scenario::TargetKind;
use crate::sender::{Publish, Publisher};
use crate::signal::{Endpoint, janus, livekit, sfu, whip};
use crate::state::{Shared, lock};
use anyhow::Context;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

/// A peer whose connections are not all up this long after it started has failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(40);

/// Ceiling of the first reconnection attempt's random wait; it doubles with every attempt up
/// to [`RECONNECT_MAX`]. Half a second: the viewers' bound is 3 s (p99), and the lease of a
/// dead node (5 s) need not expire first, since the lost node is avoided.
const RECONNECT_FIRST: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// A peer that cannot join again for this long after losing its node has failed.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(60);

/// Reconnections that got media flowing again, over the whole process (as
/// [`crate::signal::BUSY_RETRIES`]): tests read it.
pub static RECONNECTS: AtomicU64 = AtomicU64::new(0);

/// What a peer does: publish, receive, or both.
#[derive(Clone, Debug)]
pub struct Role {
    pub publish: Option<Publish>,
    pub subscribe: bool,
    /// Receive as a light receiver ([`crate::light`]).
    pub light: bool,
    /// A light receiver's socket reads segmented messages ([`crate::stamped`]).
    pub light_gro: bool,
}

/// One simulated participant to run.
pub struct PeerSpec {
    pub identity: String,
    pub role: Role,
    pub endpoint: Arc<Endpoint>,
    /// The node (or server) to join, unless the control plane places the peer.
    pub base: String,
    pub bind: IpAddr,
    /// WHEP: the identity of the publisher to watch.
    pub watch: String,
    /// Publishers in the room other than this peer (Janus subscribers wait for them).
    pub other_publishers: usize,
}

/// The signaling session(s) a peer holds while it runs.
enum Signal {
    /// Boxed: a WebSocket stream is large, and a peer holds one signal for its whole life.
    Sfu(Box<sfu::Running>),
    LiveKit(Box<livekit::Running>),
    Whip(Vec<whip::Session>),
    Janus(JanusSignal),
}

/// A Janus session. Subscribing runs in a task of its own while the peer's loop runs: a
/// publisher that also subscribes must keep its publishing connection going meanwhile (Janus
/// lists a publisher only once its media is up), and the loop would cancel a plain future.
struct JanusSignal {
    session: janus::Session,
    subscribing: Option<tokio::task::JoinHandle<anyhow::Result<(janus::Handle, String)>>>,
    subscribed: Option<janus::Handle>,
    keepalive: tokio::task::JoinHandle<()>,
}

impl Signal {
    /// The next offer from the server: this project's nodes offer whenever the tracks change;
    /// Janus offers once, when subscribing.
    async fn next_offer(&mut self) -> anyhow::Result<String> {
        match self {
            Signal::Sfu(s) => s.next_offer().await,
            Signal::LiveKit(s) => s.next_offer().await,
            Signal::Janus(j) if j.subscribing.is_some() => {
                let Some(task) = j.subscribing.as_mut() else {
                    return std::future::pending().await;
                };
                let r = task.await;
                // A finished task must not be polled again.
                j.subscribing = None;
                let (handle, offer) = r.context("the Janus subscription task")??;
                j.subscribed = Some(handle);
                Ok(offer)
            }
            Signal::Whip(_) | Signal::Janus(_) => std::future::pending().await,
        }
    }

    async fn answer(&mut self, sdp: String) -> anyhow::Result<()> {
        match self {
            Signal::Sfu(s) => s.answer(sdp).await,
            Signal::LiveKit(s) => s.answer(sdp),
            Signal::Janus(j) => {
                let handle = j.subscribed.as_ref().context("no Janus subscription")?;
                j.session.start(handle, sdp).await
            }
            Signal::Whip(_) => Ok(()),
        }
    }

    async fn end(self) {
        match self {
            Signal::Sfu(s) => s.end().await,
            Signal::LiveKit(s) => s.end().await,
            Signal::Whip(sessions) => {
                for s in sessions {
                    s.end().await;
                }
            }
            Signal::Janus(j) => {
                j.keepalive.abort();
                if let Some(t) = j.subscribing {
                    t.abort();
                }
                j.session.end().await;
            }
        }
    }
}

/// A peer's connections and what it sends.
struct Peer {
    /// The publishing connection and its media.
    publishing: Option<(Conn, Publisher)>,
    /// The receiving connection (for `sfu`, opened at the node's first offer).
    receiving: Option<Conn>,
    /// The node it joined, when the control plane placed it (to avoid it after losing it).
    node: Option<String>,
}

/// A reconnection waiting for media to flow again.
struct Resuming {
    /// When the signaling was lost.
    lost: Instant,
    /// Packets received over all streams by then: more means media flows again.
    packets: u64,
}

/// The wait before reconnection attempt `attempt` (1, 2, ...): see [`RECONNECT_FIRST`].
fn reconnect_wait(attempt: u32) -> Duration {
    let ceiling = RECONNECT_FIRST
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(RECONNECT_MAX);
    ceiling.mul_f64(rand::random::<f64>())
}

/// Packets received over all streams.
fn packets_received(shared: &Shared) -> u64 {
    let s = lock(shared);
    s.reception.streams.iter().map(|r| r.stats.packets).sum()
}

/// Runs one peer until `stop` fires (or its sender is dropped) or it fails; a failure is
/// recorded in its state. One stop channel per peer: a shared one (a `watch`) would make every
/// peer take the same lock on every turn of its loop.
pub async fn run(spec: PeerSpec, shared: Shared, mut stop: oneshot::Receiver<()>) {
    let started = Instant::now();
    lock(&shared).started = Some(started);
    let mut peer = Peer {
        publishing: None,
        receiving: None,
        node: None,
    };
    let mut avoid: Vec<String> = Vec::new();
    let mut resuming: Option<Resuming> = None;
    let mut attempt = 0;
    let result = loop {
        let joined = Instant::now();
        // Joining and ending are boxed: their futures (HTTP, WebSocket handshakes) are large,
        // and a future awaited in place would make every peer's task that large for its whole
        // life.
        let r = async {
            let mut signal = Box::pin(join(&spec, &mut peer, &shared, &avoid)).await?;
            attempt = 0;
            let r = drive(
                &spec,
                &mut peer,
                &mut signal,
                &shared,
                &mut stop,
                joined,
                &mut resuming,
            )
            .await;
            Box::pin(signal.end()).await;
            r
        }
        .await;
        for c in peer.conns() {
            c.close().await;
        }
        peer.publishing = None;
        peer.receiving = None;
        let Err(e) = r else { break Ok(()) };
        // Only a session that was lost is joined again, and only while the loss is recent; a
        // first join that fails, or a node that ended the session, fails the peer.
        let lost = e.downcast_ref::<sfu::Lost>().is_some();
        let since = resuming.as_ref().map(|r| r.lost.elapsed());
        if !lost && since.is_none_or(|s| s > RECONNECT_PATIENCE) {
            break Err(e);
        }
        if lost {
            tracing::debug!(peer = spec.identity, "reconnecting: {e:#}");
            if let Some(node) = peer.node.take()
                && !avoid.contains(&node)
            {
                avoid.push(node);
            }
            if resuming.is_none() {
                resuming = Some(Resuming {
                    lost: Instant::now(),
                    packets: packets_received(&shared),
                });
            }
        }
        attempt += 1;
        tokio::select! {
            _ = tokio::time::sleep(reconnect_wait(attempt)) => {}
            _ = &mut stop => break Ok(()),
        }
    };
    if let Err(e) = result {
        lock(&shared).failed = Some(format!("{}: {e:#}", spec.identity));
    }
}

/// Signals with the target, placed away from `avoid` (`sfu`), and sets up the connections it
/// answered for.
async fn join(
    spec: &PeerSpec,
    peer: &mut Peer,
    shared: &Shared,
    avoid: &[String],
) -> anyhow::Result<Signal> {
    let e = &*spec.endpoint;
    lock(shared).server = Some(match e.kind {
        TargetKind::Janus => e.url.clone(),
        TargetKind::Sfu | TargetKind::LiveKit | TargetKind::Whip => spec.base.clone(),
    });
    let publishing = match &spec.role.publish {
        Some(p) => {
            let mut conn = Conn::open(spec.bind, true, false, false).await?;
            let publisher = Publisher::add_tracks(&mut conn.pc, &spec.identity, p)?;
            let offer = conn.offer()?;
            Some((conn, publisher, offer))
        }
        None => None,
    };
    let signal = match e.kind {
        TargetKind::Sfu => {
            let publish = publishing.is_some();
            let subscribe = spec.role.subscribe;
            let mut s = sfu::join(e, &spec.base, &spec.identity, publish, subscribe, avoid).await?;
            // The control plane may have placed the peer elsewhere.
            lock(shared).server = Some(s.node_url.clone());
            peer.node = s.node.clone();
            if let Some((mut conn, mut publisher, offer)) = publishing {
                let answer = s.publish(offer).await?;
                conn.accept_answer(answer)?;
                publisher.negotiate(&mut conn.pc);
                peer.publishing = Some((conn, publisher));
            }
            Signal::Sfu(Box::new(s.run()))
        }
        TargetKind::LiveKit => {
            let publish = publishing.is_some();
            let subscribe = spec.role.subscribe;
            let mut s =
                livekit::join(e, &spec.base, &spec.identity, publish, subscribe, avoid).await?;
            lock(shared).server = Some(s.node_url.clone());
            peer.node = s.node.clone();
            if let Some((mut conn, mut publisher, offer)) = publishing {
                let answer = s.publish(offer).await?;
                conn.accept_answer(answer)?;
                publisher.negotiate(&mut conn.pc);
                peer.publishing = Some((conn, publisher));
            }
            Signal::LiveKit(Box::new(s.run()))
        }
        TargetKind::Whip => {
            let mut sessions = Vec::new();
            let r = join_whip(spec, peer, publishing, &mut sessions).await;
            if let Err(e) = r {
                // End what was started: the server would otherwise hold it until it times out.
                Signal::Whip(sessions).end().await;
                return Err(e);
            }
            Signal::Whip(sessions)
        }
        TargetKind::Janus => {
            let session = janus::Session::open(e).await?;
            let mut own = None;
            if let Some((mut conn, mut publisher, offer)) = publishing {
                let published = async {
                    let (_, answer, id) = session.publish(e, &spec.identity, offer).await?;
                    conn.accept_answer(answer)?;
                    anyhow::Ok(id)
                }
                .await;
                match published {
                    Ok(id) => own = id,
                    Err(e) => {
                        session.end().await;
                        return Err(e);
                    }
                }
                publisher.negotiate(&mut conn.pc);
                peer.publishing = Some((conn, publisher));
            }
            let subscribing = spec.role.subscribe.then(|| {
                let (s, e, want) = (
                    session.clone(),
                    spec.endpoint.clone(),
                    spec.other_publishers,
                );
                tokio::spawn(async move { s.subscribe(&e, want, own).await })
            });
            Signal::Janus(JanusSignal {
                keepalive: session.keep_alive(),
                session,
                subscribing,
                subscribed: None,
            })
        }
    };
    Ok(signal)
}

/// WHIP to publish, WHEP to receive; `sessions` gets every session started.
async fn join_whip(
    spec: &PeerSpec,
    peer: &mut Peer,
    publishing: Option<(Conn, Publisher, String)>,
    sessions: &mut Vec<whip::Session>,
) -> anyhow::Result<()> {
    let e = &*spec.endpoint;
    if let Some((mut conn, mut publisher, offer)) = publishing {
        let s = whip::start(e, &spec.base, &spec.identity, true, "", offer).await?;
        let answer = s.answer.clone();
        sessions.push(s);
        conn.accept_answer(answer)?;
        publisher.negotiate(&mut conn.pc);
        peer.publishing = Some((conn, publisher));
    }
    if spec.role.subscribe {
        let mut conn = Conn::open(spec.bind, false, spec.role.light, spec.role.light_gro).await?;
        conn.add_receivers()?;
        let offer = conn.offer()?;
        // A separate identity: one identity holds one session at a time.
        let identity = format!("{}-play", spec.identity);
        let s = whip::start(e, &spec.base, &identity, false, &spec.watch, offer).await?;
        let answer = s.answer.clone();
        sessions.push(s);
        conn.accept_answer(answer)?;
        peer.receiving = Some(conn);
    }
    Ok(())
}

impl Peer {
    fn conns(&mut self) -> impl Iterator<Item = &mut Conn> {
        self.publishing
            .as_mut()
            .map(|(c, _)| c)
            .into_iter()
            .chain(self.receiving.as_mut())
    }

    /// Whether every connection the peer needs is up (a receiving `sfu` peer needs its offer).
    fn all_connected(&self, expects_receiving: bool) -> bool {
        self.publishing.as_ref().is_none_or(|(c, _)| c.connected)
            && match &self.receiving {
                Some(c) => c.connected,
                None => !expects_receiving,
            }
    }
}

/// Resolves when `socket` has datagrams to read; never without a socket. Polls readiness
/// directly (one waker slot per socket) rather than through `readable()`, whose future joins
/// and leaves a waiter list on every turn of the loop.
async fn readable(socket: Option<&UdpSocket>) -> std::io::Result<()> {
    match socket {
        Some(s) => std::future::poll_fn(|cx| s.poll_recv_ready(cx)).await,
        None => std::future::pending().await,
    }
}

/// The event loop: connections, media, offers, until stopped. `started`: when this session
/// began to join; `resuming`: a reconnection whose media is awaited.
async fn drive(
    spec: &PeerSpec,
    peer: &mut Peer,
    signal: &mut Signal,
    shared: &Shared,
    stop: &mut oneshot::Receiver<()>,
    started: Instant,
    resuming: &mut Option<Resuming>,
) -> anyhow::Result<()> {
    let connect_deadline = started + CONNECT_TIMEOUT;
    let sleep = tokio::time::sleep_until(connect_deadline.into());
    tokio::pin!(sleep);
    loop {
        let now = Instant::now();
        let mut any_connected = false;
        if let Some((conn, publisher)) = &mut peer.publishing {
            let d = conn.drain(shared)?;
            if d.connected {
                publisher.start(now);
                any_connected = true;
            }
            if d.keyframe_requested {
                publisher.request_keyframe();
                lock(shared).keyframe_requests += 1;
            }
            if conn.connected {
                let sent = publisher.send_due(&mut conn.pc, now)?;
                if sent > 0 {
                    lock(shared).packets_sent += sent;
                }
            }
        }
        if let Some(conn) = &mut peer.receiving {
            any_connected |= conn.drain(shared)?.connected;
        }
        if any_connected {
            lock(shared).connected_at.get_or_insert(now);
        }
        for c in peer.conns() {
            c.flush().await;
        }
        let all_up = peer.all_connected(spec.role.subscribe);
        if all_up
            && let Some(r) = resuming
            && (!spec.role.subscribe || packets_received(shared) > r.packets)
        {
            let took = now.saturating_duration_since(r.lost);
            tracing::debug!(peer = spec.identity, "reconnected in {took:?}");
            RECONNECTS.fetch_add(1, Ordering::Relaxed);
            let mut s = lock(shared);
            s.reconnects += 1;
            s.reconnect_time.record(took);
            *resuming = None;
        }
        if !all_up && now >= connect_deadline {
            anyhow::bail!(if spec.role.subscribe && peer.receiving.is_none() {
                "the server offered nothing to receive within 40 s"
            } else {
                "did not connect within 40 s"
            });
        }
        let mut wake = peer.conns().filter_map(|c| c.timeout()).min();
        if let Some((c, p)) = &peer.publishing
            && c.connected
        {
            wake = min_some(wake, p.next_due());
        }
        if !all_up {
            wake = min_some(wake, Some(connect_deadline));
        }
        // An idle peer with nothing scheduled still looks again now and then.
        let wake = wake.unwrap_or(now + Duration::from_secs(1)).max(now);
        if sleep.deadline() != wake.into() {
            sleep.as_mut().reset(wake.into());
        }
        let publishing = peer.publishing.as_ref().and_then(|(c, _)| c.readiness());
        let receiving = peer.receiving.as_ref().and_then(Conn::readiness);
        tokio::select! {
            r = readable(publishing) => {
                r.context("publishing socket")?;
                if let Some((c, _)) = &mut peer.publishing {
                    c.read_ready(shared).context("publishing socket")?;
                }
            }
            r = readable(receiving) => {
                r.context("receiving socket")?;
                if let Some(c) = &mut peer.receiving {
                    c.read_ready(shared).context("receiving socket")?;
                }
            }
            _ = &mut sleep => {
                let now = Instant::now();
                for c in peer.conns() {
                    if c.timeout().is_some_and(|t| t <= now) {
                        c.handle_timeout(now, shared).context("reading a socket")?;
                    }
                }
            }
            offer = signal.next_offer() => {
                let offer = offer?;
                let conn = match &mut peer.receiving {
                    Some(c) => c,
                    None => {
                        let c = Conn::open(spec.bind, false, spec.role.light, spec.role.light_gro).await?;
                        peer.receiving.insert(c)
                    }
                };
                let answer = conn.answer(offer)?;
                Box::pin(signal.answer(answer)).await?;
            }
            // Fired or dropped: a dropped controller stops everyone too.
            _ = &mut *stop => return Ok(()),
        }
    }
}

fn min_some(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
