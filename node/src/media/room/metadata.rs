//! A participant's name, metadata and attributes (LiveKit's participant metadata): set by its
//! token at the join, changed by the participant itself (with the token's
//! `canUpdateOwnMetadata`) or by an administrator, and told to everyone who sees it.
//!
//! They travel as the rest of a participant's record does: in the registry record of an
//! announced participant (so every node of the room learns of a change by the same watch that
//! tells it of a join), and in the participant's view to clients (`participant_updated`). An
//! audience member of a large room is announced to no one, so only it hears of its changes.
//!
//! Sizes are bounded, since each change is one registry write and one message to everyone
//! who sees the participant, and the record is part of every joiner's roster: LiveKit allows
//! tens of kilobytes; a participant's name, avatar and status fit in far less.

use crate::media::egress::{Effect, Egress};
use crate::media::room::LocalRoom;
use crate::signaling::protocol::{ErrorCode, ServerMessage, SignalError};
use std::collections::BTreeMap;
use std::time::Instant;

/// Largest display name, in bytes.
pub const MAX_NAME: usize = 256;
/// Largest metadata, in bytes.
pub const MAX_METADATA: usize = 16 * 1024;
/// Largest sum of the attributes' keys and values, in bytes.
pub const MAX_ATTRIBUTES: usize = 16 * 1024;
/// Changes a participant may make in a burst, and per second after it.
const BURST: f32 = 10.0;
const PER_SEC: f32 = 5.0;

/// A change of a participant's name, metadata or attributes. What is `None` stays as it is;
/// attributes are merged into the participant's, and one with an empty value is removed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetadataUpdate {
    pub name: Option<String>,
    pub metadata: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// How many changes a participant may make now (a token bucket).
#[derive(Debug, Default)]
pub struct Budget {
    spent: f32,
    at: Option<Instant>,
}

impl Budget {
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = self
            .at
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f32());
        self.spent = (self.spent - elapsed * PER_SEC).max(0.0);
        self.at = Some(now);
        if self.spent + 1.0 > BURST {
            return false;
        }
        self.spent += 1.0;
        true
    }
}

/// Refuses a name, metadata or attributes above their bounds (`too_large`).
pub fn check_sizes(
    name: &str,
    metadata: &str,
    attributes: &BTreeMap<String, String>,
) -> Result<(), SignalError> {
    let too_large = |what: &str, limit: usize| {
        Err(SignalError::new(
            ErrorCode::TooLarge,
            format!("{what} larger than {limit} bytes"),
        ))
    };
    if name.len() > MAX_NAME {
        return too_large("a name", MAX_NAME);
    }
    if metadata.len() > MAX_METADATA {
        return too_large("metadata", MAX_METADATA);
    }
    if attributes
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum::<usize>()
        > MAX_ATTRIBUTES
    {
        return too_large("attributes (keys and values together)", MAX_ATTRIBUTES);
    }
    Ok(())
}

impl LocalRoom {
    /// Changes the name, metadata or attributes of a participant here: `own` (its sid) when
    /// it asks itself, or the session of `identity` when an administrator does (checked by
    /// the caller). Everyone who sees it is told, and the registry, for other nodes.
    pub fn update_metadata(
        &mut self,
        now: Instant,
        identity: &str,
        own: Option<&str>,
        update: MetadataUpdate,
        out: &mut Egress,
    ) -> Result<(), SignalError> {
        let sid = match own {
            Some(sid) => sid.to_owned(),
            None => self.session_of(identity)?,
        };
        let p = self.participant(&sid)?;
        if own.is_some() && !p.can_update_metadata {
            return Err(SignalError::new(
                ErrorCode::Forbidden,
                "the token does not grant canUpdateOwnMetadata",
            ));
        }
        let name = update.name.unwrap_or_else(|| p.name.clone());
        let metadata = update.metadata.unwrap_or_else(|| p.metadata.clone());
        let mut attributes = p.attributes.clone();
        for (key, value) in update.attributes {
            if value.is_empty() {
                attributes.remove(&key);
            } else {
                attributes.insert(key, value);
            }
        }
        check_sizes(&name, &metadata, &attributes)?;
        if name == p.name && metadata == p.metadata && attributes == p.attributes {
            return Ok(());
        }
        let Some(p) = self.roster.local.get_mut(&sid) else {
            return Ok(());
        };
        if own.is_some() && !p.metadata_budget.take(now) {
            return Err(SignalError::new(
                ErrorCode::RateLimited,
                format!("at most {PER_SEC} changes of metadata a second (bursts of {BURST})"),
            ));
        }
        p.name = name;
        p.metadata = metadata;
        p.attributes = attributes;
        let p = &self.roster.local[&sid];
        let message = ServerMessage::ParticipantUpdated {
            participant: self.view(p),
        };
        if p.announced {
            out.effects.push(Effect::ParticipantUpdated {
                room: self.name.clone(),
                record: self.participant_record(p),
            });
            // To its own client too: LiveKit's clients learn that a change took by it.
            self.broadcast("", &message);
        } else {
            p.send(message);
        }
        Ok(())
    }

    /// The sid of the session an administrator means by `identity`: its signaling session,
    /// else its WHIP publisher.
    fn session_of(&self, identity: &str) -> Result<String, SignalError> {
        let sids = self.roster.sids_of(identity);
        let of_kind = |kind: crate::media::ParticipantKind| {
            sids.iter()
                .find(|sid| self.roster.local.get(*sid).is_some_and(|p| p.kind == kind))
                .cloned()
        };
        of_kind(crate::media::ParticipantKind::Client)
            .or_else(|| of_kind(crate::media::ParticipantKind::Whip))
            .ok_or_else(|| {
                SignalError::new(
                    ErrorCode::NotFound,
                    format!("no participant {identity} with a session on this node"),
                )
            })
    }

    /// A remote participant's record changed its name, metadata or attributes: whether it
    /// did (the caller tells the room).
    pub(super) fn remote_profile_changed(
        &mut self,
        record: &sfu_control::ParticipantRecord,
    ) -> bool {
        let Some(known) = self.roster.remote.get_mut(&record.sid) else {
            return false;
        };
        if known.name == record.name
            && known.metadata == record.metadata
            && known.attributes == record.attributes
        {
            return false;
        }
        known.name.clone_from(&record.name);
        known.metadata.clone_from(&record.metadata);
        known.attributes.clone_from(&record.attributes);
        true
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::auth::Grants;
    use crate::media::room::RoomContext;
    use crate::media::{JoinRequest, ParticipantKind};
    use crate::signaling::Outbound;
    use std::sync::Arc;

    /// A room of node `n1`, for tests of the room's parts.
    pub(crate) fn room(now: Instant) -> LocalRoom {
        room_of_threshold(50, now)
    }

    /// The same, large from `threshold` participants on.
    pub(crate) fn room_of_threshold(threshold: u32, now: Instant) -> LocalRoom {
        let ctx = Arc::new(RoomContext {
            node_id: "n1".into(),
            candidates: vec!["127.0.0.1:9".parse().unwrap()],
            max_participants: 0,
            default_max_layer: 2,
            large_room_threshold: threshold,
            certificate: crate::media::peer::worker_certificate().unwrap(),
            crypto: rtc::crypto::default_provider().unwrap(),
            worker: 0,
            workers: 1,
            core: Default::default(),
            repair: Default::default(),
        });
        LocalRoom::new("r".into(), ctx, now, threshold)
    }

    /// Joins a signaling participant; its sid and its messages.
    pub(crate) fn join(
        r: &mut LocalRoom,
        now: Instant,
        identity: &str,
        may_update: bool,
        metadata: &str,
    ) -> (String, crate::signaling::EventsRx) {
        let (tx, rx) = crate::signaling::events();
        let grants = Grants {
            identity: identity.into(),
            name: identity.into(),
            room: Some("r".into()),
            room_join: true,
            can_publish: true,
            can_subscribe: true,
            room_admin: false,
            room_create: false,
            room_list: false,
            room_record: false,
            can_update_own_metadata: may_update,
            metadata: metadata.into(),
            attributes: [("team".to_owned(), "red".to_owned())].into(),
        };
        let request = JoinRequest {
            room: "r".into(),
            grants,
            kind: ParticipantKind::Client,
            auto_subscribe: true,
            events: Some(tx),
            place: false,
        };
        let joined = r.join(now, request, &mut Egress::default()).unwrap();
        (joined.participant.sid, rx)
    }

    fn updated(rx: &mut crate::signaling::EventsRx) -> Vec<serde_json::Value> {
        messages(rx, "participant_updated")
            .into_iter()
            .map(|m| m["participant"].clone())
            .collect()
    }

    /// The messages of type `kind` waiting for a participant.
    pub(crate) fn messages(
        rx: &mut crate::signaling::EventsRx,
        kind: &str,
    ) -> Vec<serde_json::Value> {
        let mut found = Vec::new();
        while let Ok(m) = rx.try_recv() {
            let text = match m {
                Outbound::Message(m) => serde_json::to_string(&m).unwrap(),
                Outbound::Shared(t) => t.as_str().to_owned(),
            };
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            if v["type"] == kind {
                found.push(v);
            }
        }
        found
    }

    #[test]
    fn a_change_reaches_everyone_and_the_registry_and_bad_ones_are_refused() {
        let t0 = Instant::now();
        let mut r = room(t0);
        let (alice, mut alice_rx) = join(&mut r, t0, "alice", true, "from the token");
        let (bob, mut bob_rx) = join(&mut r, t0, "bob", false, "");
        let mut out = Egress::default();
        let update = MetadataUpdate {
            metadata: Some("hello".into()),
            attributes: [
                ("team".to_owned(), String::new()),
                ("hand".into(), "up".into()),
            ]
            .into(),
            ..Default::default()
        };
        r.update_metadata(t0, "alice", Some(&alice), update, &mut out)
            .unwrap();
        let seen = updated(&mut bob_rx);
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0]["metadata"], "hello");
        assert_eq!(seen[0]["name"], "alice", "a name not given stays");
        assert_eq!(
            seen[0]["attributes"],
            serde_json::json!({"hand": "up"}),
            "merged, the empty one removed"
        );
        assert_eq!(updated(&mut alice_rx).len(), 1, "its own client is told");
        let [Effect::ParticipantUpdated { record, .. }] = &out.effects[..] else {
            panic!("one registry write")
        };
        assert_eq!(record.metadata, "hello");
        assert_eq!(record.attributes["hand"], "up");

        let refused = |r: &mut LocalRoom, who: &str, sid: &str, update| {
            r.update_metadata(t0, who, Some(sid), update, &mut Egress::default())
                .unwrap_err()
                .code
        };
        let big = MetadataUpdate {
            metadata: Some("x".repeat(MAX_METADATA + 1)),
            ..Default::default()
        };
        assert_eq!(refused(&mut r, "alice", &alice, big), ErrorCode::TooLarge);
        let many = MetadataUpdate {
            attributes: (0..200)
                .map(|i| (format!("key{i}"), "v".repeat(100)))
                .collect(),
            ..Default::default()
        };
        assert_eq!(refused(&mut r, "alice", &alice, many), ErrorCode::TooLarge);
        let plain = MetadataUpdate {
            name: Some("Bob".into()),
            ..Default::default()
        };
        assert_eq!(
            refused(&mut r, "bob", &bob, plain.clone()),
            ErrorCode::Forbidden,
            "without canUpdateOwnMetadata"
        );
        // An administrator may, and is not rate-limited.
        r.update_metadata(t0, "bob", None, plain, &mut out).unwrap();
        assert_eq!(updated(&mut alice_rx)[0]["name"], "Bob");
        let mut limited = false;
        for i in 0..20 {
            let update = MetadataUpdate {
                metadata: Some(format!("m{i}")),
                ..Default::default()
            };
            match r.update_metadata(t0, "alice", Some(&alice), update, &mut out) {
                Ok(()) => {}
                Err(e) => {
                    assert_eq!(e.code, ErrorCode::RateLimited);
                    limited = true;
                    break;
                }
            }
        }
        assert!(limited, "a participant's changes are rate-limited");
    }

    #[test]
    fn a_remote_record_that_changed_is_told_to_the_room() {
        let t0 = Instant::now();
        let mut r = room(t0);
        let (_me, mut rx) = join(&mut r, t0, "me", false, "");
        let mut record = sfu_control::ParticipantRecord {
            sid: "PA_remote".into(),
            identity: "far".into(),
            name: "Far".into(),
            node: "n2".into(),
            kind: "client".into(),
            joined_ms: 1,
            stage: true,
            worker: 0,
            metadata: "token".into(),
            attributes: BTreeMap::new(),
            quality: None,
        };
        let mut out = Egress::default();
        r.on_remote_participant(t0, record.clone(), &mut out);
        while rx.try_recv().is_ok() {}
        r.on_remote_participant(t0, record.clone(), &mut out);
        assert!(
            updated(&mut rx).is_empty(),
            "the same record again: nothing"
        );
        record.metadata = "changed".into();
        record.attributes.insert("k".into(), "v".into());
        r.on_remote_participant(t0, record, &mut out);
        let seen = updated(&mut rx);
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0]["metadata"], "changed");
        assert_eq!(seen[0]["attributes"]["k"], "v");
    }

    #[test]
    fn a_token_with_oversized_metadata_is_refused_at_the_join() {
        let t0 = Instant::now();
        let mut r = room(t0);
        let (tx, _rx) = crate::signaling::events();
        let grants = Grants {
            identity: "big".into(),
            name: "big".into(),
            room: Some("r".into()),
            room_join: true,
            can_publish: true,
            can_subscribe: true,
            room_admin: false,
            room_create: false,
            room_list: false,
            room_record: false,
            can_update_own_metadata: false,
            metadata: "x".repeat(MAX_METADATA + 1),
            attributes: BTreeMap::new(),
        };
        let request = JoinRequest {
            room: "r".into(),
            grants,
            kind: ParticipantKind::Client,
            auto_subscribe: true,
            events: Some(tx),
            place: false,
        };
        let e = r.join(t0, request, &mut Egress::default()).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge, "{e}");
    }
}
