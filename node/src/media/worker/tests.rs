//! The worker core driven in virtual time by real webrtc-rs peer connections, as `quinn`'s
//! tests drive two endpoints: no socket, no thread, no sleep. A [`Net`] holds the workers of
//! one or more nodes (a node's workers linked through their command queues, as in the node;
//! nodes linked in process as their relay links would hand frames and datagrams to a worker,
//! sharing one in-memory registry) and the clients' peer connections. It carries datagrams
//! with a fixed one-way latency, optionally losing every n-th to the subscriber or on the
//! relay link, and jumps to the next instant anything is due. ICE, DTLS-SRTP, signaling
//! commands, registry records, the relay core and the forwarding all run for real; a few
//! virtual seconds take a fraction of a second.

use super::{WorkerConfig, WorkerCore};
use crate::auth::Grants;
use crate::media::plane::Shared;
use crate::media::{ClusterInput, Command, JoinRequest, Joined, ParticipantKind};
use crate::signaling::protocol::ServerMessage;
use crate::signaling::{EventsRx, Outbound};
use bytes::{Bytes, BytesMut};
use rtc::interceptor::{NackGeneratorBuilder, NackResponderBuilder, Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverId};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use sfu_control::{ClusterEvent, Keys, Membership, MemoryRegistry};
use sfu_relay::NodeId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
/// One-way latency of every path in the simulated network.
const LATENCY: Duration = Duration::from_millis(10);
const AUDIO_PERIOD: Duration = Duration::from_millis(20);
const VIDEO_PERIOD: Duration = Duration::from_millis(33);

fn address(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A datagram on its way.
struct InFlight {
    at: Instant,
    from: SocketAddr,
    to: SocketAddr,
    data: BytesMut,
}

/// One media worker of a node under test, and what its siblings and links hand it.
struct Worker {
    node: usize,
    core: WorkerCore,
    addr: SocketAddr,
    inbox: mpsc::UnboundedSender<Command>,
    commands: mpsc::UnboundedReceiver<Command>,
}

fn node_name(n: usize) -> String {
    format!("n{}", n + 1)
}

impl WorkerCore {
    /// Links this worker to node `name` in process: what it sends there goes to `to` as a
    /// relay link would deliver it, from `me` (this node).
    fn link_in_process(
        &mut self,
        now: Instant,
        name: NodeId,
        me: NodeId,
        to: mpsc::UnboundedSender<Command>,
    ) {
        self.links
            .insert(name.clone(), super::links::LinkHandle::Sibling { me, to });
        self.relay.handle_link_up(now, name);
        self.drain_relay(now);
    }
}

/// A client's peer connection, at an address of its own.
struct Client {
    pc: RTCPeerConnection,
    addr: SocketAddr,
    /// What a publishing client sends.
    senders: Vec<OutStream>,
    candidate_added: bool,
    /// RTP packets decrypted, by SSRC: (count, last sequence number).
    received: HashMap<u32, (u64, u16)>,
    /// Payload types of what was received.
    payload_types: Vec<u8>,
}

struct OutStream {
    sender: RTCRtpSenderId,
    ssrc: u32,
    seq: u16,
    payload_type: u8,
    mid: Option<(u8, Bytes)>,
    video: bool,
}

fn media_engine() -> MediaEngine {
    let mut me = MediaEngine::default();
    let feedback = ["", "pli"]
        .into_iter()
        .map(|p| RTCPFeedback {
            typ: "nack".into(),
            parameter: p.into(),
        })
        .collect();
    let codecs = [
        (MIME_TYPE_OPUS, 48_000, 2, 111, vec![], RtpCodecKind::Audio),
        (MIME_TYPE_VP8, 90_000, 0, 96, feedback, RtpCodecKind::Video),
    ];
    for (mime, clock_rate, channels, pt, rtcp_feedback, kind) in codecs {
        me.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: mime.into(),
                    clock_rate,
                    channels,
                    sdp_fmtp_line: String::new(),
                    rtcp_feedback,
                },
                payload_type: pt,
            },
            kind,
        )
        .unwrap();
        me.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: MID_URI.into(),
            },
            kind,
            None,
        )
        .unwrap();
    }
    me
}

impl Client {
    fn new(now: Instant, port: u16) -> Self {
        // Answers take the DTLS client role, as browsers do.
        let settings = SettingEngineBuilder::new()
            .with_answering_dtls_role(RTCDtlsRole::Client)
            .build();
        // A browser's: it asks for lost packets and answers for its own.
        let interceptors = Registry::new()
            .with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
            .with(Slot::NackResponder, NackResponderBuilder::new().build());
        let pc = RTCPeerConnectionBuilder::new()
            .with_setting_engine(settings)
            .with_media_engine(media_engine())
            .with_interceptor_registry(interceptors)
            .build(now)
            .unwrap();
        Self {
            pc,
            addr: address(port),
            senders: Vec::new(),
            candidate_added: false,
            received: HashMap::new(),
            payload_types: Vec::new(),
        }
    }

    /// Our one host candidate, then end-of-candidates.
    fn add_candidate(&mut self) {
        if self.candidate_added {
            return;
        }
        self.candidate_added = true;
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".into(),
                address: self.addr.ip().to_string(),
                port: self.addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .unwrap();
        let init = RTCIceCandidate::from(&candidate).to_json().unwrap();
        self.pc.add_local_candidate(init).unwrap();
        self.pc
            .add_local_candidate(RTCIceCandidateInit::default())
            .unwrap();
    }

    /// Adds a microphone and a camera (one stream each) and offers them.
    fn offer_media(&mut self, now: Instant) -> String {
        for (kind, mime, clock, channels) in [
            (RtpCodecKind::Audio, MIME_TYPE_OPUS, 48_000, 2),
            (RtpCodecKind::Video, MIME_TYPE_VP8, 90_000, 0),
        ] {
            let ssrc = rand::random::<u32>();
            let encoding = RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: RTCRtpCodec {
                    mime_type: mime.into(),
                    clock_rate: clock,
                    channels,
                    ..Default::default()
                },
                active: true,
                ..Default::default()
            };
            let video = kind == RtpCodecKind::Video;
            let name = if video { "camera" } else { "microphone" };
            let sender = self
                .pc
                .add_track(MediaStreamTrack::new(
                    "stream".into(),
                    name.into(),
                    name.into(),
                    kind,
                    vec![encoding],
                ))
                .unwrap();
            self.senders.push(OutStream {
                sender,
                ssrc,
                seq: 0,
                payload_type: 0,
                mid: None,
                video,
            });
        }
        self.add_candidate();
        let offer = self.pc.create_offer(None).unwrap();
        self.pc.set_local_description(now, offer).unwrap();
        self.pc.local_description().unwrap().sdp
    }

    fn accept_answer(&mut self, now: Instant, sdp: String) {
        let answer = RTCSessionDescription::answer(sdp).unwrap();
        self.pc.set_remote_description(now, answer).unwrap();
        for s in &mut self.senders {
            let mid = self
                .pc
                .rtp_transceiver(RTCRtpTransceiverId::from(s.sender))
                .and_then(|t| t.mid().clone());
            let mut sender = self.pc.rtp_sender(s.sender).unwrap();
            let p = &sender.get_parameters().rtp_parameters;
            s.payload_type = p.codecs.first().map_or(0, |c| c.payload_type);
            let id = p
                .header_extensions
                .iter()
                .find(|h| h.uri == MID_URI)
                .map(|h| h.id as u8);
            s.mid = id.zip(mid.map(|m| Bytes::from(m.into_bytes())));
        }
    }

    fn answer(&mut self, now: Instant, sdp: String) -> String {
        let offer = RTCSessionDescription::offer(sdp).unwrap();
        self.pc.set_remote_description(now, offer).unwrap();
        self.add_candidate();
        let answer = self.pc.create_answer(None).unwrap();
        self.pc.set_local_description(now, answer).unwrap();
        self.pc.local_description().unwrap().sdp
    }

    /// Sends one packet on each of its audio (`video` false) or video streams. Every video
    /// frame is a small VP8 keyframe, so any packet lets a subscriber start.
    fn send(&mut self, now: Instant, video: bool, timestamp: u32) {
        for s in self.senders.iter_mut().filter(|s| s.video == video) {
            s.seq = s.seq.wrapping_add(1);
            let payload = if video {
                // Payload descriptor (start of partition), then a keyframe's frame tag, start
                // code and 320x180.
                let mut p = vec![
                    0x10, 0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xb4, 0x00,
                ];
                p.resize(600, 0x5a);
                Bytes::from(p)
            } else {
                Bytes::from(vec![0xf8; 80])
            };
            let mut header = rtp::header::Header {
                version: 2,
                marker: video,
                payload_type: s.payload_type,
                sequence_number: s.seq,
                timestamp,
                ssrc: s.ssrc,
                ..Default::default()
            };
            if let Some((id, mid)) = &s.mid {
                header.set_extension(*id, mid.clone()).unwrap();
            }
            let packet = rtp::packet::Packet { header, payload };
            // Refused only before the connection is up.
            if let Some(mut sender) = self.pc.rtp_sender(s.sender) {
                let _ = sender.write_rtp(now, packet);
            }
        }
    }

    fn feed(&mut self, now: Instant, from: SocketAddr, data: BytesMut) {
        let input = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.addr,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: data,
        };
        let _ = self.pc.handle_read(input);
        while let Some(TaggedRTCMessage { message, .. }) = self.pc.poll_read() {
            if let RTCMessage::RtpPacket(_, p) = message {
                let entry = self.received.entry(p.header.ssrc).or_default();
                entry.0 += 1;
                entry.1 = p.header.sequence_number;
                if !self.payload_types.contains(&p.header.payload_type) {
                    self.payload_types.push(p.header.payload_type);
                }
            }
        }
        while self.pc.poll_event().is_some() {}
    }

    fn packets(&self) -> u64 {
        self.received.values().map(|(n, _)| n).sum()
    }
}

/// The simulated network: a node's workers, clients, and datagrams in flight.
struct Net {
    now: Instant,
    workers: Vec<Worker>,
    clients: Vec<Client>,
    in_flight: Vec<InFlight>,
    /// Every `lose_every`-th datagram to the last client (the subscriber) is lost (0: none).
    lose_every: usize,
    sent: usize,
    lost: usize,
    /// The media clock's origin.
    epoch: Instant,
    /// What the registry tells each node (other workers' and nodes' participants and
    /// tracks).
    registry_events: Vec<mpsc::UnboundedReceiver<ClusterEvent>>,
    /// Every `relay_lose_every`-th relay datagram between nodes is lost (0: none).
    relay_lose_every: usize,
    relay_sent: usize,
    relay_lost: usize,
    /// Publishing clients send media from then on.
    next_audio: Option<Instant>,
    next_video: Option<Instant>,
}

impl Net {
    /// A node of `workers` media workers.
    fn new(workers: usize) -> Self {
        Self::cluster(&[workers])
    }

    /// Nodes `n1`, `n2`... of `workers[i]` media workers each, sharing one registry, each
    /// node's first worker linked to every other node's (an in-process relay link, as a QUIC
    /// link hands frames and datagrams to a worker).
    fn cluster(nodes: &[usize]) -> Self {
        let now = Instant::now();
        let registry = MemoryRegistry::new();
        let mut workers = Vec::new();
        let mut registry_events = Vec::new();
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
                announced_ips: vec![[127, 0, 0, 1].into()],
                max_participants: 0,
                default_max_layer: 2,
                large_room_threshold: 50,
                core: Default::default(),
                node_id: node_name(n).into(),
                fanout: 4,
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
            for (i, (inbox, commands)) in channels.into_iter().enumerate() {
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
                    inbox,
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
        };
        for a in 0..nodes.len() {
            for b in (0..nodes.len()).filter(|b| *b != a) {
                let to = net.first_worker(b);
                let inbox = net.workers[to].inbox.clone();
                let from = net.first_worker(a);
                net.workers[from].core.link_in_process(
                    now,
                    node_name(b).into(),
                    node_name(a).into(),
                    inbox,
                );
            }
        }
        net
    }

    /// The index of node `n`'s first worker.
    fn first_worker(&self, n: usize) -> usize {
        self.workers.iter().position(|w| w.node == n).unwrap()
    }

    fn add_client(&mut self) -> usize {
        let port = 50_000 + self.clients.len() as u16;
        self.clients.push(Client::new(self.now, port));
        self.clients.len() - 1
    }

    /// Asks worker `w` something and returns its answer (handled at once: the core drains
    /// every input to its outputs).
    fn ask<T>(&mut self, w: usize, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> T {
        let (tx, mut rx) = oneshot::channel();
        self.workers[w].core.handle_command(self.now, command(tx));
        rx.try_recv().expect("the worker answered at once")
    }

    /// `identity` joins room `r` on worker `w`.
    fn join(&mut self, w: usize, identity: &str) -> (Joined, EventsRx) {
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
    fn publish(&mut self, w: usize, c: usize, sid: &str) {
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
    fn answer_offers(&mut self, w: usize, c: usize, sid: &str, events: &mut EventsRx) -> usize {
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
    fn stats(&self, w: usize) -> sfu_core::RoomStats {
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

    fn send(&mut self, from: SocketAddr, to: SocketAddr, data: BytesMut) {
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
    async fn step(&mut self, limit: Instant) {
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
        for w in 0..self.workers.len() {
            // What its siblings handed it (relayed packets, frames): as the thread would.
            while let Ok(c) = self.workers[w].commands.try_recv() {
                // Relay datagrams from another node (not a sibling worker: `node#wN`).
                if let Command::Cluster(ClusterInput::Datagrams { from, .. }) = &c
                    && !from.contains('#')
                {
                    self.relay_sent += 1;
                    if self.relay_lose_every > 0
                        && self.relay_sent.is_multiple_of(self.relay_lose_every)
                    {
                        self.relay_lost += 1;
                        continue;
                    }
                }
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
        let siblings_busy = self.workers.iter().any(|w| !w.commands.is_empty());
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
    async fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step(end).await;
        }
    }
}

/// Alice publishes on worker `pw`, Bob subscribes on worker `sw` (indexes over all nodes'
/// workers); Bob receives both tracks.
async fn publish_and_receive(mut net: Net, pw: usize, sw: usize) -> Net {
    let alice = net.add_client();
    let bob = net.add_client();
    let (alice_joined, _alice_events) = net.join(pw, "alice");
    let (bob_joined, mut bob_events) = net.join(sw, "bob");
    let bob_sid = bob_joined.participant.sid.clone();
    net.publish(pw, alice, &alice_joined.participant.sid);
    let started = net.now;
    let mut offers = 0;
    let mut ok = false;
    // Offers come as the tracks reach Bob's worker: Bob answers them as they come.
    while net.now < started + Duration::from_secs(10) {
        offers += net.answer_offers(sw, bob, &bob_sid, &mut bob_events);
        net.run_for(Duration::from_millis(100)).await;
        if net.clients[bob].received.len() == 2 && net.clients[bob].packets() >= 100 {
            ok = true;
            break;
        }
    }
    assert!(offers >= 1, "Bob was offered the tracks");
    assert!(
        ok,
        "Bob received {:?} within 10 virtual seconds",
        net.clients[bob].received
    );
    net
}

#[tokio::test]
async fn a_subscriber_receives_a_publisher_on_the_same_worker_in_virtual_time() {
    let net = publish_and_receive(Net::new(1), 0, 0).await;
    let bob = &net.clients[1];
    // Opus and VP8, in the payload types negotiated with Bob.
    assert_eq!(bob.payload_types.len(), 2, "{:?}", bob.payload_types);
}

#[tokio::test]
async fn a_room_spans_two_workers_in_virtual_time() {
    // Alice on worker 0, Bob on worker 1: the track crosses the in-process link once.
    let net = publish_and_receive(Net::new(2), 0, 1).await;
    let (home, edge) = (net.stats(0), net.stats(1));
    assert!(home.relayed > 0 && home.packets_out == 0, "{home:?}");
    assert!(edge.packets_out >= 100, "{edge:?}");
}

#[tokio::test]
async fn media_gets_through_a_lossy_network_in_virtual_time() {
    // Every 20th datagram to Bob lost, the handshakes' too: retransmissions (STUN, DTLS) and
    // NACKs carry the session through.
    let mut net = Net::new(2);
    net.lose_every = 20;
    let net = publish_and_receive(net, 0, 1).await;
    let (home, edge) = (net.stats(0), net.stats(1));
    assert!(net.lost > 0, "the network lost nothing");
    // Bob's worker answered his NACKs from its own cache; the in-process link between the
    // workers lost nothing, so nothing was asked of the publisher's worker.
    assert!(
        edge.nacks_received > 0 && edge.retransmitted > 0,
        "lost {} of {}: {edge:?}",
        net.lost,
        net.sent
    );
    assert_eq!(home.nacks_received, 0, "{home:?}");
}

#[tokio::test]
async fn a_track_crosses_a_lossy_relay_link_between_two_nodes_in_virtual_time() {
    // Alice on node n1, Bob on node n2: n2 learns the track from the registry, asks n1 for
    // it over their link, and asks again for what the link lost (one datagram in ten).
    let mut net = Net::cluster(&[1, 1]);
    net.relay_lose_every = 10;
    let net = publish_and_receive(net, 0, 1).await;
    let (origin, edge) = (net.stats(0), net.stats(1));
    assert!(net.relay_lost > 0, "the link lost nothing");
    assert!(origin.relayed > 0, "{origin:?}");
    assert!(
        origin.nacks_received > 0 && origin.retransmitted > 0,
        "lost {} of {} relay datagrams: {origin:?}",
        net.relay_lost,
        net.relay_sent
    );
    assert!(edge.packets_out > 0, "{edge:?}");
}

mod pause;
