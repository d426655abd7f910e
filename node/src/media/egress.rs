//! What handling one input produced that must leave the room: datagrams for the worker's UDP
//! socket, datagrams for relay links, and effects on the cluster (registry records, relay
//! demand). The worker owns one and empties it after every input.

use super::udp::SendQueue;
use sfu_control::records::{HandRecord, ParticipantRecord, TrackRecord};
use sfu_core::{LayerIndex, TrackId};

/// Something a room did that the rest of the cluster must learn.
#[derive(Debug)]
pub enum Effect {
    /// A participant joined here: announced ones get a registry record; the others are
    /// counted (see [`Effect::AudienceCount`]).
    ParticipantJoined {
        room: String,
        record: ParticipantRecord,
        announced: bool,
    },
    ParticipantLeft {
        room: String,
        sid: String,
        identity: String,
        name: String,
        /// It held one of a limited room's places, to give back.
        place: bool,
        announced: bool,
    },
    /// An announced participant's record changed (its role), or a participant became
    /// announced (promoted).
    ParticipantUpdated {
        room: String,
        record: ParticipantRecord,
    },
    /// A participant is no longer announced (taken off a large room's stage): its record goes,
    /// the count takes it.
    ParticipantHidden {
        room: String,
        sid: String,
    },
    /// The room's counted audience here changed; the registry gets it every few seconds.
    AudienceCount {
        room: String,
        count: u32,
        /// The count last written (0: none, the record must be created).
        was: u32,
    },
    HandRaised {
        room: String,
        record: HandRecord,
    },
    HandLowered {
        room: String,
        sid: String,
    },
    /// A track was published here: announce it and offer it to other nodes.
    TrackPublished {
        room: String,
        record: TrackRecord,
        info: sfu_proto::relay::TrackInfo,
    },
    TrackUnpublished {
        room: String,
        track: TrackId,
        kind: &'static str,
        participant: String,
    },
    /// A track published here changed (mute state): update its record.
    TrackUpdated {
        room: String,
        record: TrackRecord,
    },
    /// The layers local subscribers need of a remote track changed (empty: none).
    Demand {
        room: String,
        track: TrackId,
        origin: String,
        /// Who to ask: the origin, or this node's worker that pulls it from other nodes.
        via: String,
        layers: Vec<LayerIndex>,
    },
    /// Ask the node feeding a remote track for a keyframe.
    UpstreamKeyframe {
        room: String,
        track: TrackId,
        layer: LayerIndex,
    },
    /// A remote track is gone here: stop pulling it.
    Forget {
        room: String,
        track: TrackId,
    },
    /// Share the levels of audio tracks published here with the room's other nodes.
    SharedLevels {
        room: String,
        nodes: Vec<String>,
        levels: Vec<(TrackId, std::sync::Arc<str>, u8)>,
    },
    /// A participant's data packet for the room's participants on `nodes` (other nodes, and
    /// other workers of this one).
    UserData {
        room: String,
        nodes: Vec<String>,
        data: super::room::data::UserData,
    },
}

/// See the module documentation.
#[derive(Default)]
pub struct Egress {
    pub udp: SendQueue,
    /// Where forwarded packets are written and protected before they are sent; its chunks are
    /// reused once the datagrams cut from them are gone.
    pub arena: super::transport::arena::SendArena,
    /// Packets for relay links, packed into datagrams when the worker's turn ends.
    pub relay: sfu_relay::glue::Outbox,
    pub effects: Vec<Effect>,
}
