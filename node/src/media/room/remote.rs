//! The rest of the room, on other nodes: participants and tracks learned from the registry,
//! tracks fed over relay links, and the demand that makes a node pull them.
//!
//! A remote track is announced to local clients as soon as the registry lists it; a local
//! subscriber can negotiate it at once. The node pulls it only while some local subscriber (or
//! a node it feeds) wants it, and only the layers they need; the forwarding core gets the
//! track when the first flow is accepted ([`LocalRoom::on_feeding`]).

use crate::media::egress::{Effect, Egress};
use crate::media::room::{LocalRoom, Origin, Published, RemoteParticipant};
use crate::signaling::protocol::{ServerMessage, TrackSourceName};
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;
use sfu_control::{ParticipantRecord, TrackRecord};
use sfu_core::{Codec, LayerIndex, MediaKind, TrackId, TrackInfo};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

impl LocalRoom {
    /// A participant joined (or changed) on another node.
    pub fn on_remote_participant(
        &mut self,
        now: Instant,
        mut record: ParticipantRecord,
        out: &mut Egress,
    ) {
        if self.is_mine(&record.node, record.worker) {
            return;
        }
        record.node = self.peer_name(&record.node, record.worker);
        if let Some(known) = self.roster.remote.get_mut(&record.sid) {
            // Another gateway carries a federated participant now (failover).
            known.node.clone_from(&record.node);
            // A change of role, or of name, metadata or attributes.
            let restaged = known.stage != record.stage;
            if restaged {
                self.roster.set_remote_stage(&record.sid, record.stage);
            }
            if (self.remote_profile_changed(&record) || restaged)
                && let Some(r) = self.roster.remote.get(&record.sid)
            {
                let participant = self.remote_view(&record.sid, r);
                self.broadcast("", &ServerMessage::ParticipantUpdated { participant });
            }
            if let Some(known) = self.roster.remote.get_mut(&record.sid)
                && known.quality != record.quality
            {
                known.quality.clone_from(&record.quality);
                if record.quality.is_some() {
                    self.on_remote_quality();
                }
            }
            return;
        }
        self.end_superseded(now, &record, out);
        self.roster.next_seq += 1;
        let r = RemoteParticipant {
            identity: record.identity,
            name: record.name,
            node: record.node,
            kind: record.kind,
            joined_ms: record.joined_ms,
            stage: record.stage,
            seq: self.roster.next_seq,
            tracks: Vec::new(),
            metadata: record.metadata,
            attributes: record.attributes,
            quality: record.quality,
        };
        let view = self.remote_view(&record.sid, &r);
        let quality = r.quality.is_some();
        self.roster.insert_remote(record.sid.clone(), r);
        self.broadcast("", &ServerMessage::ParticipantJoined { participant: view });
        if quality {
            self.on_remote_quality();
        }
    }

    /// The counted audience of another worker of this node, or of another node, changed
    /// (`name` is its `node#wN`).
    pub fn on_remote_audience(&mut self, name: &str, count: u32) {
        if name != self.own_name() {
            self.roster.set_remote_audience(name, count);
        }
    }

    /// This worker's name: `node#wN`.
    pub(super) fn own_name(&self) -> String {
        sfu_control::records::worker_key(&self.ctx.node_id, self.ctx.worker as u16)
    }

    /// Whether a record of `node`'s worker `worker` is this worker's own.
    fn is_mine(&self, node: &str, worker: u16) -> bool {
        *node == *self.ctx.node_id && usize::from(worker) == self.ctx.worker
    }

    /// How this worker names where a participant or track of `node`'s worker `worker` is:
    /// another worker of this node by its `node#wN` (its in-process link), another node by
    /// its id.
    fn peer_name(&self, node: &str, worker: u16) -> String {
        if *node == *self.ctx.node_id {
            sfu_control::records::worker_key(node, worker)
        } else {
            node.to_owned()
        }
    }

    /// Where this worker pulls a track published on `origin` (a node, or `node#wN` for a
    /// worker of this one) from: another node's tracks come through the room's home worker,
    /// the only one of this node that pulls them from other nodes.
    fn pull_from(&self, origin: &str) -> String {
        let home = crate::media::plane::home_worker(&self.name, self.ctx.workers);
        if origin.contains('#') || home == self.ctx.worker {
            origin.to_owned()
        } else {
            sfu_control::records::worker_key(&self.ctx.node_id, home as u16)
        }
    }

    /// The node to ask for a track whose origin is `origin`: a federated track (origin
    /// `gateway~peer`, see `crate::federation`) is asked of its gateway, which alone holds the
    /// federation link; any other track of its origin.
    fn upstream_origin(&self, origin: String) -> String {
        match origin.split_once('~') {
            Some((gateway, _)) if gateway != &*self.ctx.node_id => gateway.to_owned(),
            _ => origin,
        }
    }

    /// A participant on another node left.
    pub fn on_remote_participant_gone(&mut self, now: Instant, sid: &str, out: &mut Egress) {
        let Some(r) = self.roster.remove_remote(sid) else {
            return;
        };
        for t in r.tracks {
            self.unpublish_track(now, t, out);
        }
        self.broadcast(
            "",
            &ServerMessage::ParticipantLeft {
                participant: sid.to_owned(),
            },
        );
    }

    /// A track published on another node.
    pub fn on_remote_track(&mut self, now: Instant, mut record: TrackRecord, out: &mut Egress) {
        if self.is_mine(&record.origin, record.worker) {
            return;
        }
        record.origin = self.peer_name(&record.origin, record.worker);
        let Ok(id) = record.track.parse::<TrackId>() else {
            tracing::warn!(room = %self.name, track = record.track, "malformed track id in the registry");
            return;
        };
        if let Some(existing) = self.publications.get_mut(&id) {
            // Another gateway carries a federated track now (failover): pull it from there.
            if let Origin::Remote { node } = &mut existing.origin
                && *node != record.origin
            {
                *node = record.origin.clone();
                self.demand.forget(&id);
                out.effects.push(Effect::Forget {
                    room: self.name.clone(),
                    track: id,
                });
                self.refresh_demand(now, out);
                return;
            }
            // An update (mute state) of a track we know.
            if existing.muted != record.muted {
                existing.muted = record.muted;
                let message = ServerMessage::TrackMuted {
                    track: record.track.clone(),
                    participant: existing.owner.clone(),
                    muted: record.muted,
                };
                self.broadcast("", &message);
            }
            return;
        }
        let kind = if record.kind == "audio" {
            MediaKind::Audio
        } else {
            MediaKind::Video
        };
        let published = Published {
            id,
            owner: record.participant.clone(),
            kind,
            rtc_codec: RTCRtpCodec {
                mime_type: record.codec_mime,
                clock_rate: record.clock_rate,
                channels: if kind == MediaKind::Audio { 2 } else { 0 },
                ..Default::default()
            },
            name: record.name,
            rids: record.rids,
            origin: Origin::Remote {
                node: record.origin,
            },
            muted: record.muted,
            source: TrackSourceName::parse(&record.source),
            audio_levels: kind == MediaKind::Audio && record.audio_levels,
            // Relayed packets carry the publisher's payload types.
            red_payload_type: record.red_payload_type,
        };
        if published.audio_levels {
            // Ranked at once (as silent), so top-K holds before it ever speaks.
            self.core
                .add_remote_speaker(id, Arc::from(record.participant.as_str()));
        }
        // The forwarding core knows the track from now on, fed or not, so subscriptions exist
        // (and the allocator decides what to pull) before any packet arrives.
        if let Err(e) = self.core.add_track(now, remote_track_info(&published)) {
            tracing::warn!(room = %self.name, "remote track: {e}");
        }
        let view = published.view();
        self.publications.insert(published);
        if let Some(r) = self.roster.remote.get_mut(&record.participant) {
            r.tracks.push(id);
        }
        self.broadcast("", &ServerMessage::TrackPublished { track: view });
        self.on_track_published(now, id, out);
        self.refresh_demand(now, out);
    }

    /// A track on another node was unpublished.
    pub fn on_remote_track_gone(&mut self, now: Instant, track: &str, out: &mut Egress) {
        let Ok(id) = track.parse::<TrackId>() else {
            return;
        };
        if self
            .publications
            .get(&id)
            .is_some_and(|t| matches!(t.origin, Origin::Remote { .. }))
        {
            self.unpublish_track(now, id, out);
        }
    }

    /// A node left the cluster: everything it held here is gone.
    pub fn on_node_gone(&mut self, now: Instant, node: &str, out: &mut Egress) {
        let sids: Vec<String> = self
            .roster
            .remote
            .iter()
            .filter(|(_, r)| r.node == node)
            .map(|(s, _)| s.clone())
            .collect();
        for sid in sids {
            self.on_remote_participant_gone(now, &sid, out);
        }
        self.roster.forget_node(node);
        let tracks: Vec<TrackId> = self
            .publications
            .iter()
            .filter(|t| matches!(&t.origin, Origin::Remote { node: n } if n == node))
            .map(|t| t.id)
            .collect();
        for t in tracks {
            self.unpublish_track(now, t, out);
        }
    }

    /// The relay feeds a remote track now: the forwarding core gets it and waiting subscribers
    /// attach.
    pub fn on_feeding(&mut self, now: Instant, track: TrackId, out: &mut Egress) {
        let Some(p) = self.publications.get(&track) else {
            return;
        };
        if self.core.track(track).is_none()
            && let Err(e) = self.core.add_track(now, remote_track_info(p))
        {
            tracing::warn!(room = %self.name, "relayed track: {e}");
            return;
        }
        let subscribers: Vec<usize> = self
            .roster
            .local
            .values()
            .filter_map(|p| p.subscriber)
            .collect();
        for key in subscribers {
            self.attach_subscriptions(now, key);
        }
        self.choose_whep_sources(now, out);
        self.refresh_demand(now, out);
    }

    /// The relay no longer feeds a remote track: `ended` if its origin ended it. Otherwise
    /// nobody here needs it now; its subscriptions stay (paused by the allocator, or waiting
    /// for a link to come back) and pull it again when they need it.
    pub fn on_unfed(&mut self, now: Instant, track: TrackId, ended: bool, out: &mut Egress) {
        if ended {
            self.unpublish_track(now, track, out);
        }
    }

    /// Tells the cluster which layers of each remote track local subscribers need, at most
    /// every 200 ms ([`super::demand`]): what the allocator wants changes with bandwidth estimates, and
    /// a room's deadlines fire far more often than that (every peer's timers).
    pub(in crate::media) fn refresh_demand_periodic(&mut self, now: Instant, out: &mut Egress) {
        if self.demand.due(now) {
            self.refresh_demand(now, out);
        }
    }

    /// Tells the cluster which layers of each remote track local subscribers need now. One
    /// pass over the peers, however many remote tracks.
    pub(in crate::media) fn refresh_demand(&mut self, now: Instant, out: &mut Egress) {
        self.demand.refreshed(now);
        let remote: Vec<(TrackId, String, usize)> = self
            .publications
            .iter()
            .filter_map(|t| match &t.origin {
                Origin::Remote { node } => Some((t.id, node.clone(), t.rids.len().max(1))),
                Origin::Local { .. } => None,
            })
            .collect();
        if remote.is_empty() {
            return;
        }
        // (interested, attached) per remote track.
        let mut wants: HashMap<TrackId, (bool, bool)> = remote
            .iter()
            .map(|(t, _, _)| (*t, (false, false)))
            .collect();
        for (_, p) in self.peers.iter() {
            for o in &p.outbound {
                if let Some(w) = o.source.and_then(|s| wants.get_mut(&s)) {
                    w.0 = true;
                    w.1 |= o.subscription.is_some();
                }
            }
        }
        for track in self.recordings.recorded_tracks() {
            if let Some(w) = wants.get_mut(&track) {
                *w = (true, true);
            }
        }
        for (track, origin, layers) in remote {
            let (interested, attached) = wants.get(&track).copied().unwrap_or_default();
            let kind = self.publications.get(&track).map(|t| t.kind);
            let wanted: Vec<LayerIndex> = if !interested {
                Vec::new()
            } else if attached {
                // The allocator's choices (top-K, last-N, bandwidth, rendered size).
                self.core.wanted_layers(now, track)
            } else if kind == Some(MediaKind::Audio) && !self.core.audible(track) {
                Vec::new()
            } else {
                // Subscribers are negotiating: pull what they may receive, so media is here
                // when they are ready; the allocator trims it once they are.
                (0..=self.ctx.default_max_layer.min(layers - 1)).collect()
            };
            if self.demand.update(track, &wanted) {
                let origin = self.upstream_origin(origin);
                out.effects.push(Effect::Demand {
                    room: self.name.clone(),
                    track,
                    via: self.pull_from(&origin),
                    origin,
                    layers: wanted,
                });
            }
        }
    }

    /// Audio levels shared by other nodes (speaker ranking). Levels for tracks this room
    /// does not know as remote are ignored: a node cannot speak for tracks published here.
    pub fn on_shared_levels(&mut self, now: Instant, levels: &[sfu_proto::relay::AudioLevel]) {
        for l in levels {
            let track = TrackId(l.track);
            let known_remote = self
                .publications
                .get(&track)
                .is_some_and(|t| matches!(t.origin, Origin::Remote { .. }) && t.audio_levels);
            if known_remote {
                let level = l.level.min(127) as u8;
                self.core
                    .handle_shared_level(now, track, Arc::from(l.participant.as_str()), level);
            }
        }
    }

    /// The node a remote track comes from.
    pub fn track_origin(&self, track: &str) -> Option<String> {
        let id: TrackId = track.parse().ok()?;
        match &self.publications.get(&id)?.origin {
            Origin::Remote { node } => Some(node.clone()),
            Origin::Local { .. } => None,
        }
    }

    /// The node a remote participant is connected to.
    pub fn participant_node(&self, sid: &str) -> Option<String> {
        self.roster.remote.get(sid).map(|r| r.node.clone())
    }

    /// Whether the room still holds anything: local participants or remote tracks being
    /// pulled.
    pub fn has_demand(&self) -> bool {
        self.demand.any()
    }
}

/// The forwarding core's view of a track published on another node.
fn remote_track_info(p: &Published) -> TrackInfo {
    let mut info = TrackInfo::new(
        p.id,
        p.kind,
        Codec::from_mime(&p.rtc_codec.mime_type),
        crate::media::room::publish::info_clock(p),
        p.rids.len().max(1),
    );
    info.participant = Arc::from(p.owner.as_str());
    info.source = crate::media::room::publish::core_source(p.source);
    info.local = false;
    info.audio_levels = p.audio_levels;
    info.red_payload_type = p.red_payload_type;
    info
}
