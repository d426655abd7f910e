//! The WebSocket signaling protocol: JSON messages, one per WebSocket text frame.
//!
//! Documented for client authors in `docs/signaling.md`; keep the two in agreement. Every
//! message is an object with a `type` field; unknown fields are ignored so that clients and
//! servers can evolve independently, but unknown message types are errors.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Messages from the client.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Must be the first message. The room and identity come from the access token.
    Join {
        /// Subscribe to every track in the room, now and later (default true).
        #[serde(default = "yes")]
        auto_subscribe: bool,
        /// Park the session for a resume when its WebSocket closes without a leave, instead of
        /// leaving the room at once (default false: a client that cannot resume would leave a
        /// participant nobody answers for in the room for the parking time).
        #[serde(default)]
        resumable: bool,
        /// The participant sid of a session to resume (implies `resumable`): answered with
        /// `resumed` if it is parked (or still live) for this identity and room, else this is
        /// a fresh join, answered with `joined`.
        #[serde(default)]
        resume: Option<String>,
    },
    /// An SDP offer for the publisher peer connection (first or renegotiation).
    Publish {
        sdp: String,
        /// What some of the offered tracks show, by their track id (the msid track id, i.e.
        /// `MediaStreamTrack.id`): a screen share is sent before cameras when bandwidth is
        /// short.
        #[serde(default)]
        sources: HashMap<String, TrackSourceName>,
        /// Sids announced to the client before it offered (LiveKit's encoding only).
        #[serde(skip)]
        track_sids: HashMap<String, sfu_core::TrackId>,
    },
    /// Stop publishing a track.
    Unpublish { track: String },
    /// Subscribe to tracks (by track sid).
    Subscribe { tracks: Vec<String> },
    /// Unsubscribe from tracks.
    Unsubscribe { tracks: Vec<String> },
    /// The answer to an `offer` from the server, for the subscriber peer connection.
    Answer { sdp: String },
    /// A trickled ICE candidate for one of the two peer connections.
    Trickle {
        target: PeerTarget,
        candidate: String,
        #[serde(default)]
        sdp_mid: Option<String>,
    },
    /// Mutes or unmutes one of the client's own tracks.
    Mute { track: String, muted: bool },
    /// How the client shows a track it subscribed to: the size it renders the video at (the
    /// node picks the simulcast layer to match), whether it shows it at all, and whether it is
    /// pinned (always received, before others).
    TrackSettings {
        track: String,
        #[serde(default)]
        width: Option<u32>,
        #[serde(default)]
        height: Option<u32>,
        #[serde(default = "yes")]
        enabled: bool,
        #[serde(default)]
        pinned: bool,
    },
    /// An audience member asks to be let on stage; admins see the queue.
    RaiseHand,
    /// Takes a raised hand back.
    LowerHand,
    /// Asks for the room's participant counts now (answered with `participant_count`; they
    /// also come by themselves when they change, at most once a second).
    ParticipantCount,
    /// An administrator (a token with `roomAdmin`) lets a participant on stage or takes it
    /// off: `can_publish` true promotes, false demotes (its tracks are unpublished).
    UpdateParticipant { identity: String, can_publish: bool },
    /// Changes the client's own display name, metadata or attributes (needs the token's
    /// `canUpdateOwnMetadata`). Absent fields stay as they are; attributes are merged, and one
    /// with an empty value is removed. Everyone who sees the participant is told
    /// (`participant_updated`, the client too).
    UpdateMetadata {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        metadata: Option<String>,
        #[serde(default)]
        attributes: BTreeMap<String, String>,
    },
    /// Keep-alive; answered with `pong`.
    Ping {
        #[serde(default)]
        id: Option<u64>,
    },
    /// Leave the room (closing the WebSocket does the same).
    Leave,
}

fn yes() -> bool {
    true
}

/// What a published track shows.
#[derive(Debug, Deserialize, Serialize, PartialEq, Eq, Clone, Copy, Default)]
#[serde(rename_all = "snake_case")]
pub enum TrackSourceName {
    #[default]
    Camera,
    Microphone,
    ScreenShare,
}

impl TrackSourceName {
    pub fn as_str(self) -> &'static str {
        match self {
            TrackSourceName::Camera => "camera",
            TrackSourceName::Microphone => "microphone",
            TrackSourceName::ScreenShare => "screen_share",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "screen_share" => TrackSourceName::ScreenShare,
            "microphone" => TrackSourceName::Microphone,
            _ => TrackSourceName::Camera,
        }
    }
}

/// Which peer connection a trickled candidate is for.
#[derive(Debug, Deserialize, Serialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum PeerTarget {
    Publisher,
    Subscriber,
}

/// A participant as other participants see it.
#[derive(Debug, Serialize, Clone, PartialEq)]
pub struct ParticipantView {
    pub sid: String,
    pub identity: String,
    pub name: String,
    /// On stage (may publish) or in the audience.
    pub stage: bool,
    pub tracks: Vec<TrackView>,
    /// What its application says about it (LiveKit's metadata and attributes); left out
    /// when empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// How many are in a room, over the whole cluster.
#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParticipantCounts {
    pub stage: u32,
    pub audience: u32,
    pub raised_hands: u32,
}

/// A raised hand, as administrators see it.
#[derive(Debug, Serialize, Clone, PartialEq)]
pub struct HandView {
    pub sid: String,
    pub identity: String,
    pub name: String,
    /// When it was raised (Unix milliseconds); the queue is in this order.
    pub raised_ms: u64,
}

/// What a participant may do.
#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq)]
pub struct Permissions {
    pub can_publish: bool,
    pub can_subscribe: bool,
    /// Sees raised hands and may promote and demote (`roomAdmin`).
    pub admin: bool,
    /// May change its own name, metadata and attributes (`canUpdateOwnMetadata`).
    pub can_update_metadata: bool,
}

/// A published track as subscribers see it.
#[derive(Debug, Serialize, Clone, PartialEq)]
pub struct TrackView {
    pub sid: String,
    pub participant: String,
    pub kind: &'static str,
    pub codec: String,
    /// Simulcast layers (RIDs), lowest first; empty for a single-layer track.
    pub layers: Vec<String>,
    /// The publisher's name for the track (its media section's msid track id, if any).
    pub name: String,
    pub muted: bool,
    /// `camera`, `microphone` or `screen_share`.
    pub source: &'static str,
}

/// An active speaker.
#[derive(Debug, Serialize, Clone, PartialEq)]
pub struct SpeakerView {
    pub participant: String,
    pub track: String,
    /// Loudness, 0.0 (silence) to 1.0 (full scale).
    pub level: f32,
}

/// A participant's connection quality (see `media::room::quality`).
#[derive(Debug, Serialize, Clone, PartialEq)]
pub struct QualityView {
    pub participant: String,
    /// `excellent`, `good`, `poor` or `lost`.
    pub quality: &'static str,
    /// Mean opinion score, 1 to 4.5.
    pub score: f32,
}

/// Which track a media section of the subscriber peer connection carries.
#[derive(Debug, Serialize, Clone, PartialEq)]
pub struct SectionTrack {
    pub mid: String,
    pub track: String,
    pub participant: String,
}

/// Messages from the server.
#[derive(Debug, Serialize, Clone, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Answer to `join`. `participants` is the roster: everyone in a small room, the stage
    /// (and those announced while the room was small) in a large one, whose audience is only
    /// counted in `counts`. `hands` is the raised-hand queue, for administrators only.
    Joined {
        room: String,
        participant: ParticipantView,
        participants: Vec<ParticipantView>,
        permissions: Permissions,
        counts: ParticipantCounts,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        hands: Vec<HandView>,
    },
    /// Answer to `publish`.
    PublishAnswer {
        sdp: String,
    },
    /// An offer for the subscriber peer connection; the client replies with `answer`.
    /// `tracks` says which media section (by mid) carries which track.
    Offer {
        sdp: String,
        tracks: Vec<SectionTrack>,
    },
    ParticipantJoined {
        participant: ParticipantView,
    },
    ParticipantLeft {
        participant: String,
    },
    /// A participant of the roster changed role (a small room's audience member promoted or
    /// demoted).
    ParticipantUpdated {
        participant: ParticipantView,
    },
    /// The room's counts changed (at most once a second), or were asked for.
    ParticipantCount {
        #[serde(flatten)]
        counts: ParticipantCounts,
    },
    /// Your permissions changed: promoted to the stage (publish on your existing connection)
    /// or demoted (your tracks were unpublished).
    PermissionsChanged {
        #[serde(flatten)]
        permissions: Permissions,
    },
    /// To administrators, and to the one who raised it: a hand went up.
    HandRaised {
        hand: HandView,
    },
    /// To administrators, and to the one who lowered it: a hand went down (lowered, promoted,
    /// or its participant left). `participant` is the sid.
    HandLowered {
        participant: String,
    },
    TrackPublished {
        track: TrackView,
    },
    TrackUnpublished {
        track: String,
        participant: String,
    },
    TrackMuted {
        track: String,
        participant: String,
        muted: bool,
    },
    /// The active speakers changed: loudest first (empty: nobody speaks).
    Speakers {
        speakers: Vec<SpeakerView>,
    },
    /// A recording of the room started (`active`) or ended; `kind` is `room` or `track`.
    Recording {
        id: String,
        kind: &'static str,
        active: bool,
    },
    /// Dynacast, to a publisher: send only these simulcast layers (by RID) of the track; the
    /// others are not needed by anyone in the cluster. All layers listed: send them all.
    /// `name` is the track's id in the publisher's offer (`MediaStreamTrack.id`).
    PublisherLayers {
        track: String,
        name: String,
        layers: Vec<String>,
    },
    /// Every few seconds: the connection quality of you and of the announced participants
    /// on your node.
    ConnectionQuality {
        updates: Vec<QualityView>,
    },
    /// This node is going away (draining): reconnect to `url` with the same token, and
    /// publish and subscribe again there.
    Migrate {
        url: String,
        reason: String,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// A request failed, or something went wrong with a session. The session goes on unless a
    /// `left` message follows.
    Error {
        code: ErrorCode,
        message: String,
        /// The `type` of the client message that failed, when one did.
        #[serde(skip_serializing_if = "Option::is_none")]
        request: Option<String>,
    },
    /// Answer to a `join` with `resume`: the session was taken over, with its participant,
    /// peer connections and subscriptions; what it missed follows.
    Resumed {
        room: String,
        participant: String,
    },
    /// The server ended the session (the WebSocket closes next).
    Left {
        reason: String,
    },
}

/// Machine-readable error codes.
#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message is not valid JSON or not a known message.
    BadRequest,
    /// The message is larger than the configured limit.
    TooLarge,
    /// An SDP could not be parsed or negotiated.
    InvalidSdp,
    /// The token does not allow this.
    Forbidden,
    /// A referenced track or participant does not exist.
    NotFound,
    /// The message is not valid in the current state (e.g. before `join`).
    InvalidState,
    /// The room is full.
    RoomFull,
    /// A peer connection failed.
    PeerFailed,
    /// Too many requests of this kind; slow down.
    RateLimited,
    /// A bug or resource problem on the server.
    Internal,
}

/// An error answered to a signaling request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SignalError {
    pub code: ErrorCode,
    pub message: String,
}

impl SignalError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_messages_and_defaults() {
        let m: ClientMessage = serde_json::from_str(r#"{"type":"join"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Join {
                auto_subscribe: true,
                resumable: false,
                resume: None
            }
        );
        let m: ClientMessage = serde_json::from_str(r#"{"type":"join","resume":"PA_1"}"#).unwrap();
        assert!(matches!(m, ClientMessage::Join { resume: Some(s), .. } if s == "PA_1"));
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"subscribe","tracks":["TR_1"],"extra":1}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Subscribe {
                tracks: vec!["TR_1".into()]
            }
        );
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"fly"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"publish"}"#).is_err());
        let m: ClientMessage = serde_json::from_str(
            r#"{"type":"publish","sdp":"v=0","sources":{"t1":"screen_share"}}"#,
        )
        .unwrap();
        let ClientMessage::Publish { sources, .. } = m else {
            panic!("{m:?}")
        };
        assert_eq!(sources["t1"], TrackSourceName::ScreenShare);
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"track_settings","track":"TR_1","height":180}"#)
                .unwrap();
        assert_eq!(
            m,
            ClientMessage::TrackSettings {
                track: "TR_1".into(),
                width: None,
                height: Some(180),
                enabled: true,
                pinned: false
            }
        );
        assert!(
            serde_json::from_str::<ClientMessage>(
                r#"{"type":"track_settings","track":"x","height":-1}"#
            )
            .is_err()
        );
    }

    #[test]
    fn server_messages_are_tagged() {
        let s = serde_json::to_string(&ServerMessage::Error {
            code: ErrorCode::InvalidSdp,
            message: "bad".into(),
            request: Some("publish".into()),
        })
        .unwrap();
        assert_eq!(
            s,
            r#"{"type":"error","code":"invalid_sdp","message":"bad","request":"publish"}"#
        );
    }
}
