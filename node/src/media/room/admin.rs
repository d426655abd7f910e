//! What administrators (through the control plane) and draining do to a room: remove
//! participants, mute tracks, change subscriptions, send participants elsewhere.

use crate::media::ParticipantKind;
use crate::media::egress::{Effect, Egress};
use crate::media::room::{LocalRoom, Origin};
use crate::signaling::protocol::{ErrorCode, ServerMessage, SignalError};
use sfu_control::ParticipantRecord;
use sfu_core::TrackId;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Why a session ended when another with its identity joined.
const REPLACED: &str = "another session joined with the same identity";

impl LocalRoom {
    /// The sid of the local participant with this identity.
    pub fn sid_of(&self, identity: &str) -> Result<String, SignalError> {
        self.roster
            .local
            .values()
            .find(|p| p.identity == identity)
            .map(|p| p.sid.clone())
            .ok_or_else(|| {
                SignalError::new(
                    ErrorCode::NotFound,
                    format!("no participant {identity} on this node"),
                )
            })
    }

    /// Ends the session a new one with this identity and kind replaces (a reload), if there
    /// is one (see [`ParticipantKind::unique`]). Admission calls this before claiming a place
    /// in a limited room, so the old session's place is free for the new one; joining calls it
    /// again in case none did.
    pub fn end_replaced(
        &mut self,
        now: Instant,
        identity: &str,
        kind: &ParticipantKind,
        out: &mut Egress,
    ) -> bool {
        if !kind.unique() {
            return false;
        }
        let Some(old) = self
            .roster
            .sids_of(identity)
            .iter()
            .find(|sid| self.roster.local.get(*sid).is_some_and(|p| p.kind == *kind))
            .cloned()
        else {
            return false;
        };
        self.leave(now, &old, REPLACED, out);
        true
    }

    /// The `joined_ms` of a session joining now: the wall clock, but later than any session
    /// with this identity and kind on other nodes, so that the node holding the older one ends
    /// it (see [`LocalRoom::end_superseded`]) even if its clock runs ahead of ours.
    pub(super) fn join_time(&self, identity: &str, kind: &ParticipantKind) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.roster
            .remote_of(identity)
            .filter(|(_, r)| r.kind == kind.record_name())
            .map(|(_, r)| r.joined_ms + 1)
            .fold(wall, u64::max)
    }

    /// A session joined on another node: a local session with its identity and kind that
    /// joined before it (by `joined_ms`, then sid) ends, as a reload on the same node would
    /// end it. Both nodes see both records and judge them alike, so exactly one stays.
    pub(super) fn end_superseded(
        &mut self,
        now: Instant,
        record: &ParticipantRecord,
        out: &mut Egress,
    ) {
        let newer = (record.joined_ms, record.sid.as_str());
        let Some(old) = self
            .roster
            .sids_of(&record.identity)
            .iter()
            .filter_map(|sid| self.roster.local.get(sid))
            .find(|p| {
                p.kind.unique()
                    && p.kind.record_name() == record.kind
                    && (p.joined_ms, p.sid.as_str()) < newer
            })
            .map(|p| p.sid.clone())
        else {
            return;
        };
        tracing::info!(
            room = %self.name,
            identity = record.identity,
            node = record.node,
            "the same identity joined on another node: ending the older session here"
        );
        self.leave(now, &old, REPLACED, out);
    }

    /// Removes a participant (by identity) from the room.
    pub fn remove_identity(
        &mut self,
        now: Instant,
        identity: &str,
        reason: &str,
        out: &mut Egress,
    ) -> Result<(), SignalError> {
        let sid = self.sid_of(identity)?;
        self.leave(now, &sid, reason, out);
        Ok(())
    }

    /// Removes every local participant.
    pub fn remove_all(&mut self, now: Instant, reason: &str, out: &mut Egress) {
        let sids: Vec<String> = self.roster.local.keys().cloned().collect();
        for sid in sids {
            self.leave(now, &sid, reason, out);
        }
    }

    /// Mutes or unmutes a track published by participant `sid` on this node.
    pub fn mute(
        &mut self,
        now: Instant,
        sid: &str,
        track: &str,
        muted: bool,
        out: &mut Egress,
    ) -> Result<(), SignalError> {
        let id: TrackId = track
            .parse()
            .map_err(|_| SignalError::new(ErrorCode::BadRequest, "malformed track sid"))?;
        let published = self
            .publications
            .get_mut(&id)
            .filter(|t| t.owner == sid && matches!(t.origin, Origin::Local { .. }))
            .ok_or_else(|| {
                SignalError::new(ErrorCode::NotFound, "no such track of this participant")
            })?;
        if published.muted == muted {
            return Ok(());
        }
        published.muted = muted;
        // The core may not have the track (yet); the flag above is what matters then.
        let _ = self.core.set_track_muted(now, id, muted);
        let record = self.track_record(&self.publications[&id]);
        out.effects.push(Effect::TrackUpdated {
            room: self.name.clone(),
            record,
        });
        self.broadcast(
            "",
            &ServerMessage::TrackMuted {
                track: track.to_owned(),
                participant: sid.to_owned(),
                muted,
            },
        );
        Ok(())
    }

    /// Tells every WebSocket participant to reconnect to `url` (the node is draining).
    pub fn migrate(&self, url: &str) {
        self.broadcast(
            "",
            &ServerMessage::Migrate {
                url: url.to_owned(),
                reason: "this node is draining".to_owned(),
            },
        );
    }
}
