//! The node as a member of the cluster: its registry membership, its relay links, and the
//! routing of both to the media workers.
//!
//! - Registry changes about a room go to every worker (a room spans them; those not hosting it
//!   ignore them); node records keep the relay link manager's peer list current.
//! - Relay frames about a room go to its home worker, the one that pulls its tracks from other
//!   nodes; requests about a track published here (subscribe, keyframe) go to the worker it is
//!   published on; audio levels to every worker (and, on a federation gateway, to the
//!   federation: see [`LevelsTap`]). Flows are routed by what the frames
//!   announced: a `FlowOpen` ties a flow to the home worker of its room, and a flow this node
//!   sends carries its worker's index in its top bits (so NACKs find it).
//! - Every few seconds the node record is written again with the node's load.

use crate::media::worker::FLOW_WORKER_SHIFT;
use crate::media::{ClusterInput, Command, MediaPlane, Shared, home_worker};
use sfu_control::records::{Load, NodeRecord, NodeState};
use sfu_control::{ClusterEvent, Membership};
use sfu_proto::relay::Frame;
use sfu_proto::relay::frame::Body;
use sfu_relay::NodeId;
use sfu_relay::quic::{Link, LinkHandler, LinkManager};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// How often the node record (with load) is written.
const LOAD_REPORT_PERIOD: Duration = Duration::from_secs(2);

/// Where the audio levels other nodes share with this one go besides its workers: a
/// federation gateway passes them on to its peers (`crate::federation::levels`). Set once,
/// when the gateway starts.
pub type LevelsTap = Arc<OnceLock<Box<dyn Fn(&sfu_proto::relay::AudioLevels) + Send + Sync>>>;

/// Routes relay input to media workers.
pub struct Router {
    /// The workers' command queues.
    workers: Arc<[mpsc::UnboundedSender<Command>]>,
    /// What the workers share: the flow table, the tracks' owners.
    shared: Arc<Shared>,
    levels_tap: LevelsTap,
}

impl Router {
    pub fn new(media: MediaPlane) -> Self {
        let (workers, shared) = media.workers();
        Self::over(workers, shared)
    }

    /// A router to these workers (the node's, or those of a simulated node).
    pub(crate) fn over(
        workers: Arc<[mpsc::UnboundedSender<Command>]>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            workers,
            shared,
            levels_tap: LevelsTap::default(),
        }
    }

    /// See [`LevelsTap`].
    pub fn levels_tap(&self) -> LevelsTap {
        self.levels_tap.clone()
    }

    /// Has the room's home worker share audio levels with the nodes `to` over its relay links
    /// (a federation gateway shares its peer's as a publisher's node shares its own).
    pub fn share_levels(
        &self,
        room: &str,
        to: Vec<NodeId>,
        levels: Vec<sfu_proto::relay::AudioLevel>,
    ) {
        self.send_to(
            self.worker_for(room),
            Command::Cluster(ClusterInput::ShareLevels {
                room: room.to_owned(),
                to,
                levels,
            }),
        );
    }

    fn send_to(&self, worker: usize, command: Command) {
        if let Some(w) = self.workers.get(worker) {
            let _ = w.send(command);
        }
    }

    fn broadcast(&self, make: impl Fn() -> ClusterInput) {
        for w in self.workers.iter() {
            let _ = w.send(Command::Cluster(make()));
        }
    }

    /// The home worker of a room: the one that pulls its tracks from other nodes.
    fn worker_for(&self, room: &str) -> usize {
        home_worker(room, self.workers.len())
    }

    /// The worker a track is published on, else the room's home worker.
    fn owner_of(&self, room: &str, track: u64) -> usize {
        self.shared
            .track_owner(room, sfu_core::TrackId(track))
            .unwrap_or_else(|| self.worker_for(room))
    }

    /// (peer, flow) → worker, for the flows peers send us (the workers read it too, for
    /// what arrives on the direct path).
    fn flows(&self) -> std::sync::MutexGuard<'_, HashMap<(NodeId, u32), usize>> {
        self.shared.inbound_flows()
    }
}

impl LinkHandler for Router {
    fn link_up(&self, link: Link) {
        self.broadcast(|| ClusterInput::LinkUp(link.clone()));
    }

    fn link_down(&self, node: &NodeId) {
        self.flows().retain(|(n, _), _| n != node);
        self.broadcast(|| ClusterInput::LinkDown(node.clone()));
    }

    fn frame(&self, from: &NodeId, frame: Frame) {
        let worker = match &frame.body {
            Some(Body::FlowOpen(f)) => {
                let w = self.worker_for(&f.room);
                self.flows().insert((from.clone(), f.flow), w);
                w
            }
            Some(Body::FlowClose(f)) => match self.flows().remove(&(from.clone(), f.flow)) {
                Some(w) => w,
                None => return,
            },
            Some(Body::Nack(n)) => (n.flow >> FLOW_WORKER_SHIFT) as usize,
            // A track published on this node is fed by the worker it is published on.
            Some(Body::Subscribe(s)) => self.owner_of(&s.room, s.track),
            Some(Body::Accepted(a)) => self.worker_for(&a.room),
            Some(Body::Redirect(r)) => self.worker_for(&r.room),
            Some(Body::Refused(r)) => self.worker_for(&r.room),
            Some(Body::KeyframeRequest(k)) => self.owner_of(&k.room, k.track),
            Some(Body::TrackEnded(e)) => self.worker_for(&e.room),
            // Every worker of the room ranks speakers, and delivers data to its participants.
            Some(Body::AudioLevels(_)) | Some(Body::UserData(_)) => {
                if let (Some(Body::AudioLevels(l)), Some(tap)) =
                    (&frame.body, self.levels_tap.get())
                {
                    tap(l);
                }
                self.broadcast(|| ClusterInput::Frame {
                    from: from.clone(),
                    frame: frame.clone(),
                });
                return;
            }
            // The link itself handles direct-path confirmations.
            Some(Body::Hello(_)) | Some(Body::DirectConfirmed(_)) | None => return,
        };
        self.send_to(
            worker,
            Command::Cluster(ClusterInput::Frame {
                from: from.clone(),
                frame,
            }),
        );
    }

    /// A datagram's packets go to the workers their flows belong to: one command per worker
    /// per datagram, and one look-up of the flow table per datagram.
    fn datagram(&self, from: &NodeId, datagram: bytes::Bytes) {
        let each = self.shared.route_records(from, datagram);
        for (worker, records) in each {
            self.send_to(
                worker,
                Command::Cluster(ClusterInput::Datagrams {
                    from: from.clone(),
                    records,
                }),
            );
        }
    }
}

/// Forwards registry changes to workers and keeps the link manager's peers current.
pub async fn route_events(
    me: NodeId,
    mut events: mpsc::UnboundedReceiver<ClusterEvent>,
    media: MediaPlane,
    membership: Membership,
    links: Option<Arc<LinkManager>>,
) {
    while let Some(e) = events.recv().await {
        match &e {
            ClusterEvent::Node(_) | ClusterEvent::NodeGone(_) => {
                if let Some(l) = &links {
                    let peers: Vec<(NodeId, SocketAddr)> = membership
                        .nodes()
                        .into_iter()
                        .filter(|n| *n.id != *me)
                        .filter_map(|n| Some((NodeId::from(n.id.as_str()), n.relay_addr?)))
                        .collect();
                    l.set_peers(&peers);
                }
                if let ClusterEvent::NodeGone(id) = &e {
                    tracing::info!(node = %id, "node left the cluster");
                    for i in 0..media.worker_count() {
                        let _ = media.send_to(i, Command::Cluster(ClusterInput::Event(e.clone())));
                    }
                }
            }
            // A room spans the workers: each that hosts it applies the change.
            ClusterEvent::Participant { .. }
            | ClusterEvent::ParticipantGone { .. }
            | ClusterEvent::Track { .. }
            | ClusterEvent::TrackGone { .. }
            | ClusterEvent::Audience { .. }
            | ClusterEvent::Hand { .. }
            | ClusterEvent::HandGone { .. } => {
                for i in 0..media.worker_count() {
                    let _ = media.send_to(i, Command::Cluster(ClusterInput::Event(e.clone())));
                }
            }
            // Participants of the room on this node are told (see `crate::media::record`).
            ClusterEvent::Recording { .. } | ClusterEvent::RecordingGone { .. } => {
                media.recording_event(&me, &e)
            }
            ClusterEvent::Registered(yes) => {
                if *yes {
                    tracing::info!("registered in the cluster; admitting joins");
                } else {
                    tracing::warn!(
                        "not registered in the cluster; refusing joins until the registry is back"
                    );
                }
            }
        }
    }
}

/// Writes the node record now and then every few seconds with the current load: CPU of the
/// process and of its media workers, the media it sends, its participants.
pub async fn report_load(
    membership: Membership,
    mut record: NodeRecord,
    media: MediaPlane,
    drain: Arc<crate::drain::Drain>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut tick = tokio::time::interval(LOAD_REPORT_PERIOD);
    let mut last = Sample::now(&metrics);
    loop {
        tick.tick().await;
        let s = media.snapshot().await;
        let now = Sample::now(&metrics);
        let elapsed = now.at.duration_since(last.at).as_secs_f64().max(1e-3);
        record.load = Load {
            rooms: s.rooms as u32,
            participants: s.participants as u32,
            tracks: s.tracks as u32,
            cpu: ((now.cpu - last.cpu) / elapsed) as f32,
            media_cpu: ((now.media_cpu - last.media_cpu) / elapsed) as f32,
            egress_bps: ((now.bytes_out.saturating_sub(last.bytes_out)) as f64 * 8.0 / elapsed)
                as u64,
        };
        last = now;
        record.updated_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        record.state = if drain.is_draining() {
            NodeState::Draining
        } else {
            NodeState::Active
        };
        membership.set_json(membership.keys().node(&record.id), &record);
    }
}

/// Counters the load is computed from.
struct Sample {
    at: std::time::Instant,
    cpu: f64,
    media_cpu: f64,
    bytes_out: u64,
}

impl Sample {
    fn now(metrics: &crate::metrics::Metrics) -> Self {
        Self {
            at: std::time::Instant::now(),
            cpu: stat_cpu_seconds("/proc/self/stat").map_or(0.0, |(_, s)| s),
            media_cpu: media_cpu_seconds(),
            bytes_out: metrics.bytes_out.get(),
        }
    }
}

/// The command name and CPU seconds used (user + system) of a `/proc/.../stat` file.
fn stat_cpu_seconds(path: &str) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // /proc reports USER_HZ ticks, 100 per second on Linux.
    Some((comm, (ticks(11) + ticks(12)) as f64 / 100.0))
}

/// CPU seconds the media worker threads (named `media-N`) used so far.
pub(crate) fn media_cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| stat_cpu_seconds(&format!("{}/stat", t.path().display())))
        .filter(|(comm, _)| comm.starts_with("media-"))
        .map(|(_, s)| s)
        .sum()
}

/// What this node can take, from its configuration and the machine: its media workers'
/// cores, the egress of its fastest network interface, its join rate.
pub fn limits(config: &crate::Config) -> sfu_control::records::Capacity {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mbps = if config.cluster.egress_capacity_mbps > 0 {
        config.cluster.egress_capacity_mbps
    } else {
        nic_speed_mbps().unwrap_or(1_000)
    };
    sfu_control::records::Capacity {
        media_cores: config.worker_count().min(cores) as f32,
        egress_bps: u64::from(mbps) * 1_000_000,
        joins_per_sec: config.joins_per_sec(),
    }
}

/// The speed of the fastest network interface other than loopback, in Mbit/s.
fn nic_speed_mbps() -> Option<u32> {
    std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .filter(|e| e.file_name() != "lo")
        .filter_map(|e| {
            std::fs::read_to_string(e.path().join("speed"))
                .ok()?
                .trim()
                .parse::<i64>()
                .ok()
        })
        .filter(|s| *s > 0)
        .max()
        .and_then(|s| u32::try_from(s).ok())
}
