//! The handle to a node's media workers, and which worker a command goes to.
//!
//! A room spans the workers of a node. Each participant lives on one worker (its peer
//! connections use that worker's socket), chosen at its join as the worker with the fewest
//! participants; the workers of a room exchange its tracks over in-process links as nodes do
//! over relay links, each packet handed once to each worker that wants it. The room's *home*
//! worker (a hash of its name) is the one that pulls the room's tracks from other nodes.
//!
//! A participant's sid carries its worker's index, so a command about a participant finds its
//! worker without a lookup; a command about a room or an identity goes to every worker.

use super::{Command, ErrorCode, SignalError, WorkerConfig, WorkerSnapshot, worker};
use crate::metrics::Metrics;
use bytes::Bytes;
use sfu_core::TrackId;
use sfu_relay::NodeId;
use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};

type Reply<T> = oneshot::Sender<Result<T, SignalError>>;

/// What the workers of a node share: read at signaling rate, never per packet.
#[derive(Default)]
pub struct Shared {
    /// Participants on each worker, as each last counted (the join goes to the fewest).
    pub load: Box<[AtomicUsize]>,
    /// The worker each track published on this node is published on (relay requests from
    /// other nodes about a track go there).
    pub track_owners: RwLock<HashMap<(Arc<str>, TrackId), usize>>,
    /// (peer, flow) → worker, for the flows other nodes send us: a `FlowOpen` ties a flow to
    /// the home worker of its room. Looked up once per relay datagram received.
    pub inbound_flows: Mutex<HashMap<(NodeId, u32), usize>>,
    /// Relayed records whose flow was not (or no longer) open, dropped before any worker saw
    /// them; a worker adds them to the drop counter when it reports.
    pub unknown_flow_records: AtomicU64,
}

/// A relay datagram's records, grouped by the worker each goes to.
pub type RoutedRecords = Vec<(usize, Vec<(u32, Bytes)>)>;

impl Shared {
    /// The worker a track published on this node is published on.
    pub fn track_owner(&self, room: &str, track: TrackId) -> Option<usize> {
        self.track_owners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(Arc::from(room), track))
            .copied()
    }

    pub fn inbound_flows(&self) -> std::sync::MutexGuard<'_, HashMap<(NodeId, u32), usize>> {
        self.inbound_flows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Splits a relay datagram from `from` into its records, grouped by the worker whose flow
    /// each belongs to (records of unknown flows are dropped; a malformed one ends the
    /// datagram): one look-up of the flow table per datagram.
    pub fn route_records(&self, from: &NodeId, datagram: Bytes) -> RoutedRecords {
        let mut each: RoutedRecords = Vec::new();
        let flows = self.inbound_flows();
        for record in sfu_relay::wire::records(datagram) {
            let Ok((flow, rtp)) = record else {
                break;
            };
            let Some(&worker) = flows.get(&(from.clone(), flow)) else {
                self.unknown_flow_records.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match each.iter_mut().find(|(w, _)| *w == worker) {
                Some((_, records)) => records.push((flow, rtp)),
                None => each.push((worker, vec![(flow, rtp)])),
            }
        }
        each
    }
}

/// The index of the worker a participant lives on, from its sid (`PA_` and two hex digits).
pub fn worker_of(sid: &str) -> Option<usize> {
    let digits = sid.strip_prefix("PA_")?.get(..2)?;
    usize::from_str_radix(digits, 16).ok()
}

/// A sid for a participant on worker `worker`.
pub fn new_sid(worker: usize) -> String {
    format!(
        "PA_{:02x}{:014x}",
        worker & 0xff,
        rand::random::<u64>() >> 8
    )
}

/// Handle to the media workers.
#[derive(Clone)]
pub struct MediaPlane {
    workers: Arc<[mpsc::UnboundedSender<Command>]>,
    udp_addrs: Arc<[SocketAddr]>,
    shared: Arc<Shared>,
    /// The node's recordings (fed by the workers; see [`crate::recording`]).
    pub(super) recordings: crate::recording::Recordings,
}

impl MediaPlane {
    /// Starts `config.workers` worker threads, each with its own UDP socket, linked to each
    /// other.
    pub fn start(config: WorkerConfig, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let count = config.workers.max(1);
        let channels: Vec<_> = (0..count).map(|_| mpsc::unbounded_channel()).collect();
        let senders: Vec<mpsc::UnboundedSender<Command>> =
            channels.iter().map(|(tx, _)| tx.clone()).collect();
        let shared = Arc::new(Shared {
            load: (0..count).map(|_| AtomicUsize::new(0)).collect(),
            track_owners: RwLock::default(),
            inbound_flows: Mutex::default(),
            unknown_flow_records: AtomicU64::new(0),
        });
        // Every worker may hold participants of a recorded room: each is told. Other nodes
        // learn it from the registry (a key bound to this node's lease, so a node that dies
        // takes its recordings' keys with it), and so do participants joining later.
        let notified = senders.clone();
        let membership = config.membership.clone();
        let notify: crate::recording::Notify = Box::new(move |info, active| {
            let key = membership.keys().recording(&info.room, &info.id);
            if active {
                let record = sfu_control::records::RecordingRecord {
                    id: info.id.clone(),
                    kind: info.kind.to_owned(),
                    node: info.node.clone(),
                    started_ms: info.started_ms,
                };
                membership.set_json(key, &record);
            } else {
                membership.remove(key);
            }
            for w in &notified {
                let _ = w.send(Command::Record(super::RecordCommand::Notice {
                    room: info.room.clone(),
                    id: info.id.clone(),
                    kind: info.kind,
                    active,
                }));
            }
        });
        let recordings = crate::recording::Recordings::new(
            config.recordings_dir.clone(),
            config.node_id.clone(),
            config.webhooks.clone(),
            notify,
        );
        let mut udp_addrs = Vec::new();
        for (index, (_, rx)) in channels.into_iter().enumerate() {
            let addr = worker::io::spawn(
                index,
                &config,
                metrics.clone(),
                rx,
                senders.clone(),
                shared.clone(),
            )?;
            udp_addrs.push(addr);
        }
        Ok(Self {
            workers: senders.into(),
            udp_addrs: udp_addrs.into(),
            shared,
            recordings,
        })
    }

    /// What the workers share.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Local addresses of the workers' UDP sockets.
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp_addrs
    }

    /// The home worker of `room`: the one that relays it with other nodes.
    pub fn worker_for(&self, room: &str) -> usize {
        home_worker(room, self.workers.len())
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Workers whose loop has ended (its thread panicked outside any room, or stopped).
    pub fn stopped_workers(&self) -> Vec<usize> {
        (0..self.workers.len())
            .filter(|&i| self.workers[i].is_closed())
            .collect()
    }

    /// The worker a new participant goes to: the one with the fewest (counted at once, so a
    /// burst of joins spreads; each worker corrects its count every second).
    pub fn join_worker(&self) -> usize {
        let i = (0..self.workers.len())
            .min_by_key(|&i| (self.shared.load[i].load(Ordering::Relaxed), i))
            .unwrap_or(0);
        self.shared.load[i].fetch_add(1, Ordering::Relaxed);
        i
    }

    /// The worker a relay request about a track published here goes to.
    pub fn track_owner(&self, room: &str, track: TrackId) -> Option<usize> {
        self.shared.track_owner(room, track)
    }

    /// The workers' command queues and what they share (for the relay's [`crate::cluster::Router`]).
    pub fn workers(&self) -> (Arc<[mpsc::UnboundedSender<Command>]>, Arc<Shared>) {
        (self.workers.clone(), self.shared.clone())
    }

    /// Sends a command: to the worker of the participant it is about, else to the room's home
    /// worker.
    pub fn send(&self, room: &str, command: Command) -> Result<(), SignalError> {
        let index = command
            .participant()
            .and_then(worker_of)
            .filter(|i| *i < self.workers.len())
            .unwrap_or_else(|| self.worker_for(room));
        self.send_to(index, command)
    }

    /// Sends a command to worker `index`.
    pub fn send_to(&self, index: usize, command: Command) -> Result<(), SignalError> {
        self.workers
            .get(index)
            .ok_or_else(|| SignalError::new(ErrorCode::Internal, "no such media worker"))?
            .send(command)
            .map_err(|_| SignalError::new(ErrorCode::Internal, "media worker stopped"))
    }

    /// Sends a command built around a reply channel and waits for the reply (routed as
    /// [`MediaPlane::send`]).
    pub async fn request<T>(
        &self,
        room: &str,
        build: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, SignalError> {
        let (tx, rx) = oneshot::channel();
        self.send(room, build(tx))?;
        rx.await.map_err(|_| {
            SignalError::new(ErrorCode::Internal, "media worker dropped the request")
        })?
    }

    /// The same request to worker `index`.
    pub async fn request_to<T>(
        &self,
        index: usize,
        build: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, SignalError> {
        let (tx, rx) = oneshot::channel();
        self.send_to(index, build(tx))?;
        rx.await.map_err(|_| {
            SignalError::new(ErrorCode::Internal, "media worker dropped the request")
        })?
    }

    /// Asks every worker in turn (a command about an identity or a whole room): the first
    /// success, or `NotFound` if no worker has what it is about, or the last other error.
    /// `every` goes on after a success (a room's participants on every worker).
    pub async fn request_each<T>(
        &self,
        every: bool,
        build: impl Fn(Reply<T>) -> Command,
    ) -> Result<Option<T>, SignalError> {
        let mut result: Result<Option<T>, SignalError> = Ok(None);
        let mut found = false;
        for index in 0..self.workers.len() {
            match self.request_to(index, &build).await {
                Ok(v) => {
                    found = true;
                    result = Ok(Some(v));
                    if !every {
                        break;
                    }
                }
                Err(e) if e.code == ErrorCode::NotFound => {}
                Err(e) => result = Err(e),
            }
        }
        match result {
            Ok(None) if !found => Err(SignalError::new(
                ErrorCode::NotFound,
                "no such participant or room on this node",
            )),
            other => other,
        }
    }

    /// Each worker's snapshot, in worker order (a worker that does not answer counts empty).
    pub async fn snapshot_each(&self) -> Vec<WorkerSnapshot> {
        let mut each = Vec::with_capacity(self.workers.len());
        for w in self.workers.iter() {
            let (tx, rx) = oneshot::channel();
            let s = if w.send(Command::Snapshot(tx)).is_ok() {
                rx.await.unwrap_or_default()
            } else {
                WorkerSnapshot::default()
            };
            each.push(s);
        }
        each
    }

    /// Sums the workers' snapshots.
    pub async fn snapshot(&self) -> WorkerSnapshot {
        let mut total = WorkerSnapshot::default();
        for w in self.workers.iter() {
            let (tx, rx) = oneshot::channel();
            if w.send(Command::Snapshot(tx)).is_ok()
                && let Ok(s) = rx.await
            {
                total.rooms += s.rooms;
                total.participants += s.participants;
                total.tracks += s.tracks;
                total.peers += s.peers;
            }
        }
        total
    }
}

/// The home worker of `room` among `workers`.
pub fn home_worker(room: &str, workers: usize) -> usize {
    let mut h = DefaultHasher::new();
    room.hash(&mut h);
    (h.finish() % workers.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sid_says_its_worker() {
        for w in [0, 1, 7, 255] {
            let sid = new_sid(w);
            assert_eq!(sid.len(), 19, "{sid}");
            assert_eq!(worker_of(&sid), Some(w));
        }
        assert_eq!(worker_of("nonsense"), None);
        assert_eq!(worker_of("PA_zz"), None);
    }
}
