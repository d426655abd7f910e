//! The media plane: worker threads that own rooms, their peer connections and a UDP socket.
//!
//! A participant lives on one media worker (the one with the fewest participants when it
//! joined), and a room spans the workers its participants live on, which relay its tracks to
//! each other as nodes do (see [`plane`]). Everything a packet touches on its way from a
//! publisher to the subscribers of one worker (peer connections, the forwarding core, the
//! socket) belongs to that worker's thread and is used with `&mut`: no lock, no channel, no
//! task wake-up per packet. Each worker is a sans-IO [`worker::WorkerCore`] driven by a thread
//! of its own. The signaling layer talks to a room's workers with [`Command`]s; the workers talk
//! back with replies and per-participant [`ServerMessage`] events, at signaling rate.
//!
//! [`ServerMessage`]: crate::signaling::protocol::ServerMessage

pub mod demux;
mod egress;
pub mod peer;
mod plane;
mod record;
pub mod repair;
mod room;
pub use room::roster;
mod rtcp_tap;
pub mod transport;
pub mod udp;
pub mod worker;

use crate::auth::Grants;
use crate::signaling::Events;
use crate::signaling::protocol::{
    ErrorCode, HandView, ParticipantCounts, ParticipantView, PeerTarget, Permissions, SignalError,
    TrackSourceName,
};
use std::collections::HashMap;
use tokio::sync::oneshot;

pub use plane::{MediaPlane, Shared, home_worker, worker_of};
pub use room::data::{MAX_PACKET as MAX_DATA_PACKET, UserData};
pub use room::metadata::MetadataUpdate;
pub use worker::WorkerConfig;

/// How a participant is connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParticipantKind {
    /// A WebSocket client (the demo page, SDKs): publishes and subscribes.
    Client,
    /// A WHIP publisher (OBS, GStreamer, ffmpeg...).
    Whip,
    /// A WHEP player; plays the tracks of `source` (an identity) or of the first publisher.
    Whep { source: Option<String> },
}

impl ParticipantKind {
    /// The name the registry records it under.
    pub fn record_name(&self) -> &'static str {
        match self {
            ParticipantKind::Client => "client",
            ParticipantKind::Whip => "whip",
            ParticipantKind::Whep { .. } => "whep",
        }
    }

    /// Whether one identity may have only one session of this kind in a room. WHEP players
    /// often share one viewer token, so only the publishing kinds are unique.
    pub fn unique(&self) -> bool {
        !matches!(self, ParticipantKind::Whep { .. })
    }
}

/// A request to join a room.
pub struct JoinRequest {
    pub room: String,
    pub grants: Grants,
    pub kind: ParticipantKind,
    pub auto_subscribe: bool,
    /// Where events for this participant go (WebSocket clients only).
    pub events: Option<Events>,
    /// Whether it took one of the room's places (rooms with a limit), given back on leave.
    pub place: bool,
}

/// The answer to a join.
#[derive(Debug)]
pub struct Joined {
    pub participant: ParticipantView,
    /// The roster: everyone in a small room, the announced part of a large one.
    pub others: Vec<ParticipantView>,
    pub permissions: Permissions,
    pub counts: ParticipantCounts,
    /// The raised-hand queue, for administrators.
    pub hands: Vec<HandView>,
}

type Reply<T> = oneshot::Sender<Result<T, SignalError>>;

/// What signaling asks of a room's worker.
pub enum Command {
    Join(JoinRequest, Reply<Joined>),
    Leave {
        room: String,
        participant: String,
        reason: String,
    },
    /// An SDP offer for the participant's publisher peer connection; replies with the answer.
    Publish {
        room: String,
        participant: String,
        sdp: String,
        sources: HashMap<String, TrackSourceName>,
        /// Sids the client already announced for some tracks, by msid track id (LiveKit's
        /// clients are told a track's sid before they offer it); others get new ones.
        track_sids: HashMap<String, sfu_core::TrackId>,
        reply: Reply<String>,
    },
    /// How a WebSocket client shows a track it receives.
    TrackSettings {
        room: String,
        participant: String,
        track: String,
        settings: TrackSettings,
        reply: Reply<()>,
    },
    Unpublish {
        room: String,
        participant: String,
        track: String,
        reply: Reply<()>,
    },
    Subscribe {
        room: String,
        participant: String,
        tracks: Vec<String>,
        subscribe: bool,
        reply: Reply<()>,
    },
    /// Nothing is forwarded to the participant while `paused` (its signaling session is parked
    /// for a resume); its subscriptions stay, and forwarding starts again with a keyframe.
    Pause {
        room: String,
        participant: String,
        paused: bool,
    },
    /// The answer to the server's offer on the subscriber peer connection.
    SubscriberAnswer {
        room: String,
        participant: String,
        sdp: String,
        reply: Reply<()>,
    },
    /// A WHEP offer; replies with the answer.
    Play {
        room: String,
        participant: String,
        sdp: String,
        reply: Reply<String>,
    },
    Trickle {
        room: String,
        participant: String,
        target: PeerTarget,
        candidate: String,
        sdp_mid: Option<String>,
        reply: Reply<()>,
    },
    /// An audience member raises (or lowers) its hand.
    Hand {
        room: String,
        participant: String,
        raise: bool,
        reply: Reply<()>,
    },
    /// A participant asks for the room's counts.
    Counts {
        room: String,
        participant: String,
        reply: Reply<ParticipantCounts>,
    },
    /// One page of this node's participants of a room, by sid after `after` (empty: the room
    /// is not here).
    ListParticipants {
        room: String,
        after: String,
        limit: usize,
        reply: oneshot::Sender<Vec<LocalParticipantInfo>>,
    },
    /// Counts for `/metrics` and readiness.
    Snapshot(oneshot::Sender<WorkerSnapshot>),
    /// An administrative operation (from the control plane, or draining).
    Admin {
        op: AdminOp,
        reply: Reply<()>,
    },
    /// Input from the cluster: relay links and registry changes.
    Cluster(ClusterInput),
    /// Starts or stops a recording fed by a room of this worker.
    Record(RecordCommand),
    /// Test hook: the worker panics while handling `room`, as a bug would (see
    /// `Worker::guarded`). Not reachable from any network input.
    #[doc(hidden)]
    InjectPanic {
        room: String,
    },
}

/// What a room's home worker is asked about recordings (see [`crate::recording`]).
pub enum RecordCommand {
    /// Feed `recorder` with `track` (the room is opened here if it was not).
    Start {
        room: String,
        track: String,
        recorder: crate::recording::Recorder,
        reply: Reply<()>,
    },
    /// Tell the room's participants on this worker that a recording started or ended.
    Notice {
        room: String,
        id: String,
        kind: &'static str,
        active: bool,
    },
    /// Feed a room recording (the room is opened here if it was not).
    StartRoom {
        room: String,
        recorder: crate::recording::ProgramRecorder,
        reply: Reply<()>,
    },
    Stop {
        room: String,
        id: String,
        reply: Reply<()>,
    },
}

/// What a client says about showing a track (see `ClientMessage::TrackSettings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackSettings {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub enabled: bool,
    pub pinned: bool,
}

/// Administrative operations on this node's part of rooms.
#[derive(Clone, Debug)]
pub enum AdminOp {
    RemoveParticipant {
        room: String,
        identity: String,
    },
    /// Removes every local participant of the room.
    DeleteRoom {
        room: String,
    },
    Mute {
        room: String,
        identity: String,
        track: String,
        muted: bool,
    },
    /// Lets a participant on stage (`can_publish`) or takes it off.
    UpdatePermissions {
        room: String,
        identity: String,
        can_publish: bool,
    },

    Subscriptions {
        room: String,
        identity: String,
        tracks: Vec<String>,
        subscribe: bool,
    },
    /// Changes a participant's name, metadata or attributes: its own request (`own`: its sid;
    /// refused without `canUpdateOwnMetadata`) or an administrator's (the signaling session
    /// with this identity).
    UpdateMetadata {
        room: String,
        identity: String,
        own: Option<String>,
        update: MetadataUpdate,
    },
    /// A data packet from the server, for the room's participants on this worker.
    SendData {
        room: String,
        data: UserData,
    },
    /// Every WebSocket participant of every room of the worker reconnects to `url`.
    Migrate {
        url: String,
    },
    /// Ends the session a new join with this identity and kind will replace (admission frees
    /// its place in a limited room first). Nothing to end is no error.
    EndReplaced {
        room: String,
        identity: String,
        kind: ParticipantKind,
    },
}

/// A participant connected to this node, as the control plane lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LocalParticipantInfo {
    pub sid: String,
    pub identity: String,
    pub name: String,
    pub kind: &'static str,
    pub stage: bool,
    /// When its hand went up, if it is up (Unix milliseconds).
    pub hand_raised_ms: Option<u64>,
    pub tracks: Vec<crate::signaling::protocol::TrackView>,
    pub metadata: String,
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// What the cluster tells a worker.
pub enum ClusterInput {
    LinkUp(sfu_relay::quic::Link),
    LinkDown(sfu_relay::NodeId),
    Frame {
        from: sfu_relay::NodeId,
        frame: sfu_proto::relay::Frame,
    },
    /// Relayed packets, `(flow, RTP)`, from one datagram (or the part of it for this
    /// worker's flows).
    Datagrams {
        from: sfu_relay::NodeId,
        records: Vec<(u32, bytes::Bytes)>,
    },
    Event(sfu_control::ClusterEvent),
    /// Audio levels to share with the nodes `to` over the relay links (a federation gateway
    /// shares its peer's levels with the nodes hosting the room).
    ShareLevels {
        room: String,
        to: Vec<sfu_relay::NodeId>,
        levels: Vec<sfu_proto::relay::AudioLevel>,
    },
}

impl Command {
    /// The participant (sid) a command is about, if it is about one: it goes to the worker
    /// that participant lives on.
    pub fn participant(&self) -> Option<&str> {
        match self {
            Command::Leave { participant, .. }
            | Command::Publish { participant, .. }
            | Command::TrackSettings { participant, .. }
            | Command::Pause { participant, .. }
            | Command::Unpublish { participant, .. }
            | Command::Subscribe { participant, .. }
            | Command::SubscriberAnswer { participant, .. }
            | Command::Play { participant, .. }
            | Command::Trickle { participant, .. }
            | Command::Hand { participant, .. }
            | Command::Counts { participant, .. } => Some(participant),
            _ => None,
        }
    }
}

/// A worker's view of its load.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkerSnapshot {
    pub rooms: usize,
    pub participants: usize,
    pub tracks: usize,
    pub peers: usize,
}
