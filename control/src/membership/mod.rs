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
    HandRecord, Key, Keys, NodeRecord, ParticipantRecord, RecordingRecord, TrackRecord,
};
use crate::registry::{LeaseId, Listing, Registry, RegistryError, Watch, WatchEvent};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

mod places;
use places::Pool;

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
    /// A recording of the room is running on a node.
    Recording {
        room: String,
        record: RecordingRecord,
    },
    /// It ended (or its node left): the record as it last was.
    RecordingGone {
        room: String,
        record: RecordingRecord,
    },
    /// The node is registered (again) under a new lease, or lost its lease.
    Registered(bool),
}

enum Op {
    Set(String, Vec<u8>),
    Remove(String),
    Disown(String),
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

    /// No longer owns `key`, without deleting it: for a claimed key that another node may
    /// hold now (this node's lease went and another claimed it), which must not be written
    /// again for this node after a re-registration.
    pub fn disown(&self, key: String) {
        let _ = self.ops.send(Op::Disown(key));
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

    /// The recordings of a room running on any node, as last seen.
    pub fn recordings(&self, room: &str) -> Vec<RecordingRecord> {
        self.view(&self.keys.recordings_prefix(room))
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
                    Some(Op::Disown(k)) => {
                        self.desired.remove(&k);
                        self.claimed.remove(&k);
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
        for (k, was) in old.iter().filter(|(k, _)| !new.contains_key(*k)) {
            self.emit(k, None, Some(was));
        }
        for (k, v) in &new {
            if old.get(k) != Some(v) {
                self.emit(k, Some(v), None);
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
                self.emit(&key, Some(&value), None);
                self.mirror
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, value);
            }
            WatchEvent::Delete { key } => {
                let was = self
                    .mirror
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
                if let Some(was) = was {
                    self.emit(&key, None, Some(&was));
                }
            }
        }
    }

    /// Announces a key's new value (`None`: deleted; `was` is then its last value).
    fn emit(&self, key: &str, value: Option<&Vec<u8>>, was: Option<&Vec<u8>>) {
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
            (Key::Recording { room, .. }, Some(v)) => serde_json::from_slice(v)
                .ok()
                .map(|record| ClusterEvent::Recording { room, record }),
            (Key::Recording { room, .. }, None) => was
                .and_then(|v| serde_json::from_slice(v).ok())
                .map(|record| ClusterEvent::RecordingGone { room, record }),
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
mod tests;
