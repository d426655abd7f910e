//! A media worker's commands: signaling requests and administrative operations, each applied
//! to the room it names.

use super::WorkerCore;
use crate::media::{AdminOp, Command};
use std::time::Instant;

impl WorkerCore {
    /// Carries out a command (under [`WorkerCore::guarded`]).
    pub(super) fn apply_command(&mut self, now: Instant, command: Command) {
        use crate::signaling::protocol::{ErrorCode, SignalError};
        let not_found = || SignalError::new(ErrorCode::NotFound, "no such session in this room");
        macro_rules! in_room {
            ($room:expr, $reply:expr, |$r:ident, $out:ident| $body:expr) => {{
                let result = match self.room_index(now, &$room, false) {
                    Some(idx) => {
                        let $r = &mut self.rooms[idx];
                        let $out = &mut self.out;
                        let result = $body;
                        self.after_room(now, idx);
                        result
                    }
                    None => Err(not_found()),
                };
                let _ = $reply.send(result);
            }};
        }
        match command {
            Command::Join(request, reply) => {
                let Some(idx) = self.room_index(now, &request.room, true) else {
                    return;
                };
                let auto = request.auto_subscribe;
                let threshold = self.large_room_threshold(&request.room);
                let room = &mut self.rooms[idx];
                room.set_large_room_threshold(threshold);
                let result = room.join(now, request, &mut self.out);
                if let (Ok(joined), true) = (&result, auto) {
                    room.subscribe_existing(now, &joined.participant.sid);
                }
                let _ = reply.send(result);
                self.after_room(now, idx);
            }
            Command::Leave {
                room,
                participant,
                reason,
            } => {
                if let Some(idx) = self.room_index(now, &room, false) {
                    self.rooms[idx].leave(now, &participant, &reason, &mut self.out);
                    self.after_room(now, idx);
                }
            }
            Command::Publish {
                room,
                participant,
                sdp,
                sources,
                track_sids,
                reply,
            } => in_room!(room, reply, |r, out| r.publish(
                now,
                &participant,
                sdp,
                (sources, track_sids),
                out
            )),
            Command::TrackSettings {
                room,
                participant,
                track,
                settings,
                reply,
            } => in_room!(room, reply, |r, out| {
                let result = r.track_settings(now, &participant, &track, settings);
                r.refresh_demand(now, out);
                result
            }),
            Command::Pause {
                room,
                participant,
                paused,
            } => {
                if let Some(idx) = self.room_index(now, &room, false) {
                    let r = &mut self.rooms[idx];
                    r.pause(now, &participant, paused);
                    r.refresh_demand(now, &mut self.out);
                    self.after_room(now, idx);
                }
            }
            Command::Unpublish {
                room,
                participant,
                track,
                reply,
            } => in_room!(room, reply, |r, out| r.unpublish(
                now,
                &participant,
                &track,
                out
            )),
            Command::Subscribe {
                room,
                participant,
                tracks,
                subscribe,
                reply,
            } => in_room!(room, reply, |r, out| {
                let result = r.subscribe(now, &participant, &tracks, subscribe);
                r.refresh_demand(now, out);
                result
            }),
            Command::SubscriberAnswer {
                room,
                participant,
                sdp,
                reply,
            } => in_room!(room, reply, |r, out| r.subscriber_answer(
                now,
                &participant,
                sdp,
                out
            )),
            Command::Play {
                room,
                participant,
                sdp,
                reply,
            } => in_room!(room, reply, |r, out| r.play(now, &participant, sdp, out)),
            Command::Trickle {
                room,
                participant,
                target,
                candidate,
                sdp_mid,
                reply,
            } => in_room!(room, reply, |r, _out| r.trickle(
                &participant,
                target,
                candidate,
                sdp_mid
            )),
            Command::Hand {
                room,
                participant,
                raise,
                reply,
            } => in_room!(room, reply, |r, out| r.raise_hand(
                now,
                &participant,
                raise,
                out
            )),
            Command::Counts {
                room,
                participant,
                reply,
            } => in_room!(room, reply, |r, _out| r.count_request(now, &participant)),
            Command::ListParticipants {
                room,
                after,
                limit,
                reply,
            } => {
                let page = self
                    .room_by_name
                    .get(&room)
                    .copied()
                    .map(|idx| {
                        self.touching = Some(idx);
                        self.rooms[idx].list_local(&after, limit)
                    })
                    .unwrap_or_default();
                let _ = reply.send(page);
            }
            Command::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Command::Admin { op, reply } => {
                let _ = reply.send(self.admin(now, op));
            }
            Command::Cluster(input) => self.handle_cluster(now, input),
            Command::Record(c) => self.handle_record(now, c),
            Command::InjectPanic { room } => {
                if let Some(idx) = self.room_index(now, &room, false) {
                    self.touching = Some(idx);
                    panic!("injected in room {room:?} (test hook)");
                }
            }
        }
    }

    pub(in crate::media) fn admin(
        &mut self,
        now: Instant,
        op: AdminOp,
    ) -> Result<(), crate::signaling::protocol::SignalError> {
        use crate::signaling::protocol::{ErrorCode, SignalError};
        let room_name = match &op {
            AdminOp::Migrate { url } => {
                for (_, room) in &self.rooms {
                    room.migrate(url);
                }
                return Ok(());
            }
            AdminOp::EndReplaced {
                room,
                identity,
                kind,
            } => {
                if let Some(idx) = self.room_index(now, room, false) {
                    self.rooms[idx].end_replaced(now, identity, kind, &mut self.out);
                    self.after_room(now, idx);
                }
                return Ok(());
            }
            AdminOp::RemoveParticipant { room, .. }
            | AdminOp::DeleteRoom { room }
            | AdminOp::Mute { room, .. }
            | AdminOp::UpdatePermissions { room, .. }
            | AdminOp::UpdateMetadata { room, .. }
            | AdminOp::SendData { room, .. }
            | AdminOp::Subscriptions { room, .. } => room.clone(),
        };
        let idx = self
            .room_index(now, &room_name, false)
            .ok_or_else(|| SignalError::new(ErrorCode::NotFound, "room not on this node"))?;
        let room = &mut self.rooms[idx];
        let out = &mut self.out;
        let result = match op {
            AdminOp::RemoveParticipant { identity, .. } => {
                room.remove_identity(now, &identity, "removed by an administrator", out)
            }
            AdminOp::DeleteRoom { .. } => {
                room.remove_all(now, "the room was deleted", out);
                Ok(())
            }
            AdminOp::Mute {
                identity,
                track,
                muted,
                ..
            } => room
                .sid_of(&identity)
                .and_then(|sid| room.mute(now, &sid, &track, muted, out)),
            AdminOp::UpdatePermissions {
                identity,
                can_publish,
                ..
            } => room.update_permissions(now, &identity, can_publish, out),
            AdminOp::UpdateMetadata {
                identity,
                own,
                update,
                ..
            } => room.update_metadata(now, &identity, own.as_deref(), update, out),
            AdminOp::SendData { data, .. } => {
                room.deliver_data(now, &data);
                Ok(())
            }
            AdminOp::Subscriptions {
                identity,
                tracks,
                subscribe,
                ..
            } => room.sid_of(&identity).and_then(|sid| {
                let r = room.subscribe(now, &sid, &tracks, subscribe);
                room.refresh_demand(now, out);
                r
            }),
            AdminOp::Migrate { .. } | AdminOp::EndReplaced { .. } => Ok(()),
        };
        self.after_room(now, idx);
        result
    }
}
