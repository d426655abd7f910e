//! The gateway's side of its federation links: what crosses, translated and checked.
//!
//! Each side names rooms in what it sends as the receiver does; only rooms both sides map
//! (see [`Peer::active`]) pass, and the rest is refused (a subscription gets a
//! `Refused` answer) and counted. A peer's subscription names no node of ours: the origin is
//! looked up in our registry, and only tracks published in our cluster (not a third party's)
//! are served. Paths are cut to the peer's name both ways, so neither side learns the other's
//! node names and loop checks never compare two clusters' node ids.
//!
//! Our workers see the peer as one more relay link, named `gateway~peer`: the frames they send
//! on it come through [`FederationLinks::outbound`] (our room names to the peer's); datagrams
//! go straight to the connection (they carry only flow ids, which the peer routes by the
//! `FlowOpen` frames that passed the check). Audio levels cross for the tracks each side
//! announced ([`ranking`], [`super::levels`]).

use super::control::Message;
use super::guard::{self, Bucket, LogGate};
use super::levels::{self, Speakers};
use super::mapping::Mappings;
use super::metrics::{FederationMetrics, PeerCounters, PeerLabels};
use super::peers::Trust;
use super::roster;
use crate::cluster::Router;
use crate::webhook::{Event, ParticipantRef, Webhooks};
use sfu_control::Membership;
use sfu_control::federation::PeerRecord;
use sfu_proto::relay::frame::Body;
use sfu_proto::relay::{FlowClose, Frame, Refused, Subscribe, refused::Reason};
use sfu_relay::NodeId;
use sfu_relay::quic::{Link, LinkHandler};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use tokio::sync::mpsc;

mod inbound;
mod messages;
mod ranking;
mod stop;

/// The most tracks one peer may subscribe to at once, and flows it may open to us.
const MAX_FED_TRACKS: usize = 4096;
/// The most frames held from a peer before its mappings arrive (see `Peer::early`).
const EARLY_FRAMES: usize = 256;
/// How long a peer's frames are held for its mappings at most.
const EARLY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Counters, per gateway (every peer together).
#[derive(Default)]
pub struct Stats {
    /// Links from a name that is not a configured peer (the TLS handshake already refuses
    /// certificates no peer's CA issued, before any of this runs).
    pub links_refused: AtomicU64,
    /// Frames about a room not mapped by both sides.
    pub frames_unmapped: AtomicU64,
    /// Subscriptions refused: unmapped room, unknown track, or over the limit.
    pub subscriptions_refused: AtomicU64,
    /// Rosters refused (unmapped room, too large, bad records).
    pub rosters_refused: AtomicU64,
    /// Frames our workers sent about a room no longer mapped (dropped).
    pub outbound_dropped: AtomicU64,
    pub links_up: AtomicU64,
    /// Links closed for bytes that are no frame or message (either stream).
    pub malformed: AtomicU64,
    /// Subscriptions dropped over a peer's rate ([`guard::Bucket`]).
    pub flood: AtomicU64,
    /// Malformed datagrams dropped.
    pub bad_datagrams: AtomicU64,
    /// Audio level frames dropped over a peer's rate.
    pub levels_flood: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One linked peer.
struct Peer {
    raw: Link,
    /// How our workers name the link: `gateway~peer`.
    link_name: NodeId,
    /// The link as our workers' relay gets it, held back until the peer's mappings arrive
    /// (see `mappings_known`): the relay asks again at once for what it wanted through the
    /// link's predecessor, and frames for rooms not yet known to be mapped would be dropped
    /// on the way out and asked again only after the relay's 2 s subscription timeout.
    relay_link: Option<Link>,
    /// Frames the peer sent before its mappings arrived (the two go on different streams),
    /// held to be handled once they have: refused as about unmapped rooms, the subscriptions
    /// among them would be asked again only after the peer's 2 s timeout. `None` once the
    /// mappings came (or [`EARLY_WAIT`] after the link came up, for a peer that sends none);
    /// at most [`EARLY_FRAMES`].
    early: Option<Vec<Frame>>,
    up_at: std::time::Instant,
    control: mpsc::UnboundedSender<Message>,
    /// The peer's mappings with us: its room → ours.
    theirs: BTreeMap<String, String>,
    sent_mappings: Option<Vec<(String, String)>>,
    /// Rooms both sides map: ours → the peer's.
    active: BTreeMap<String, String>,
    /// Tracks the peer subscribes to: (our room, track).
    fed: HashSet<(String, u64)>,
    /// Flows the peer opened to us → our room.
    flows: HashMap<u32, String>,
    /// Registry keys written for the peer's participants and tracks, per our room.
    written: HashMap<String, Vec<String>>,
    /// The peer's participants announced in each of our rooms (for webhooks).
    members: HashMap<String, Vec<ParticipantRef>>,
    /// The peer's tracks in each of our rooms as its last roster had them (stopped ones
    /// included: a track resumed is written again from here).
    tracks: HashMap<String, Vec<sfu_control::TrackRecord>>,
    sent_rosters: HashMap<String, Vec<u8>>,
    /// Our tracks whose levels it may learn, per our room: those our last roster announced.
    announced: HashMap<String, Speakers>,
    /// Its tracks whose levels we take, per our room: those its last roster announced.
    heard: HashMap<String, Speakers>,
    counters: PeerCounters,
    /// Bounds the subscriptions it sends.
    subscriptions: Bucket,
    /// Bounds the audio level frames it sends.
    levels: Bucket,
    /// One log line a second for its refused subscriptions, and one for bad datagrams.
    refusals_log: LogGate,
    datagrams_log: LogGate,
    levels_log: LogGate,
}

/// See the module documentation.
pub struct FederationLinks {
    me: Weak<FederationLinks>,
    /// Our federation name.
    name: String,
    node_id: String,
    pseudonyms: roster::Pseudonyms,
    /// The peers we may link with, each trusted through its own CA (see [`super::peers`]).
    trust: RwLock<Trust>,
    router: Router,
    membership: Membership,
    mappings: Arc<Mappings>,
    peers: Mutex<HashMap<String, Peer>>,
    pub stats: Stats,
    metrics: FederationMetrics,
    /// The peer records last written to the registry (for the control plane), per peer.
    published: Mutex<HashMap<String, PeerRecord>>,
    webhooks: Webhooks,
    /// Whether this gateway carries the federation now (see [`super::active`]).
    active: std::sync::atomic::AtomicBool,
    /// The peers' tracks our administrator stopped in our cluster: (our room, track id), as
    /// last read from the registry (see [`stop`]).
    stopped: Mutex<HashSet<(String, String)>>,
}

/// The room a frame is about (`Ok(None)`: it names none), or `Err` for a frame that never
/// crosses a federation link (a kind this module does not know: it fails closed).
#[allow(unreachable_patterns)]
fn room_of(body: &mut Body) -> Result<Option<&mut String>, ()> {
    Ok(match body {
        Body::Subscribe(s) => Some(&mut s.room),
        Body::Accepted(a) => Some(&mut a.room),
        Body::Redirect(r) => Some(&mut r.room),
        Body::Refused(r) => Some(&mut r.room),
        Body::FlowOpen(f) => Some(&mut f.room),
        Body::KeyframeRequest(k) => Some(&mut k.room),
        Body::TrackEnded(e) => Some(&mut e.room),
        Body::AudioLevels(l) => Some(&mut l.room),
        Body::FlowClose(_) | Body::Nack(_) => None,
        _ => return Err(()),
    })
}

fn refused(room: String, track: u64, detail: &str) -> Frame {
    Frame {
        body: Some(Body::Refused(Refused {
            room,
            track,
            reason: Reason::NotFound as i32,
            detail: detail.to_owned(),
        })),
    }
}

/// Who a gateway is: its federation name and its node id.
pub struct Names {
    pub name: String,
    pub node_id: String,
    /// Which peers see our participants under pseudonyms.
    pub pseudonyms: roster::Pseudonyms,
}

impl FederationLinks {
    pub fn new(
        names: Names,
        trust: Trust,
        router: Router,
        membership: Membership,
        mappings: Arc<Mappings>,
        metrics: FederationMetrics,
        webhooks: Webhooks,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            name: names.name,
            node_id: names.node_id,
            pseudonyms: names.pseudonyms,
            trust: RwLock::new(trust),
            router,
            membership,
            mappings,
            peers: Mutex::new(HashMap::new()),
            stats: Stats::default(),
            metrics,
            published: Mutex::new(HashMap::new()),
            webhooks,
            active: std::sync::atomic::AtomicBool::new(false),
            stopped: Mutex::new(HashSet::new()),
        })
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Peer>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn trust(&self) -> std::sync::RwLockReadGuard<'_, Trust> {
        self.trust.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The peers we may link with and where each comes from (config, added).
    pub fn peer_names(&self) -> Vec<(String, super::peers::Source)> {
        self.trust().names()
    }

    /// Replaces whom we trust (peers added or removed); closes the links of `unlink` (peers
    /// removed, or whose CA changed): what crosses with them stops, as when a link goes down.
    pub fn set_trust(&self, trust: Trust, unlink: &[String]) {
        *self.trust.write().unwrap_or_else(|e| e.into_inner()) = trust;
        for p in self.peers().values() {
            if unlink.contains(&p.raw.node.to_string()) {
                tracing::info!(peer = %p.raw.node, "federation peer removed or changed: closing its link");
                p.raw.connection.close(8u32.into(), b"peer removed");
            }
        }
    }

    /// Closes every federation link (this gateway stepped down).
    pub fn close_links(&self) {
        for p in self.peers().values() {
            p.raw.connection.close(7u32.into(), b"standby gateway");
        }
    }

    /// Whether this gateway carries the federation now.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    pub fn set_active(&self, yes: bool) {
        self.active.store(yes, Ordering::Relaxed);
    }

    /// Peers linked now.
    pub fn linked(&self) -> Vec<String> {
        self.peers().keys().cloned().collect()
    }

    /// Rooms both sides map with `peer`: ours → theirs.
    pub fn active(&self, peer: &str) -> BTreeMap<String, String> {
        self.peers()
            .get(peer)
            .map(|p| p.active.clone())
            .unwrap_or_default()
    }

    /// A frame our workers send to `peer`, translated; `None` if it must not cross.
    fn outbound(&self, peer: &str, frame: Frame) -> Option<Frame> {
        let mut body = frame.body?;
        let peers = self.peers();
        let p = peers.get(peer)?;
        // Levels of the tracks announced to it only (none for a room no longer mapped).
        if let Body::AudioLevels(l) = &mut body {
            l.levels = levels::pass(&l.levels, p.announced.get(&l.room)).kept;
            if l.levels.is_empty() {
                return None;
            }
        }
        if let Some(room) = room_of(&mut body).ok()? {
            let Some(theirs) = p.active.get(room.as_str()) else {
                bump(&self.stats.outbound_dropped);
                self.metrics.refuse("outbound_unmapped");
                return None;
            };
            *room = theirs.clone();
        }
        match &mut body {
            // The peer finds the origin in its own registry.
            Body::Subscribe(s) => s.origin.clear(),
            Body::Accepted(a) => a.path = vec![self.name.clone()],
            // Our other nodes are not reachable from the peer.
            Body::Redirect(_) => return None,
            _ => {}
        }
        tracing::trace!(%peer, ?body, "federation frame out");
        p.counters.frames_out.inc();
        Some(Frame { body: Some(body) })
    }

    /// Runs every few hundred milliseconds: sends our mappings and rosters where they
    /// changed, and stops what crosses for rooms no longer mapped by both sides.
    pub fn sync(&self) {
        let late: Vec<String> = self
            .peers()
            .iter()
            .filter(|(_, p)| p.early.is_some() && p.up_at.elapsed() >= EARLY_WAIT)
            .map(|(name, _)| name.clone())
            .collect();
        for peer in late {
            tracing::debug!(%peer, "federation peer sent no mappings: its frames are handled");
            self.mappings_known(&peer);
        }
        self.apply_stops();
        self.sync_links();
        self.publish();
    }

    /// Writes, for each configured peer, whether it is linked and which rooms cross, where that
    /// changed (under the gateway's lease: the records go with it).
    fn publish(&self) {
        let records: Vec<PeerRecord> = {
            let peers = self.peers();
            self.peer_names()
                .into_iter()
                .map(|(name, source)| PeerRecord {
                    linked: peers.contains_key(&name),
                    active_rooms: peers
                        .get(&name)
                        .map(|p| p.active.keys().cloned().collect())
                        .unwrap_or_default(),
                    remote: peers.get(&name).map(|p| p.raw.connection.remote_address()),
                    peer: name,
                    gateway: self.node_id.clone(),
                    source: source.as_str().to_owned(),
                })
                .collect()
        };
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        // Peers removed since: their records go.
        published.retain(|peer, r| {
            let keep = records.iter().any(|n| n.peer == *peer);
            if !keep {
                let keys = self.membership.keys();
                self.membership
                    .remove(sfu_control::federation::peer_key(keys, peer, &r.gateway));
            }
            keep
        });
        for r in records {
            if published.get(&r.peer) != Some(&r) {
                let key =
                    sfu_control::federation::peer_key(self.membership.keys(), &r.peer, &r.gateway);
                self.membership.set_json(key, &r);
                published.insert(r.peer.clone(), r);
            }
        }
    }

    fn sync_links(&self) {
        let mut peers = self.peers();
        for (name, p) in peers.iter_mut() {
            let mine = self.mappings.with_peer(name);
            let list: Vec<(String, String)> =
                mine.iter().map(|(a, b)| (a.clone(), b.clone())).collect();
            if p.sent_mappings.as_ref() != Some(&list) {
                let _ = p.control.send(Message::Mappings {
                    rooms: list.clone(),
                });
                p.sent_mappings = Some(list);
            }
            self.update_active(name, p);
            for (ours, theirs) in &p.active {
                let (mut participants, mut tracks) = roster::local(&self.membership, ours);
                p.announced
                    .insert(ours.clone(), levels::speakers(&tracks, |_| false));
                if self.pseudonyms.for_peer(name) {
                    let key = &self.pseudonyms.key;
                    roster::pseudonymize(key, name, &mut participants, &mut tracks);
                }
                let m = Message::Roster {
                    room: theirs.clone(),
                    participants,
                    tracks,
                };
                let bytes = serde_json::to_vec(&m).unwrap_or_default();
                if p.sent_rosters.get(ours) != Some(&bytes) {
                    let _ = p.control.send(m);
                    p.sent_rosters.insert(ours.clone(), bytes);
                }
            }
        }
    }

    /// `participant_joined` / `participant_left` for the peer's participants in our `room`:
    /// those in `now` and not in `before`, and the other way round.
    fn announce(&self, room: &str, before: &[ParticipantRef], now: &[ParticipantRef]) {
        let hook = |event, p: &ParticipantRef| {
            let mut e = Event::new(event, &self.node_id, room);
            e.participant = Some(p.clone());
            self.webhooks.send(e);
        };
        for p in now
            .iter()
            .filter(|p| !before.iter().any(|b| b.sid == p.sid))
        {
            hook("participant_joined", p);
        }
        for p in before
            .iter()
            .filter(|b| !now.iter().any(|p| p.sid == b.sid))
        {
            hook("participant_left", p);
        }
    }

    /// Recomputes the rooms both sides map with one peer; stops those no longer mapped.
    fn update_active(&self, name: &str, p: &mut Peer) {
        let active: BTreeMap<String, String> = self
            .mappings
            .with_peer(name)
            .into_iter()
            .filter(|(ours, theirs)| p.theirs.get(theirs) == Some(ours))
            .collect();
        let gone: Vec<String> = p
            .active
            .iter()
            .filter(|(ours, theirs)| active.get(*ours) != Some(*theirs))
            .map(|(ours, _)| ours.clone())
            .collect();
        for room in gone {
            tracing::info!(peer = %name, %room, "federated room no longer mapped by both sides");
            self.deactivate(p, &room);
        }
        for room in active.keys() {
            if !p.active.contains_key(room) {
                tracing::info!(peer = %name, %room, "federated room mapped by both sides");
            }
        }
        p.active = active;
        self.metrics
            .mapped_rooms
            .get_or_create(&PeerLabels {
                peer: name.to_owned(),
            })
            .set(p.active.len() as i64);
    }

    /// Forgets which rosters were sent, so that the next sync sends them all again (a lost
    /// or refused roster is repaired within one period).
    pub fn resend_rosters(&self) {
        for p in self.peers().values_mut() {
            p.sent_rosters.clear();
        }
    }

    /// Stops everything of `room` crossing with one peer: what it subscribed to, what it
    /// sends us, and its participants in our registry.
    fn deactivate(&self, p: &mut Peer, room: &str) {
        let fed: Vec<u64> = p
            .fed
            .iter()
            .filter(|(r, _)| r == room)
            .map(|(_, t)| *t)
            .collect();
        for track in fed {
            p.fed.remove(&(room.to_owned(), track));
            self.router.frame(
                &p.link_name,
                Frame {
                    body: Some(Body::Subscribe(Subscribe {
                        room: room.to_owned(),
                        track,
                        layers: vec![],
                        origin: String::new(),
                    })),
                },
            );
        }
        let flows: Vec<u32> = p
            .flows
            .iter()
            .filter(|(_, r)| *r == room)
            .map(|(f, _)| *f)
            .collect();
        for flow in flows {
            p.flows.remove(&flow);
            self.router.frame(
                &p.link_name,
                Frame {
                    body: Some(Body::FlowClose(FlowClose { flow })),
                },
            );
        }
        for key in p.written.remove(room).unwrap_or_default() {
            self.membership.remove(key);
        }
        self.announce(room, &p.members.remove(room).unwrap_or_default(), &[]);
        p.tracks.remove(room);
        p.sent_rosters.remove(room);
        p.announced.remove(room);
        p.heard.remove(room);
    }
}

impl LinkHandler for FederationLinks {
    fn link_up(&self, raw: Link) {
        let peer = raw.node.to_string();
        if !self.trust().knows(&peer) {
            bump(&self.stats.links_refused);
            self.metrics.refuse("unconfigured_peer");
            tracing::warn!(%peer, remote = %raw.connection.remote_address(), "federation link from a name that is no configured peer refused");
            raw.connection.close(5u32.into(), b"not a configured peer");
            return;
        }
        // The endpoint's TLS trusts every peer's CA; the certificate must be from this one's.
        let chain = raw
            .connection
            .peer_identity()
            .and_then(|i| {
                i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .map(|c| *c)
            .unwrap_or_default();
        if let Err(e) = self.trust().verify(&peer, &chain) {
            bump(&self.stats.links_refused);
            self.metrics.refuse("wrong_ca");
            tracing::warn!(%peer, remote = %raw.connection.remote_address(), "federation link refused: certificate {e}");
            raw.connection
                .close(5u32.into(), b"certificate not from the peer's CA");
            return;
        }
        if !self.is_active() {
            self.metrics.refuse("standby");
            tracing::info!(%peer, "federation link refused: this gateway is on standby");
            raw.connection.close(7u32.into(), b"standby gateway");
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        bump(&self.stats.links_up);
        let link_name: NodeId = format!("{}~{peer}", self.node_id).into();
        let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let wrapped = Link::new(link_name.clone(), raw.connection.clone(), tx);
        let conn = raw.connection.clone();
        // Our mappings go out at once, first on the stream: the peer's relay waits for them,
        // and the peer starts asking for tracks once it has them, which we refuse for rooms
        // we do not know it maps (theirs, if they came only with the next sync).
        let mine: Vec<(String, String)> = self
            .mappings
            .with_peer(&peer)
            .iter()
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect();
        let _ = ctl_tx.send(Message::Mappings {
            rooms: mine.clone(),
        });
        self.peers().insert(
            peer.clone(),
            Peer {
                raw: raw.clone(),
                link_name,
                relay_link: Some(wrapped),
                early: Some(Vec::new()),
                up_at: std::time::Instant::now(),
                control: ctl_tx,
                theirs: BTreeMap::new(),
                sent_mappings: Some(mine),
                active: BTreeMap::new(),
                fed: HashSet::new(),
                flows: HashMap::new(),
                written: HashMap::new(),
                members: HashMap::new(),
                tracks: HashMap::new(),
                sent_rosters: HashMap::new(),
                announced: HashMap::new(),
                heard: HashMap::new(),
                counters: PeerCounters::new(&self.metrics, &peer),
                subscriptions: Bucket::new(
                    std::time::Instant::now(),
                    guard::SUBSCRIBE_RATE,
                    guard::SUBSCRIBE_BURST,
                ),
                levels: Bucket::new(
                    std::time::Instant::now(),
                    guard::LEVELS_RATE,
                    guard::LEVELS_BURST,
                ),
                refusals_log: LogGate::default(),
                datagrams_log: LogGate::default(),
                levels_log: LogGate::default(),
            },
        );
        self.metrics
            .linked
            .get_or_create(&PeerLabels { peer: peer.clone() })
            .set(1);
        tracing::info!(%peer, remote = %conn.remote_address(), "federation link up");
        let (m, p) = (me.clone(), peer.clone());
        tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                if let Some(f) = m.outbound(&p, f) {
                    raw.send_frame(f);
                }
            }
        });
        tokio::spawn(me.control_stream(peer, conn, ctl_rx));
    }

    fn link_down(&self, node: &NodeId) {
        let Some(mut p) = self.peers().remove(&**node) else {
            return;
        };
        tracing::info!(peer = %node, "federation link down");
        let labels = PeerLabels {
            peer: node.to_string(),
        };
        self.metrics.linked.get_or_create(&labels).set(0);
        self.metrics.mapped_rooms.get_or_create(&labels).set(0);
        for (_, keys) in p.written.drain() {
            for k in keys {
                self.membership.remove(k);
            }
        }
        for (room, members) in p.members.drain() {
            self.announce(&room, &members, &[]);
        }
        self.router.link_down(&p.link_name);
    }

    fn frame(&self, from: &NodeId, frame: Frame) {
        {
            let mut peers = self.peers();
            let Some(p) = peers.get_mut(&**from) else {
                return;
            };
            // Held until the peer's mappings are known (see `Peer::early`); past the bound
            // (a peer sends its mappings first, so only a misbehaving one gets there) frames
            // are handled at once.
            if let Some(early) = p.early.as_mut().filter(|e| e.len() < EARLY_FRAMES) {
                early.push(frame);
                return;
            }
        }
        self.handle_frame(from, frame);
    }

    fn datagram(&self, from: &NodeId, datagram: bytes::Bytes) {
        let mut peers = self.peers();
        let Some(p) = peers.get_mut(&**from) else {
            return;
        };
        p.counters.datagrams_in.inc();
        p.counters.bytes_in.inc_by(datagram.len() as u64);
        // Only datagrams that parse reach our workers (whose flow table, keyed by link, drops
        // records of flows the peer did not open).
        if !guard::datagram_ok(&datagram) {
            bump(&self.stats.bad_datagrams);
            p.counters.bad_datagrams.inc();
            if let Some(more) = p.datagrams_log.pass(std::time::Instant::now()) {
                tracing::warn!(peer = %from, len = datagram.len(), more, "malformed federation datagram dropped");
            }
            return;
        }
        let link = p.link_name.clone();
        drop(peers);
        self.router.datagram(&link, datagram);
    }

    fn malformed(&self, from: &NodeId, error: &anyhow::Error) {
        bump(&self.stats.malformed);
        self.metrics.refuse("malformed_frame");
        tracing::warn!(peer = %from, "federation link closed: {error:#}");
    }
}
