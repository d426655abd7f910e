//! Resuming a LiveKit session (`/rtc?reconnect=1&sid=PA_…`).
//!
//! LiveKit's clients keep their peer connections when only the signaling connection breaks,
//! and come back with `reconnect=1` and their participant's sid. So a LiveKit session whose
//! WebSocket closes without a leave is not ended at once: it is parked for [`PARK_FOR`] with
//! everything a resume needs (the participant stays in its room, with its peer connections; the
//! room's messages keep queueing; the codec keeps the roster the client was told). A client
//! that comes back in time with a token for the same identity and room takes the session over:
//! it is answered with a `ReconnectResponse`, then sent what queued meanwhile, and nobody else
//! in the room sees it leave or join. Past [`PARK_FOR`] the participant leaves as it would
//! have at once. A resume that finds nothing parked (too late, another node, a node restarted)
//! is answered with `LeaveRequest` action `RECONNECT`, and the client joins again fully.

use super::{Encoding, Session, send_binary};
use crate::media::{Command, MediaPlane};
use crate::signaling::livekit::LiveKitCodec;
use crate::signaling::protocol::ServerMessage;
use crate::signaling::{Events, EventsRx};
use axum::extract::ws::WebSocket;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a LiveKit session whose signaling connection broke waits for its client. LiveKit's
/// clients try to resume at once and again after 0.3, 1.2, 2.7 and 4.8 s (then they join
/// again fully); LiveKit's server waits 20 s by default, but a parked participant still counts
/// in its room and receives media nobody watches.
pub const PARK_FOR: Duration = Duration::from_secs(10);

/// A session waiting for its client to resume it.
pub struct ParkedSession {
    room: String,
    identity: String,
    participant: String,
    codec: Box<LiveKitCodec>,
    events_tx: Events,
    events_rx: EventsRx,
}

/// The node's parked sessions, by participant sid.
#[derive(Default)]
pub struct Parked {
    sessions: Mutex<HashMap<String, (u64, ParkedSession)>>,
    generation: AtomicU64,
}

impl Parked {
    /// Parks a session; if it is not resumed within [`PARK_FOR`] its participant leaves.
    fn park(self: &Arc<Self>, media: MediaPlane, session: ParkedSession) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let sid = session.participant.clone();
        let room = session.room.clone();
        self.lock().insert(sid.clone(), (generation, session));
        let parked = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(PARK_FOR).await;
            let expired = {
                let mut sessions = parked.lock();
                match sessions.get(&sid) {
                    Some((g, _)) if *g == generation => sessions.remove(&sid),
                    _ => None,
                }
            };
            if expired.is_some() {
                tracing::info!(%room, participant = %sid, "a LiveKit session was not resumed in time: it leaves");
                let _ = media.send(
                    &room,
                    Command::Leave {
                        room: room.clone(),
                        participant: sid,
                        reason: "signaling connection closed".into(),
                    },
                );
            }
        });
    }

    /// Takes the session parked as `sid` if it is `identity`'s in `room`.
    fn take(&self, sid: &str, identity: &str, room: &str) -> Option<ParkedSession> {
        let mut sessions = self.lock();
        let (_, s) = sessions.get(sid)?;
        if s.identity != identity || s.room != room {
            return None;
        }
        sessions.remove(sid).map(|(_, s)| s)
    }

    /// How many sessions are parked now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, ParkedSession)>> {
        // A panic while holding the lock leaves the map as it was: still usable.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Session {
    /// Parks this session if its client may resume it: a LiveKit session still in its room
    /// (no leave from either side). Its participant then stays until resumed or expired.
    pub(super) fn park(&mut self) {
        if !matches!(self.encoding, Encoding::LiveKit { .. }) {
            return;
        }
        let Some(participant) = self.participant.take() else {
            return;
        };
        let Encoding::LiveKit { codec, .. } = std::mem::replace(&mut self.encoding, Encoding::Json)
        else {
            return;
        };
        let (events_tx, events_rx) = crate::signaling::events();
        let session = ParkedSession {
            room: self.room.clone(),
            identity: self.grants.identity.clone(),
            participant,
            codec,
            events_tx: std::mem::replace(&mut self.events_tx, events_tx),
            events_rx: std::mem::replace(&mut self.events_rx, events_rx),
        };
        tracing::info!(room = %self.room, participant = %session.participant, "LiveKit session parked for a resume");
        self.state.parked.park(self.state.media.clone(), session);
    }

    /// A resume (`reconnect=1`) of session `sid`: takes the parked session over and answers
    /// with a `ReconnectResponse` (`None`), or returns what to answer instead.
    pub(super) async fn resume(
        &mut self,
        socket: &mut WebSocket,
        sid: &str,
    ) -> Option<ServerMessage> {
        let Some(parked) = self
            .state
            .parked
            .take(sid, &self.grants.identity, &self.room)
        else {
            tracing::info!(room = %self.room, participant = %sid, "nothing to resume: the client reconnects fully");
            return Some(ServerMessage::Migrate {
                url: String::new(),
                reason: "nothing to resume; reconnect".into(),
            });
        };
        tracing::info!(room = %self.room, participant = %sid, "LiveKit session resumed");
        let response = parked.codec.reconnect_response();
        if let Encoding::LiveKit { codec, .. } = &mut self.encoding {
            *codec = parked.codec;
        }
        self.participant = Some(parked.participant);
        self.events_tx = parked.events_tx;
        self.events_rx = parked.events_rx;
        // Sent before anything that queued meanwhile: the client drops other messages until it
        // has its answer. If it cannot be sent, the session ends as any other and is parked
        // again.
        if let Err(e) = send_binary(socket, &response).await {
            self.too_slow |= super::is_too_slow(&e);
        }
        None
    }
}
