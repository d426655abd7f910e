//! LiveKit's client signaling protocol (protobuf `SignalRequest`/`SignalResponse`, one per
//! binary WebSocket frame) as a second encoding of the node's session: requests become the
//! same [`ClientMessage`]s our JSON clients send, and the [`ServerMessage`]s rooms send become
//! `SignalResponse`s. No session logic lives here, only translation and what the translation
//! must remember: the roster as LiveKit's clients see it (LiveKit sends a participant's whole
//! record on every change, we send the change), the tracks a client announced before offering
//! them, and who spoke last.
//!
//! What is translated and what is not is written down in `docs/signaling.md`.

// `TrackInfo.layers`/`simulcast` and `SubscribedQualityUpdate.subscribed_qualities` are
// deprecated in the protocol in favour of per-codec fields, but livekit-client 2.x still reads
// them for single-codec tracks, the only ones the node has.
#![allow(deprecated)]

use super::livekit_map::{
    attributes_of, disconnect_reason, now_ms, own_permission, permission, quality_of,
    quality_update, reply, request_refused, response, rid_of, room_sid, str_of, sync_mutes,
    track_info, track_settings, trickle,
};
use super::protocol::{ClientMessage, ErrorCode, SignalError, TrackSourceName};
use livekit_protocol as lk;
use lk::{signal_request, signal_response};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};

/// LiveKit's signaling protocol version this encoding speaks (livekit-client 2.x sends 16
/// or 17; nothing we translate differs between them).
pub const PROTOCOL_VERSION: i32 = 16;
/// The LiveKit server version announced (`ServerInfo.version`; ours goes in `debug_info`).
/// Clients and components switch features on by it: above 1.8.2 they send chat and text as
/// data streams, which the node carries (below, LiveKit's components send each chat message
/// twice); from 1.13.6 livekit-client sends VP9 and AV1 as SVC instead of simulcast layers,
/// which the node's layer selection does not read, so it stays below that.
pub const LIVEKIT_VERSION: &str = "1.9.0";
/// Tracks a client may announce (`AddTrackRequest`) and not yet offer.
const MAX_PENDING_TRACKS: usize = 32;
/// Tracks per subscription or settings request, as for the JSON encoding.
pub(super) const MAX_TRACKS_PER_REQUEST: usize = 1000;

/// What the node says about itself in a `JoinResponse`.
#[derive(Debug, Clone)]
pub struct ServerSide {
    pub node_id: String,
    pub version: String,
    /// How often the client pings, and after how long without a pong it gives up (seconds).
    pub ping_interval: i32,
    pub ping_timeout: i32,
}

/// What a decoded request asks of the session.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// Handled by the session as for a JSON client.
    Request(ClientMessage),
    /// Answered here, without the session (ping, announced track).
    Reply(Box<lk::SignalResponse>),
}

/// One LiveKit session's translation state.
#[derive(Debug)]
pub struct LiveKitCodec {
    server: ServerSide,
    room: String,
    /// This participant, once joined.
    me: Option<lk::ParticipantInfo>,
    /// The others, by sid.
    others: HashMap<String, lk::ParticipantInfo>,
    /// Tracks announced with `AddTrackRequest` and not yet offered: by cid (the msid track
    /// id of the coming offer), the sid handed out and what the track shows.
    pending: HashMap<String, (sfu_core::TrackId, TrackSourceName)>,
    /// Rid order of this participant's announced simulcast tracks, by sid (for dynacast).
    layers: HashMap<String, Vec<String>>,
    /// The id of the client's last publisher offer, echoed in our answer.
    offer_id: u32,
    /// Ids of our subscriber offers.
    next_offer_id: u32,
    /// Mutes this client asked for, so that our echo of them is not sent back as a
    /// server-requested mute.
    own_mutes: HashMap<String, bool>,
    speaking: BTreeSet<String>,
    /// The client's last metadata update, answered with a `RequestResponse` if refused.
    metadata_request: Option<lk::UpdateParticipantMetadata>,
    /// Recordings of the room running (`Room.active_recording` in every room we send).
    recordings: BTreeSet<String>,
    /// The room's stage and audience as last told: LiveKit's clients replace their whole
    /// room with each one we send.
    counts: (u32, u32),
    version: u32,
}

impl LiveKitCodec {
    pub fn new(server: ServerSide, room: String) -> Self {
        Self {
            server,
            room,
            me: None,
            others: HashMap::new(),
            pending: HashMap::new(),
            layers: HashMap::new(),
            offer_id: 0,
            next_offer_id: 0,
            own_mutes: HashMap::new(),
            speaking: BTreeSet::new(),
            metadata_request: None,
            recordings: BTreeSet::new(),
            counts: (0, 0),
            version: 0,
        }
    }

    /// Decodes one binary frame.
    pub fn decode(&mut self, frame: &[u8]) -> Result<Vec<Decoded>, SignalError> {
        use prost::Message;
        let request = lk::SignalRequest::decode(frame).map_err(|e| {
            SignalError::new(ErrorCode::BadRequest, format!("malformed request: {e}"))
        })?;
        let Some(message) = request.message else {
            return Ok(Vec::new());
        };
        Ok(match message {
            signal_request::Message::AddTrack(add) => vec![self.add_track(add)?],
            signal_request::Message::Offer(offer) => {
                self.offer_id = offer.id;
                let (mut sources, mut track_sids) = (HashMap::new(), HashMap::new());
                for (cid, (sid, source)) in self.pending.drain() {
                    sources.insert(cid.clone(), source);
                    track_sids.insert(cid, sid);
                }
                vec![Decoded::Request(ClientMessage::Publish {
                    sdp: offer.sdp,
                    sources,
                    track_sids,
                })]
            }
            signal_request::Message::Answer(answer) => {
                vec![Decoded::Request(ClientMessage::Answer { sdp: answer.sdp })]
            }
            signal_request::Message::Trickle(t) => trickle(&t)?.into_iter().collect(),
            signal_request::Message::Mute(m) => {
                self.own_mutes.insert(m.sid.clone(), m.muted);
                vec![Decoded::Request(ClientMessage::Mute {
                    track: m.sid,
                    muted: m.muted,
                })]
            }
            signal_request::Message::Subscription(s) => {
                let tracks: Vec<String> = s
                    .track_sids
                    .into_iter()
                    .chain(s.participant_tracks.into_iter().flat_map(|p| p.track_sids))
                    .collect();
                if tracks.is_empty() {
                    Vec::new()
                } else if s.subscribe {
                    vec![Decoded::Request(ClientMessage::Subscribe { tracks })]
                } else {
                    vec![Decoded::Request(ClientMessage::Unsubscribe { tracks })]
                }
            }
            signal_request::Message::TrackSetting(s) => track_settings(s)?,
            signal_request::Message::Leave(_) => vec![Decoded::Request(ClientMessage::Leave)],
            signal_request::Message::UpdateMetadata(u) => {
                // LiveKit leaves an empty name or metadata as it is (its clients send both
                // every time); attributes are merged.
                let request = ClientMessage::UpdateMetadata {
                    name: Some(u.name.clone()).filter(|n| !n.is_empty()),
                    metadata: Some(u.metadata.clone()).filter(|m| !m.is_empty()),
                    attributes: u.attributes.clone().into_iter().collect(),
                };
                self.metadata_request = Some(u);
                vec![Decoded::Request(request)]
            }
            // After a resume: the mute states of the client's tracks (a mute sent while the
            // signaling connection was down is lost with it).
            signal_request::Message::SyncState(s) => sync_mutes(&s)
                .map(|(track, muted)| {
                    self.own_mutes.insert(track.clone(), muted);
                    Decoded::Request(ClientMessage::Mute { track, muted })
                })
                .collect(),
            signal_request::Message::Ping(t) => vec![reply(signal_response::Message::Pong(t))],
            signal_request::Message::PingReq(p) => {
                vec![reply(signal_response::Message::PongResp(lk::Pong {
                    last_ping_timestamp: p.timestamp,
                    timestamp: now_ms(),
                }))]
            }
            // Not translated (see docs/signaling.md): subscription permissions,
            // layer and local track updates, simulation, data tracks.
            other => {
                tracing::debug!(room = %self.room, request = ?std::mem::discriminant(&other), "LiveKit request not translated");
                Vec::new()
            }
        })
    }

    /// `AddTrackRequest`: the client is told the track's sid now (it offers the track only
    /// after); the sid goes to the node with the offer.
    fn add_track(&mut self, add: lk::AddTrackRequest) -> Result<Decoded, SignalError> {
        if add.cid.is_empty() || add.cid.len() > 128 {
            return Err(SignalError::new(
                ErrorCode::BadRequest,
                "a track's cid is 1 to 128 bytes",
            ));
        }
        if self.pending.len() >= MAX_PENDING_TRACKS && !self.pending.contains_key(&add.cid) {
            return Err(SignalError::new(
                ErrorCode::RateLimited,
                format!("at most {MAX_PENDING_TRACKS} tracks announced and not offered"),
            ));
        }
        let source = match lk::TrackSource::try_from(add.source) {
            Ok(lk::TrackSource::Microphone) | Ok(lk::TrackSource::ScreenShareAudio) => {
                TrackSourceName::Microphone
            }
            Ok(lk::TrackSource::ScreenShare) => TrackSourceName::ScreenShare,
            _ if add.r#type == lk::TrackType::Audio as i32 => TrackSourceName::Microphone,
            _ => TrackSourceName::Camera,
        };
        let sid = sfu_core::TrackId(rand::random());
        self.pending.insert(add.cid.clone(), (sid, source));
        let mut rids: Vec<(i32, String)> =
            add.layers.iter().map(|l| (l.quality, rid_of(l))).collect();
        rids.sort();
        if rids.len() > 1 {
            self.layers
                .insert(sid.to_string(), rids.into_iter().map(|(_, r)| r).collect());
        }
        let track = lk::TrackInfo {
            sid: sid.to_string(),
            r#type: add.r#type,
            name: add.name,
            muted: add.muted,
            width: add.width,
            height: add.height,
            simulcast: add.layers.len() > 1,
            source: add.source,
            layers: add.layers,
            stream: add.stream,
            ..Default::default()
        };
        Ok(reply(signal_response::Message::TrackPublished(
            lk::TrackPublishedResponse {
                cid: add.cid,
                track: Some(track),
            },
        )))
    }

    /// Translates one message of the session (as JSON, whether the room encoded it for
    /// everyone or the session has it as a [`super::protocol::ServerMessage`]).
    pub fn encode(&mut self, m: &Value) -> Vec<lk::SignalResponse> {
        use signal_response::Message as R;
        let out = match m["type"].as_str().unwrap_or("") {
            "joined" => return vec![self.join_response(m)],
            "resumed" => return vec![self.reconnect_response()],
            "publish_answer" => R::Answer(lk::SessionDescription {
                r#type: "answer".into(),
                sdp: str_of(&m["sdp"]),
                id: self.offer_id,
                ..Default::default()
            }),
            "offer" => {
                self.next_offer_id += 1;
                let mid_to_track_id = m["tracks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| (str_of(&t["mid"]), str_of(&t["track"])))
                    .collect();
                R::Offer(lk::SessionDescription {
                    r#type: "offer".into(),
                    sdp: str_of(&m["sdp"]),
                    id: self.next_offer_id,
                    mid_to_track_id,
                })
            }
            "participant_joined" | "participant_updated" => {
                let p = &m["participant"];
                if let Some(me) = self.me.as_mut().filter(|me| me.sid == p["sid"]) {
                    // This client's own name, metadata or attributes changed.
                    me.name = str_of(&p["name"]);
                    me.metadata = str_of(&p["metadata"]);
                    me.attributes = attributes_of(&p["attributes"]);
                    let mut me = me.clone();
                    me.version = self.bump();
                    self.me = Some(me.clone());
                    return vec![response(R::Update(lk::ParticipantUpdate {
                        participants: vec![me],
                    }))];
                }
                let info = self.participant(p);
                // A role change keeps the tracks we know of.
                let tracks = self
                    .others
                    .get(&info.sid)
                    .map(|p| p.tracks.clone())
                    .filter(|t| info.tracks.is_empty() && !t.is_empty());
                let mut info = info;
                if let Some(t) = tracks {
                    info.tracks = t;
                }
                self.others.insert(info.sid.clone(), info.clone());
                R::Update(lk::ParticipantUpdate {
                    participants: vec![info],
                })
            }
            "participant_left" => {
                let sid = str_of(&m["participant"]);
                self.speaking.remove(&sid);
                let Some(mut info) = self.others.remove(&sid) else {
                    tracing::debug!(room = %self.room, participant = %sid, "left, never told to this client");
                    return Vec::new();
                };
                info.state = lk::participant_info::State::Disconnected as i32;
                info.version = self.bump();
                R::Update(lk::ParticipantUpdate {
                    participants: vec![info],
                })
            }
            "track_published" => {
                let t = &m["track"];
                let owner = str_of(&t["participant"]);
                let track = track_info(t);
                let version = self.bump();
                let Some(p) = self.others.get_mut(&owner) else {
                    return Vec::new();
                };
                p.tracks.retain(|x| x.sid != track.sid);
                p.tracks.push(track);
                p.is_publisher = true;
                p.version = version;
                R::Update(lk::ParticipantUpdate {
                    participants: vec![p.clone()],
                })
            }
            "track_unpublished" | "track_muted" => {
                let owner = str_of(&m["participant"]);
                let sid = str_of(&m["track"]);
                let muted = m["muted"].as_bool();
                if self.me.as_ref().is_some_and(|me| me.sid == owner) {
                    // Our own mute echoed, or one an administrator asked for (then the
                    // client mutes its track as LiveKit's server asks it to).
                    let asked = muted.filter(|m| self.own_mutes.get(&sid) != Some(m));
                    self.own_mutes.remove(&sid);
                    return match asked {
                        Some(muted) => vec![response(R::Mute(lk::MuteTrackRequest { sid, muted }))],
                        None => Vec::new(),
                    };
                }
                let version = self.bump();
                let Some(p) = self.others.get_mut(&owner) else {
                    return Vec::new();
                };
                match muted {
                    Some(muted) => p
                        .tracks
                        .iter_mut()
                        .filter(|t| t.sid == sid)
                        .for_each(|t| t.muted = muted),
                    None => p.tracks.retain(|t| t.sid != sid),
                }
                p.version = version;
                R::Update(lk::ParticipantUpdate {
                    participants: vec![p.clone()],
                })
            }
            "permissions_changed" => {
                let version = self.bump();
                let Some(me) = self.me.as_mut() else {
                    return Vec::new();
                };
                me.permission = Some(own_permission(m));
                me.version = version;
                R::Update(lk::ParticipantUpdate {
                    participants: vec![me.clone()],
                })
            }
            "participant_count" => {
                let stage = m["stage"].as_u64().unwrap_or(0) as u32;
                let audience = m["audience"].as_u64().unwrap_or(0) as u32;
                self.counts = (stage, audience);
                R::RoomUpdate(lk::RoomUpdate {
                    room: Some(self.room_info()),
                })
            }
            "recording" => {
                let id = str_of(&m["id"]);
                if m["active"].as_bool().unwrap_or(false) {
                    self.recordings.insert(id);
                } else {
                    self.recordings.remove(&id);
                }
                R::RoomUpdate(lk::RoomUpdate {
                    room: Some(self.room_info()),
                })
            }
            "speakers" => {
                let mut speakers = Vec::new();
                let mut now = BTreeSet::new();
                for s in m["speakers"].as_array().into_iter().flatten() {
                    let sid = str_of(&s["participant"]);
                    if now.insert(sid.clone()) {
                        speakers.push(lk::SpeakerInfo {
                            sid,
                            level: s["level"].as_f64().unwrap_or(0.0) as f32,
                            active: true,
                        });
                    }
                }
                for quiet in self.speaking.difference(&now) {
                    speakers.push(lk::SpeakerInfo {
                        sid: quiet.clone(),
                        level: 0.0,
                        active: false,
                    });
                }
                self.speaking = now;
                R::SpeakersChanged(lk::SpeakersChanged { speakers })
            }
            "connection_quality" => R::ConnectionQuality(quality_update(m)),
            "publisher_layers" => {
                let sid = str_of(&m["track"]);
                let wanted: Vec<String> = m["layers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(str_of)
                    .collect();
                let order = self.layers.get(&sid).cloned().unwrap_or_default();
                let subscribed_qualities = order
                    .iter()
                    .enumerate()
                    .map(|(i, rid)| lk::SubscribedQuality {
                        quality: quality_of(rid, i),
                        enabled: wanted.contains(rid),
                    })
                    .collect();
                R::SubscribedQualityUpdate(lk::SubscribedQualityUpdate {
                    track_sid: sid,
                    subscribed_qualities,
                    subscribed_codecs: Vec::new(),
                })
            }
            "migrate" => R::Leave(lk::LeaveRequest {
                can_reconnect: true,
                reason: lk::DisconnectReason::ServerShutdown as i32,
                action: lk::leave_request::Action::Reconnect as i32,
                regions: None,
            }),
            "left" => R::Leave(lk::LeaveRequest {
                can_reconnect: false,
                reason: disconnect_reason(m["reason"].as_str().unwrap_or("")) as i32,
                action: lk::leave_request::Action::Disconnect as i32,
                regions: None,
            }),
            "error" => {
                tracing::debug!(room = %self.room, error = %m, "signaling error on a LiveKit session");
                // A refused metadata update is answered as LiveKit does, so that the client's
                // `setMetadata` fails at once with the reason rather than timing out.
                return match self.metadata_request.take() {
                    Some(u) if m["request"] == "update_metadata" && u.request_id != 0 => {
                        vec![request_refused(m, u)]
                    }
                    _ => Vec::new(),
                };
            }
            // Raised hands have no LiveKit message; pongs answer our own pings only.
            _ => return Vec::new(),
        };
        vec![response(out)]
    }

    /// The room as this client knows it now.
    fn room_info(&self) -> lk::Room {
        let (stage, audience) = self.counts;
        lk::Room {
            name: self.room.clone(),
            sid: room_sid(&self.room),
            num_participants: stage + audience,
            num_publishers: stage,
            active_recording: !self.recordings.is_empty(),
            ..Default::default()
        }
    }

    fn join_response(&mut self, m: &Value) -> lk::SignalResponse {
        let mut me = self.participant(&m["participant"]);
        me.permission = Some(own_permission(&m["permissions"]));
        self.me = Some(me.clone());
        let others: Vec<lk::ParticipantInfo> = m["participants"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| self.participant(p))
            .collect();
        for p in &others {
            self.others.insert(p.sid.clone(), p.clone());
        }
        let counts = &m["counts"];
        let stage = counts["stage"].as_u64().unwrap_or(0) as u32;
        let audience = counts["audience"].as_u64().unwrap_or(0) as u32;
        self.counts = (stage, audience);
        response(signal_response::Message::Join(lk::JoinResponse {
            room: Some(lk::Room {
                creation_time: now_ms() / 1000,
                creation_time_ms: now_ms(),
                ..self.room_info()
            }),
            participant: Some(me),
            other_participants: others,
            server_version: LIVEKIT_VERSION.to_owned(),
            // The node needs the publisher connection first only to publish: clients that
            // only watch connect on the subscriber connection the node offers.
            subscriber_primary: false,
            ping_timeout: self.server.ping_timeout,
            ping_interval: self.server.ping_interval,
            server_info: Some(self.server_info()),
            ..Default::default()
        }))
    }

    fn server_info(&self) -> lk::ServerInfo {
        lk::ServerInfo {
            edition: lk::server_info::Edition::Standard as i32,
            version: LIVEKIT_VERSION.to_owned(),
            protocol: PROTOCOL_VERSION,
            node_id: self.server.node_id.clone(),
            debug_info: format!("sfu-node {}", self.server.version),
            ..Default::default()
        }
    }

    /// The answer to a resume (`reconnect=1`) that found its session parked: the client keeps
    /// its peer connections and its view of the room, which this codec still holds.
    pub fn reconnect_response(&self) -> lk::SignalResponse {
        response(signal_response::Message::Reconnect(lk::ReconnectResponse {
            server_info: Some(self.server_info()),
            ..Default::default()
        }))
    }

    fn participant(&mut self, p: &Value) -> lk::ParticipantInfo {
        let tracks: Vec<lk::TrackInfo> = p["tracks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(track_info)
            .collect();
        lk::ParticipantInfo {
            sid: str_of(&p["sid"]),
            identity: str_of(&p["identity"]),
            name: str_of(&p["name"]),
            state: lk::participant_info::State::Active as i32,
            is_publisher: !tracks.is_empty(),
            tracks,
            permission: Some(permission(p["stage"].as_bool().unwrap_or(false))),
            metadata: str_of(&p["metadata"]),
            attributes: attributes_of(&p["attributes"]),
            version: self.bump(),
            joined_at: now_ms() / 1000,
            joined_at_ms: now_ms(),
            ..Default::default()
        }
    }

    fn bump(&mut self) -> u32 {
        self.version += 1;
        self.version
    }
}

#[cfg(test)]
#[path = "livekit_tests.rs"]
mod tests;
