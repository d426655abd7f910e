//! Prometheus metrics of a federation gateway, per peer (`sfu_federation_…`). The families
//! are registered with the node's other metrics; each link keeps its own counters (atomic
//! handles) so the datagram path takes no family lock.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub reason: &'static str,
}

/// See the module documentation.
#[derive(Clone, Default)]
pub struct FederationMetrics {
    pub linked: Family<PeerLabels, Gauge>,
    pub mapped_rooms: Family<PeerLabels, Gauge>,
    pub frames_in: Family<PeerLabels, Counter>,
    pub frames_out: Family<PeerLabels, Counter>,
    pub datagrams_in: Family<PeerLabels, Counter>,
    pub bytes_in: Family<PeerLabels, Counter>,
    pub refused: Family<RefusedLabels, Counter>,
}

impl FederationMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("federation");
        r.register(
            "linked",
            "Whether the federation link to a peer is up",
            self.linked.clone(),
        );
        r.register(
            "mapped_rooms",
            "Rooms mapped by both sides with a peer",
            self.mapped_rooms.clone(),
        );
        r.register(
            "frames_in",
            "Relay control frames received from a peer (after checks)",
            self.frames_in.clone(),
        );
        r.register(
            "frames_out",
            "Relay control frames sent to a peer",
            self.frames_out.clone(),
        );
        r.register(
            "datagrams_in",
            "Media datagrams received from a peer",
            self.datagrams_in.clone(),
        );
        r.register(
            "bytes_in",
            "Bytes of media datagrams received from a peer",
            self.bytes_in.clone(),
        );
        r.register(
            "refused",
            "Federation input refused: unconfigured_peer, wrong_ca, unmapped_room, subscription, roster, outbound_unmapped, unknown_frame, standby, malformed_frame, malformed_message, flood, datagram, levels_flood, levels",
            self.refused.clone(),
        );
    }

    pub fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabels { reason }).inc();
    }
}

/// One peer's counters.
pub struct PeerCounters {
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub datagrams_in: Counter,
    pub bytes_in: Counter,
    /// Refusals counted on the hot path, by handle (no family lock per packet).
    pub flood: Counter,
    pub bad_datagrams: Counter,
    /// Audio level frames over the peer's rate, and levels of tracks it did not announce.
    pub levels_flood: Counter,
    pub levels_refused: Counter,
}

impl PeerCounters {
    pub fn new(m: &FederationMetrics, peer: &str) -> Self {
        let l = PeerLabels {
            peer: peer.to_owned(),
        };
        // One statement per handle: `get_or_create` returns a guard holding its family's read
        // lock until the statement ends, and creating a second label of the same family in the
        // same statement would wait for that lock forever.
        let refused = |reason| m.refused.get_or_create(&RefusedLabels { reason }).clone();
        let flood = refused("flood");
        let bad_datagrams = refused("datagram");
        let levels_flood = refused("levels_flood");
        let levels_refused = refused("levels");
        Self {
            frames_in: m.frames_in.get_or_create(&l).clone(),
            frames_out: m.frames_out.get_or_create(&l).clone(),
            datagrams_in: m.datagrams_in.get_or_create(&l).clone(),
            bytes_in: m.bytes_in.get_or_create(&l).clone(),
            flood,
            bad_datagrams,
            levels_flood,
            levels_refused,
        }
    }
}
