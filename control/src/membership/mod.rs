//! A node's membership in the cluster: its lease, the keys it owns, and its view of everyone
//! else's.
//!
//! One task per node does all registry work, so no lock guards the lease:
//!
//! - **Lease.** Granted with a TTL of at most 5 s and kept alive every TTL/3. If a keep-alive
//!   says the lease is gone, or none has succeeded for a whole TTL (etcd unreachable), the node
//!   considers itself unregistered: [`Membership::registered`] turns false (the node stops
//!   admitting joins) and no write is made with that lease again (fencing). When the registry
//!   answers again, a new lease is granted and every key the node owns is written again.
//! - **Owned keys.** The node states what it wants in the registry ([`Membership::set_json`],
//!   [`Membership::remove`]); the task writes it under the current lease and retries after
//!   failures.
//! - **View.** List the prefix, then watch from the listed revision + 1; on compaction or a
//!   broken watch, list again. Every change becomes a [`ClusterEvent`] (a re-list yields the
//!   differences to the previous view), and the whole view can be read at any time.
//!
//! - **Fresh reads.** [`Membership::read`] asks the registry itself, for decisions the view
//!   may be too old for (a room's participant limit, just set by the control plane).
//! - **First and last.** [`Membership::set_json_alone`] and [`Membership::remove_alone`] write
//!   an owned key and learn, from the same etcd transaction, whether it is the only key under
//!   a prefix: exactly one node sees a room's first participant arrive and its last one leave.
//! - **Places in limited rooms.** [`Membership::reserve`] takes one place for a joining session
//!   from the places this node holds in the room, and when none is spare reserves a block of
//!   them in one transaction (see [`crate::records::ReservationRecord`]); [`Membership::release`]
//!   gives one back. Spare places a node has not used for a while go back to the room, so
//!   other nodes can take them.
//!
//! Media never waits for any of this: if etcd is unreachable, what flows keeps flowing.

use crate::records::{
    HandRecord, Key, Keys, NodeRecord, ParticipantRecord, ReservationRecord, TrackRecord,
};
use crate::registry::{LeaseId, Listing, Registry, RegistryError, Watch, WatchEvent};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// A change in the cluster, as seen in the registry.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterEvent {
    Node(NodeRecord),
    NodeGone(String),
    Participant {
        room: String,
        record: ParticipantRecord,
    },
    ParticipantGone {
        room: String,
        sid: String,
    },
    Track {
        room: String,
        record: TrackRecord,
    },
    TrackGone {
        room: String,
        track: String,
    },
    /// The counted audience of a room on a node (0: none, the record is gone).
    Audience {
        room: String,
        node: String,
        count: u32,
    },
    /// A hand was raised in a room.
    Hand {
        room: String,
        record: HandRecord,
    },
    HandGone {
        room: String,
        sid: String,
    },
    /// The node is registered (again) under a new lease, or lost its lease.
    Registered(bool),
}

enum Op {
    Set(String, Vec<u8>),
    Remove(String),
    Claim(
        String,
        Vec<u8>,
        oneshot::Sender<Result<bool, RegistryError>>,
    ),
    Read(String, oneshot::Sender<Result<Listing, RegistryError>>),
    Reserve {
        room: String,
        node: String,
        limit: u32,
        reply: oneshot::Sender<Result<bool, RegistryError>>,
    },
    Release(String),
    /// Put (`Some`) or delete an owned key, then tell `then` whether it was alone under the
    /// prefix (see [`Registry::write_alone`]).
    WriteAlone {
        key: String,
        value: Option<Vec<u8>>,
        prefix: String,
        then: AloneCallback,
    },
    Leave(oneshot::Sender<()>),
}

/// Told whether a key was alone under its prefix when written (an error: unknown).
type AloneCallback = Box<dyn FnOnce(Result<bool, RegistryError>) + Send>;

type Mirror = Arc<RwLock<BTreeMap<String, Vec<u8>>>>;

/// Transactions tried before a reservation gives up (each fails only if another node
/// reserved meanwhile). Between tries a node waits a random while that doubles each time,
/// so that nodes which keep losing to each other spread out instead of colliding again
/// (seen with three nodes each taking single places near a room's limit: eight immediate
/// retries were sometimes all lost).
const RESERVE_ATTEMPTS: u32 = 12;
/// The first wait after a lost reservation race; it doubles up to [`RESERVE_BACKOFF_MAX`].
const RESERVE_BACKOFF: Duration = Duration::from_millis(2);
const RESERVE_BACKOFF_MAX: Duration = Duration::from_millis(128);
/// The most places reserved at once.
const MAX_BLOCK: u32 = 32;
/// Spare places not taken for this long go back to the room.
const SPARE_HOLD: Duration = Duration::from_secs(1);

/// Places a node holds in one limited room.
struct Pool {
    /// Its reservation record's key.
    key: String,
    reserved: u32,
    used: u32,
    last_taken: Instant,
}

/// Handle to the membership task.
#[derive(Clone)]
pub struct Membership {
    ops: mpsc::UnboundedSender<Op>,
    registered: Arc<AtomicBool>,
    mirror: Mirror,
    keys: Keys,
}

impl Membership {
    /// Starts the task. `ttl` is the lease time to live (at most 5 s is sensible).
    pub fn start<R: Registry>(
        registry: R,
        keys: Keys,
        ttl: Duration,
        events: mpsc::UnboundedSender<ClusterEvent>,
    ) -> Self {
        Self::spawn(registry, keys, ttl, events, false)
    }

    /// Watches the cluster without registering or writing (the control plane's view).
    pub fn observe<R: Registry>(
        registry: R,
        keys: Keys,
        events: mpsc::UnboundedSender<ClusterEvent>,
    ) -> Self {
        Self::spawn(registry, keys, Duration::from_secs(3), events, true)
    }

    fn spawn<R: Registry>(
        registry: R,
        keys: Keys,
        ttl: Duration,
        events: mpsc::UnboundedSender<ClusterEvent>,
        observer: bool,
    ) -> Self {
        let (ops, rx) = mpsc::unbounded_channel();
        let m = Self {
            ops,
            registered: Arc::new(AtomicBool::new(false)),
            mirror: Arc::default(),
            keys: keys.clone(),
        };
        let task = Task {
            registry: Arc::new(registry),
            keys,
            ttl,
            observer,
            claimed: BTreeSet::new(),
            pools: HashMap::new(),
            registered: m.registered.clone(),
            mirror: m.mirror.clone(),
            events,
            desired: BTreeMap::new(),
            dirty: BTreeSet::new(),
            lease: None,
            renewed: Instant::now(),
        };
        tokio::spawn(task.run(rx));
        m
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Whether the node holds a live lease (it may admit joins).
    pub fn registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }

    /// Owns `key` with this value (written now and after every re-registration).
    pub fn set_json<T: Serialize>(&self, key: String, value: &T) {
        // Our records always serialise.
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        let _ = self.ops.send(Op::Set(key, bytes));
    }

    /// No longer owns `key`.
    pub fn remove(&self, key: String) {
        let _ = self.ops.send(Op::Remove(key));
    }

    /// Writes `key` under the node's lease only if no such key exists (a transaction);
    /// `Ok(false)` if it exists. Once claimed the key is owned like any other, and written
    /// again (if still free) after a re-registration.
    pub async fn claim<T: Serialize>(&self, key: String, value: &T) -> Result<bool, RegistryError> {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Claim(key, bytes, tx))
            .map_err(|_| RegistryError::Unavailable("membership stopped".into()))?;
        rx.await
            .map_err(|_| RegistryError::Unavailable("membership stopped".into()))?
    }

    /// Owns `key` with this value, like [`Membership::set_json`], and tells `then` whether no
    /// other key existed under `prefix` when it was written (one registry transaction). `then`
    /// runs on the membership task: it must be quick. Without a lease, or if the registry
    /// fails, `then` gets the error and the key is written later as usual.
    pub fn set_json_alone<T: Serialize>(
        &self,
        key: String,
        value: &T,
        prefix: String,
        then: impl FnOnce(Result<bool, RegistryError>) + Send + 'static,
    ) {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        let _ = self.ops.send(Op::WriteAlone {
            key,
            value: Some(bytes),
            prefix,
            then: Box::new(then),
        });
    }

    /// No longer owns `key`, like [`Membership::remove`], and tells `then` whether no other
    /// key remained under `prefix` when it was deleted (one registry transaction).
    pub fn remove_alone(
        &self,
        key: String,
        prefix: String,
        then: impl FnOnce(Result<bool, RegistryError>) + Send + 'static,
    ) {
        let _ = self.ops.send(Op::WriteAlone {
            key,
            value: None,
            prefix,
            then: Box::new(then),
        });
    }

    /// Takes one place in `room`, which admits at most `limit` sessions over the whole cluster:
    /// `Ok(false)` if every place is taken. Reserves a block of places in one registry
    /// transaction when this node has none spare.
    pub async fn reserve(&self, room: &str, node: &str, limit: u32) -> Result<bool, RegistryError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Reserve {
                room: room.to_owned(),
                node: node.to_owned(),
                limit,
                reply: tx,
            })
            .map_err(|_| RegistryError::Unavailable("membership stopped".into()))?;
        rx.await
            .map_err(|_| RegistryError::Unavailable("membership stopped".into()))?
    }

    /// Gives back a place taken with [`Membership::reserve`] (its session left).
    pub fn release(&self, room: &str) {
        let _ = self.ops.send(Op::Release(room.to_owned()));
    }

    /// Keys and values under a prefix, read from the registry now (not from the view), with
    /// the revision the listing reflects. Fails if the registry cannot be reached.
    pub async fn read(&self, prefix: &str) -> Result<Listing, RegistryError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(Op::Read(prefix.to_owned(), tx))
            .map_err(|_| RegistryError::Unavailable("membership stopped".into()))?;
        rx.await
            .map_err(|_| RegistryError::Unavailable("membership stopped".into()))?
    }

    /// Keys and values under a prefix, as last seen.
    pub fn list(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        self.mirror
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// A room's configuration, if it was created through the API.
    pub fn room_config(&self, room: &str) -> Option<crate::records::RoomConfig> {
        let key = self.keys.room_config(room);
        let mirror = self.mirror.read().unwrap_or_else(|e| e.into_inner());
        serde_json::from_slice(mirror.get(&key)?).ok()
    }

    /// Revokes the lease (everything the node owns disappears at once) and stops.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.ops.send(Op::Leave(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(3), rx).await;
        }
    }

    pub fn view<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Vec<T> {
        self.mirror
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(_, v)| serde_json::from_slice(v).ok())
            .collect()
    }

    /// Every node in the cluster, as last seen.
    pub fn nodes(&self) -> Vec<NodeRecord> {
        self.view(&format!("{}nodes/", self.keys.prefix()))
    }

    /// The announced participants (stage, and the audience of small rooms) and the tracks of
    /// a room, on every node.
    pub fn room(&self, room: &str) -> (Vec<ParticipantRecord>, Vec<TrackRecord>) {
        let participants = self
            .list(&self.keys.participants_prefix(room))
            .into_iter()
            .filter(|(k, _)| matches!(self.keys.parse(k), Some(Key::Participant { .. })))
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect();
        (
            participants,
            self.view(&format!("{}rooms/{room}/tracks/", self.keys.prefix())),
        )
    }

    /// The counted audience of a room, per node.
    pub fn audience(&self, room: &str) -> Vec<(String, u32)> {
        self.list(&self.keys.participants_prefix(room))
            .into_iter()
            .filter_map(|(k, v)| match self.keys.parse(&k)? {
                Key::Audience { node, .. } => {
                    let r: crate::records::AudienceRecord = serde_json::from_slice(&v).ok()?;
                    Some((node, r.count))
                }
                _ => None,
            })
            .collect()
    }

    /// The raised hands of a room, earliest first.
    pub fn hands(&self, room: &str) -> Vec<HandRecord> {
        let mut hands: Vec<HandRecord> = self.view(&self.keys.hands_prefix(room));
        hands.sort_by(|a, b| (a.raised_ms, &a.sid).cmp(&(b.raised_ms, &b.sid)));
        hands
    }
}

struct Task<R> {
    /// Shared with the reads the task spawns, so they never hold up keep-alives.
    registry: Arc<R>,
    keys: Keys,
    ttl: Duration,
    /// Only watches: no lease, no writes.
    observer: bool,
    /// Owned keys that were claimed (written again only if still free).
    claimed: BTreeSet<String>,
    /// Places held in limited rooms, by room.
    pools: HashMap<String, Pool>,
    registered: Arc<AtomicBool>,
    mirror: Mirror,
    events: mpsc::UnboundedSender<ClusterEvent>,
    /// What the node wants in the registry.
    desired: BTreeMap<String, Vec<u8>>,
    /// Keys whose registry state may differ from `desired`.
    dirty: BTreeSet<String>,
    lease: Option<LeaseId>,
    /// Last successful grant or keep-alive.
    renewed: Instant,
}

impl<R: Registry> Task<R> {
    async fn run(mut self, mut ops: mpsc::UnboundedReceiver<Op>) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch: Option<Watch> = None;
        loop {
            tokio::select! {
                op = ops.recv() => match op {
                    Some(Op::Set(k, v)) => {
                        self.desired.insert(k.clone(), v);
                        self.dirty.insert(k);
                    }
                    Some(Op::Remove(k)) => {
                        self.desired.remove(&k);
                        self.claimed.remove(&k);
                        self.dirty.insert(k);
                    }
                    Some(Op::Claim(k, v, reply)) => {
                        let result = match self.lease {
                            None => Err(RegistryError::Unavailable("not registered".into())),
                            Some(l) => self.registry.create(&k, v.clone(), l).await,
                        };
                        if let Ok(true) = result {
                            self.desired.insert(k.clone(), v);
                            self.claimed.insert(k);
                        }
                        let _ = reply.send(result);
                    }
                    Some(Op::Read(prefix, reply)) => {
                        // Starts after the writes of every op before it (a slot's release, say) were
                        // flushed, when the registry answers.
                        let registry = self.registry.clone();
                        tokio::spawn(async move {
                            let _ = reply.send(registry.list(&prefix).await);
                        });
                    }
                    Some(Op::Reserve { room, node, limit, reply }) => {
                        let _ = reply.send(self.reserve(&room, &node, limit).await);
                    }
                    Some(Op::Release(room)) => self.release(&room),
                    Some(Op::WriteAlone { key, value, prefix, then }) => {
                        then(self.write_alone(key, value, &prefix).await);
                    }
                    Some(Op::Leave(done)) => {
                        if let Some(l) = self.lease.take() {
                            let _ = self.registry.revoke(l).await;
                        }
                        self.set_registered(false);
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
                _ = tick.tick() => {
                    self.renew().await;
                    self.return_spare_places();
                    if watch.is_none() {
                        watch = self.resync().await;
                    }
                }
                batch = async { watch.as_mut().expect("guarded").recv().await }, if watch.is_some() => {
                    match batch {
                        Some(Ok(events)) => {
                            for e in events {
                                self.apply(e);
                            }
                        }
                        Some(Err(RegistryError::Compacted(_))) => watch = self.resync().await,
                        Some(Err(e)) => {
                            tracing::warn!("registry watch ended: {e}");
                            watch = None;
                        }
                        None => watch = None,
                    }
                }
            }
            self.flush().await;
        }
    }

    fn set_registered(&self, yes: bool) {
        if self.registered.swap(yes, Ordering::Relaxed) != yes {
            let _ = self.events.send(ClusterEvent::Registered(yes));
        }
    }

    /// Keeps the lease alive, or gets a new one.
    async fn renew(&mut self) {
        if self.observer {
            return;
        }
        match self.lease {
            Some(l) => match self.registry.keep_alive(l).await {
                Ok(()) => self.renewed = Instant::now(),
                Err(RegistryError::LeaseExpired) => {
                    tracing::warn!("registry lease expired; re-registering");
                    self.lose_lease();
                }
                Err(e) => {
                    if self.renewed.elapsed() >= self.ttl {
                        tracing::warn!("registry unreachable for a whole lease TTL ({e}); fencing");
                        self.lose_lease();
                    }
                }
            },
            None => match self.registry.grant(self.ttl).await {
                Ok(l) => {
                    tracing::info!(lease = l.0, "registered with the registry");
                    self.lease = Some(l);
                    self.renewed = Instant::now();
                    self.dirty = self.desired.keys().cloned().collect();
                }
                Err(e) => tracing::debug!("registry: {e}"),
            },
        }
    }

    /// An owned key written (or deleted) in a transaction that also says whether it was
    /// alone under `prefix`. If that fails the key is left to [`Task::flush`].
    async fn write_alone(
        &mut self,
        key: String,
        value: Option<Vec<u8>>,
        prefix: &str,
    ) -> Result<bool, RegistryError> {
        match &value {
            Some(v) => {
                self.desired.insert(key.clone(), v.clone());
            }
            None => {
                self.desired.remove(&key);
                self.claimed.remove(&key);
            }
        }
        let Some(lease) = self.lease else {
            self.dirty.insert(key);
            return Err(RegistryError::Unavailable("not registered".into()));
        };
        let result = self.registry.write_alone(&key, value, lease, prefix).await;
        match &result {
            Ok(_) => {
                self.dirty.remove(&key);
            }
            Err(e) => {
                tracing::debug!("registry write: {e}");
                self.dirty.insert(key);
                if *e == RegistryError::LeaseExpired {
                    self.lose_lease();
                }
            }
        }
        result
    }

    /// See [`Membership::reserve`].
    async fn reserve(&mut self, room: &str, node: &str, limit: u32) -> Result<bool, RegistryError> {
        let key = self.keys.reservation(room, node);
        let pool = self.pools.entry(room.to_owned()).or_insert_with(|| Pool {
            key: key.clone(),
            reserved: 0,
            used: 0,
            last_taken: Instant::now(),
        });
        if pool.reserved > pool.used {
            pool.used += 1;
            pool.last_taken = Instant::now();
            return Ok(true);
        }
        let Some(lease) = self.lease else {
            return Err(RegistryError::Unavailable("not registered".into()));
        };
        let prefix = self.keys.reservations_prefix(room);
        for attempt in 0..RESERVE_ATTEMPTS {
            if attempt > 0 {
                let ceiling = (RESERVE_BACKOFF * (1 << attempt.min(7))).min(RESERVE_BACKOFF_MAX);
                let wait = ceiling.mul_f64(rand::random_range(0.5..1.0));
                tokio::time::sleep(wait).await;
            }
            let (kvs, revision) = self.registry.list(&prefix).await?;
            let others: u32 = kvs
                .iter()
                .filter(|(k, _)| *k != key)
                .filter_map(|(_, v)| serde_json::from_slice::<ReservationRecord>(v).ok())
                .map(|r| r.reserved)
                .sum();
            let Some(pool) = self.pools.get_mut(room) else {
                return Ok(false);
            };
            let free = limit.saturating_sub(others).saturating_sub(pool.reserved);
            if free == 0 {
                return Ok(false);
            }
            // Large blocks while the room is far from full, single places near the end, so
            // that spare places other nodes hold rarely turn a join away.
            let block = (free / 8).clamp(1, MAX_BLOCK);
            let record = ReservationRecord {
                reserved: pool.reserved + block,
                used: pool.used + 1,
            };
            let value = serde_json::to_vec(&record).unwrap_or_default();
            match self
                .registry
                .put_if_unchanged(&key, value.clone(), lease, &prefix, revision)
                .await
            {
                Ok(true) => {
                    pool.reserved = record.reserved;
                    pool.used = record.used;
                    pool.last_taken = Instant::now();
                    self.desired.insert(key.clone(), value);
                    self.dirty.remove(&key);
                    return Ok(true);
                }
                Ok(false) => continue,
                Err(RegistryError::LeaseExpired) => {
                    self.lose_lease();
                    return Err(RegistryError::LeaseExpired);
                }
                Err(e) => return Err(e),
            }
        }
        Err(RegistryError::Unavailable(
            "too many nodes reserving places in this room at once".into(),
        ))
    }

    /// See [`Membership::release`].
    fn release(&mut self, room: &str) {
        if let Some(pool) = self.pools.get_mut(room) {
            pool.used = pool.used.saturating_sub(1);
        }
    }

    /// Places held spare for a while go back to their room (a lower reservation needs no
    /// transaction: it cannot break the limit). Also publishes how many are used.
    fn return_spare_places(&mut self) {
        let now = Instant::now();
        let mut emptied = Vec::new();
        for (room, pool) in &mut self.pools {
            let idle = now.saturating_duration_since(pool.last_taken) >= SPARE_HOLD;
            if !idle || pool.reserved == pool.used {
                continue;
            }
            pool.reserved = pool.used;
            let key = pool.key.clone();
            if pool.reserved == 0 {
                self.desired.remove(&key);
                emptied.push(room.clone());
            } else {
                let record = ReservationRecord {
                    reserved: pool.reserved,
                    used: pool.used,
                };
                self.desired
                    .insert(key.clone(), serde_json::to_vec(&record).unwrap_or_default());
            }
            self.dirty.insert(key);
        }
        for room in emptied {
            self.pools.remove(&room);
        }
    }

    /// Fencing: the lease is gone; nothing is written with it again.
    fn lose_lease(&mut self) {
        self.lease = None;
        self.set_registered(false);
    }

    /// Writes dirty keys under the current lease.
    async fn flush(&mut self) {
        let Some(lease) = self.lease else { return };
        while let Some(k) = self.dirty.pop_first() {
            let result = match self.desired.get(&k) {
                Some(v) if self.claimed.contains(&k) => {
                    match self.registry.create(&k, v.clone(), lease).await {
                        Ok(false) => {
                            // Still there under our old lease (not revoked yet): take it over.
                            // Anyone else's value means it was taken while we were fenced.
                            let current = self.registry.list(&k).await.map(|(kvs, _)| {
                                kvs.into_iter()
                                    .find(|(key, _)| *key == k)
                                    .map(|(_, val)| val)
                            });
                            match current {
                                Ok(Some(val)) if val == *v => {
                                    self.registry.put(&k, v.clone(), lease).await
                                }
                                Ok(_) => {
                                    tracing::warn!(key = k, "claimed key was taken meanwhile");
                                    self.desired.remove(&k);
                                    self.claimed.remove(&k);
                                    Ok(())
                                }
                                Err(e) => Err(e),
                            }
                        }
                        other => other.map(|_| ()),
                    }
                }
                Some(v) => self.registry.put(&k, v.clone(), lease).await,
                None => self.registry.delete(&k).await,
            };
            match result {
                Ok(()) => {}
                Err(RegistryError::LeaseExpired) => {
                    self.dirty.insert(k);
                    self.lose_lease();
                    return;
                }
                Err(e) => {
                    tracing::debug!("registry write: {e}");
                    self.dirty.insert(k);
                    return;
                }
            }
        }
        // Everything the node owns is written under a live lease.
        self.set_registered(true);
    }

    /// Lists the prefix, reports what changed since the last view, and watches from there.
    async fn resync(&mut self) -> Option<Watch> {
        let (kvs, revision) = match self.registry.list(self.keys.prefix()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("registry list: {e}");
                return None;
            }
        };
        let new: BTreeMap<String, Vec<u8>> = kvs.into_iter().collect();
        let old = std::mem::take(&mut *self.mirror.write().unwrap_or_else(|e| e.into_inner()));
        for k in old.keys().filter(|k| !new.contains_key(*k)) {
            self.emit(k, None);
        }
        for (k, v) in &new {
            if old.get(k) != Some(v) {
                self.emit(k, Some(v));
            }
        }
        *self.mirror.write().unwrap_or_else(|e| e.into_inner()) = new;
        match self.registry.watch(self.keys.prefix(), revision + 1).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::debug!("registry watch: {e}");
                None
            }
        }
    }

    fn apply(&mut self, e: WatchEvent) {
        match e {
            WatchEvent::Put { key, value } => {
                self.emit(&key, Some(&value));
                self.mirror
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, value);
            }
            WatchEvent::Delete { key } => {
                let existed = self
                    .mirror
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key)
                    .is_some();
                if existed {
                    self.emit(&key, None);
                }
            }
        }
    }

    fn emit(&self, key: &str, value: Option<&Vec<u8>>) {
        let Some(parsed) = self.keys.parse(key) else {
            return;
        };
        // Room hosting, reservations and room configuration are read where needed, not
        // announced.
        if matches!(
            parsed,
            Key::RoomNode { .. } | Key::Reservation { .. } | Key::RoomConfig { .. }
        ) {
            return;
        }
        let event = match (parsed, value) {
            (Key::Node(_), Some(v)) => serde_json::from_slice(v).ok().map(ClusterEvent::Node),
            (Key::Node(id), None) => Some(ClusterEvent::NodeGone(id)),
            (Key::Participant { room, .. }, Some(v)) => serde_json::from_slice(v)
                .ok()
                .map(|record| ClusterEvent::Participant { room, record }),
            (Key::Participant { room, sid }, None) => {
                Some(ClusterEvent::ParticipantGone { room, sid })
            }
            (Key::Track { room, .. }, Some(v)) => serde_json::from_slice(v)
                .ok()
                .map(|record| ClusterEvent::Track { room, record }),
            (Key::Track { room, track }, None) => Some(ClusterEvent::TrackGone { room, track }),
            (Key::Audience { room, node }, Some(v)) => {
                serde_json::from_slice::<crate::records::AudienceRecord>(v)
                    .ok()
                    .map(|r| ClusterEvent::Audience {
                        room,
                        node,
                        count: r.count,
                    })
            }
            (Key::Audience { room, node }, None) => Some(ClusterEvent::Audience {
                room,
                node,
                count: 0,
            }),
            (Key::Hand { room, .. }, Some(v)) => serde_json::from_slice(v)
                .ok()
                .map(|record| ClusterEvent::Hand { room, record }),
            (Key::Hand { room, sid }, None) => Some(ClusterEvent::HandGone { room, sid }),
            (Key::RoomNode { .. } | Key::Reservation { .. } | Key::RoomConfig { .. }, _) => None,
        };
        match event {
            Some(e) => {
                let _ = self.events.send(e);
            }
            None if value.is_some() => {
                tracing::warn!(key, "registry value does not parse; ignored")
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MemoryRegistry;

    fn node(id: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            region: String::new(),
            http_url: format!("http://{id}"),
            relay_addr: None,
            state: Default::default(),
            capacity: 0,
            limits: Default::default(),
            load: Default::default(),
            updated_ms: 0,
        }
    }

    async fn until(
        events: &mut mpsc::UnboundedReceiver<ClusterEvent>,
        f: impl Fn(&ClusterEvent) -> bool,
    ) -> ClusterEvent {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(30), events.recv())
                .await
                .expect("event in time")
                .unwrap();
            if f(&e) {
                return e;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_see_each_other_and_a_dead_nodes_keys_expire() {
        let reg = MemoryRegistry::new();
        let keys = Keys::new("t");
        let (tx_a, mut ev_a) = mpsc::unbounded_channel();
        let a = Membership::start(reg.clone(), keys.clone(), Duration::from_secs(3), tx_a);
        a.set_json(keys.node("a"), &node("a"));
        let (tx_b, _ev_b) = mpsc::unbounded_channel();
        let b = Membership::start(reg.clone(), keys.clone(), Duration::from_secs(3), tx_b);
        b.set_json(keys.node("b"), &node("b"));
        until(
            &mut ev_a,
            |e| matches!(e, ClusterEvent::Node(n) if n.id == "b"),
        )
        .await;
        assert!(a.registered());
        assert_eq!(a.nodes().len(), 2);
        // b stops renewing (as if killed): its keys go with its lease.
        drop(b);
        // Membership tasks outlive handles; revoke-free death is simulated by expiring.
        let lease_b = LeaseId(2);
        reg.expire_lease(lease_b);
        until(
            &mut ev_a,
            |e| matches!(e, ClusterEvent::NodeGone(id) if id == "b"),
        )
        .await;
        assert_eq!(a.nodes().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_fences_then_everything_is_written_again() {
        let reg = MemoryRegistry::new();
        let keys = Keys::new("t");
        let (tx, mut ev) = mpsc::unbounded_channel();
        let a = Membership::start(reg.clone(), keys.clone(), Duration::from_secs(3), tx);
        a.set_json(keys.node("a"), &node("a"));
        a.set_json(keys.track("r", "TR_1"), &"x");
        until(&mut ev, |e| matches!(e, ClusterEvent::Registered(true))).await;
        reg.expire_lease(LeaseId(1));
        until(&mut ev, |e| matches!(e, ClusterEvent::Registered(false))).await;
        assert!(!a.registered(), "no joins while fenced");
        until(&mut ev, |e| matches!(e, ClusterEvent::Registered(true))).await;
        let (kvs, _) = reg.list("/sfu/t/").await.unwrap();
        assert_eq!(kvs.len(), 2, "both keys written again under the new lease");
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_and_the_last_key_under_a_prefix_are_told_once() {
        let reg = MemoryRegistry::new();
        let keys = Keys::new("t");
        let (tx, mut ev) = mpsc::unbounded_channel();
        let a = Membership::start(reg.clone(), keys.clone(), Duration::from_secs(3), tx);
        until(&mut ev, |e| matches!(e, ClusterEvent::Registered(true))).await;
        let (told_tx, mut told) = mpsc::unbounded_channel();
        let prefix = keys.participants_prefix("r");
        for sid in ["PA_1", "PA_2"] {
            let t = told_tx.clone();
            a.set_json_alone(keys.participant("r", sid), &sid, prefix.clone(), move |r| {
                let _ = t.send((sid, r));
            });
        }
        for sid in ["PA_1", "PA_2"] {
            let t = told_tx.clone();
            a.remove_alone(keys.participant("r", sid), prefix.clone(), move |r| {
                let _ = t.send((sid, r));
            });
        }
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(told.recv().await.unwrap());
        }
        assert_eq!(
            got,
            [
                ("PA_1", Ok(true)),
                ("PA_2", Ok(false)),
                ("PA_1", Ok(false)),
                ("PA_2", Ok(true))
            ]
        );
        assert!(reg.list(&prefix).await.unwrap().0.is_empty());
        // Fenced: nobody can tell, and the key is written once registered again.
        reg.expire_lease(LeaseId(1));
        until(&mut ev, |e| matches!(e, ClusterEvent::Registered(false))).await;
        let t = told_tx.clone();
        a.set_json_alone(
            keys.participant("r", "PA_3"),
            &"PA_3",
            prefix.clone(),
            move |r| {
                let _ = t.send(("PA_3", r));
            },
        );
        assert!(told.recv().await.unwrap().1.is_err());
        until(&mut ev, |e| matches!(e, ClusterEvent::Registered(true))).await;
        assert_eq!(reg.list(&prefix).await.unwrap().0.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn compaction_leads_to_a_relist_with_the_differences() {
        let reg = MemoryRegistry::new();
        let keys = Keys::new("t");
        let (tx, mut ev) = mpsc::unbounded_channel();
        let a = Membership::start(reg.clone(), keys.clone(), Duration::from_secs(3), tx);
        a.set_json(keys.node("a"), &node("a"));
        until(&mut ev, |e| matches!(e, ClusterEvent::Registered(true))).await;
        reg.compact();
        let lease = reg.grant(Duration::from_secs(60)).await.unwrap();
        reg.put(
            &keys.node("z"),
            serde_json::to_vec(&node("z")).unwrap(),
            lease,
        )
        .await
        .unwrap();
        until(
            &mut ev,
            |e| matches!(e, ClusterEvent::Node(n) if n.id == "z"),
        )
        .await;
        assert_eq!(a.nodes().len(), 2);
    }
}
