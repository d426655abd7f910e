//! The simulated network: the nodes' worker cores, the clients, the datagrams in flight, the
//! registry and the relay links between nodes, in virtual time.

use super::client::Client;
use crate::auth::Grants;
use crate::cluster::Router;
use crate::media::plane::Shared;
use crate::media::worker::{WorkerConfig, WorkerCore};
use crate::media::{ClusterInput, Command, JoinRequest, Joined, ParticipantKind};
use crate::signaling::protocol::ServerMessage;
use crate::signaling::{EventsRx, Outbound};
use bytes::BytesMut;
use rtc::sansio::Protocol;
use sfu_control::{ClusterEvent, Keys, Membership, MemoryRegistry};
use sfu_relay::NodeId;
use sfu_relay::quic::LinkHandler;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub(super) const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
/// One-way latency of every path in the simulated network.
pub(super) const LATENCY: Duration = Duration::from_millis(10);
pub(super) const AUDIO_PERIOD: Duration = Duration::from_millis(20);
pub(super) const VIDEO_PERIOD: Duration = Duration::from_millis(33);

pub(super) fn address(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A datagram on its way.
pub(super) struct InFlight {
    pub(super) at: Instant,
    pub(super) from: SocketAddr,
    pub(super) to: SocketAddr,
    pub(super) data: BytesMut,
}

/// One media worker of a node under test, and what its siblings and links hand it.
pub(super) struct Worker {
    pub(super) node: usize,
    pub(super) core: WorkerCore,
    pub(super) addr: SocketAddr,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
}

pub(super) fn node_name(n: usize) -> String {
    format!("n{}", n + 1)
}

impl WorkerCore {
    /// Links this worker to node `name` in process: what it sends there goes to `to` as a
    /// relay link would deliver it, from `me` (this node).
    pub(super) fn link_in_process(
        &mut self,
        now: Instant,
        name: NodeId,
        me: NodeId,
        to: mpsc::UnboundedSender<Command>,
    ) {
        self.links.insert(
            name.clone(),
            crate::media::worker::links::LinkHandle::Sibling { me, to },
        );
        self.relay.handle_link_up(now, name);
        self.drain_relay(now);
    }
}

/// A node's receiving end of its relay links.
pub(super) struct NodeLinks {
    pub(super) inbox: mpsc::UnboundedSender<Command>,
    pub(super) received: mpsc::UnboundedReceiver<Command>,
    pub(super) router: Router,
}

/// The simulated network: the nodes' workers, clients, and datagrams in flight.
pub(super) struct Net {
    pub(super) now: Instant,
    pub(super) workers: Vec<Worker>,
    pub(super) clients: Vec<Client>,
    pub(super) in_flight: Vec<InFlight>,
    /// Every `lose_every`-th datagram to the last client (the subscriber) is lost (0: none).
    pub(super) lose_every: usize,
    pub(super) sent: usize,
    pub(super) lost: usize,
    /// The media clock's origin.
    pub(super) epoch: Instant,
    /// What the registry tells each node (other workers' and nodes' participants and
    /// tracks).
    pub(super) registry_events: Vec<mpsc::UnboundedReceiver<ClusterEvent>>,
    /// Every `relay_lose_every`-th relay datagram between nodes is lost (0: none).
    pub(super) relay_lose_every: usize,
    pub(super) relay_sent: usize,
    pub(super) relay_lost: usize,
    /// Each node's end of its relay links: what other nodes' workers send it, and the node's
    /// real router (`crate::cluster::Router`) that hands it to the right worker.
    pub(super) links: Vec<NodeLinks>,
    /// Publishing clients send media from then on.
    pub(super) next_audio: Option<Instant>,
    pub(super) next_video: Option<Instant>,
}

impl Net {
    /// A node of `workers` media workers.
    pub(super) fn new(workers: usize) -> Self {
        Self::cluster(&[workers])
    }

    /// Nodes `n1`, `n2`... of `workers[i]` media workers each, sharing one registry, each
    /// node's first worker linked to every other node's (an in-process relay link, as a QUIC
    /// link hands frames and datagrams to a worker).
    pub(super) fn cluster(nodes: &[usize]) -> Self {
        Self::cluster_with_fanout(nodes, 4)
    }

    /// As [`Net::cluster`], each node feeding at most `fanout` others directly with a track.
    pub(super) fn cluster_with_fanout(nodes: &[usize], fanout: usize) -> Self {
        let now = Instant::now();
        let registry = MemoryRegistry::new();
        let mut workers = Vec::new();
        let mut registry_events = Vec::new();
        let mut links = Vec::new();
        for (n, &count) in nodes.iter().enumerate() {
            let (events, rx) = mpsc::unbounded_channel();
            registry_events.push(rx);
            let membership = Membership::start(
                registry.clone(),
                Keys::new("sim"),
                Duration::from_secs(3),
                events,
            );
            let config = WorkerConfig {
                workers: count,
                bind_ip: [127, 0, 0, 1].into(),
                first_port: 0,
                udp_gso: true,
                announced_ips: vec![[127, 0, 0, 1].into()],
                max_participants: 0,
                default_max_layer: 2,
                large_room_threshold: 50,
                core: Default::default(),
                node_id: node_name(n).into(),
                fanout,
                membership,
                webhooks: Default::default(),
                recordings_dir: std::env::temp_dir(),
            };
            let channels: Vec<_> = (0..count).map(|_| mpsc::unbounded_channel()).collect();
            let senders: Vec<_> = channels.iter().map(|(tx, _)| tx.clone()).collect();
            let shared = Arc::new(Shared {
                load: (0..count).map(|_| AtomicUsize::new(0)).collect(),
                ..Default::default()
            });
            let (inbox, received) = mpsc::unbounded_channel();
            links.push(NodeLinks {
                inbox,
                received,
                router: Router::over(senders.clone().into(), shared.clone()),
            });
            for (i, (_, commands)) in channels.into_iter().enumerate() {
                let addr = address(40_000 + workers.len() as u16);
                let core = WorkerCore::new(
                    now,
                    i,
                    &config,
                    addr,
                    Arc::default(),
                    senders.clone(),
                    shared.clone(),
                )
                .unwrap();
                workers.push(Worker {
                    node: n,
                    core,
                    addr,
                    commands,
                });
            }
        }
        let mut net = Self {
            now,
            epoch: now,
            registry_events,
            workers,
            clients: Vec::new(),
            in_flight: Vec::new(),
            lose_every: 0,
            sent: 0,
            lost: 0,
            relay_lose_every: 0,
            relay_sent: 0,
            relay_lost: 0,
            next_audio: None,
            next_video: None,
            links,
        };
        // Every worker of a node has the node's link to each other node (as a QUIC link's
        // handle is given to every worker), and what arrives goes through the receiving
        // node's router.
        for w in 0..net.workers.len() {
            let a = net.workers[w].node;
            for b in (0..nodes.len()).filter(|b| *b != a) {
                let inbox = net.links[b].inbox.clone();
                net.workers[w].core.link_in_process(
                    now,
                    node_name(b).into(),
                    node_name(a).into(),
                    inbox,
                );
            }
        }
        net
    }

    pub(super) fn add_client(&mut self) -> usize {
        let port = 50_000 + self.clients.len() as u16;
        self.clients.push(Client::new(self.now, port));
        self.clients.len() - 1
    }

    /// Asks worker `w` something and returns its answer (handled at once: the core drains
    /// every input to its outputs).
    pub(super) fn ask<T>(
        &mut self,
        w: usize,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> T {
        let (tx, mut rx) = oneshot::channel();
        self.workers[w].core.handle_command(self.now, command(tx));
        rx.try_recv().expect("the worker answered at once")
    }

    /// `identity` joins room `r` on worker `w`.
    pub(super) fn join(&mut self, w: usize, identity: &str) -> (Joined, EventsRx) {
        let (events, rx) = crate::signaling::events();
        let request = JoinRequest {
            room: "r".into(),
            grants: Grants {
                identity: identity.into(),
                room: Some("r".into()),
                room_join: true,
                can_publish: true,
                can_subscribe: true,
                ..Default::default()
            },
            kind: ParticipantKind::Client,
            auto_subscribe: true,
            events: Some(events),
            place: false,
        };
        let joined = self.ask(w, |reply| Command::Join(request, reply)).unwrap();
        (joined, rx)
    }

    /// Client `c` (of participant `sid` on worker `w`) publishes a microphone and a camera.
    pub(super) fn publish(&mut self, w: usize, c: usize, sid: &str) {
        let sdp = self.clients[c].offer_media(self.now);
        let answer = self
            .ask(w, |reply| Command::Publish {
                room: "r".into(),
                participant: sid.into(),
                sdp,
                sources: HashMap::new(),
                track_sids: HashMap::new(),
                reply,
            })
            .unwrap();
        self.clients[c].accept_answer(self.now, answer);
        self.next_audio.get_or_insert(self.now);
        self.next_video.get_or_insert(self.now);
    }

    /// Answers the offers waiting in `events` for client `c`'s subscriber connection.
    pub(super) fn answer_offers(
        &mut self,
        w: usize,
        c: usize,
        sid: &str,
        events: &mut EventsRx,
    ) -> usize {
        let mut answered = 0;
        while let Ok(m) = events.try_recv() {
            let Outbound::Message(m) = m else { continue };
            let ServerMessage::Offer { sdp, .. } = *m else {
                continue;
            };
            let sdp = self.clients[c].answer(self.now, sdp);
            self.ask(w, |reply| Command::SubscriberAnswer {
                room: "r".into(),
                participant: sid.into(),
                sdp,
                reply,
            })
            .unwrap();
            answered += 1;
        }
        answered
    }

    /// The forwarding counters of worker `w`'s rooms.
    pub(super) fn stats(&self, w: usize) -> sfu_core::RoomStats {
        let mut sum = sfu_core::RoomStats::default();
        for (_, room) in &self.workers[w].core.rooms {
            let s = room.core_stats();
            sum.packets_in += s.packets_in;
            sum.packets_out += s.packets_out;
            sum.relayed += s.relayed;
            sum.nacks_received += s.nacks_received;
            sum.retransmitted += s.retransmitted;
            sum.keyframe_requests_received += s.keyframe_requests_received;
        }
        sum
    }

    pub(super) fn send(&mut self, from: SocketAddr, to: SocketAddr, data: BytesMut) {
        if self.clients.last().is_some_and(|c| c.addr == to) {
            self.sent += 1;
            if self.lose_every > 0 && self.sent.is_multiple_of(self.lose_every) {
                self.lost += 1;
                return;
            }
        }
        self.in_flight.push(InFlight {
            at: self.now + LATENCY,
            from,
            to,
            data,
        });
    }

    /// Collects what everyone wants to send, then jumps to the next instant something is
    /// due (at most `limit` ahead) and delivers it.
    pub(super) async fn step(&mut self, limit: Instant) {
        let now = self.now;
        // The membership task (the registry's edge) runs when the test yields; what it
        // learns goes to every worker, as `crate::cluster::route_events` does it.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        for n in 0..self.registry_events.len() {
            while let Ok(e) = self.registry_events[n].try_recv() {
                for w in self.workers.iter_mut().filter(|w| w.node == n) {
                    let input = Command::Cluster(ClusterInput::Event(e.clone()));
                    w.core.handle_command(now, input);
                }
            }
        }
        for c in 0..self.clients.len() {
            while let Some(t) = self.clients[c].pc.poll_write() {
                let from = self.clients[c].addr;
                self.send(from, t.transport.peer_addr, t.message);
            }
        }
        // What other nodes sent each node, through its router (relay datagrams as the link
        // carries them, one record each, lost every `relay_lose_every`-th hand-off).
        for n in 0..self.links.len() {
            while let Ok(c) = self.links[n].received.try_recv() {
                let Command::Cluster(input) = c else { continue };
                match input {
                    ClusterInput::Frame { from, frame } => self.links[n].router.frame(&from, frame),
                    ClusterInput::Datagrams { from, records } => {
                        self.relay_sent += 1;
                        if self.relay_lose_every > 0
                            && self.relay_sent.is_multiple_of(self.relay_lose_every)
                        {
                            self.relay_lost += 1;
                            continue;
                        }
                        for (flow, rtp) in records {
                            let d = sfu_relay::wire::encode_datagram(flow, &rtp);
                            self.links[n].router.datagram(&from, d);
                        }
                    }
                    _ => {}
                }
            }
        }
        for w in 0..self.workers.len() {
            // What its siblings and its node's router handed it: as the thread would.
            while let Ok(c) = self.workers[w].commands.try_recv() {
                self.workers[w].core.handle_command(now, c);
            }
        }
        for w in 0..self.workers.len() {
            self.workers[w].core.end_turn(now);
            let from = self.workers[w].addr;
            let out: Vec<_> = self.workers[w].core.transmits().drain().collect();
            for (to, data) in out {
                self.send(from, to, data);
            }
        }
        let siblings_busy = self.workers.iter().any(|w| !w.commands.is_empty())
            || self.links.iter().any(|l| !l.received.is_empty());
        let next = self
            .in_flight
            .iter()
            .map(|d| d.at)
            .chain(self.workers.iter().filter_map(|w| w.core.poll_timeout()))
            .chain(self.clients.iter_mut().filter_map(|c| c.pc.poll_timeout()))
            .chain(self.next_audio)
            .chain(self.next_video)
            .min()
            .unwrap_or(limit)
            .clamp(now, limit);
        self.now = if siblings_busy { now } else { next };
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|d| d.at <= now);
        self.in_flight = later;
        for d in due {
            if let Some(w) = self.workers.iter_mut().find(|w| w.addr == d.to) {
                w.core.handle_datagram(now, d.from, &d.data);
            } else if let Some(c) = self.clients.iter_mut().find(|c| c.addr == d.to) {
                c.feed(now, d.from, d.data);
            }
        }
        for w in &mut self.workers {
            if w.core.poll_timeout().is_some_and(|t| t <= now) {
                w.core.handle_timeout(now);
            }
        }
        for c in &mut self.clients {
            if c.pc.poll_timeout().is_some_and(|t| t <= now) {
                let _ = c.pc.handle_timeout(now);
            }
        }
        let ms = |t: Instant| t.duration_since(self.epoch).as_millis() as u32;
        if let Some(t) = self.next_audio.filter(|t| *t <= now) {
            let ts = ms(t).wrapping_mul(48);
            for c in self.clients.iter_mut().filter(|c| !c.senders.is_empty()) {
                c.send(now, false, ts);
            }
            self.next_audio = Some(t + AUDIO_PERIOD);
        }
        if let Some(t) = self.next_video.filter(|t| *t <= now) {
            let ts = ms(t).wrapping_mul(90);
            for c in self.clients.iter_mut().filter(|c| !c.senders.is_empty()) {
                c.send(now, true, ts);
            }
            self.next_video = Some(t + VIDEO_PERIOD);
        }
    }

    /// Runs the network for `d` of virtual time.
    pub(super) async fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step(end).await;
        }
    }
}
