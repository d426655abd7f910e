//! The part of a room that lives on this node: its participants, their peer connections, the
//! tracks they publish, and the forwarding core that connects them.
//!
//! A [`LocalRoom`] is owned by one media worker and used with `&mut` only. Its state is split
//! by what owns it, each part with its own invariants:
//! - [`roster`]: who is in the room, here and elsewhere, and who is announced to whom (stage
//!   and audience);
//! - [`peers`]: the peer connections, their deadlines and the demux routes they need;
//! - [`publications`]: every track this worker knows, published here or forwarded from another
//!   worker or node, with its origin;
//! - subscriptions: what each subscriber connection carries (`peers::Outbound`, negotiated by
//!   `subscribe` for WebSocket clients and `players` for WHEP players) and the forwarders of
//!   the forwarding core (`sfu_core::Room`) that feed it;
//! - remote tracks: learned from the registry and fed over links (`remote`), pulled only while
//!   wanted ([`demand`]);
//! - [`record`]`::Recordings`: the track and room recordings the room feeds.
//!
//! This file is membership (join, leave) and the peer connections' life; the other files are
//! the flows that cross those parts: `publish` (publisher connections and their tracks), `drive`
//! (datagrams, timers and the packet path), `roles`, `admin`, `metadata`, `data` (user data
//! packets), `quality` (connection quality), `pause` (nothing forwarded to a participant whose
//! client is away) and `program` (what room recordings show).

mod admin;
pub(super) mod data;
mod demand;
pub(super) mod drive;
pub(super) mod metadata;
mod pause;
mod peers;
mod players;
pub(super) mod program;
mod publications;
mod publish;
pub(super) mod quality;
mod record;
mod remote;
mod roles;
pub mod roster;
mod subscribe;

use super::egress::Egress;
use super::peer::{Direction, IceCredentials};
use super::{JoinRequest, Joined, ParticipantKind};
use crate::signaling::protocol::{ErrorCode, ParticipantView, ServerMessage, SignalError};
pub(super) use peers::DemuxUpdate;
use peers::{Inbound, Outbound, Peer, Peers};
use publications::{Origin, Publications, Published};
use roster::Roster;
use roster::{Participant, RemoteParticipant};
use sfu_core::{LayerIndex, TrackId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Period of the room's housekeeping (connection deadlines).
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Settings shared by all rooms of a worker.
pub struct RoomContext {
    /// This node's id, written into the records it owns.
    pub node_id: Arc<str>,
    /// Host candidates announced to peers (the worker's socket on each announced address).
    pub candidates: Vec<SocketAddr>,
    pub max_participants: usize,
    pub default_max_layer: LayerIndex,
    /// See [`super::WorkerConfig::large_room_threshold`].
    pub large_room_threshold: u32,
    /// The worker's DTLS certificate (see [`super::peer::worker_certificate`]).
    pub certificate: rtc::peer_connection::certificate::RTCCertificate,
    /// Cryptography of the node's own transports.
    pub crypto: Arc<dyn rtc::crypto::RTCCryptoProvider>,
    /// This worker's index, and how many workers the node has (a room spans them).
    pub worker: usize,
    pub workers: usize,
    pub core: sfu_core::RoomConfig,
    /// The node's counters of repair by publishers, for its publisher connections.
    pub repair: super::repair::RepairMetrics,
}

/// See the module documentation.
pub struct LocalRoom {
    name: String,
    ctx: Arc<RoomContext>,
    /// The forwarding core: tracks, subscriptions, forwarders, allocation, speakers.
    core: sfu_core::Room,
    /// Who is in the room (see [`roster`]).
    roster: Roster,
    /// The layers last asked of the cluster for each remote track (see [`demand`]).
    demand: demand::Demand,
    /// Peer connections (see [`peers`]).
    peers: Peers,
    /// Tracks published here or forwarded from elsewhere (see [`publications`]).
    publications: Publications,
    /// When peer connections are next checked for timeouts (with counts and qualities).
    next_housekeeping: Instant,
    /// Speaker changes: when the next may be told, and the latest one waiting for then.
    speakers_due: Option<Instant>,
    speakers_pending: Option<Vec<crate::signaling::protocol::SpeakerView>>,
    /// The deadline the worker has armed for this room.
    pub armed: Option<Instant>,
    /// Core counters already added to the metrics.
    pub reported: sfu_core::RoomStats,
    /// Packets dropped at the edge of the room, and those already reported.
    pub drops: drive::EdgeDrops,
    pub reported_drops: drive::EdgeDrops,
    /// Recordings fed by this room (see [`record`] and [`program`]); they keep it open.
    recordings: record::Recordings,
    /// When participants are next scored (see [`quality`]).
    next_quality: Instant,
    /// A participant of another worker or node has a new quality since the room last told
    /// qualities: told with its own at the next [`quality::PERIOD`].
    remote_quality_changed: bool,
}

impl LocalRoom {
    pub fn new(name: String, ctx: Arc<RoomContext>, now: Instant, threshold: u32) -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let core = sfu_core::Room::new(sfu_core::WallClock::new(now, unix), ctx.core);
        Self {
            name,
            ctx,
            core,
            roster: Roster::new(threshold),
            demand: demand::Demand::new(now),
            peers: Peers::default(),
            publications: Publications::default(),
            next_housekeeping: now + HOUSEKEEPING,
            speakers_due: None,
            speakers_pending: None,
            armed: None,
            reported: sfu_core::RoomStats::default(),
            drops: Default::default(),
            reported_drops: Default::default(),
            recordings: Default::default(),
            next_quality: now + quality::PERIOD,
            remote_quality_changed: false,
        }
    }

    /// No participant here, and nothing recorded here.
    pub fn is_empty(&self) -> bool {
        self.roster.local.is_empty() && self.recordings.is_empty()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The forwarding core, for the relay's sinks (tracks fed from links).
    pub fn core_mut(&mut self) -> &mut sfu_core::Room {
        &mut self.core
    }

    /// Applies a changed large-room threshold (configuration reload).
    pub fn set_large_room_threshold(&mut self, threshold: u32) {
        self.roster.threshold = threshold;
    }

    pub fn participant_count(&self) -> usize {
        self.roster.local.len()
    }

    /// Tracks published on this worker (tracks of other workers or nodes it forwards are
    /// counted where they are published).
    pub fn track_count(&self) -> usize {
        self.publications.local_count()
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    pub fn core_stats(&self) -> &sfu_core::RoomStats {
        self.core.stats()
    }

    pub fn take_demux_updates(&mut self) -> std::vec::Drain<'_, DemuxUpdate> {
        self.peers.take_demux_updates()
    }

    fn participant(&self, sid: &str) -> Result<&Participant, SignalError> {
        self.roster.local.get(sid).ok_or_else(|| {
            SignalError::new(ErrorCode::NotFound, "no such participant in this room")
        })
    }

    fn view(&self, p: &Participant) -> ParticipantView {
        ParticipantView {
            sid: p.sid.clone(),
            identity: p.identity.clone(),
            name: p.name.clone(),
            stage: p.can_publish,
            tracks: self.publications.views(&p.tracks),
            metadata: p.metadata.clone(),
            attributes: p.attributes.clone(),
        }
    }

    fn remote_view(&self, sid: &str, r: &RemoteParticipant) -> ParticipantView {
        ParticipantView {
            sid: sid.to_owned(),
            identity: r.identity.clone(),
            name: r.name.clone(),
            stage: r.stage,
            tracks: self.publications.views(&r.tracks),
            metadata: r.metadata.clone(),
            attributes: r.attributes.clone(),
        }
    }

    /// Sends a message to every WebSocket participant except `except` (encoded once).
    fn broadcast(&self, except: &str, message: &ServerMessage) {
        self.roster.broadcast(except, message);
    }

    /// The registry record of a local participant.
    fn participant_record(&self, p: &Participant) -> sfu_control::ParticipantRecord {
        sfu_control::ParticipantRecord {
            sid: p.sid.clone(),
            identity: p.identity.clone(),
            name: p.name.clone(),
            node: self.ctx.node_id.to_string(),
            kind: p.record_kind().to_owned(),
            joined_ms: p.joined_ms,
            stage: p.can_publish,
            worker: self.ctx.worker as u16,
            metadata: p.metadata.clone(),
            attributes: p.attributes.clone(),
            quality: p.quality.record(),
        }
    }

    /// Adds a participant. A second session with the same identity replaces the first, as
    /// users who reload a page expect. Work here does not grow with the room: the roster sent
    /// back is the announced part of it, and an audience member of a large room is told to no
    /// one (see [`roster`]).
    pub fn join(
        &mut self,
        now: Instant,
        request: JoinRequest,
        out: &mut Egress,
    ) -> Result<Joined, SignalError> {
        let identity = request.grants.identity.clone();
        let g = &request.grants;
        metadata::check_sizes(&g.name, &g.metadata, &g.attributes)
            .map_err(|e| SignalError::new(e.code, format!("the access token: {}", e.message)))?;
        self.end_replaced(now, &identity, &request.kind, out);
        if self.ctx.max_participants > 0 && self.roster.local.len() >= self.ctx.max_participants {
            return Err(SignalError::new(ErrorCode::RoomFull, "the room is full"));
        }
        let sid = super::plane::new_sid(self.ctx.worker);
        let joined_ms = self.join_time(&identity, &request.kind);
        self.roster.next_seq += 1;
        let whip = request.kind == ParticipantKind::Whip;
        let whep = matches!(request.kind, ParticipantKind::Whep { .. });
        let can_publish = request.grants.can_publish && !whep;
        let room_admin = request.grants.may_admin(&self.name).is_ok();
        let announced = self.roster.announces(can_publish);
        let participant = Participant {
            sid: sid.clone(),
            identity,
            name: request.grants.name.clone(),
            can_publish,
            can_subscribe: request.grants.can_subscribe && !whip,
            admin: room_admin,
            announced,
            auto_subscribe: request.auto_subscribe && request.kind == ParticipantKind::Client,
            kind: request.kind,
            seq: self.roster.next_seq,
            joined_ms,
            events: request.events,
            place: request.place,
            publisher: None,
            subscriber: None,
            tracks: Vec::new(),
            sources: HashMap::new(),
            track_sids: HashMap::new(),
            data: Default::default(),
            last_hand: None,
            last_count_request: None,
            metadata: request.grants.metadata,
            attributes: request.grants.attributes,
            can_update_metadata: request.grants.can_update_own_metadata,
            metadata_budget: Default::default(),
            quality: Default::default(),
        };
        let view = self.view(&participant);
        let permissions = participant.permissions();
        let others = self
            .roster
            .local
            .values()
            .filter(|p| p.announced)
            .map(|p| self.view(p))
            .chain(
                self.roster
                    .remote
                    .iter()
                    .map(|(sid, r)| self.remote_view(sid, r)),
            )
            .collect();
        out.effects.push(super::egress::Effect::ParticipantJoined {
            room: self.name.clone(),
            record: self.participant_record(&participant),
            announced,
        });
        if announced {
            self.broadcast(
                &sid,
                &ServerMessage::ParticipantJoined {
                    participant: view.clone(),
                },
            );
        }
        let hands = if participant.admin {
            self.roster.queue()
        } else {
            Vec::new()
        };
        self.roster.insert_local(participant);
        if !announced {
            self.audience_changed(now, out);
        }
        Ok(Joined {
            participant: view,
            others,
            permissions,
            counts: self.roster.counts(),
            hands,
        })
    }

    /// Removes a participant, its peer connections and its tracks.
    pub fn leave(&mut self, now: Instant, sid: &str, reason: &str, out: &mut Egress) {
        let Some(p) = self.roster.local.get(sid) else {
            return;
        };
        p.send(ServerMessage::Left {
            reason: reason.to_owned(),
        });
        let peers: Vec<usize> = p.publisher.into_iter().chain(p.subscriber).collect();
        for key in peers {
            self.remove_peer(now, key, out);
        }
        if self.roster.hand_raised(sid) {
            out.effects.push(super::egress::Effect::HandLowered {
                room: self.name.clone(),
                sid: sid.to_owned(),
            });
        }
        let Some(gone) = self.roster.remove_local(sid) else {
            return;
        };
        out.effects.push(super::egress::Effect::ParticipantLeft {
            room: self.name.clone(),
            sid: sid.to_owned(),
            identity: gone.identity,
            name: gone.name,
            place: gone.place,
            announced: gone.announced,
        });
        if gone.announced {
            self.broadcast(
                sid,
                &ServerMessage::ParticipantLeft {
                    participant: sid.to_owned(),
                },
            );
        } else {
            self.audience_changed(now, out);
        }
        tracing::info!(room = %self.name, participant = sid, reason, "participant left");
    }

    /// A trickled ICE candidate from the client. Being ICE-lite we learn addresses from the
    /// client's checks anyway, but a candidate can let a check through sooner.
    pub fn trickle(
        &mut self,
        sid: &str,
        target: crate::signaling::protocol::PeerTarget,
        candidate: String,
        sdp_mid: Option<String>,
    ) -> Result<(), SignalError> {
        use crate::signaling::protocol::PeerTarget;
        let p = self.participant(sid)?;
        let key = match target {
            PeerTarget::Publisher => p.publisher,
            PeerTarget::Subscriber => p.subscriber,
        }
        .ok_or_else(|| SignalError::new(ErrorCode::InvalidState, "no such peer connection yet"))?;
        if candidate.is_empty() {
            return Ok(());
        }
        let init = rtc::peer_connection::transport::RTCIceCandidateInit {
            candidate,
            sdp_mid,
            ..Default::default()
        };
        self.peers[key]
            .pc
            .add_remote_candidate(init)
            .map_err(|e| SignalError::new(ErrorCode::BadRequest, format!("bad candidate: {e}")))
    }

    /// Creates a peer connection for a participant.
    fn create_peer(
        &mut self,
        now: Instant,
        participant: &str,
        direction: Direction,
    ) -> Result<usize, SignalError> {
        let ice = IceCredentials::random();
        let (certificate, repair) = (&self.ctx.certificate, &self.ctx.repair);
        let pc = super::peer::build(direction, &ice, certificate, repair, now).map_err(|e| {
            SignalError::new(
                ErrorCode::Internal,
                format!("creating peer connection: {e}"),
            )
        })?;
        let transport = match direction {
            Direction::Subscribe => Some(
                super::transport::Transport::new(
                    &ice.ufrag,
                    &ice.pwd,
                    self.ctx.candidates[0],
                    &self.ctx.certificate,
                    self.ctx.crypto.clone(),
                )
                .map_err(|e| {
                    SignalError::new(ErrorCode::Internal, format!("creating the transport: {e}"))
                })?,
            ),
            Direction::Publish => None,
        };
        let key = self
            .peers
            .insert(Peer::new(pc, direction, participant, ice, transport, now));
        if let Some(p) = self.roster.local.get_mut(participant) {
            match direction {
                Direction::Publish => p.publisher = Some(key),
                Direction::Subscribe => p.subscriber = Some(key),
            }
        }
        Ok(key)
    }

    /// Closes and forgets a peer connection, with everything it published or received.
    fn remove_peer(&mut self, now: Instant, key: usize, out: &mut Egress) {
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        // Best effort: tell the browser (DTLS close_notify) so it does not wait for a timeout.
        if let Some(t) = &mut peer.transport {
            let mut replies = Vec::new();
            t.close(now, &mut replies);
            for (addr, d) in replies {
                out.udp.push(addr, d);
            }
        } else {
            let _ = rtc::sansio::Protocol::close(&mut peer.pc);
            while let Some(t) = rtc::sansio::Protocol::poll_write(&mut peer.pc) {
                out.udp.push(t.transport.peer_addr, t.message);
            }
        }
        let Some(peer) = self.peers.remove(key) else {
            return;
        };
        for o in &peer.outbound {
            if let Some(sub) = o.subscription {
                self.core.unsubscribe(sub);
            }
        }
        self.core.remove_sink(sfu_core::SinkId(key as u64));
        let tracks: Vec<TrackId> = peer.inbound.values().map(|i| i.track).collect();
        if let Some(p) = self.roster.local.get_mut(&peer.participant) {
            if p.publisher == Some(key) {
                p.publisher = None;
            }
            if p.subscriber == Some(key) {
                p.subscriber = None;
            }
        }
        for t in tracks {
            self.unpublish_track(now, t, out);
        }
    }

    /// A peer connection failed or closed on its own.
    fn on_peer_failed(&mut self, now: Instant, key: usize, why: &str, out: &mut Egress) {
        let Some(peer) = self.peers.get(key) else {
            return;
        };
        let sid = peer.participant.clone();
        let direction = peer.direction;
        let Some(p) = self.roster.local.get(&sid) else {
            self.remove_peer(now, key, out);
            return;
        };
        tracing::info!(room = %self.name, participant = %sid, ?direction, why, "peer connection ended");
        if p.kind == ParticipantKind::Client {
            p.send(ServerMessage::Error {
                code: ErrorCode::PeerFailed,
                message: format!("{direction:?} peer connection {why}"),
                request: None,
            });
            self.remove_peer(now, key, out);
        } else {
            // A WHIP/WHEP session is its peer connection.
            self.leave(now, &sid, why, out);
        }
    }

    /// When the room next needs [`handle_timeout`](Self::handle_timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let peers = self.peers.poll_timeout();
        let speakers = self.speakers_pending.as_ref().and(self.speakers_due);
        [
            peers,
            self.core.poll_timeout(),
            Some(self.next_housekeeping),
            speakers,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Gives up on peer connections that never connected or went silent.
    fn housekeeping(&mut self, now: Instant, out: &mut Egress) {
        if now < self.next_housekeeping {
            return;
        }
        self.next_housekeeping = now + HOUSEKEEPING;
        self.tell_counts(now, out);
        self.tell_quality(now, out);
        self.steer_programs(now, out);
        let stale = self.peers.stale(now);
        for (key, why) in stale {
            self.on_peer_failed(now, key, why, out);
        }
    }
}
