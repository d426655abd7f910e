//! The start of a session, in either encoding: a fresh join, or the resume of a session its
//! client lost the WebSocket of (see [`super::resume`]). LiveKit's clients join by connecting
//! (`reconnect=1&sid=…` to resume); JSON clients send `join`, with `resume` to resume.

use super::{Encoding, Session};
use crate::media::{JoinRequest, ParticipantKind};
use crate::signaling::protocol::{ErrorCode, ServerMessage, SignalError};

impl Session {
    /// Joins the room, or resumes session `resume` (if given): answered with `joined` or
    /// `resumed`. A resume that finds nothing to take over joins afresh for a JSON client (it
    /// tells which by the answer), and is refused for a LiveKit one (`LeaveRequest`
    /// `RECONNECT`: LiveKit's clients then join again fully, on a new connection).
    pub(super) async fn join(
        &mut self,
        auto_subscribe: bool,
        resumable: bool,
        resume: Option<String>,
    ) -> Result<ServerMessage, SignalError> {
        if self.participant.is_some() {
            return Err(SignalError::new(ErrorCode::InvalidState, "already joined"));
        }
        self.resumable |= resumable || resume.is_some();
        if let Some(sid) = resume {
            if let Some(resumed) = self.resume(&sid).await {
                self.watch_takeover();
                return Ok(resumed);
            }
            if matches!(self.encoding, Encoding::LiveKit { .. }) {
                return Ok(ServerMessage::Migrate {
                    url: String::new(),
                    reason: "nothing to resume; reconnect".into(),
                });
            }
        }
        let room = self.room.clone();
        let request = JoinRequest {
            room: room.clone(),
            grants: self.grants.clone(),
            kind: ParticipantKind::Client,
            auto_subscribe,
            events: Some(self.events_tx.clone()),
            place: false,
        };
        let joined = self.state.admit_and_join(request).await?;
        self.participant = Some(joined.participant.sid.clone());
        // Queued now, sent after the joined reply.
        crate::http::recordings::announce(&self.state, &room, &self.events_tx);
        self.watch_takeover();
        Ok(ServerMessage::Joined {
            room,
            participant: joined.participant,
            participants: joined.others,
            permissions: joined.permissions,
            counts: joined.counts,
            hands: joined.hands,
        })
    }
}
