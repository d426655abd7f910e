//! Stage and audience: promotion and demotion, raised hands, and the counts that tell a large
//! room's clients how many are watching (see [`crate::media::room::roster`] for who is announced).
//!
//! Raised hands live in the registry (one record per hand, bound to the lease of the node the
//! audience member is connected to), so administrators on every node see one queue; a node
//! changes its roster when the registry tells it, its own hands included, so there is one path.

use crate::media::LocalParticipantInfo;
use crate::media::egress::{Effect, Egress};
use crate::media::room::LocalRoom;
use crate::media::room::roster::hand_view;
use crate::signaling::protocol::{ErrorCode, ParticipantCounts, ServerMessage, SignalError};
use sfu_control::records::HandRecord;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Speaker changes reach clients at most this often (the latest ranking wins): in a large
/// room every change is a message to everyone, and two people talking over each other would
/// otherwise flip the ranking many times a second.
pub(super) const SPEAKERS_PERIOD: Duration = Duration::from_millis(500);
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
                    .is_some_and(|p| p.kind == crate::media::ParticipantKind::Client)
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
            permissions: p.permissions(),
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

    /// The active speakers changed: told at once, unless they were told less than
    /// [`SPEAKERS_PERIOD`] ago; then the latest ranking waits for the period to end.
    pub(super) fn speakers_changed(
        &mut self,
        now: Instant,
        speakers: Vec<crate::signaling::protocol::SpeakerView>,
    ) {
        if self.speakers_due.is_some_and(|t| now < t) {
            self.speakers_pending = Some(speakers);
            return;
        }
        self.speakers_due = Some(now + SPEAKERS_PERIOD);
        self.speakers_pending = None;
        self.broadcast("", &ServerMessage::Speakers { speakers });
    }

    /// Sends the ranking that waited, once its period is over.
    pub(super) fn flush_speakers(&mut self, now: Instant) {
        if self.speakers_due.is_some_and(|t| now >= t)
            && let Some(speakers) = self.speakers_pending.take()
        {
            self.speakers_due = Some(now + SPEAKERS_PERIOD);
            self.broadcast("", &ServerMessage::Speakers { speakers });
        }
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
                metadata: p.metadata.clone(),
                attributes: p.attributes.clone(),
                tracks: self.publications.views(&p.tracks),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Grants;
    use crate::media::{JoinRequest, ParticipantKind};
    use crate::signaling::Outbound;

    fn room(threshold: u32, now: Instant) -> LocalRoom {
        crate::media::room::metadata::tests::room_of_threshold(threshold, now)
    }

    fn request(
        identity: &str,
        stage: bool,
        admin: bool,
    ) -> (JoinRequest, crate::signaling::EventsRx) {
        let (tx, rx) = crate::signaling::events();
        let grants = Grants {
            identity: identity.into(),
            name: identity.into(),
            room: Some("r".into()),
            room_join: true,
            can_publish: stage,
            can_subscribe: true,
            room_admin: admin,
            room_create: false,
            room_list: false,
            room_record: false,
            can_update_own_metadata: false,
            metadata: String::new(),
            attributes: Default::default(),
        };
        let request = JoinRequest {
            room: "r".into(),
            grants,
            kind: ParticipantKind::Client,
            auto_subscribe: true,
            events: Some(tx),
            place: false,
        };
        (request, rx)
    }

    fn drain(rx: &mut crate::signaling::EventsRx) -> Vec<String> {
        let mut types = Vec::new();
        while let Ok(m) = rx.try_recv() {
            let text = match m {
                Outbound::Message(m) => serde_json::to_string(&m).unwrap(),
                Outbound::Shared(t) => t.as_str().to_owned(),
            };
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            types.push(v["type"].as_str().unwrap().to_owned());
        }
        types
    }

    #[test]
    fn an_audience_join_in_a_large_room_is_told_to_no_one_and_counted_once_a_second() {
        let t0 = Instant::now();
        let mut r = room(3, t0);
        let mut out = Egress::default();
        let mut stage = Vec::new();
        for name in ["host", "a", "b"] {
            let (req, rx) = request(name, true, name == "host");
            r.join(t0, req, &mut out).unwrap();
            stage.push(rx);
        }
        for rx in &mut stage {
            drain(rx);
        }
        out.effects.clear();
        // The room is at its threshold: 500 audience members join.
        let mut audience = Vec::new();
        for i in 0..500 {
            let (req, rx) = request(&format!("viewer{i}"), false, false);
            let joined = r.join(t0, req, &mut out).unwrap();
            assert_eq!(
                joined.others.len(),
                3,
                "a joiner gets the stage, not the audience"
            );
            audience.push(rx);
        }
        for rx in &mut stage {
            assert_eq!(
                drain(rx),
                Vec::<String>::new(),
                "no message per audience join"
            );
        }
        let records = out
            .effects
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Effect::ParticipantJoined {
                        announced: true,
                        ..
                    }
                )
            })
            .count();
        let counts = out
            .effects
            .iter()
            .filter(|e| matches!(e, Effect::AudienceCount { .. }))
            .count();
        assert_eq!(records, 0, "no registry record per audience member");
        assert_eq!(counts, 1, "the count's record is created once (0 -> 1)");
        // Once a second: one participant_count to everyone, the registry's count refreshed.
        out.effects.clear();
        let t1 = t0 + Duration::from_secs(2);
        r.tell_counts(t1, &mut out);
        r.tell_counts(t1 + Duration::from_millis(500), &mut out);
        for rx in stage.iter_mut().chain(&mut audience) {
            assert_eq!(drain(rx), ["participant_count"], "once, to everyone");
        }
        assert_eq!(r.roster.counts().audience, 500);
        assert!(
            matches!(out.effects[..], [Effect::AudienceCount { count: 500, .. }]),
            "one refresh of the count record"
        );

        // An audience member raises a hand; promoted, it is announced to everyone.
        out.effects.clear();
        let sid = r.sid_of("viewer7").unwrap();
        r.raise_hand(t1, &sid, true, &mut out).unwrap();
        let Some(Effect::HandRaised { record, .. }) = out.effects.pop() else {
            panic!("the hand goes to the registry")
        };
        assert_eq!(
            r.raise_hand(t1, &sid, false, &mut out).unwrap_err().code,
            ErrorCode::RateLimited,
            "a hand goes up or down once a second"
        );
        r.on_hand(record);
        assert_eq!(drain(&mut stage[0]), ["hand_raised"], "the host sees it");
        assert!(drain(&mut stage[1]).is_empty(), "others do not");
        assert_eq!(
            drain(&mut audience[7]),
            ["hand_raised"],
            "nor do they, but its owner"
        );
        r.update_permissions(t1, "viewer7", true, &mut out).unwrap();
        assert_eq!(drain(&mut stage[1]), ["participant_joined"]);
        assert_eq!(drain(&mut audience[7]), ["permissions_changed"]);
        assert!(
            out.effects
                .iter()
                .any(|e| matches!(e, Effect::HandLowered { .. })),
            "promotion lowers the hand"
        );
        assert_eq!(r.roster.counts().stage, 4);
        // Demoted in a large room, it leaves the roster again.
        r.update_permissions(t1, "viewer7", false, &mut out)
            .unwrap();
        assert_eq!(drain(&mut stage[1]), ["participant_left"]);
        assert_eq!(r.roster.counts().stage, 3);
        assert_eq!(r.roster.counts().audience, 500);
    }

    #[test]
    fn a_small_room_announces_everyone_and_counts_requests_are_rate_limited() {
        let t0 = Instant::now();
        let mut r = room(50, t0);
        let mut out = Egress::default();
        let (req, mut host) = request("host", true, false);
        r.join(t0, req, &mut out).unwrap();
        let (req, _viewer) = request("viewer", false, false);
        let joined = r.join(t0, req, &mut out).unwrap();
        assert_eq!(
            drain(&mut host),
            ["participant_joined"],
            "a small room lists everyone"
        );
        assert!(!joined.participant.stage);
        let sid = joined.participant.sid;
        assert_eq!(r.count_request(t0, &sid).unwrap().audience, 1);
        assert_eq!(
            r.count_request(t0, &sid).unwrap_err().code,
            ErrorCode::RateLimited
        );
        assert_eq!(
            r.raise_hand(t0, &r.sid_of("host").unwrap(), true, &mut out)
                .unwrap_err()
                .code,
            ErrorCode::InvalidState,
            "the stage raises no hand"
        );
    }
}
