//! Stage and audience: promotion and demotion, raised hands, and the counts that tell a large
//! room's clients how many are watching (see [`super::roster`] for who is announced).
//!
//! Raised hands live in the registry (one record per hand, bound to the lease of the node the
//! audience member is connected to), so administrators on every node see one queue; a node
//! changes its roster when the registry tells it, its own hands included, so there is one path.

use super::LocalParticipantInfo;
use super::egress::{Effect, Egress};
use super::room::{LocalRoom, Published};
use super::roster::hand_view;
use crate::signaling::protocol::{
    ErrorCode, ParticipantCounts, Permissions, ServerMessage, SignalError,
};
use sfu_control::records::HandRecord;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A participant may raise or lower its hand, or ask for the counts, this often.
const REQUEST_INTERVAL: Duration = Duration::from_secs(1);
/// The counted audience is written to the registry at most this often (a count going from
/// or to zero is written at once: it decides a room's first and last participant).
const AUDIENCE_REPORT: Duration = Duration::from_secs(2);

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn too_soon(last: Option<Instant>, now: Instant) -> bool {
    last.is_some_and(|t| now.saturating_duration_since(t) < REQUEST_INTERVAL)
}

impl LocalRoom {
    /// Lets the participant with this identity on stage, or takes it off (an administrator's
    /// decision, checked by the caller). Promoted, it publishes on its existing connection;
    /// demoted, its tracks are unpublished and the room told.
    pub fn update_permissions(
        &mut self,
        now: Instant,
        identity: &str,
        can_publish: bool,
        out: &mut Egress,
    ) -> Result<(), SignalError> {
        let sid = self
            .roster
            .sids_of(identity)
            .iter()
            .find(|sid| {
                self.roster
                    .local
                    .get(*sid)
                    .is_some_and(|p| p.kind == super::ParticipantKind::Client)
            })
            .cloned()
            .ok_or_else(|| {
                SignalError::new(
                    ErrorCode::NotFound,
                    format!("no participant {identity} with a signaling session on this node"),
                )
            })?;
        let p = &self.roster.local[&sid];
        if p.can_publish == can_publish {
            return Ok(());
        }
        let was_announced = p.announced;
        if can_publish {
            if self.roster.hand_raised(&sid) {
                out.effects.push(Effect::HandLowered {
                    room: self.name.clone(),
                    sid: sid.clone(),
                });
            }
            self.roster.set_role(&sid, true, true);
            self.audience_changed(now, out);
            let p = &self.roster.local[&sid];
            let record = self.participant_record(p);
            let participant = self.view(p);
            out.effects.push(Effect::ParticipantUpdated {
                room: self.name.clone(),
                record,
            });
            let message = if was_announced {
                ServerMessage::ParticipantUpdated { participant }
            } else {
                ServerMessage::ParticipantJoined { participant }
            };
            self.broadcast(&sid, &message);
        } else {
            if let Some(key) = p.publisher {
                // Closing the publisher connection unpublishes its tracks (and tells the room).
                self.remove_peer(now, key, out);
            }
            // A large room's stage leaves the roster; a small room lists everyone anyway.
            let hide = was_announced && self.roster.size() > self.roster.threshold;
            self.roster.set_role(&sid, false, was_announced && !hide);
            self.audience_changed(now, out);
            if hide {
                out.effects.push(Effect::ParticipantHidden {
                    room: self.name.clone(),
                    sid: sid.clone(),
                });
                self.broadcast(
                    &sid,
                    &ServerMessage::ParticipantLeft {
                        participant: sid.clone(),
                    },
                );
            } else if was_announced {
                let p = &self.roster.local[&sid];
                let record = self.participant_record(p);
                let participant = self.view(p);
                out.effects.push(Effect::ParticipantUpdated {
                    room: self.name.clone(),
                    record,
                });
                self.broadcast(&sid, &ServerMessage::ParticipantUpdated { participant });
            }
        }
        let p = &self.roster.local[&sid];
        tracing::info!(room = %self.name, participant = %sid, can_publish, "role changed");
        p.send(ServerMessage::PermissionsChanged {
            permissions: Permissions {
                can_publish: p.can_publish,
                can_subscribe: p.can_subscribe,
                admin: p.admin,
            },
        });
        Ok(())
    }

    /// An audience member asks to be let on stage.
    pub fn raise_hand(
        &mut self,
        now: Instant,
        sid: &str,
        raise: bool,
        out: &mut Egress,
    ) -> Result<(), SignalError> {
        let p = self.participant(sid)?;
        if raise && p.can_publish {
            return Err(SignalError::new(
                ErrorCode::InvalidState,
                "already on stage: only the audience raises hands",
            ));
        }
        if too_soon(p.last_hand, now) {
            return Err(SignalError::new(
                ErrorCode::RateLimited,
                "a hand may go up or down once a second",
            ));
        }
        if raise == self.roster.hand_raised(sid) {
            return Ok(());
        }
        let record = HandRecord {
            sid: sid.to_owned(),
            identity: p.identity.clone(),
            name: p.name.clone(),
            node: self.ctx.node_id.to_string(),
            raised_ms: wall_ms(),
        };
        if let Some(p) = self.roster.local.get_mut(sid) {
            p.last_hand = Some(now);
        }
        let room = self.name.clone();
        out.effects.push(if raise {
            Effect::HandRaised { room, record }
        } else {
            Effect::HandLowered {
                room,
                sid: sid.to_owned(),
            }
        });
        Ok(())
    }

    /// The registry says a hand went up.
    pub fn on_hand(&mut self, record: HandRecord) {
        let sid = record.sid.clone();
        let hand = hand_view(&record);
        if self.roster.raise_hand(record) {
            self.roster
                .tell_admins(Some(&sid), &ServerMessage::HandRaised { hand });
        }
    }

    /// The registry says a hand went down.
    pub fn on_hand_gone(&mut self, sid: &str) {
        if self.roster.lower_hand(sid) {
            self.roster.tell_admins(
                Some(sid),
                &ServerMessage::HandLowered {
                    participant: sid.to_owned(),
                },
            );
        }
    }

    /// The room's counts, for a participant that asks (rate-limited).
    pub fn count_request(
        &mut self,
        now: Instant,
        sid: &str,
    ) -> Result<ParticipantCounts, SignalError> {
        let p = self.participant(sid)?;
        if too_soon(p.last_count_request, now) {
            return Err(SignalError::new(
                ErrorCode::RateLimited,
                "counts may be asked for once a second; they also come by themselves",
            ));
        }
        if let Some(p) = self.roster.local.get_mut(sid) {
            p.last_count_request = Some(now);
        }
        Ok(self.roster.counts())
    }

    /// The counted audience here changed: from or to zero it is written at once, otherwise
    /// with the next report.
    pub(super) fn audience_changed(&mut self, now: Instant, out: &mut Egress) {
        let count = self.roster.local_unannounced();
        if (count == 0) != (self.roster.audience_reported == 0) {
            self.report_audience(now, out);
        }
    }

    fn report_audience(&mut self, now: Instant, out: &mut Egress) {
        let count = self.roster.local_unannounced();
        out.effects.push(Effect::AudienceCount {
            room: self.name.clone(),
            count,
            was: self.roster.audience_reported,
        });
        self.roster.audience_reported = count;
        self.roster.audience_reported_at = Some(now);
    }

    /// Once a second: the counts to clients if they changed (one message, encoded once), and
    /// the counted audience to the registry every few seconds if it changed.
    pub(super) fn tell_counts(&mut self, now: Instant, out: &mut Egress) {
        if let Some(counts) = self.roster.take_changed_counts() {
            self.broadcast("", &ServerMessage::ParticipantCount { counts });
        }
        let due = self
            .roster
            .audience_reported_at
            .is_none_or(|t| now.saturating_duration_since(t) >= AUDIENCE_REPORT);
        if due && self.roster.local_unannounced() != self.roster.audience_reported {
            self.report_audience(now, out);
        }
    }

    /// One page of the participants connected here, by sid after `after`.
    pub fn list_local(&self, after: &str, limit: usize) -> Vec<LocalParticipantInfo> {
        let mut sids: Vec<&String> = self
            .roster
            .local
            .keys()
            .filter(|sid| sid.as_str() > after)
            .collect();
        sids.sort();
        sids.into_iter()
            .take(limit)
            .filter_map(|sid| self.roster.local.get(sid))
            .map(|p| LocalParticipantInfo {
                sid: p.sid.clone(),
                identity: p.identity.clone(),
                name: p.name.clone(),
                kind: p.record_kind(),
                stage: p.can_publish,
                hand_raised_ms: self.roster.hand(&p.sid).map(|h| h.raised_ms),
                tracks: p
                    .tracks
                    .iter()
                    .filter_map(|t| self.tracks.get(t).map(Published::view))
                    .collect(),
            })
            .collect()
    }
}
