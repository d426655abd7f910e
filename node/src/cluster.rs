//! The node as a member of the cluster: its registry membership, its relay links, and the
//! routing of both to the media workers.
//!
//! - Registry changes about a room go to the worker owning that room; a node leaving goes to
//!   every worker; node records keep the relay link manager's peer list current.
//! - Relay frames go to the worker owning the room they name. Flows are routed by what the
//!   frames announced: a `FlowOpen` ties a flow to the worker of its room, and a flow this
//!   node sends carries its worker's index in its top bits (so NACKs find it).
//! - Every few seconds the node record is written again with the node's load.

use crate::media::worker::FLOW_WORKER_SHIFT;
use crate::media::{ClusterInput, Command, MediaPlane};
use sfu_control::records::{Load, NodeRecord, NodeState};
use sfu_control::{ClusterEvent, Membership};
use sfu_proto::relay::Frame;
use sfu_proto::relay::frame::Body;
use sfu_relay::NodeId;
use sfu_relay::quic::{Link, LinkHandler, LinkManager};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// How often the node record (with load) is written.
const LOAD_REPORT_PERIOD: Duration = Duration::from_secs(2);

/// Routes relay input to media workers.
pub struct Router {
    media: MediaPlane,
    /// (peer, flow) → worker, for flows peers send us.
    inbound: Mutex<HashMap<(NodeId, u32), usize>>,
}

impl Router {
    pub fn new(media: MediaPlane) -> Self {
        Self {
            media,
            inbound: Mutex::new(HashMap::new()),
        }
    }

    fn broadcast(&self, make: impl Fn() -> ClusterInput) {
        for i in 0..self.media.worker_count() {
            let _ = self.media.send_to(i, Command::Cluster(make()));
        }
    }

    fn flows(&self) -> std::sync::MutexGuard<'_, HashMap<(NodeId, u32), usize>> {
        self.inbound.lock().unwrap_or_else(|e| e.into_inner())
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
                let w = self.media.worker_for(&f.room);
                self.flows().insert((from.clone(), f.flow), w);
                w
            }
            Some(Body::FlowClose(f)) => match self.flows().remove(&(from.clone(), f.flow)) {
                Some(w) => w,
                None => return,
            },
            Some(Body::Nack(n)) => (n.flow >> FLOW_WORKER_SHIFT) as usize,
            Some(Body::Subscribe(s)) => self.media.worker_for(&s.room),
            Some(Body::Accepted(a)) => self.media.worker_for(&a.room),
            Some(Body::Redirect(r)) => self.media.worker_for(&r.room),
            Some(Body::Refused(r)) => self.media.worker_for(&r.room),
            Some(Body::KeyframeRequest(k)) => self.media.worker_for(&k.room),
            Some(Body::TrackEnded(e)) => self.media.worker_for(&e.room),
            Some(Body::AudioLevels(l)) => self.media.worker_for(&l.room),
            Some(Body::Hello(_)) | None => return,
        };
        let _ = self.media.send_to(
            worker,
            Command::Cluster(ClusterInput::Frame {
                from: from.clone(),
                frame,
            }),
        );
    }

    fn datagram(&self, from: &NodeId, datagram: bytes::Bytes) {
        let Ok((flow, rtp)) = sfu_relay::wire::decode_datagram(datagram) else {
            return;
        };
        let Some(worker) = self.flows().get(&(from.clone(), flow)).copied() else {
            return;
        };
        let _ = self.media.send_to(
            worker,
            Command::Cluster(ClusterInput::Datagram {
                from: from.clone(),
                flow,
                rtp,
            }),
        );
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
            ClusterEvent::Participant { room, .. }
            | ClusterEvent::ParticipantGone { room, .. }
            | ClusterEvent::Track { room, .. }
            | ClusterEvent::TrackGone { room, .. } => {
                let room = room.clone();
                let _ = media.send(&room, Command::Cluster(ClusterInput::Event(e)));
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

/// Writes the node record now and then every few seconds with the current load.
pub async fn report_load(
    membership: Membership,
    mut record: NodeRecord,
    media: MediaPlane,
    drain: Arc<crate::drain::Drain>,
) {
    let mut tick = tokio::time::interval(LOAD_REPORT_PERIOD);
    let mut last_cpu = cpu_seconds();
    let mut last_at = std::time::Instant::now();
    loop {
        tick.tick().await;
        let s = media.snapshot().await;
        let cpu = cpu_seconds();
        let elapsed = last_at.elapsed().as_secs_f64().max(1e-3);
        record.load = Load {
            rooms: s.rooms as u32,
            participants: s.participants as u32,
            tracks: s.tracks as u32,
            cpu: ((cpu - last_cpu) / elapsed) as f32,
        };
        (last_cpu, last_at) = (cpu, std::time::Instant::now());
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

/// CPU seconds this process used so far (user + system), from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // /proc reports USER_HZ ticks, 100 per second on Linux.
    (ticks(11) + ticks(12)) as f64 / 100.0
}
