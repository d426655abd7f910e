//! Who is in a room, as its clients see it: the participants connected here, the announced
//! participants of other nodes, the audience counted per node, and the raised hands.
//!
//! A large room is not a small one made bigger. Its **stage** (participants who may publish)
//! is announced one by one, to every client and in the registry; its **audience** is counted.
//! The rule, checked at the join and at every change of role:
//!
//! - a participant is *announced* if it is on stage, or if the room had fewer participants
//!   than its large-room threshold when it joined (a small room lists everyone, as users of
//!   any meeting app expect);
//! - an announced participant stays announced until it leaves or, in a large room, is taken
//!   off the stage; an unannounced one becomes announced when it is promoted.
//!
//! So per-join work on a node does not grow with the room: an audience member joining a large
//! room is one counter increment here (no message to anyone, no registry record), and the
//! audience's size reaches clients as a `participant_count`, coalesced to one message a second
//! per node and encoded once for all of them. Lookups by identity go through an index, never a
//! scan of the room.

use crate::media::ParticipantKind;
use crate::signaling::protocol::{HandView, ParticipantCounts, Permissions, ServerMessage};
use crate::signaling::{Events, Outbound};
use axum::extract::ws::Utf8Bytes;
use sfu_control::records::HandRecord;
use sfu_core::TrackId;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

/// Rooms above this many participants are large unless their configuration says otherwise.
pub const DEFAULT_LARGE_ROOM_THRESHOLD: u32 = 50;

/// A participant connected to this node.
pub(super) struct Participant {
    pub sid: String,
    pub identity: String,
    pub name: String,
    pub kind: ParticipantKind,
    /// On stage: may publish. Changes at runtime (promotion, demotion).
    pub can_publish: bool,
    pub can_subscribe: bool,
    /// Sees raised hands, may promote and demote (`roomAdmin` for this room).
    pub admin: bool,
    /// Has a registry record and was told to the room (see the module documentation).
    pub announced: bool,
    pub auto_subscribe: bool,
    /// Join order, so WHEP players pick publishers deterministically.
    pub seq: u64,
    /// See [`sfu_control::ParticipantRecord::joined_ms`].
    pub joined_ms: u64,
    pub events: Option<Events>,
    pub publisher: Option<usize>,
    pub subscriber: Option<usize>,
    pub tracks: Vec<TrackId>,
    /// Holds one of the room's places (a room with a participant limit); given back on leave.
    pub place: bool,
    /// What the tracks it publishes show, by msid track id (from `publish`).
    pub sources: HashMap<String, crate::signaling::protocol::TrackSourceName>,
    /// Sids announced before publishing, by msid track id (see `Command::Publish`).
    pub track_sids: HashMap<String, TrackId>,
    /// Its data channels and data budget (see [`crate::media::room::data`]).
    pub data: crate::media::room::data::DataState,
    /// When its last hand change or count request was accepted (each rate-limited).
    pub last_hand: Option<Instant>,
    pub last_count_request: Option<Instant>,
    /// Its metadata and attributes (see [`crate::media::room::metadata`]), whether it may change
    /// them itself, and how many changes it may make now.
    pub metadata: String,
    pub attributes: BTreeMap<String, String>,
    pub can_update_metadata: bool,
    pub metadata_budget: crate::media::room::metadata::Budget,
    /// Its connection quality (see [`crate::media::room::quality`]).
    pub quality: crate::media::room::quality::Score,
}

impl Participant {
    pub fn send(&self, message: ServerMessage) {
        if let Some(events) = &self.events {
            // A closed channel means the WebSocket is going away; its leave follows.
            let _ = events.send(Outbound::Message(Box::new(message)));
        }
    }

    fn send_shared(&self, encoded: &Utf8Bytes) {
        if let Some(events) = &self.events {
            let _ = events.send(Outbound::Shared(encoded.clone()));
        }
    }

    pub fn record_kind(&self) -> &'static str {
        self.kind.record_name()
    }

    pub fn permissions(&self) -> Permissions {
        Permissions {
            can_publish: self.can_publish,
            can_subscribe: self.can_subscribe,
            admin: self.admin,
            can_update_metadata: self.can_update_metadata,
        }
    }
}

/// An announced participant of this room connected to another node.
pub(super) struct RemoteParticipant {
    pub identity: String,
    pub name: String,
    pub node: String,
    /// `kind` and `joined_ms` of its record.
    pub kind: String,
    pub joined_ms: u64,
    pub stage: bool,
    pub seq: u64,
    pub tracks: Vec<TrackId>,
    pub metadata: String,
    pub attributes: BTreeMap<String, String>,
    /// Its connection quality, as its record last said (see [`crate::media::room::quality`]).
    pub quality: Option<sfu_control::QualityRecord>,
}

/// See the module documentation.
pub(super) struct Roster {
    /// Participants connected here, by sid.
    pub local: HashMap<String, Participant>,
    /// Announced participants on other nodes, by sid.
    pub remote: HashMap<String, RemoteParticipant>,
    /// Sids of local participants by identity (WHEP players may share one).
    by_identity: HashMap<String, Vec<String>>,
    /// Sids of remote participants by identity.
    remote_by_identity: HashMap<String, Vec<String>>,
    /// Counted audience of other nodes, by node.
    remote_audience: HashMap<String, u32>,
    /// Sum of `remote_audience`.
    remote_audience_total: u32,
    /// Local participants not announced.
    local_unannounced: u32,
    /// Announced participants (here and elsewhere) on stage, and in the audience.
    announced_stage: u32,
    announced_audience: u32,
    /// Raised hands in the room, by sid, and the queue order.
    hands: HashMap<String, HandRecord>,
    queue: BTreeSet<(u64, String)>,
    /// Above this many participants the room is large.
    pub threshold: u32,
    /// The counts clients last heard.
    counts_sent: ParticipantCounts,
    /// The count of unannounced local audience the registry last got, and when.
    pub audience_reported: u32,
    pub audience_reported_at: Option<Instant>,
    pub next_seq: u64,
}

impl Roster {
    pub fn new(threshold: u32) -> Self {
        Self {
            local: HashMap::new(),
            remote: HashMap::new(),
            by_identity: HashMap::new(),
            remote_by_identity: HashMap::new(),
            remote_audience: HashMap::new(),
            remote_audience_total: 0,
            local_unannounced: 0,
            announced_stage: 0,
            announced_audience: 0,
            hands: HashMap::new(),
            queue: BTreeSet::new(),
            threshold,
            counts_sent: ParticipantCounts::default(),
            audience_reported: 0,
            audience_reported_at: None,
            next_seq: 0,
        }
    }

    /// Participants in the room over the whole cluster, as far as this node knows.
    pub fn size(&self) -> u32 {
        let c = self.counts();
        c.stage + c.audience
    }

    /// Whether a participant joining now is announced.
    pub fn announces(&self, stage: bool) -> bool {
        stage || self.size() < self.threshold
    }

    pub fn counts(&self) -> ParticipantCounts {
        ParticipantCounts {
            stage: self.announced_stage,
            audience: self.announced_audience + self.local_unannounced + self.remote_audience_total,
            raised_hands: self.hands.len() as u32,
        }
    }

    /// Local audience that is counted, not announced (what this node reports to the registry).
    pub fn local_unannounced(&self) -> u32 {
        self.local_unannounced
    }

    fn count(&mut self, announced: bool, stage: bool, add: bool) {
        let counter = match (announced, stage) {
            (true, true) => &mut self.announced_stage,
            (true, false) => &mut self.announced_audience,
            (false, _) => &mut self.local_unannounced,
        };
        if add {
            *counter += 1;
        } else {
            *counter = counter.saturating_sub(1);
        }
    }

    pub fn insert_local(&mut self, p: Participant) {
        self.count(p.announced, p.can_publish, true);
        self.by_identity
            .entry(p.identity.clone())
            .or_default()
            .push(p.sid.clone());
        self.local.insert(p.sid.clone(), p);
    }

    pub fn remove_local(&mut self, sid: &str) -> Option<Participant> {
        let p = self.local.remove(sid)?;
        self.count(p.announced, p.can_publish, false);
        unindex(&mut self.by_identity, &p.identity, sid);
        Some(p)
    }

    /// Changes a local participant's role; the caller tells the room and the registry.
    pub fn set_role(&mut self, sid: &str, can_publish: bool, announced: bool) {
        let Some(p) = self.local.get(sid) else { return };
        let (was_stage, was_announced) = (p.can_publish, p.announced);
        self.count(was_announced, was_stage, false);
        self.count(announced, can_publish, true);
        if let Some(p) = self.local.get_mut(sid) {
            p.can_publish = can_publish;
            p.announced = announced;
        }
    }

    pub fn insert_remote(&mut self, sid: String, r: RemoteParticipant) {
        self.count(true, r.stage, true);
        self.remote_by_identity
            .entry(r.identity.clone())
            .or_default()
            .push(sid.clone());
        self.remote.insert(sid, r);
    }

    pub fn remove_remote(&mut self, sid: &str) -> Option<RemoteParticipant> {
        let r = self.remote.remove(sid)?;
        self.count(true, r.stage, false);
        unindex(&mut self.remote_by_identity, &r.identity, sid);
        Some(r)
    }

    /// A remote announced participant changed role.
    pub fn set_remote_stage(&mut self, sid: &str, stage: bool) {
        let Some(was) = self.remote.get(sid).map(|r| r.stage) else {
            return;
        };
        self.count(true, was, false);
        self.count(true, stage, true);
        if let Some(r) = self.remote.get_mut(sid) {
            r.stage = stage;
        }
    }

    /// Local sids with this identity.
    pub fn sids_of(&self, identity: &str) -> &[String] {
        self.by_identity.get(identity).map_or(&[], Vec::as_slice)
    }

    /// Remote participants with this identity.
    pub fn remote_of<'a>(
        &'a self,
        identity: &str,
    ) -> impl Iterator<Item = (&'a String, &'a RemoteParticipant)> + 'a {
        self.remote_by_identity
            .get(identity)
            .into_iter()
            .flatten()
            .filter_map(|sid| self.remote.get_key_value(sid))
    }

    /// The counted audience of `node` changed.
    pub fn set_remote_audience(&mut self, node: &str, count: u32) {
        let old = if count == 0 {
            self.remote_audience.remove(node).unwrap_or(0)
        } else {
            self.remote_audience
                .insert(node.to_owned(), count)
                .unwrap_or(0)
        };
        self.remote_audience_total = self.remote_audience_total - old + count;
    }

    /// The relay peers hosting part of the room (announced participants or counted audience):
    /// other workers of node `me` by their `node#wN`, other nodes by their id.
    pub fn nodes(&self, me: &str) -> Vec<String> {
        let mut nodes: Vec<String> = self
            .remote
            .values()
            .map(|r| r.node.clone())
            .chain(self.remote_audience.keys().map(|k| {
                let node = sfu_control::records::node_of(k);
                if node == me {
                    k.clone()
                } else {
                    node.to_owned()
                }
            }))
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// Forgets what another node held (it left the cluster): its workers' counts too.
    pub fn forget_node(&mut self, node: &str) {
        let counted: Vec<String> = self
            .remote_audience
            .keys()
            .filter(|k| sfu_control::records::node_of(k) == node)
            .cloned()
            .collect();
        for k in counted {
            self.set_remote_audience(&k, 0);
        }
        let gone: Vec<String> = self
            .hands
            .values()
            .filter(|h| h.node == node)
            .map(|h| h.sid.clone())
            .collect();
        for sid in gone {
            self.lower_hand(&sid);
        }
    }

    /// A hand went up (as the registry says); false if it already was.
    pub fn raise_hand(&mut self, record: HandRecord) -> bool {
        if self.hands.contains_key(&record.sid) {
            return false;
        }
        self.queue.insert((record.raised_ms, record.sid.clone()));
        self.hands.insert(record.sid.clone(), record);
        true
    }

    /// A hand went down; false if it was not up.
    pub fn lower_hand(&mut self, sid: &str) -> bool {
        let Some(h) = self.hands.remove(sid) else {
            return false;
        };
        self.queue.remove(&(h.raised_ms, h.sid));
        true
    }

    pub fn hand_raised(&self, sid: &str) -> bool {
        self.hands.contains_key(sid)
    }

    /// The raised hands, earliest first.
    pub fn queue(&self) -> Vec<HandView> {
        self.queue
            .iter()
            .filter_map(|(_, sid)| self.hands.get(sid))
            .map(hand_view)
            .collect()
    }

    pub fn hand(&self, sid: &str) -> Option<&HandRecord> {
        self.hands.get(sid)
    }

    /// Sends a message to every WebSocket participant here except `except`, encoded once.
    pub fn broadcast(&self, except: &str, message: &ServerMessage) {
        let mut encoded = None;
        for p in self.local.values().filter(|p| p.sid != except) {
            if p.events.is_some() {
                let e = encoded.get_or_insert_with(|| encode(message));
                p.send_shared(e);
            }
        }
    }

    /// Sends a message to the administrators here (and to `also`, if not one), encoded once.
    pub fn tell_admins(&self, also: Option<&str>, message: &ServerMessage) {
        let mut encoded = None;
        for p in self
            .local
            .values()
            .filter(|p| p.admin || Some(p.sid.as_str()) == also)
        {
            if p.events.is_some() {
                let e = encoded.get_or_insert_with(|| encode(message));
                p.send_shared(e);
            }
        }
    }

    /// The counts, if they changed since clients last heard them (called once a second).
    pub fn take_changed_counts(&mut self) -> Option<ParticipantCounts> {
        let now = self.counts();
        (now != self.counts_sent).then(|| {
            self.counts_sent = now;
            now
        })
    }
}

fn unindex(index: &mut HashMap<String, Vec<String>>, identity: &str, sid: &str) {
    if let Some(sids) = index.get_mut(identity) {
        sids.retain(|s| s != sid);
        if sids.is_empty() {
            index.remove(identity);
        }
    }
}

pub(super) fn hand_view(h: &HandRecord) -> HandView {
    HandView {
        sid: h.sid.clone(),
        identity: h.identity.clone(),
        name: h.name.clone(),
        raised_ms: h.raised_ms,
    }
}

/// A server message as the text frame every recipient gets.
pub(super) fn encode(message: &ServerMessage) -> Utf8Bytes {
    // Our messages always serialise.
    Utf8Bytes::from(serde_json::to_string(message).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn participant(
        sid: &str,
        stage: bool,
        announced: bool,
    ) -> (Participant, crate::signaling::EventsRx) {
        let (tx, rx) = crate::signaling::events();
        (
            Participant {
                sid: sid.into(),
                identity: format!("id-{sid}"),
                name: String::new(),
                kind: ParticipantKind::Client,
                can_publish: stage,
                can_subscribe: true,
                admin: false,
                announced,
                auto_subscribe: true,
                seq: 0,
                joined_ms: 0,
                events: Some(tx),
                publisher: None,
                subscriber: None,
                tracks: Vec::new(),
                place: false,
                sources: HashMap::new(),
                track_sids: HashMap::new(),
                data: Default::default(),
                last_hand: None,
                last_count_request: None,
                metadata: String::new(),
                attributes: BTreeMap::new(),
                can_update_metadata: false,
                metadata_budget: Default::default(),
                quality: Default::default(),
            },
            rx,
        )
    }

    #[test]
    fn a_large_rooms_audience_is_counted_not_announced() {
        let mut r = Roster::new(3);
        let mut rxs = Vec::new();
        for i in 0..3 {
            let stage = i == 0;
            assert!(
                r.announces(stage),
                "below the threshold everyone is announced"
            );
            let (p, rx) = participant(&format!("PA_{i}"), stage, true);
            r.insert_local(p);
            rxs.push(rx);
        }
        assert!(r.announces(true), "the stage always is");
        assert!(
            !r.announces(false),
            "at the threshold the audience is counted"
        );
        let (p, _rx) = participant("PA_9", false, false);
        r.insert_local(p);
        r.set_remote_audience("n2", 100);
        assert_eq!(
            r.counts(),
            ParticipantCounts {
                stage: 1,
                audience: 103,
                raised_hands: 0
            }
        );
        assert_eq!(r.local_unannounced(), 1);
        // A promotion moves one from the audience to the stage.
        r.set_role("PA_9", true, true);
        assert_eq!(r.counts().stage, 2);
        assert_eq!(r.counts().audience, 102);
        r.remove_local("PA_9");
        r.set_remote_audience("n2", 0);
        assert_eq!(r.counts().audience, 2);
        assert!(
            r.sids_of("id-PA_9").is_empty(),
            "the identity index forgets it"
        );
        assert_eq!(r.sids_of("id-PA_1"), ["PA_1".to_owned()]);
    }

    #[test]
    fn a_broadcast_is_encoded_once_and_shared() {
        let mut r = Roster::new(50);
        let mut rxs = Vec::new();
        for i in 0..3 {
            let (p, rx) = participant(&format!("PA_{i}"), true, true);
            r.insert_local(p);
            rxs.push(rx);
        }
        r.broadcast(
            "PA_0",
            &ServerMessage::ParticipantLeft {
                participant: "PA_7".into(),
            },
        );
        assert!(rxs[0].try_recv().is_err(), "not to the one excepted");
        let a = rxs[1].try_recv().unwrap();
        let b = rxs[2].try_recv().unwrap();
        let (Outbound::Shared(a), Outbound::Shared(b)) = (a, b) else {
            panic!("a broadcast is shared bytes")
        };
        assert_eq!(
            a.as_str().as_ptr(),
            b.as_str().as_ptr(),
            "one encoding, shared"
        );
        assert_eq!(
            a.as_str(),
            r#"{"type":"participant_left","participant":"PA_7"}"#
        );
    }

    #[test]
    fn counts_are_told_only_when_they_change_and_hands_queue_in_order() {
        let mut r = Roster::new(50);
        assert_eq!(r.take_changed_counts(), None, "nothing changed");
        let (p, _rx) = participant("PA_1", false, false);
        r.insert_local(p);
        let hand = |sid: &str, ms| HandRecord {
            sid: sid.into(),
            identity: sid.into(),
            name: String::new(),
            node: "n1".into(),
            raised_ms: ms,
        };
        assert!(r.raise_hand(hand("PA_2", 20)));
        assert!(r.raise_hand(hand("PA_1", 10)));
        assert!(!r.raise_hand(hand("PA_1", 30)), "once");
        assert_eq!(
            r.take_changed_counts(),
            Some(ParticipantCounts {
                stage: 0,
                audience: 1,
                raised_hands: 2
            })
        );
        assert_eq!(r.take_changed_counts(), None);
        let q: Vec<String> = r.queue().into_iter().map(|h| h.sid).collect();
        assert_eq!(q, ["PA_1", "PA_2"], "earliest first");
        r.forget_node("n1");
        assert_eq!(r.counts().raised_hands, 0, "hands of a gone node are gone");
    }
}
