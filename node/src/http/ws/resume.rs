//! Resuming a session whose WebSocket broke: one session logic for both encodings.
//!
//! LiveKit's clients keep their peer connections when only the signaling connection breaks,
//! and come back with `reconnect=1` and their participant's sid; JSON clients that joined with
//! `resumable` come back with a `join` naming it in `resume`. So such a session whose WebSocket
//! closes without a leave is not ended at once: it is parked for [`PARK_FOR`] with everything a
//! resume needs (the participant stays in its room, with its peer connections and
//! subscriptions, though nothing is forwarded to it meanwhile; the room's messages keep
//! queueing; a LiveKit codec keeps the roster the client was told). A client that comes back
//! in time with a token for the same identity and room, speaking the same encoding, takes the
//! session over: it is answered with `resumed` (LiveKit: a `ReconnectResponse`), then sent what
//! queued meanwhile, and nobody else in the room sees it leave or join. Past [`PARK_FOR`] the
//! participant leaves as it would have at once. A client whose network broke often comes back
//! before the node noticed (`limits.ws_idle_secs`): its session is still live, and is asked to
//! park at once ([`Takeover`]). A resume that finds nothing (too late, another node, a node
//! restarted) is a fresh join for a JSON client, and a `LeaveRequest` with action `RECONNECT`
//! for a LiveKit one, which then joins again fully.

use super::{Encoding, Session};
use crate::media::{Command, MediaPlane};
use crate::signaling::protocol::ServerMessage;
use crate::signaling::{Events, EventsRx};
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a session whose signaling connection broke waits for its client. LiveKit's
/// clients try to resume at once and again after 0.3, 1.2, 2.7 and 4.8 s (then they join
/// again fully); LiveKit's server waits 20 s by default, but a parked participant still counts
/// in its room and receives media nobody watches.
pub const PARK_FOR: Duration = Duration::from_secs(10);
/// How long a resume waits for a live session it asked to park.
const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

/// A session waiting for its client to resume it.
pub struct ParkedSession {
    room: String,
    identity: String,
    participant: String,
    /// Its encoding: a LiveKit session's codec holds what its client was told.
    encoding: Encoding,
    events_tx: Events,
    events_rx: EventsRx,
}

/// A live resumable session as a resume may find it: whose it is, and how to ask it to park
/// (the sender given is told once it is parked).
struct Live {
    generation: u64,
    identity: String,
    room: String,
    livekit: bool,
    ask: oneshot::Sender<oneshot::Sender<()>>,
}

/// The node's parked sessions, and its live resumable sessions, by participant sid.
#[derive(Default)]
pub struct Parked {
    sessions: Mutex<HashMap<String, (u64, ParkedSession)>>,
    live: Mutex<HashMap<String, Live>>,
    generation: AtomicU64,
}

/// A live session's side of a takeover (see the module documentation).
#[derive(Default)]
pub(super) struct Takeover {
    /// While registered: its sid and generation in [`Parked`]'s live sessions, and where a
    /// request to park arrives.
    watch: Option<(String, u64, oneshot::Receiver<oneshot::Sender<()>>)>,
    /// The resume that asked, told once the session is parked.
    asked: Option<oneshot::Sender<()>>,
}

impl Takeover {
    /// Resolves when a resume asks this session to park; never if none can.
    pub(super) async fn requested(&mut self) {
        let Some((_, _, rx)) = &mut self.watch else {
            return std::future::pending().await;
        };
        match rx.await {
            Ok(asked) => {
                self.asked = Some(asked);
                self.watch = None;
            }
            Err(_) => {
                self.watch = None;
                std::future::pending::<()>().await;
            }
        }
    }

    /// The session ended (parked or not): it is no longer found live, and a resume waiting
    /// for it is told.
    pub(super) fn done(&mut self, parked: &Parked) {
        if let Some((sid, generation, _)) = self.watch.take() {
            let mut live = parked.lock_live();
            if live.get(&sid).is_some_and(|l| l.generation == generation) {
                live.remove(&sid);
            }
        }
        if let Some(asked) = self.asked.take() {
            let _ = asked.send(());
        }
    }
}

impl Parked {
    /// Parks a session; if it is not resumed within [`PARK_FOR`] its participant leaves.
    /// `parked_now` counts the sessions parked now.
    fn park(self: &Arc<Self>, media: MediaPlane, session: ParkedSession, parked_now: Gauge) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        parked_now.inc();
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
                parked_now.dec();
                tracing::info!(%room, participant = %sid, "a parked session was not resumed in time: it leaves");
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

    /// Takes the session parked as `sid` if it is `identity`'s in `room`, of the same
    /// encoding (`livekit`).
    fn take(&self, sid: &str, identity: &str, room: &str, livekit: bool) -> Option<ParkedSession> {
        let mut sessions = self.lock();
        let (_, s) = sessions.get(sid)?;
        let same = matches!(s.encoding, Encoding::LiveKit { .. }) == livekit;
        if s.identity != identity || s.room != room || !same {
            return None;
        }
        sessions.remove(sid).map(|(_, s)| s)
    }

    /// Asks the live session `sid`, if it is `identity`'s in `room`, to park; the receiver
    /// hears when it did.
    fn ask_live(
        &self,
        sid: &str,
        identity: &str,
        room: &str,
        livekit: bool,
    ) -> Option<oneshot::Receiver<()>> {
        let mut live = self.lock_live();
        let l = live.get(sid)?;
        if l.identity != identity || l.room != room || l.livekit != livekit {
            return None;
        }
        let l = live.remove(sid)?;
        let (tx, rx) = oneshot::channel();
        l.ask.send(tx).ok()?;
        Some(rx)
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
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
    /// Makes this resumable session findable by a resume while it is live.
    pub(super) fn watch_takeover(&mut self) {
        if !self.resumable {
            return;
        }
        let Some(sid) = self.participant.clone() else {
            return;
        };
        let (ask, rx) = oneshot::channel();
        let parked = &self.state.parked;
        let generation = parked.generation.fetch_add(1, Ordering::Relaxed);
        parked.lock_live().insert(
            sid.clone(),
            Live {
                generation,
                identity: self.grants.identity.clone(),
                room: self.room.clone(),
                livekit: matches!(self.encoding, Encoding::LiveKit { .. }),
                ask,
            },
        );
        self.takeover.watch = Some((sid, generation, rx));
    }

    /// Parks this session if its client may resume it: a resumable session still in its room
    /// (no leave from either side). Its participant then stays until resumed or expired, and
    /// nothing is forwarded to it meanwhile.
    pub(super) fn park(&mut self) {
        if !self.resumable {
            return;
        }
        let Some(participant) = self.participant.take() else {
            return;
        };
        let (events_tx, events_rx) = crate::signaling::events();
        let session = ParkedSession {
            room: self.room.clone(),
            identity: self.grants.identity.clone(),
            participant,
            encoding: std::mem::replace(&mut self.encoding, Encoding::Json),
            events_tx: std::mem::replace(&mut self.events_tx, events_tx),
            events_rx: std::mem::replace(&mut self.events_rx, events_rx),
        };
        tracing::info!(room = %self.room, participant = %session.participant, "session parked for a resume");
        self.pause(&session.participant, true);
        let metrics = &self.state.metrics;
        metrics.sessions_parked.inc();
        let parked_now = metrics.parked_sessions.clone();
        self.state
            .parked
            .park(self.state.media.clone(), session, parked_now);
    }

    /// Resumes session `sid`: takes the parked session over (asking it to park first if it is
    /// still live) and returns the `resumed` answer, or `None` if there is nothing to resume.
    pub(super) async fn resume(&mut self, sid: &str) -> Option<ServerMessage> {
        let livekit = matches!(self.encoding, Encoding::LiveKit { .. });
        let (parked, identity) = (&self.state.parked, &self.grants.identity);
        let mut found = parked.take(sid, identity, &self.room, livekit);
        if found.is_none()
            && let Some(parking) = parked.ask_live(sid, identity, &self.room, livekit)
        {
            // Still live: its client noticed the broken connection before the node did.
            let _ = tokio::time::timeout(TAKEOVER_WAIT, parking).await;
            found = parked.take(sid, identity, &self.room, livekit);
        }
        let Some(parked) = found else {
            tracing::info!(room = %self.room, participant = %sid, "nothing to resume");
            return None;
        };
        tracing::info!(room = %self.room, participant = %sid, "session resumed");
        self.state.metrics.parked_sessions.dec();
        self.state.metrics.sessions_resumed.inc();
        if let (Encoding::LiveKit { codec, .. }, Encoding::LiveKit { codec: kept, .. }) =
            (&mut self.encoding, parked.encoding)
        {
            *codec = kept;
        }
        self.pause(&parked.participant, false);
        self.participant = Some(parked.participant.clone());
        self.events_tx = parked.events_tx;
        self.events_rx = parked.events_rx;
        Some(ServerMessage::Resumed {
            room: self.room.clone(),
            participant: parked.participant,
        })
    }

    /// Pauses (or resumes) what is forwarded to a participant whose client is away; its
    /// subscriptions stay.
    fn pause(&self, participant: &str, paused: bool) {
        let _ = self.state.media.send(
            &self.room,
            Command::Pause {
                room: self.room.clone(),
                participant: participant.to_owned(),
                paused,
            },
        );
    }
}
