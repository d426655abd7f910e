//! The part of a room that lives on this node: its participants, their peer connections, the
//! tracks they publish, and the forwarding core that connects them.
//!
//! A [`LocalRoom`] is owned by one media worker and used with `&mut` only. This file holds
//! membership and events; the other files of this folder hold the rest of the room by concern:
//! `roster` (who is in the room), `publish` (publisher peer connections and their tracks),
//! `subscribe` (subscriber peer connections, negotiation, WHEP sources), `remote` (tracks of
//! other workers and nodes), `drive` (datagrams, timers and the packet path), `roles`, `admin`,
//! `metadata`, `data`, `quality`, and the recordings the room feeds (`record`, `program`).

mod admin;
pub(super) mod data;
pub(super) mod drive;
pub(super) mod metadata;
mod pause;
pub(super) mod program;
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
use crate::signaling::protocol::{
    ErrorCode, ParticipantView, ServerMessage, SignalError, TrackSourceName, TrackView,
};
use roster::Roster;
pub(super) use roster::{Participant, RemoteParticipant};
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtp_transceiver::RTCRtpSenderId;
use sfu_core::{LayerIndex, MediaKind, SubscriptionId, TrackId};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A peer connection that has not connected after this long is given up.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A connected peer that sent nothing for this long is gone. Browsers send ICE consent checks
/// (RFC 7675) every few seconds and RTCP every second, so only a vanished peer is this quiet;
/// webrtc-rs's ICE-lite agent does not time out on its own.
pub(super) const SILENCE_TIMEOUT: Duration = Duration::from_secs(15);
/// Addresses a peer connection may be reached from (a browser checks from a few candidates).
const MAX_PEER_ADDRS: usize = 4;
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

/// Changes to the worker's datagram routing that a room asks for.
pub enum DemuxUpdate {
    /// Route STUN with this ufrag to the peer.
    Add { ufrag: String, peer: usize },
    /// Route everything from this address to the peer (an authenticated check came from it).
    Bind { addr: SocketAddr, peer: usize },
    /// The peer is gone: forget its ufrag and addresses.
    Remove {
        ufrag: String,
        addrs: Vec<SocketAddr>,
    },
}

/// Where a track comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// Published on this node, on this peer connection.
    Local { peer: usize },
    /// Published on another node; relayed here while someone here wants it.
    Remote { node: String },
}

/// A track published in this room, here or on another node.
pub(super) struct Published {
    pub id: TrackId,
    pub owner: String,
    pub kind: MediaKind,
    pub rtc_codec: rtc::rtp_transceiver::rtp_sender::RTCRtpCodec,
    pub name: String,
    pub rids: Vec<String>,
    pub origin: Origin,
    pub muted: bool,
    pub source: TrackSourceName,
    /// Audio whose levels are known (speaker ranking).
    pub audio_levels: bool,
    /// Payload type of RED in its packets (as its publisher negotiated it), if it may send RED.
    pub red_payload_type: Option<u8>,
}

impl Published {
    pub fn view(&self) -> TrackView {
        TrackView {
            sid: self.id.to_string(),
            participant: self.owner.clone(),
            kind: match self.kind {
                MediaKind::Audio => "audio",
                MediaKind::Video => "video",
            },
            codec: self.rtc_codec.mime_type.clone(),
            layers: self.rids.clone(),
            name: self.name.clone(),
            muted: self.muted,
            source: self.source.as_str(),
        }
    }
}

/// A track received on a publisher peer connection.
pub(super) struct Inbound {
    pub track: TrackId,
    /// Simulcast RIDs, lowest quality first (one empty entry for a single stream).
    pub rids: Vec<String>,
    /// SSRC of each layer once its first packet arrived.
    pub ssrcs: Vec<Option<u32>>,
    /// Loss on each layer (connection quality).
    pub rx: Vec<quality::RxLoss>,
}

impl Inbound {
    pub fn layer_of(&self, ssrc: u32) -> Option<LayerIndex> {
        self.ssrcs.iter().position(|s| *s == Some(ssrc))
    }
}

/// A track sent on a subscriber peer connection.
pub(super) struct Outbound {
    pub sender: RTCRtpSenderId,
    pub kind: MediaKind,
    pub ssrc: u32,
    /// The track feeding it (fixed for WebSocket clients; chosen by the node for WHEP).
    pub source: Option<TrackId>,
    pub subscription: Option<SubscriptionId>,
    /// Whether the subscriber has accepted it in a completed offer/answer.
    pub negotiated: bool,
    /// What the client last said about showing it.
    pub settings: Option<super::TrackSettings>,
}

/// Subscriber-side negotiation state (the node offers).
#[derive(Default)]
pub(super) struct Negotiation {
    pub offer_outstanding: bool,
    pub needs_offer: bool,
}

/// A peer connection and what flows over it.
pub(super) struct Peer {
    pub pc: RTCPeerConnection,
    pub direction: Direction,
    pub participant: String,
    pub ice: IceCredentials,
    pub addrs: Vec<SocketAddr>,
    pub generation: u32,
    pub created_at: Instant,
    /// When the last datagram from this peer arrived.
    pub last_heard: Instant,
    pub connected: bool,
    pub timer: Option<Instant>,
    /// Publisher side, by webrtc-rs track id.
    pub inbound: HashMap<String, Inbound>,
    /// Subscriber side.
    pub outbound: Vec<Outbound>,
    pub negotiation: Negotiation,
    /// Whether the first offer or answer was made (candidates are added once).
    pub described: bool,
    /// The node's own transport (subscriber connections): webrtc-rs only negotiates them.
    pub transport: Option<super::transport::Transport>,
    /// What its receiver reports said (subscriber connections; connection quality).
    pub quality: quality::PeerReports,
    /// Subscriber connections: nothing is forwarded (see [`pause`]).
    pub paused: bool,
}

/// See the module documentation.
pub struct LocalRoom {
    pub(super) name: String,
    pub(super) ctx: Arc<RoomContext>,
    pub(super) core: sfu_core::Room,
    /// Who is in the room (see [`roster`]).
    pub(super) roster: Roster,
    /// The layers last asked of the cluster for each remote track.
    pub(super) demand: HashMap<TrackId, Vec<LayerIndex>>,
    /// Boxed: a peer connection is several kilobytes, and a slab keeps up to twice the slots
    /// it holds; boxed, a spare slot costs a pointer.
    pub(super) peers: slab::Slab<Box<Peer>>,
    pub(super) tracks: HashMap<TrackId, Published>,
    pub(super) timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    pub(super) demux: Vec<DemuxUpdate>,
    pub(super) next_generation: u32,
    pub(super) next_housekeeping: Instant,
    /// When the demand for remote tracks is next refreshed by itself.
    pub(super) next_demand: Instant,
    /// Speaker changes: when the next may be told, and the latest one waiting for then.
    pub(super) speakers_due: Option<Instant>,
    pub(super) speakers_pending: Option<Vec<crate::signaling::protocol::SpeakerView>>,
    /// The deadline the worker has armed for this room.
    pub armed: Option<Instant>,
    /// Core counters already added to the metrics.
    pub reported: sfu_core::RoomStats,
    /// Packets dropped at the edge of the room, and those already reported.
    pub drops: drive::EdgeDrops,
    pub reported_drops: drive::EdgeDrops,
    /// Recordings fed by this room (see [`record`]); they keep it open.
    pub(super) recorders: Vec<record::TrackRecorder>,
    /// Room recordings fed by this room (see [`program`]); they keep it open.
    pub(super) programs: Vec<program::RoomProgram>,
    pub(super) next_recorder: u64,
    /// When participants are next scored (see [`quality`]).
    pub(super) next_quality: Instant,
    /// A participant of another worker or node has a new quality since the room last told
    /// qualities: told with its own at the next [`quality::PERIOD`].
    pub(super) remote_quality_changed: bool,
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
            demand: HashMap::new(),
            peers: slab::Slab::new(),
            tracks: HashMap::new(),
            timers: BinaryHeap::new(),
            demux: Vec::new(),
            next_generation: 0,
            next_housekeeping: now + HOUSEKEEPING,
            next_demand: now,
            speakers_due: None,
            speakers_pending: None,
            armed: None,
            reported: sfu_core::RoomStats::default(),
            drops: Default::default(),
            reported_drops: Default::default(),
            recorders: Vec::new(),
            programs: Vec::new(),
            next_recorder: 0,
            next_quality: now + quality::PERIOD,
            remote_quality_changed: false,
        }
    }

    /// No participant here, and nothing recorded here.
    pub fn is_empty(&self) -> bool {
        self.roster.local.is_empty() && self.recorders.is_empty() && !self.has_programs()
    }

    pub fn participant_count(&self) -> usize {
        self.roster.local.len()
    }

    /// Tracks published on this worker (tracks of other workers or nodes it forwards are
    /// counted where they are published).
    pub fn track_count(&self) -> usize {
        self.tracks
            .values()
            .filter(|t| matches!(t.origin, Origin::Local { .. }))
            .count()
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    pub fn core_stats(&self) -> &sfu_core::RoomStats {
        self.core.stats()
    }

    pub fn take_demux_updates(&mut self) -> std::vec::Drain<'_, DemuxUpdate> {
        self.demux.drain(..)
    }

    /// Records an address an authenticated connectivity check of a peer came from, and routes
    /// its datagrams here. A peer keeps a few at most: the oldest is forgotten.
    pub(super) fn bind_peer_addr(&mut self, peer: usize, addr: SocketAddr) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if p.addrs.contains(&addr) {
            return;
        }
        if p.addrs.len() >= MAX_PEER_ADDRS {
            let old = p.addrs.remove(0);
            self.demux.push(DemuxUpdate::Remove {
                ufrag: String::new(),
                addrs: vec![old],
            });
        }
        p.addrs.push(addr);
        self.demux.push(DemuxUpdate::Bind { addr, peer });
    }

    pub(super) fn participant(&self, sid: &str) -> Result<&Participant, SignalError> {
        self.roster.local.get(sid).ok_or_else(|| {
            SignalError::new(ErrorCode::NotFound, "no such participant in this room")
        })
    }

    pub(super) fn view(&self, p: &Participant) -> ParticipantView {
        ParticipantView {
            sid: p.sid.clone(),
            identity: p.identity.clone(),
            name: p.name.clone(),
            stage: p.can_publish,
            tracks: p
                .tracks
                .iter()
                .filter_map(|t| self.tracks.get(t).map(Published::view))
                .collect(),
            metadata: p.metadata.clone(),
            attributes: p.attributes.clone(),
        }
    }

    pub(super) fn remote_view(&self, sid: &str, r: &RemoteParticipant) -> ParticipantView {
        ParticipantView {
            sid: sid.to_owned(),
            identity: r.identity.clone(),
            name: r.name.clone(),
            stage: r.stage,
            tracks: r
                .tracks
                .iter()
                .filter_map(|t| self.tracks.get(t).map(Published::view))
                .collect(),
            metadata: r.metadata.clone(),
            attributes: r.attributes.clone(),
        }
    }

    /// Sends a message to every WebSocket participant except `except` (encoded once).
    pub(super) fn broadcast(&self, except: &str, message: &ServerMessage) {
        self.roster.broadcast(except, message);
    }

    /// The registry record of a local participant.
    pub(super) fn participant_record(&self, p: &Participant) -> sfu_control::ParticipantRecord {
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
    pub(super) fn create_peer(
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
        self.next_generation = self.next_generation.wrapping_add(1);
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
        let key = self.peers.insert(Box::new(Peer {
            pc,
            direction,
            participant: participant.to_owned(),
            ice: ice.clone(),
            addrs: Vec::new(),
            generation: self.next_generation,
            created_at: now,
            last_heard: now,
            connected: false,
            timer: None,
            inbound: HashMap::new(),
            outbound: Vec::new(),
            negotiation: Negotiation::default(),
            described: false,
            transport,
            quality: Default::default(),
            paused: false,
        }));
        self.demux.push(DemuxUpdate::Add {
            ufrag: ice.ufrag,
            peer: key,
        });
        if let Some(p) = self.roster.local.get_mut(participant) {
            match direction {
                Direction::Publish => p.publisher = Some(key),
                Direction::Subscribe => p.subscriber = Some(key),
            }
        }
        Ok(key)
    }

    /// Closes and forgets a peer connection, with everything it published or received.
    pub(super) fn remove_peer(&mut self, now: Instant, key: usize, out: &mut Egress) {
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
        let peer = self.peers.remove(key);
        self.demux.push(DemuxUpdate::Remove {
            ufrag: peer.ice.ufrag,
            addrs: peer.addrs,
        });
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
    pub(super) fn on_peer_failed(&mut self, now: Instant, key: usize, why: &str, out: &mut Egress) {
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

    /// Schedules the peer's next timeout.
    pub(super) fn rearm(&mut self, key: usize) {
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        let pc = rtc::sansio::Protocol::poll_timeout(&mut peer.pc);
        let own = peer.transport.as_ref().and_then(|t| t.poll_timeout());
        let next = pc.into_iter().chain(own).min();
        if next != peer.timer {
            peer.timer = next;
            if let Some(t) = next {
                self.timers.push(Reverse((t, key, peer.generation)));
            }
        }
    }

    /// When the room next needs [`handle_timeout`](Self::handle_timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let peers = self.timers.peek().map(|Reverse((t, _, _))| *t);
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
    pub(super) fn housekeeping(&mut self, now: Instant, out: &mut Egress) {
        if now < self.next_housekeeping {
            return;
        }
        self.next_housekeeping = now + HOUSEKEEPING;
        self.tell_counts(now, out);
        self.tell_quality(now, out);
        self.steer_programs(now, out);
        let stale: Vec<(usize, &'static str)> = self
            .peers
            .iter()
            .filter_map(|(k, p)| {
                let age = now.saturating_duration_since(p.created_at);
                let quiet = now.saturating_duration_since(p.last_heard);
                if !p.connected && age > CONNECT_TIMEOUT {
                    Some((k, "did not connect in time"))
                } else if p.connected && quiet > SILENCE_TIMEOUT {
                    Some((k, "went silent"))
                } else {
                    None
                }
            })
            .collect();
        for (key, why) in stale {
            self.on_peer_failed(now, key, why, out);
        }
    }
}
