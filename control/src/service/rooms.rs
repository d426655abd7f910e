//! `RoomService`: rooms, their participants (listed page by page from the nodes that hold
//! them), and what administrators do to participants (remove, mute, subscriptions, stage).

use super::{Api, room_config, status};
use crate::node_api::segment;
use crate::records::TrackRecord;
use crate::registry::Registry;
use sfu_proto::control as pb;
use sfu_proto::control::room_service_server::RoomService;
use std::time::Duration;
use tonic::{Request, Response as GrpcResponse, Status};

/// The most participants one page of `ListParticipants` holds.
const MAX_PAGE: u32 = 1000;
/// The largest data packet `SendData` sends (the nodes' bound on participants' packets).
const MAX_DATA: usize = 15 * 1024;

fn track_info(t: &TrackRecord) -> pb::TrackInfo {
    pb::TrackInfo {
        sid: t.track.clone(),
        kind: t.kind.clone(),
        codec: t.codec_mime.clone(),
        layers: t.rids.clone(),
        muted: t.muted,
    }
}

/// A page token: the node to continue on and the last sid listed there. Opaque to clients.
fn page_token(node: &str, after: &str) -> String {
    format!("{}:{node}{after}", node.len())
}

fn parse_page_token(token: &str) -> Option<(String, String)> {
    let (len, rest) = token.split_once(':')?;
    let len: usize = len.parse().ok()?;
    let node = rest.get(..len)?;
    Some((node.to_owned(), rest.get(len..)?.to_owned()))
}

/// A participant as a node's admin API lists it.
#[derive(serde::Deserialize)]
struct Listed {
    sid: String,
    identity: String,
    name: String,
    kind: String,
    stage: bool,
    hand_raised_ms: Option<u64>,
    tracks: Vec<ListedTrack>,
    #[serde(default)]
    metadata: String,
    #[serde(default)]
    attributes: std::collections::HashMap<String, String>,
}

#[derive(serde::Deserialize)]
struct ListedTrack {
    sid: String,
    kind: String,
    codec: String,
    layers: Vec<String>,
    muted: bool,
}

impl super::Control {
    /// The participants of `room` the registry records on `node`, by sid after `after`.
    fn recorded_on(&self, room: &str, node: &str, after: &str) -> Vec<Listed> {
        let (participants, tracks) = self.membership.room(room);
        let mut listed: Vec<Listed> = participants
            .into_iter()
            .filter(|p| p.node == node && p.sid.as_str() > after)
            .map(|p| Listed {
                tracks: tracks
                    .iter()
                    .filter(|t| t.participant == p.sid)
                    .map(|t| ListedTrack {
                        sid: t.track.clone(),
                        kind: t.kind.clone(),
                        codec: t.codec_mime.clone(),
                        layers: t.rids.clone(),
                        muted: t.muted,
                    })
                    .collect(),
                sid: p.sid,
                identity: p.identity,
                name: p.name,
                kind: p.kind,
                stage: p.stage,
                hand_raised_ms: None,
                metadata: p.metadata,
                attributes: p.attributes.into_iter().collect(),
            })
            .collect();
        listed.sort_by(|a, b| a.sid.cmp(&b.sid));
        listed
    }
}

#[tonic::async_trait]
impl RoomService for Api {
    async fn create_room(
        &self,
        r: Request<pb::CreateRoomRequest>,
    ) -> Result<GrpcResponse<pb::Room>, Status> {
        let g = self.0.grants(&r)?;
        if !g.room_create {
            return Err(Status::permission_denied("token does not grant roomCreate"));
        }
        let req = r.into_inner();
        if req.name.is_empty()
            || req.name.len() > 128
            || req.name.contains('/')
            || req.name.chars().any(char::is_control)
        {
            return Err(Status::invalid_argument(
                "room names are 1 to 128 printable characters without '/'",
            ));
        }
        let config = room_config(&req);
        let key = self.0.membership.keys().room_config(&req.name);
        self.0
            .registry
            .put_persistent(&key, serde_json::to_vec(&config).unwrap_or_default())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut room = self.0.room(&req.name);
        room.max_participants = config.max_participants;
        room.empty_timeout = config.empty_timeout;
        room.creation_time_ms = config.created_ms;
        room.large_room_threshold = config.large_room_threshold;
        Ok(GrpcResponse::new(room))
    }

    async fn list_rooms(
        &self,
        r: Request<pb::ListRoomsRequest>,
    ) -> Result<GrpcResponse<pb::ListRoomsResponse>, Status> {
        let g = self.0.grants(&r)?;
        if !g.room_list {
            return Err(Status::permission_denied("token does not grant roomList"));
        }
        let wanted = r.into_inner().names;
        let rooms = self
            .0
            .room_names()
            .into_iter()
            .filter(|n| wanted.is_empty() || wanted.contains(n))
            .map(|n| self.0.room(&n))
            .collect();
        Ok(GrpcResponse::new(pb::ListRoomsResponse { rooms }))
    }

    async fn delete_room(
        &self,
        r: Request<pb::DeleteRoomRequest>,
    ) -> Result<GrpcResponse<pb::DeleteRoomResponse>, Status> {
        let g = self.0.grants(&r)?;
        let room = r.into_inner().room;
        // LiveKit's RoomService asks roomCreate for this (its SDKs send that); an
        // administrator of the room may too.
        if !g.room_create {
            g.may_admin(&room).map_err(status)?;
        }
        let key = self.0.membership.keys().room_config(&room);
        let _ = self.0.registry.delete(&key).await;
        for node in self.0.room_nodes(&room) {
            // A node that has no one left in the room answers 404: nothing to do there.
            let path = format!("/admin/rooms/{}", segment(&room));
            match self
                .0
                .call_node(&node, reqwest::Method::DELETE, &path, None)
                .await
            {
                Ok(_) => {}
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(GrpcResponse::new(pb::DeleteRoomResponse {}))
    }

    async fn list_participants(
        &self,
        r: Request<pb::ListParticipantsRequest>,
    ) -> Result<GrpcResponse<pb::ListParticipantsResponse>, Status> {
        let g = self.0.grants(&r)?;
        let req = r.into_inner();
        let room = req.room;
        g.may_admin(&room).map_err(status)?;
        let size = if req.page_size == 0 {
            MAX_PAGE
        } else {
            req.page_size.min(MAX_PAGE)
        } as usize;
        let mut nodes = self.0.room_nodes(&room);
        nodes.sort();
        let (start, mut after) = if req.page_token.is_empty() {
            (String::new(), String::new())
        } else {
            parse_page_token(&req.page_token)
                .ok_or_else(|| Status::invalid_argument("malformed page_token"))?
        };
        let mut participants = Vec::new();
        let mut next_page_token = String::new();
        for node in nodes.into_iter().filter(|n| *n >= start) {
            if node != start {
                after.clear();
            }
            let want = size - participants.len();
            let path = format!(
                "/admin/rooms/{}/participants?after={}&limit={want}",
                segment(&room),
                segment(&after)
            );
            let listed: Vec<Listed> = match self
                .0
                .call_node(&node, reqwest::Method::GET, &path, None)
                .await
            {
                Ok(body) => serde_json::from_str(&body)
                    .map_err(|e| Status::internal(format!("node {node} listed nonsense: {e}")))?,
                // A node that left meanwhile holds no one any more.
                Err(e) if e.code() == tonic::Code::NotFound => continue,
                // One that cannot be reached: what the registry knows of it (its stage, and
                // whoever it announced), rather than nothing.
                Err(e) => {
                    tracing::warn!(node, "listing participants: {e}");
                    self.0.recorded_on(&room, &node, &after)
                }
            };
            let full = listed.len() >= want;
            participants.extend(listed.into_iter().map(|p| {
                pb::ParticipantInfo {
                    sid: p.sid,
                    identity: p.identity,
                    name: p.name,
                    node: node.clone(),
                    tracks: p
                        .tracks
                        .into_iter()
                        .map(|t| pb::TrackInfo {
                            sid: t.sid,
                            kind: t.kind,
                            codec: t.codec,
                            layers: t.layers,
                            muted: t.muted,
                        })
                        .collect(),
                    stage: p.stage,
                    hand_raised_ms: p.hand_raised_ms.unwrap_or(0),
                    kind: p.kind,
                    metadata: p.metadata,
                    attributes: p.attributes,
                }
            }));
            if full {
                let last = participants.last().map_or("", |p| p.sid.as_str());
                next_page_token = page_token(&node, last);
                break;
            }
        }
        let raised_hands = self
            .0
            .membership
            .hands(&room)
            .into_iter()
            .map(|h| pb::RaisedHand {
                sid: h.sid,
                identity: h.identity,
                name: h.name,
                node: h.node,
                raised_ms: h.raised_ms,
            })
            .collect();
        Ok(GrpcResponse::new(pb::ListParticipantsResponse {
            participants,
            next_page_token,
            raised_hands,
        }))
    }

    async fn update_participant(
        &self,
        r: Request<pb::UpdateParticipantRequest>,
    ) -> Result<GrpcResponse<pb::ParticipantInfo>, Status> {
        let g = self.0.grants(&r)?;
        let req = r.into_inner();
        g.may_admin(&req.room).map_err(status)?;
        let can_publish = req.permission.and_then(|p| p.can_publish);
        let profile = req.name.is_some() || req.metadata.is_some() || !req.attributes.is_empty();
        if can_publish.is_none() && !profile {
            return Err(Status::invalid_argument(
                "nothing to update: set permission.can_publish, name, metadata or attributes",
            ));
        }
        // The name, metadata and attributes first: the node checks their sizes, and a refused
        // update then changes nothing.
        if profile {
            self.0
                .on_participant(
                    &req.room,
                    &req.identity,
                    reqwest::Method::POST,
                    "/metadata",
                    Some(serde_json::json!({
                        "name": req.name,
                        "metadata": req.metadata,
                        "attributes": req.attributes,
                    })),
                )
                .await?;
        }
        if let Some(can_publish) = can_publish {
            self.0
                .on_participant(
                    &req.room,
                    &req.identity,
                    reqwest::Method::POST,
                    "/permissions",
                    Some(serde_json::json!({ "can_publish": can_publish })),
                )
                .await?;
        }
        Ok(GrpcResponse::new(pb::ParticipantInfo {
            identity: req.identity,
            stage: can_publish.unwrap_or_default(),
            name: req.name.unwrap_or_default(),
            metadata: req.metadata.unwrap_or_default(),
            attributes: req.attributes,
            ..Default::default()
        }))
    }

    async fn remove_participant(
        &self,
        r: Request<pb::RoomParticipantIdentity>,
    ) -> Result<GrpcResponse<pb::RemoveParticipantResponse>, Status> {
        let g = self.0.grants(&r)?;
        let req = r.into_inner();
        g.may_admin(&req.room).map_err(status)?;
        self.0
            .on_participant(&req.room, &req.identity, reqwest::Method::DELETE, "", None)
            .await?;
        Ok(GrpcResponse::new(pb::RemoveParticipantResponse {}))
    }

    async fn mute_published_track(
        &self,
        r: Request<pb::MuteRoomTrackRequest>,
    ) -> Result<GrpcResponse<pb::MuteRoomTrackResponse>, Status> {
        let g = self.0.grants(&r)?;
        let req = r.into_inner();
        g.may_admin(&req.room).map_err(status)?;
        // Only the stage publishes, and the stage has records. The view of them follows the
        // registry by a watch: a track an administrator just saw listed (ListParticipants
        // asks the nodes themselves) may reach it a moment later on a loaded machine.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut track = loop {
            let (participants, tracks) = self.0.membership.room(&req.room);
            let p = participants.iter().find(|p| p.identity == req.identity);
            let found = p.and_then(|p| {
                tracks
                    .into_iter()
                    .find(|t| t.track == req.track_sid && t.participant == p.sid)
            });
            if let Some(track) = found {
                break track;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::not_found(match p {
                    None => format!(
                        "no participant {} on the stage of room {}",
                        req.identity, req.room
                    ),
                    Some(_) => format!("{} publishes no track {}", req.identity, req.track_sid),
                }));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let body = serde_json::json!({ "track": req.track_sid, "muted": req.muted });
        self.0
            .on_participant(
                &req.room,
                &req.identity,
                reqwest::Method::POST,
                "/mute",
                Some(body),
            )
            .await?;
        track.muted = req.muted;
        Ok(GrpcResponse::new(pb::MuteRoomTrackResponse {
            track: Some(track_info(&track)),
        }))
    }

    async fn update_subscriptions(
        &self,
        r: Request<pb::UpdateSubscriptionsRequest>,
    ) -> Result<GrpcResponse<pb::UpdateSubscriptionsResponse>, Status> {
        let g = self.0.grants(&r)?;
        let req = r.into_inner();
        g.may_admin(&req.room).map_err(status)?;
        let body = serde_json::json!({ "tracks": req.track_sids, "subscribe": req.subscribe });
        self.0
            .on_participant(
                &req.room,
                &req.identity,
                reqwest::Method::POST,
                "/subscriptions",
                Some(body),
            )
            .await?;
        Ok(GrpcResponse::new(pb::UpdateSubscriptionsResponse {}))
    }

    /// Asks every node hosting the room to deliver the packet to its participants there: one
    /// call per node, whatever the room's size. A node that cannot be reached fails the call
    /// (the packet may have reached the others).
    async fn send_data(
        &self,
        r: Request<pb::SendDataRequest>,
    ) -> Result<GrpcResponse<pb::SendDataResponse>, Status> {
        let g = self.0.grants(&r)?;
        let req = r.into_inner();
        g.may_admin(&req.room).map_err(status)?;
        if req.data.len() > MAX_DATA {
            return Err(Status::invalid_argument(format!(
                "data larger than {MAX_DATA} bytes"
            )));
        }
        let path = format!("/admin/rooms/{}/data", segment(&req.room));
        let body = serde_json::json!({
            "data": req.data,
            "reliable": req.reliable,
            "topic": req.topic,
            "destinations": req.destination_identities.iter().chain(&req.destination_sids).collect::<Vec<_>>(),
        });
        let nodes = self.0.room_nodes(&req.room);
        if nodes.is_empty() {
            return Err(Status::not_found(format!("no room {:?}", req.room)));
        }
        for node in nodes {
            match self
                .0
                .call_node(&node, reqwest::Method::POST, &path, Some(body.clone()))
                .await
            {
                // The room's last participant there left meanwhile.
                Err(e) if e.code() == tonic::Code::NotFound => {}
                other => {
                    other?;
                }
            }
        }
        Ok(GrpcResponse::new(pb::SendDataResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_whatever_the_node_is_called() {
        for (node, after) in [("n1", "PA_1"), ("a:b", ""), ("", "x")] {
            assert_eq!(
                parse_page_token(&page_token(node, after)),
                Some((node.to_owned(), after.to_owned()))
            );
        }
        assert_eq!(parse_page_token("nonsense"), None);
        assert_eq!(parse_page_token("99:short"), None);
    }
}
