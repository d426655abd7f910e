//! A media worker as part of the cluster: the effects its rooms have on the registry and the
//! relay, the relay's outputs carried out on its rooms, and registry changes and relay input
//! routed to them.

use super::links::{LinkHandle, Sent};
use super::{CoreRooms, LINKED_GRACE, WorkerCore};
use crate::media::ClusterInput;
use crate::media::egress::Effect;
use sfu_control::ClusterEvent;
use sfu_relay::NodeId;
use sfu_relay::core::{Output as RelayOutput, TrackKey};
use sfu_relay::wire::Framing;
use std::time::Instant;

impl WorkerCore {
    /// Registry records and relay changes that rooms asked for.
    pub(in crate::media) fn apply_effects(&mut self, now: Instant) {
        let effects = std::mem::take(&mut self.out.effects);
        if effects.is_empty() {
            return;
        }
        let keys = self.membership.keys().clone();
        let node = self.ctx.node_id.clone();
        let hook = |event, room: &str| crate::webhook::Event::new(event, &node, room);
        for e in effects {
            match e {
                Effect::ParticipantJoined {
                    room,
                    record,
                    announced,
                } => {
                    let mut e = hook("participant_joined", &room);
                    e.participant = Some(crate::webhook::ParticipantRef {
                        sid: record.sid.clone(),
                        identity: record.identity.clone(),
                        name: record.name.clone(),
                    });
                    if !announced {
                        // Counted, not recorded: the count's own write decides whether the
                        // room started (see `Effect::AudienceCount`).
                        self.webhooks.send(e);
                        continue;
                    }
                    // The room started if this is its first participant in the whole cluster:
                    // decided in the registry transaction that writes the participant's
                    // record, so exactly one node says so however many race (none if etcd
                    // cannot tell).
                    let started = hook("room_started", &room);
                    let webhooks = self.webhooks.clone();
                    self.membership.set_json_alone(
                        keys.participant(&room, &record.sid),
                        &record,
                        keys.participants_prefix(&room),
                        move |first| {
                            if let Ok(true) = first {
                                webhooks.send(started);
                            }
                            webhooks.send(e);
                        },
                    );
                }
                Effect::ParticipantLeft {
                    room,
                    sid,
                    identity,
                    name,
                    place,
                    announced,
                } => {
                    if place {
                        self.membership.release(&room);
                    }
                    let finished = hook("room_finished", &room);
                    let mut e = hook("participant_left", &room);
                    e.participant = Some(crate::webhook::ParticipantRef {
                        sid: sid.clone(),
                        identity,
                        name,
                    });
                    if !announced {
                        self.webhooks.send(e);
                        continue;
                    }
                    // The room finished if no participant is left anywhere in the cluster.
                    let webhooks = self.webhooks.clone();
                    self.membership.remove_alone(
                        keys.participant(&room, &sid),
                        keys.participants_prefix(&room),
                        move |last| {
                            webhooks.send(e);
                            if let Ok(true) = last {
                                webhooks.send(finished);
                            }
                        },
                    );
                }
                Effect::ParticipantUpdated { room, record } => {
                    self.membership
                        .set_json(keys.participant(&room, &record.sid), &record);
                }
                Effect::ParticipantHidden { room, sid } => {
                    self.membership.remove(keys.participant(&room, &sid));
                }
                Effect::AudienceCount { room, count, was } => {
                    // Each worker counts its own part of the room's audience.
                    let key = keys.audience(&room, &self.name());
                    let prefix = keys.participants_prefix(&room);
                    let webhooks = self.webhooks.clone();
                    if was == 0 && count > 0 {
                        let started = hook("room_started", &room);
                        let record = sfu_control::records::AudienceRecord { count };
                        self.membership
                            .set_json_alone(key, &record, prefix, move |first| {
                                if let Ok(true) = first {
                                    webhooks.send(started);
                                }
                            });
                    } else if count == 0 {
                        let finished = hook("room_finished", &room);
                        self.membership.remove_alone(key, prefix, move |last| {
                            if let Ok(true) = last {
                                webhooks.send(finished);
                            }
                        });
                    } else {
                        let record = sfu_control::records::AudienceRecord { count };
                        self.membership.set_json(key, &record);
                    }
                }
                Effect::HandRaised { room, record } => {
                    self.membership
                        .set_json(keys.hand(&room, &record.sid), &record);
                }
                Effect::HandLowered { room, sid } => {
                    self.membership.remove(keys.hand(&room, &sid));
                }
                Effect::TrackPublished { room, record, info } => {
                    let key = TrackKey {
                        room: room.as_str().into(),
                        track: record.track.parse().unwrap_or(sfu_core::TrackId(0)),
                    };
                    self.membership
                        .set_json(keys.track(&room, &record.track), &record);
                    self.shared
                        .track_owners
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert((key.room.clone(), key.track), self.index);
                    self.relay.add_local_track(key, info);
                    let mut e = hook("track_published", &room);
                    e.track = Some(crate::webhook::TrackRef {
                        sid: record.track,
                        kind: record.kind,
                        participant: record.participant,
                    });
                    self.webhooks.send(e);
                }
                Effect::TrackUpdated { room, record } => {
                    self.membership
                        .set_json(keys.track(&room, &record.track), &record);
                }
                Effect::TrackUnpublished {
                    room,
                    track,
                    kind,
                    participant,
                } => {
                    self.membership
                        .remove(keys.track(&room, &track.to_string()));
                    let key = TrackKey {
                        room: room.as_str().into(),
                        track,
                    };
                    self.shared
                        .track_owners
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&(key.room.clone(), key.track));
                    self.relay.remove_local_track(&key);
                    let mut e = hook("track_unpublished", &room);
                    e.track = Some(crate::webhook::TrackRef {
                        sid: track.to_string(),
                        kind: kind.to_owned(),
                        participant,
                    });
                    self.webhooks.send(e);
                }
                Effect::Demand {
                    room,
                    track,
                    origin,
                    via,
                    layers,
                } => {
                    let key = TrackKey {
                        room: room.as_str().into(),
                        track,
                    };
                    self.relay.set_demand_via(
                        now,
                        key,
                        origin.as_str().into(),
                        via.as_str().into(),
                        layers,
                    );
                }
                Effect::UpstreamKeyframe { room, track, layer } => {
                    self.relay.request_keyframe(
                        &TrackKey {
                            room: room.as_str().into(),
                            track,
                        },
                        layer,
                    );
                }
                Effect::Forget { room, track } => {
                    self.relay.forget(&TrackKey {
                        room: room.as_str().into(),
                        track,
                    });
                }
                Effect::SharedLevels {
                    room,
                    mut nodes,
                    levels,
                } => {
                    // A federation gateway carrying the room gets them too, to pass them on.
                    let me = &*self.ctx.node_id;
                    for g in sfu_control::federation::level_gateways_of(&self.membership, &room, me)
                    {
                        if !nodes.contains(&g) {
                            nodes.push(g);
                        }
                    }
                    if nodes.is_empty() {
                        continue;
                    }
                    let nodes: Vec<NodeId> =
                        nodes.iter().map(|n| NodeId::from(n.as_str())).collect();
                    let levels: Vec<sfu_proto::relay::AudioLevel> = levels
                        .into_iter()
                        .map(|(track, participant, level)| sfu_proto::relay::AudioLevel {
                            track: track.0,
                            participant: participant.to_string(),
                            level: level as u32,
                        })
                        .collect();
                    self.relay.share_levels(&room, &nodes, &levels);
                }
                Effect::UserData { room, nodes, data } => {
                    for node in nodes {
                        if let Some(link) = self.links.get(node.as_str()) {
                            link.send_frame(sfu_proto::relay::Frame {
                                body: Some(sfu_proto::relay::frame::Body::UserData(
                                    sfu_proto::relay::UserData {
                                        room: room.clone(),
                                        participant: data.sender.clone(),
                                        destinations: data.destinations.clone(),
                                        reliable: data.reliable,
                                        packet: data.packet.to_vec(),
                                    },
                                )),
                            });
                        }
                    }
                }
            }
        }
        self.drain_relay(now);
    }

    /// Carries out the relay's outputs.
    pub(in crate::media) fn drain_relay(&mut self, now: Instant) {
        while let Some(output) = self.relay.poll_output() {
            let room = output.room().map(str::to_owned);
            let mut rooms = CoreRooms {
                rooms: &mut self.rooms,
                by_name: &self.room_by_name,
            };
            let rest = self.sinks.apply(now, output, &mut rooms);
            match rest {
                Some(RelayOutput::Send { to, frame }) => {
                    if let Some(link) = self.links.get(&to) {
                        link.send_frame(frame);
                    }
                }
                Some(RelayOutput::Feeding { key, .. }) => {
                    if let Some(idx) = self.room_index(now, &key.room, true) {
                        self.rooms[idx].on_feeding(now, key.track, &mut self.out);
                        self.after_room(now, idx);
                    }
                }
                Some(RelayOutput::Unfed { key, ended }) => {
                    if let Some(idx) = self.room_index(now, &key.room, false) {
                        self.rooms[idx].on_unfed(now, key.track, ended, &mut self.out);
                        self.after_room(now, idx);
                    }
                }
                Some(RelayOutput::Levels { room, levels }) => {
                    if let Some(idx) = self.room_index(now, &room, false) {
                        self.rooms[idx].on_shared_levels(now, &levels);
                        self.after_room(now, idx);
                    }
                }
                _ => {}
            }
            // Attaching a relay sink makes the room ask for a keyframe, a NACK makes it resend.
            if let Some(idx) = room.and_then(|r| self.room_by_name.get(&r).copied())
                && let Some(room) = self.rooms.get_mut(idx)
            {
                self.touching = Some(idx);
                room.route_core_outputs(now, &mut self.out);
            }
        }
        self.send_relay_datagrams(now);
    }

    /// Sends what the rooms relayed this turn, packed per link.
    pub(in crate::media) fn send_relay_datagrams(&mut self, now: Instant) {
        if self.out.relay.is_empty() {
            return;
        }
        let (relay, links, drops) = (&self.relay, &self.links, &mut self.drops);
        let link_of = |link: u32| relay.node_of_link(link).and_then(|n| links.get(n));
        let crate::media::egress::Egress {
            relay: outbox,
            udp,
            arena,
            ..
        } = &mut self.out;
        let mut out = super::links::DirectOut { now, udp, arena };
        let (mut direct, mut quic) = (0, 0);
        outbox.flush_framed(
            |link| link_of(link).map_or((0, Framing::NONE), |l| l.datagram_limits()),
            |link, d, framing| match link_of(link).map(|l| l.send_datagram(d, framing, &mut out)) {
                Some(Sent::Direct) => direct += 1,
                Some(Sent::Quic) => quic += 1,
                Some(Sent::Sibling) => {}
                Some(Sent::Failed) | None => drops.relay_rejected += 1,
            },
        );
        self.relay_sent.direct += direct;
        self.relay_sent.quic += quic;
    }

    pub(in crate::media) fn handle_cluster(&mut self, now: Instant, input: ClusterInput) {
        match input {
            ClusterInput::LinkUp(link) => {
                let node = link.node.clone();
                self.direct_link_up(&link);
                self.links
                    .insert(node.clone(), LinkHandle::quic(link, self.index));
                self.relay.handle_link_up(now, node);
                self.drain_relay(now);
            }
            ClusterInput::LinkDown(node) => {
                self.links.remove(&node);
                self.direct_link_down(&node);
                // Deletions held because the node was linked are believed at once now, unless
                // the node has written its keys again meanwhile (its record flapped).
                let (now_due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
                    .into_iter()
                    .partition(|(_, e)| matches!(e, ClusterEvent::NodeGone(n) if **n == *node));
                self.deferred = keep;
                for (_, e) in now_due {
                    if !self.reappeared(&e) {
                        self.apply_cluster_event(now, e);
                    }
                }
                self.relay.handle_link_down(now, &node);
                self.drain_relay(now);
            }
            ClusterInput::Frame {
                frame:
                    sfu_proto::relay::Frame {
                        body: Some(sfu_proto::relay::frame::Body::UserData(u)),
                    },
                ..
            } => {
                // For this worker's participants only: not forwarded further.
                if let Some(idx) = self.room_index(now, &u.room, false) {
                    let data = crate::media::room::data::UserData {
                        sender: u.participant,
                        destinations: u.destinations,
                        reliable: u.reliable,
                        packet: u.packet.into(),
                    };
                    self.rooms[idx].deliver_data(now, &data);
                    self.after_room(now, idx);
                }
            }
            ClusterInput::Frame { from, mut frame } => {
                if !self.federated_origin(&mut frame) {
                    return;
                }
                self.relay.handle_frame(now, &from, frame);
                self.drain_relay(now);
            }
            ClusterInput::Datagrams { from, records } => {
                self.handle_relay_records(now, &from, records);
            }
            ClusterInput::Event(e) => self.handle_cluster_event(now, e),
            ClusterInput::ShareLevels { room, to, levels } => {
                self.relay.share_levels(&room, &to, &levels);
                self.drain_relay(now);
            }
        }
    }

    /// Another node of the cluster asks this gateway (as the origin) for a federated track:
    /// its origin is the federation link (`node~peer`), which the relay pulls it through.
    /// The gateway's own view of the registry may not hold a track it wrote yet: then the
    /// track is its only federation link's; with several, false (drop the request: the
    /// requester asks again when its request times out).
    fn federated_origin(&self, frame: &mut sfu_proto::relay::Frame) -> bool {
        let Some(sfu_proto::relay::frame::Body::Subscribe(s)) = &mut frame.body else {
            return true;
        };
        let local = self
            .shared
            .track_owners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&(s.room.as_str().into(), sfu_core::TrackId(s.track)));
        if s.origin != *self.ctx.node_id || local || s.layers.is_empty() {
            return true;
        }
        // From the registry, not the room: the gateway may host no one of the room.
        let prefix = format!("{}~", self.ctx.node_id);
        let federated = self.membership.room(&s.room).1.into_iter().find(|t| {
            t.origin.starts_with(&prefix)
                && t.track
                    .parse::<sfu_core::TrackId>()
                    .is_ok_and(|id| id.0 == s.track)
        });
        match federated {
            Some(t) => {
                s.origin = t.origin;
                true
            }
            None => {
                // Our view may not hold the track yet: with one federation link up, it is
                // that link's (the peer refuses a track it does not have).
                let mut fed = self.links.keys().filter(|n| n.starts_with(&prefix));
                match (fed.next(), fed.next()) {
                    (Some(link), None) => {
                        s.origin = link.to_string();
                        true
                    }
                    _ => false,
                }
            }
        }
    }

    /// The node a deletion is about, if it is one we hold a link to.
    pub(in crate::media) fn linked_node(&self, e: &ClusterEvent) -> Option<String> {
        let node = match e {
            ClusterEvent::NodeGone(node) => Some(node.clone()),
            ClusterEvent::TrackGone { room, track } => {
                let idx = *self.room_by_name.get(room)?;
                self.rooms[idx].track_origin(track)
            }
            ClusterEvent::ParticipantGone { room, sid } => {
                let idx = *self.room_by_name.get(room)?;
                self.rooms[idx].participant_node(sid)
            }
            _ => None,
        }?;
        // The other workers of this node write no keys of their own that could flap.
        let own = sfu_control::records::node_of(&node) == &*self.ctx.node_id;
        (!own && self.links.contains_key(node.as_str())).then_some(node)
    }

    /// Whether a deferred deletion was undone by the node writing its keys again.
    pub(in crate::media) fn reappeared(&self, e: &ClusterEvent) -> bool {
        match e {
            ClusterEvent::NodeGone(node) => self.membership.nodes().iter().any(|n| &n.id == node),
            ClusterEvent::TrackGone { room, track } => self
                .membership
                .room(room)
                .1
                .iter()
                .any(|t| &t.track == track),
            ClusterEvent::ParticipantGone { room, sid } => {
                self.membership.room(room).0.iter().any(|p| &p.sid == sid)
            }
            _ => false,
        }
    }

    pub(in crate::media) fn handle_cluster_event(&mut self, now: Instant, e: ClusterEvent) {
        if let Some(node) = self.linked_node(&e) {
            tracing::debug!(%node, "registry deletion about a linked node deferred: {e:?}");
            self.deferred.push((now + LINKED_GRACE, e));
            return;
        }
        self.apply_cluster_event(now, e);
    }

    pub(in crate::media) fn apply_cluster_event(&mut self, now: Instant, e: ClusterEvent) {
        let room_of = |e: &ClusterEvent| match e {
            ClusterEvent::Participant { room, .. }
            | ClusterEvent::ParticipantGone { room, .. }
            | ClusterEvent::Track { room, .. }
            | ClusterEvent::TrackGone { room, .. }
            | ClusterEvent::Audience { room, .. }
            | ClusterEvent::Hand { room, .. }
            | ClusterEvent::HandGone { room, .. } => Some(room.clone()),
            _ => None,
        };
        if let ClusterEvent::NodeGone(node) = &e {
            let rooms: Vec<usize> = self.rooms.iter().map(|(i, _)| i).collect();
            for idx in rooms {
                self.touching = Some(idx);
                self.rooms[idx].on_node_gone(now, node, &mut self.out);
                self.after_room(now, idx);
            }
            return;
        }
        let Some(room) = room_of(&e) else { return };
        let Some(idx) = self.room_index(now, &room, false) else {
            return;
        };
        let r = &mut self.rooms[idx];
        match e {
            ClusterEvent::Participant { record, .. } => {
                r.on_remote_participant(now, record, &mut self.out)
            }
            ClusterEvent::ParticipantGone { sid, .. } => {
                r.on_remote_participant_gone(now, &sid, &mut self.out)
            }
            ClusterEvent::Track { record, .. } => r.on_remote_track(now, record, &mut self.out),
            ClusterEvent::TrackGone { track, .. } => {
                r.on_remote_track_gone(now, &track, &mut self.out)
            }
            ClusterEvent::Audience { node, count, .. } => r.on_remote_audience(&node, count),
            ClusterEvent::Hand { record, .. } => r.on_hand(record),
            ClusterEvent::HandGone { sid, .. } => r.on_hand_gone(&sid),
            _ => {}
        }
        self.after_room(now, idx);
    }
}
