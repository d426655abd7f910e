//! Prometheus metrics of the node, served at `/metrics`.
//!
//! Media workers never touch these per packet: each worker sums its rooms' counters and adds the
//! difference here about once a second.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label of the drop counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub reason: &'static str,
}

/// Label of the relay datagram counters: `direct` (between media workers' sockets) or `quic`
/// (the link's QUIC datagrams and streams).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    pub path: &'static str,
}

/// All metrics of a node.
pub struct Metrics {
    registry: Registry,
    pub rooms: Gauge,
    pub participants: Gauge,
    pub tracks: Gauge,
    pub peer_connections: Gauge,
    pub packets_in: Counter,
    pub bytes_in: Counter,
    pub packets_out: Counter,
    pub bytes_out: Counter,
    pub relayed: Counter,
    /// Datagrams the media workers' sockets sent, and the messages that carried them: fewer
    /// messages than datagrams when UDP segmentation offload grouped them (`rtc.udp_gso`).
    pub udp_datagrams_out: Counter,
    pub udp_messages_out: Counter,
    /// Datagrams of relayed media sent to other nodes, by path.
    pub relay_datagrams_out: Family<PathLabels, Counter>,
    /// Datagrams of relayed media received on the direct path.
    pub relay_direct_in: Counter,
    pub nacks_received: Counter,
    pub retransmitted: Counter,
    pub keyframe_requests_received: Counter,
    pub keyframe_requests_sent: Counter,
    pub dropped: Family<DropLabels, Counter>,
    pub signaling_errors: Counter,
    pub probe_packets: Counter,
    pub layer_switches: Counter,
    pub congestion_feedback: Counter,
    pub red_packets: Counter,
    /// Webhook events dropped because the delivery queue was full.
    pub webhooks_dropped: Counter,
    /// Joins answered `429` because the node admits joins at a limited rate.
    pub joins_throttled: Counter,
    /// Panics caught while a media worker handled a room (the room was closed).
    pub room_panics: Counter,
    /// WebSocket clients disconnected because they did not read their messages.
    pub slow_clients: Counter,
    /// WebSocket clients disconnected because nothing came from them for too long.
    pub idle_clients: Counter,
    /// Signaling sessions parked for a resume now, and how many were parked and resumed.
    pub parked_sessions: Gauge,
    pub sessions_parked: Counter,
    pub sessions_resumed: Counter,
    /// Tasks alive on the node's tokio runtime, read when metrics are served: a count that
    /// keeps growing while participants come and go is a leak (see `BENCHMARKS.md`, soak).
    pub tasks: Gauge,
    /// A federation gateway's links, per peer (`sfu_federation_…`).
    pub federation: crate::federation::metrics::FederationMetrics,
    /// Repair of loss between publishers and the node (`sfu_publisher_…`).
    pub repair: crate::media::repair::RepairMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sfu");
        let m = Self {
            rooms: Gauge::default(),
            participants: Gauge::default(),
            tracks: Gauge::default(),
            peer_connections: Gauge::default(),
            packets_in: Counter::default(),
            bytes_in: Counter::default(),
            packets_out: Counter::default(),
            bytes_out: Counter::default(),
            relayed: Counter::default(),
            udp_datagrams_out: Counter::default(),
            udp_messages_out: Counter::default(),
            relay_datagrams_out: Family::default(),
            relay_direct_in: Counter::default(),
            room_panics: Counter::default(),
            slow_clients: Counter::default(),
            idle_clients: Counter::default(),
            tasks: Gauge::default(),
            parked_sessions: Gauge::default(),
            sessions_parked: Counter::default(),
            sessions_resumed: Counter::default(),
            nacks_received: Counter::default(),
            retransmitted: Counter::default(),
            keyframe_requests_received: Counter::default(),
            keyframe_requests_sent: Counter::default(),
            dropped: Family::default(),
            signaling_errors: Counter::default(),
            probe_packets: Counter::default(),
            layer_switches: Counter::default(),
            congestion_feedback: Counter::default(),
            red_packets: Counter::default(),
            webhooks_dropped: Counter::default(),
            joins_throttled: Counter::default(),
            federation: Default::default(),
            repair: Default::default(),
            registry: Registry::default(),
        };
        m.federation.register(&mut registry);
        m.repair.register(&mut registry);
        registry.register(
            "rooms",
            "Rooms with participants on this node",
            m.rooms.clone(),
        );
        registry.register(
            "participants",
            "Participants connected to this node",
            m.participants.clone(),
        );
        registry.register("tracks", "Published tracks on this node", m.tracks.clone());
        registry.register(
            "peer_connections",
            "WebRTC peer connections",
            m.peer_connections.clone(),
        );
        registry.register(
            "packets_in",
            "RTP packets received from publishers",
            m.packets_in.clone(),
        );
        registry.register(
            "bytes_in",
            "RTP payload bytes received from publishers",
            m.bytes_in.clone(),
        );
        registry.register(
            "packets_out",
            "RTP packets forwarded to subscribers",
            m.packets_out.clone(),
        );
        registry.register(
            "bytes_out",
            "RTP payload bytes forwarded to subscribers",
            m.bytes_out.clone(),
        );
        registry.register(
            "relayed_packets",
            "RTP packets sent on relay links: to other nodes, and to the other media workers of this node",
            m.relayed.clone(),
        );
        registry.register(
            "udp_datagrams_out",
            "Datagrams the media workers' sockets sent",
            m.udp_datagrams_out.clone(),
        );
        registry.register(
            "udp_messages_out",
            "Messages that carried them: fewer than the datagrams when UDP segmentation offload grouped a run to one peer",
            m.udp_messages_out.clone(),
        );
        registry.register(
            "relay_datagrams_out",
            "Datagrams of relayed media sent to other nodes: path direct (between media workers' sockets, sealed with keys of the link's TLS session) or quic (the link's QUIC datagrams)",
            m.relay_datagrams_out.clone(),
        );
        registry.register(
            "relay_direct_datagrams_in",
            "Datagrams of relayed media received and opened on the direct path",
            m.relay_direct_in.clone(),
        );
        registry.register(
            "room_panics",
            "Panics caught while a media worker handled a room; each closed that room on its worker",
            m.room_panics.clone(),
        );
        registry.register(
            "slow_clients",
            "WebSocket clients disconnected because they did not read their messages (queue full or a send stalled)",
            m.slow_clients.clone(),
        );
        registry.register(
            "idle_clients",
            "WebSocket clients disconnected because nothing (not even a pong) came from them for limits.ws_idle_secs",
            m.idle_clients.clone(),
        );
        registry.register(
            "parked_sessions",
            "Signaling sessions whose WebSocket closed without a leave, kept for their client to resume",
            m.parked_sessions.clone(),
        );
        registry.register(
            "sessions_parked",
            "Signaling sessions parked for a resume",
            m.sessions_parked.clone(),
        );
        registry.register(
            "sessions_resumed",
            "Parked (or still live) signaling sessions taken over by their client's resume",
            m.sessions_resumed.clone(),
        );
        registry.register(
            "tasks",
            "Tasks alive on the node's tokio runtime (media workers are threads, not counted)",
            m.tasks.clone(),
        );
        registry.register(
            "nacks_received",
            "Packets NACKed by subscribers",
            m.nacks_received.clone(),
        );
        registry.register(
            "retransmitted_packets",
            "Packets resent from the retransmission cache",
            m.retransmitted.clone(),
        );
        registry.register(
            "keyframe_requests_received",
            "PLI/FIR received from subscribers",
            m.keyframe_requests_received.clone(),
        );
        registry.register(
            "keyframe_requests_sent",
            "PLI sent to publishers after coalescing",
            m.keyframe_requests_sent.clone(),
        );
        registry.register(
            "dropped_packets",
            "Packets dropped, by reason",
            m.dropped.clone(),
        );
        registry.register(
            "joins_throttled",
            "Joins refused with 429 because they came faster than the node's join rate",
            m.joins_throttled.clone(),
        );
        registry.register(
            "signaling_errors",
            "Signaling requests answered with an error",
            m.signaling_errors.clone(),
        );
        registry.register(
            "probe_packets",
            "Packets sent to probe subscribers' bandwidth (copies and padding on RTX)",
            m.probe_packets.clone(),
        );
        registry.register(
            "layer_switches",
            "Simulcast layer changes made by the stream allocator",
            m.layer_switches.clone(),
        );
        registry.register(
            "congestion_feedback",
            "Congestion feedback reports (TWCC, REMB) received from subscribers",
            m.congestion_feedback.clone(),
        );
        registry.register(
            "red_packets",
            "Redundant audio (RED) packets received from publishers",
            m.red_packets.clone(),
        );
        registry.register(
            "webhooks_dropped",
            "Webhook events dropped because the delivery queue was full",
            m.webhooks_dropped.clone(),
        );
        Self { registry, ..m }
    }

    /// Counts one dropped packet.
    pub fn count_drop(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.dropped.get_or_create(&DropLabels { reason }).inc_by(n);
        }
    }

    /// The text exposition format. Called on the node's runtime, whose task count it reads.
    pub fn encode(&self) -> String {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.tasks
                .set(i64::try_from(runtime.metrics().num_alive_tasks()).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
