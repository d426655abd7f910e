//! WebSocket signaling at `/rtc?access_token=...` (protocol in `docs/signaling.md`).
//!
//! The token is checked before the upgrade, so a bad token gets an HTTP problem response, not a
//! WebSocket that closes. After the upgrade each text frame is one JSON message; a malformed or
//! oversized one gets an `error` message and the session continues.
//!
//! The same session speaks LiveKit's client protocol when the client says it is a LiveKit SDK
//! (`sdk` or `protocol` in the query, as every LiveKit SDK sends): binary protobuf frames,
//! translated to and from the JSON protocol's messages by [`LiveKitCodec`]; the session
//! joins at once, as LiveKit's clients expect, or resumes a parked session ([`resume`]).

mod join;
mod resume;
pub use resume::Parked;
pub mod v1;

use super::{AppState, Problem, check_room_name};
use crate::auth::Grants;
use crate::media::Command;
use crate::signaling::Outbound;
use crate::signaling::livekit::{Decoded, LiveKitCodec, ServerSide};
use crate::signaling::protocol::{ClientMessage, ErrorCode, ServerMessage, SignalError};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use std::time::Duration;

/// Frames above this are refused by the WebSocket layer itself (close code 1009); below it,
/// the configured message limit applies and gets a protocol error instead.
const MAX_FRAME: usize = 1 << 20;
/// Read buffer of a session's WebSocket. tungstenite's default, 128 KiB, would be most of
/// what an idle audience member costs the node; client messages are small, and the buffer
/// grows for the rare large one (an SDP offer).
const READ_BUFFER: usize = 4096;

#[derive(Deserialize)]
pub struct ConnectQuery {
    access_token: Option<String>,
    /// LiveKit's clients: which SDK and protocol version (their presence selects LiveKit's
    /// encoding), whether to subscribe to everything, and whether this is a resume.
    sdk: Option<String>,
    protocol: Option<String>,
    auto_subscribe: Option<String>,
    reconnect: Option<String>,
    sid: Option<String>,
}

/// How a session's messages travel.
enum Encoding {
    Json,
    LiveKit {
        codec: Box<LiveKitCodec>,
        auto_subscribe: bool,
        /// The participant sid of a resume (`reconnect=1`).
        resume: Option<String>,
    },
}

pub async fn upgrade(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(source): axum::extract::ConnectInfo<std::net::SocketAddr>,
    Query(query): Query<ConnectQuery>,
    headers: axum::http::HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, Problem> {
    let grants = state.auth.verify(token_of(&query, &headers))?;
    let room = grants.room.clone().unwrap_or_default();
    check_room_name(&room)?;
    grants.may_join(&room)?;
    state.admitting(source.ip())?;
    let encoding = if query.sdk.is_some() || query.protocol.is_some() {
        let ping_interval = (state.config.limits.ws_idle_secs / 3).clamp(1, 30) as i32;
        Encoding::LiveKit {
            codec: Box::new(LiveKitCodec::new(
                ServerSide {
                    node_id: state.node_id.to_string(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ping_interval,
                    ping_timeout: state.config.limits.ws_idle_secs.max(2) as i32,
                },
                room.clone(),
            )),
            auto_subscribe: query.auto_subscribe.as_deref() != Some("0"),
            resume: (query.reconnect.as_deref() == Some("1"))
                .then(|| query.sid.clone().unwrap_or_default()),
        }
    } else {
        Encoding::Json
    };
    let ws = ws.map_err(|e| {
        Problem::new(
            StatusCode::UPGRADE_REQUIRED,
            "websocket_required",
            e.to_string(),
        )
    })?;
    Ok(ws
        .max_message_size(MAX_FRAME)
        .read_buffer_size(READ_BUFFER)
        // Every message is sent (and flushed) on its own: no write buffer to fill first.
        .write_buffer_size(0)
        .on_upgrade(move |socket| Session::new(state, grants, room, encoding).run(socket)))
}

/// The access token: the `access_token` query parameter, or a bearer token (LiveKit's Rust
/// SDK, under the Python one, sends it in `Authorization`).
fn token_of<'a>(query: &'a ConnectQuery, headers: &'a axum::http::HeaderMap) -> &'a str {
    query.access_token.as_deref().unwrap_or_else(|| {
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .trim()
    })
}

/// `GET /rtc/validate`: LiveKit's clients ask it why a WebSocket was refused, and report a
/// 401 or 403 here as the reason (without it they would take the refusal for an old server
/// and retry). A token that would be admitted gets `200`.
pub async fn validate(
    State(state): State<AppState>,
    Query(query): Query<ConnectQuery>,
    headers: axum::http::HeaderMap,
) -> Result<&'static str, Problem> {
    let grants = state.auth.verify(token_of(&query, &headers))?;
    let room = grants.room.clone().unwrap_or_default();
    check_room_name(&room)?;
    grants.may_join(&room)?;
    Ok("success")
}

struct Session {
    state: AppState,
    grants: Grants,
    room: String,
    participant: Option<String>,
    events_tx: crate::signaling::Events,
    events_rx: crate::signaling::EventsRx,
    /// The client stopped reading what it is sent: the session ends.
    too_slow: bool,
    encoding: Encoding,
    /// Whether the session is parked for a resume when its WebSocket closes without a leave:
    /// always for LiveKit's clients, on request for JSON ones (see [`resume`]).
    resumable: bool,
    /// A resumable session's handle for a resume that finds it still live (see [`resume`]).
    takeover: resume::Takeover,
}

/// What the loop does after a client message.
enum Flow {
    Continue,
    Stop,
}

impl Session {
    fn new(state: AppState, grants: Grants, room: String, encoding: Encoding) -> Self {
        let (events_tx, events_rx) = crate::signaling::events();
        Self {
            state,
            grants,
            room,
            participant: None,
            events_tx,
            events_rx,
            too_slow: false,
            resumable: matches!(encoding, Encoding::LiveKit { .. }),
            encoding,
            takeover: resume::Takeover::default(),
        }
    }

    async fn run(mut self, mut socket: WebSocket) {
        let idle = Duration::from_secs(self.state.config.limits.ws_idle_secs);
        let mut keepalive = tokio::time::interval(idle / 3);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = tokio::time::Instant::now();
        let mut idle_out = false;
        if let Encoding::LiveKit {
            auto_subscribe,
            resume,
            ..
        } = &mut self.encoding
        {
            // LiveKit's clients send no join: the connection is the join, or the resume of a
            // session whose client kept its peer connections.
            let (auto_subscribe, resume) = (*auto_subscribe, resume.take());
            let reply = match self.join(auto_subscribe, true, resume).await {
                Ok(reply) => reply,
                Err(e) => {
                    tracing::info!(room = %self.room, "LiveKit join refused: {e}");
                    ServerMessage::Left { reason: e.message }
                }
            };
            let refused = !matches!(
                reply,
                ServerMessage::Joined { .. } | ServerMessage::Resumed { .. }
            );
            let sent = emit(&mut self.encoding, &mut socket, &reply).await;
            if sent.is_err() || refused {
                self.takeover.done(&self.state.parked);
                self.leave_and_close(socket, "signaling connection closed", false)
                    .await;
                return;
            }
        }
        loop {
            tokio::select! {
                () = self.takeover.requested() => break,
                _ = keepalive.tick() => {
                    if heard.elapsed() >= idle {
                        idle_out = true;
                        break;
                    }
                    let ping = socket.send(Message::Ping(Default::default()));
                    if tokio::time::timeout(SEND_TIMEOUT, ping).await.is_err() {
                        self.too_slow = true;
                        break;
                    }
                }
                frame = socket.recv() => {
                    let Some(Ok(frame)) = frame else { break };
                    heard = tokio::time::Instant::now();
                    let flow = match frame {
                        Message::Text(text) => self.on_text(&mut socket, text.as_str()).await,
                        Message::Binary(bytes) => self.on_binary(&mut socket, &bytes).await,
                        Message::Close(_) => Flow::Stop,
                        _ => Flow::Continue,
                    };
                    if matches!(flow, Flow::Stop) {
                        break;
                    }
                }
                Some(event) = self.events_rx.recv() => {
                    let left = matches!(&event, Outbound::Message(m) if matches!(**m, ServerMessage::Left { .. }));
                    let sent = match event {
                        Outbound::Message(m) => emit(&mut self.encoding, &mut socket, &m).await,
                        Outbound::Shared(text) => match &mut self.encoding {
                            Encoding::Json => send_text(&mut socket, text).await,
                            Encoding::LiveKit { codec, .. } => {
                                let value = serde_json::from_str(text.as_str()).unwrap_or_default();
                                send_livekit(codec, &mut socket, &value).await
                            }
                        },
                    };
                    if left {
                        // The node ended the session (e.g. the same identity joined again).
                        self.participant = None;
                        break;
                    }
                    if let Err(e) = sent {
                        self.too_slow |= is_too_slow(&e);
                        break;
                    }
                }
            }
            if self.events_rx.overflowed() {
                self.too_slow = true;
            }
            if self.too_slow {
                break;
            }
        }
        let too_slow = self.too_slow;
        let reason = if too_slow {
            self.state.metrics.slow_clients.inc();
            tracing::info!(room = %self.room, "a client that did not read its messages was disconnected");
            "the client did not read its messages"
        } else if idle_out {
            self.state.metrics.idle_clients.inc();
            "nothing heard from the client"
        } else {
            "signaling connection closed"
        };
        if !too_slow {
            // A resumable client may come back for its session.
            self.park();
        }
        self.takeover.done(&self.state.parked);
        self.leave_and_close(socket, reason, too_slow || idle_out)
            .await;
    }

    /// Ends the session: leaves the room if joined, and closes the WebSocket (without waiting
    /// long on a client that does not read).
    async fn leave_and_close(&mut self, mut socket: WebSocket, reason: &str, hasty: bool) {
        if let Some(sid) = self.participant.take() {
            let _ = self.state.media.send(
                &self.room,
                Command::Leave {
                    room: self.room.clone(),
                    participant: sid,
                    reason: reason.into(),
                },
            );
        }
        if hasty {
            // Not awaited for long: the client is not reading.
            let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Close(None))).await;
            return;
        }
        let _ = socket.send(Message::Close(None)).await;
    }

    async fn on_text(&mut self, socket: &mut WebSocket, text: &str) -> Flow {
        let limit = self.state.config.limits.max_message_bytes;
        if text.len() > limit {
            self.error(
                socket,
                ErrorCode::TooLarge,
                &format!("message larger than {limit} bytes"),
                None,
            )
            .await;
            return Flow::Continue;
        }
        if !matches!(self.encoding, Encoding::Json) {
            self.error(
                socket,
                ErrorCode::BadRequest,
                "LiveKit's protocol uses binary frames",
                None,
            )
            .await;
            return Flow::Continue;
        }
        let message: ClientMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                self.error(
                    socket,
                    ErrorCode::BadRequest,
                    &format!("malformed message: {e}"),
                    None,
                )
                .await;
                return Flow::Continue;
            }
        };
        self.on_message(socket, message).await
    }

    /// A binary frame: a LiveKit `SignalRequest`.
    async fn on_binary(&mut self, socket: &mut WebSocket, bytes: &[u8]) -> Flow {
        let limit = self.state.config.limits.max_message_bytes;
        let Encoding::LiveKit { codec, .. } = &mut self.encoding else {
            self.error(
                socket,
                ErrorCode::BadRequest,
                "binary frames are not part of the protocol",
                None,
            )
            .await;
            return Flow::Continue;
        };
        if bytes.len() > limit {
            self.error(
                socket,
                ErrorCode::TooLarge,
                &format!("message larger than {limit} bytes"),
                None,
            )
            .await;
            return Flow::Continue;
        }
        let decoded = match codec.decode(bytes) {
            Ok(d) => d,
            Err(e) => {
                self.error(socket, e.code, &e.message, None).await;
                return Flow::Continue;
            }
        };
        for d in decoded {
            let flow = match d {
                Decoded::Reply(r) => {
                    if let Err(e) = send_binary(socket, &r).await {
                        self.too_slow |= is_too_slow(&e);
                    }
                    Flow::Continue
                }
                Decoded::Request(m) => self.on_message(socket, m).await,
            };
            if matches!(flow, Flow::Stop) {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// A client message in either encoding.
    async fn on_message(&mut self, socket: &mut WebSocket, message: ClientMessage) -> Flow {
        let request = request_name(&message);
        match self.handle(message).await {
            Ok(Some(reply)) => {
                if let Err(e) = emit(&mut self.encoding, socket, &reply).await {
                    self.too_slow |= is_too_slow(&e);
                }
                if matches!(reply, ServerMessage::Left { .. }) {
                    Flow::Stop
                } else {
                    Flow::Continue
                }
            }
            Ok(None) => Flow::Continue,
            Err(e) => {
                self.error(socket, e.code, &e.message, Some(request)).await;
                Flow::Continue
            }
        }
    }

    async fn handle(
        &mut self,
        message: ClientMessage,
    ) -> Result<Option<ServerMessage>, SignalError> {
        let room = self.room.clone();
        if let ClientMessage::Join {
            auto_subscribe,
            resumable,
            resume,
        } = message
        {
            return self.join(auto_subscribe, resumable, resume).await.map(Some);
        }
        if let ClientMessage::Ping { id } = message {
            return Ok(Some(ServerMessage::Pong { id }));
        }
        let Some(participant) = self.participant.clone() else {
            return Err(SignalError::new(ErrorCode::InvalidState, "send join first"));
        };
        let media = &self.state.media;
        match message {
            ClientMessage::Publish {
                sdp,
                sources,
                track_sids,
            } => {
                let answer = media
                    .request(&room, |reply| Command::Publish {
                        room: room.clone(),
                        participant,
                        sdp,
                        sources,
                        track_sids,
                        reply,
                    })
                    .await?;
                Ok(Some(ServerMessage::PublishAnswer { sdp: answer }))
            }
            ClientMessage::Unpublish { track } => {
                media
                    .request(&room, |reply| Command::Unpublish {
                        room: room.clone(),
                        participant,
                        track,
                        reply,
                    })
                    .await?;
                Ok(None)
            }
            ClientMessage::Subscribe { tracks } | ClientMessage::Unsubscribe { tracks }
                if tracks.len() > 1000 =>
            {
                Err(SignalError::new(
                    ErrorCode::BadRequest,
                    "at most 1000 tracks per request",
                ))
            }
            ClientMessage::Subscribe { tracks } => {
                media
                    .request(&room, |reply| Command::Subscribe {
                        room: room.clone(),
                        participant,
                        tracks,
                        subscribe: true,
                        reply,
                    })
                    .await?;
                Ok(None)
            }
            ClientMessage::Unsubscribe { tracks } => {
                media
                    .request(&room, |reply| Command::Subscribe {
                        room: room.clone(),
                        participant,
                        tracks,
                        subscribe: false,
                        reply,
                    })
                    .await?;
                Ok(None)
            }
            ClientMessage::Answer { sdp } => {
                media
                    .request(&room, |reply| Command::SubscriberAnswer {
                        room: room.clone(),
                        participant,
                        sdp,
                        reply,
                    })
                    .await?;
                Ok(None)
            }
            ClientMessage::Trickle {
                target,
                candidate,
                sdp_mid,
            } => {
                media
                    .request(&room, |reply| Command::Trickle {
                        room: room.clone(),
                        participant,
                        target,
                        candidate,
                        sdp_mid,
                        reply,
                    })
                    .await?;
                Ok(None)
            }
            ClientMessage::TrackSettings {
                track,
                width,
                height,
                enabled,
                pinned,
            } => {
                media
                    .request(&room, |reply| Command::TrackSettings {
                        room: room.clone(),
                        participant,
                        track,
                        settings: crate::media::TrackSettings {
                            width,
                            height,
                            enabled,
                            pinned,
                        },
                        reply,
                    })
                    .await?;
                Ok(None)
            }
            ClientMessage::Mute { track, muted } => {
                let identity = self.grants.identity.clone();
                // To the worker this session lives on.
                let worker = crate::media::worker_of(&participant).unwrap_or(0);
                media
                    .request_to(worker, |reply| Command::Admin {
                        op: crate::media::AdminOp::Mute {
                            room: room.clone(),
                            identity,
                            track,
                            muted,
                        },
                        reply,
                    })
                    .await?;
                Ok(None)
            }
            ClientMessage::UpdateMetadata {
                name,
                metadata,
                attributes,
            } => {
                let op = crate::media::AdminOp::UpdateMetadata {
                    room: room.clone(),
                    identity: self.grants.identity.clone(),
                    own: Some(participant.clone()),
                    update: crate::media::MetadataUpdate {
                        name,
                        metadata,
                        attributes,
                    },
                };
                // To the worker this session lives on.
                let worker = crate::media::worker_of(&participant).unwrap_or(0);
                media
                    .request_to(worker, |reply| Command::Admin { op, reply })
                    .await?;
                Ok(None)
            }
            ClientMessage::RaiseHand | ClientMessage::LowerHand => {
                let raise = matches!(message, ClientMessage::RaiseHand);
                media
                    .request(&room, |reply| Command::Hand {
                        room: room.clone(),
                        participant,
                        raise,
                        reply,
                    })
                    .await?;
                Ok(None)
            }
            ClientMessage::ParticipantCount => {
                let counts = media
                    .request(&room, |reply| Command::Counts {
                        room: room.clone(),
                        participant,
                        reply,
                    })
                    .await?;
                Ok(Some(ServerMessage::ParticipantCount { counts }))
            }
            ClientMessage::UpdateParticipant {
                identity,
                can_publish,
            } => {
                if self.grants.may_admin(&room).is_err() {
                    return Err(SignalError::new(
                        ErrorCode::Forbidden,
                        "only an administrator (roomAdmin) promotes and demotes",
                    ));
                }
                self.state
                    .update_permissions(&room, &identity, can_publish)
                    .await?;
                Ok(None)
            }
            ClientMessage::Leave => {
                self.participant = None;
                media.send(
                    &room,
                    Command::Leave {
                        room: room.clone(),
                        participant,
                        reason: "client left".into(),
                    },
                )?;
                Ok(Some(ServerMessage::Left {
                    reason: "client left".into(),
                }))
            }
            ClientMessage::Join { .. } | ClientMessage::Ping { .. } => Ok(None),
        }
    }

    async fn error(
        &mut self,
        socket: &mut WebSocket,
        code: ErrorCode,
        message: &str,
        request: Option<&str>,
    ) {
        self.state.metrics.signaling_errors.inc();
        let sent = emit(
            &mut self.encoding,
            socket,
            &ServerMessage::Error {
                code,
                message: message.to_owned(),
                request: request.map(str::to_owned),
            },
        )
        .await;
        if let Err(e) = sent {
            self.too_slow |= is_too_slow(&e);
        }
    }
}

fn request_name(m: &ClientMessage) -> &'static str {
    match m {
        ClientMessage::Join { .. } => "join",
        ClientMessage::Publish { .. } => "publish",
        ClientMessage::TrackSettings { .. } => "track_settings",
        ClientMessage::Unpublish { .. } => "unpublish",
        ClientMessage::Subscribe { .. } => "subscribe",
        ClientMessage::Unsubscribe { .. } => "unsubscribe",
        ClientMessage::Answer { .. } => "answer",
        ClientMessage::Trickle { .. } => "trickle",
        ClientMessage::Ping { .. } => "ping",
        ClientMessage::Mute { .. } => "mute",
        ClientMessage::RaiseHand => "raise_hand",
        ClientMessage::LowerHand => "lower_hand",
        ClientMessage::ParticipantCount => "participant_count",
        ClientMessage::UpdateParticipant { .. } => "update_participant",
        ClientMessage::UpdateMetadata { .. } => "update_metadata",
        ClientMessage::Leave => "leave",
    }
}

/// How long one message may take to reach the client's socket. A client that stops reading
/// fills the socket's buffers and then stalls the send; it is let go rather than waited for.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends a message in the session's encoding.
async fn emit(
    encoding: &mut Encoding,
    socket: &mut WebSocket,
    message: &ServerMessage,
) -> Result<(), axum::Error> {
    match encoding {
        Encoding::Json => {
            let text = serde_json::to_string(message).unwrap_or_default();
            send_text(socket, text.into()).await
        }
        Encoding::LiveKit { codec, .. } => {
            let value = serde_json::to_value(message).unwrap_or_default();
            send_livekit(codec, socket, &value).await
        }
    }
}

/// Sends what a message (as JSON) translates to in LiveKit's protocol.
async fn send_livekit(
    codec: &mut LiveKitCodec,
    socket: &mut WebSocket,
    message: &serde_json::Value,
) -> Result<(), axum::Error> {
    for response in codec.encode(message) {
        send_binary(socket, &response).await?;
    }
    Ok(())
}

async fn send_binary(
    socket: &mut WebSocket,
    response: &livekit_protocol::SignalResponse,
) -> Result<(), axum::Error> {
    use prost::Message as _;
    let bytes = response.encode_to_vec();
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Binary(bytes.into()))).await {
        Ok(sent) => sent,
        Err(_) => Err(axum::Error::new(TooSlow)),
    }
}

/// Sends one text frame within [`SEND_TIMEOUT`].
async fn send_text(
    socket: &mut WebSocket,
    text: axum::extract::ws::Utf8Bytes,
) -> Result<(), axum::Error> {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text))).await {
        Ok(sent) => sent,
        Err(_) => Err(axum::Error::new(TooSlow)),
    }
}

/// The client did not take a message within [`SEND_TIMEOUT`].
#[derive(Debug, thiserror::Error)]
#[error("the client did not read its messages")]
struct TooSlow;

fn is_too_slow(e: &axum::Error) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.is::<TooSlow>())
}
