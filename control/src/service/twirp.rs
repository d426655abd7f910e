//! LiveKit's RoomService over Twirp (`POST /twirp/livekit.RoomService/METHOD`, protobuf or
//! JSON bodies, LiveKit's bearer token), so that LiveKit's server SDKs manage the rooms of a
//! whole cluster unchanged.
//!
//! A second encoding of the gRPC [`RoomService`], not a second implementation: each request is
//! decoded with `livekit-protocol`'s types, mapped onto our request, answered by the same
//! method, and the answer mapped back and encoded as the request was (`application/protobuf`
//! or JSON). Errors are Twirp's JSON error bodies with the status Twirp gives each code.
//!
//! `SendData` reaches LiveKit clients on every node of the room (the nodes hosting it are
//! asked in turn). `UpdateParticipant` sets names, metadata and attributes as LiveKit does (an empty
//! `metadata` or `name` leaves it as it is; an attribute with an empty value is removed).

use super::Api;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use livekit_protocol as lk;
use sfu_proto::control as pb;
use sfu_proto::control::room_service_server::RoomService;
use tonic::{Code, Request, Status};

/// Routes of the Twirp RoomService.
pub fn router(api: Api) -> axum::Router {
    axum::Router::new()
        .route(
            "/twirp/livekit.RoomService/{method}",
            axum::routing::post(call),
        )
        .with_state(api)
}

/// How a request was encoded, and so how its answer is.
#[derive(Clone, Copy)]
enum Encoding {
    Protobuf,
    Json,
}

/// A Twirp error: its code and message.
struct TwirpError(&'static str, String);

impl From<Status> for TwirpError {
    fn from(s: Status) -> Self {
        let code = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => "invalid_argument",
            Code::Unauthenticated => "unauthenticated",
            Code::PermissionDenied => "permission_denied",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Unimplemented => "unimplemented",
            Code::Unavailable => "unavailable",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::Aborted => "aborted",
            Code::Cancelled => "canceled",
            _ => "internal",
        };
        TwirpError(code, s.message().to_owned())
    }
}

impl IntoResponse for TwirpError {
    fn into_response(self) -> Response {
        // The HTTP status Twirp's specification gives each code.
        let status = match self.0 {
            "invalid_argument" | "malformed" | "out_of_range" => StatusCode::BAD_REQUEST,
            "unauthenticated" => StatusCode::UNAUTHORIZED,
            "permission_denied" => StatusCode::FORBIDDEN,
            "not_found" | "bad_route" => StatusCode::NOT_FOUND,
            "already_exists" | "aborted" => StatusCode::CONFLICT,
            "resource_exhausted" => StatusCode::TOO_MANY_REQUESTS,
            "failed_precondition" => StatusCode::PRECONDITION_FAILED,
            "unimplemented" => StatusCode::NOT_IMPLEMENTED,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "deadline_exceeded" => StatusCode::GATEWAY_TIMEOUT,
            "canceled" => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = serde_json::json!({ "code": self.0, "msg": self.1 });
        (status, axum::Json(body)).into_response()
    }
}

fn decode<T>(encoding: Encoding, body: &[u8]) -> Result<T, TwirpError>
where
    T: prost::Message + Default + serde::de::DeserializeOwned,
{
    match encoding {
        Encoding::Protobuf => T::decode(body).map_err(|e| TwirpError("malformed", e.to_string())),
        Encoding::Json if body.is_empty() => Ok(T::default()),
        Encoding::Json => {
            serde_json::from_slice(body).map_err(|e| TwirpError("malformed", e.to_string()))
        }
    }
}

fn encode<T: prost::Message + serde::Serialize>(encoding: Encoding, message: &T) -> Response {
    match encoding {
        Encoding::Protobuf => (
            [(header::CONTENT_TYPE, "application/protobuf")],
            message.encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => axum::Json(message).into_response(),
    }
}

/// Our request, carrying the caller's bearer token as gRPC metadata.
fn authed<T>(headers: &HeaderMap, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        request.metadata_mut().insert("authorization", v);
    }
    request
}

async fn call(
    State(api): State<Api>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let encoding = if content_type.starts_with("application/protobuf") {
        Encoding::Protobuf
    } else if content_type.starts_with("application/json") {
        Encoding::Json
    } else {
        return TwirpError(
            "bad_route",
            format!(
                "unexpected Content-Type {content_type:?}: application/json or application/protobuf"
            ),
        )
        .into_response();
    };
    match dispatch(&api, &method, encoding, &headers, &body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(
    api: &Api,
    method: &str,
    encoding: Encoding,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, TwirpError> {
    Ok(match method {
        "CreateRoom" => {
            let r: lk::CreateRoomRequest = decode(encoding, body)?;
            let req = pb::CreateRoomRequest {
                name: r.name,
                max_participants: r.max_participants,
                empty_timeout: r.empty_timeout,
                large_room_threshold: 0,
            };
            let room = api.create_room(authed(headers, req)).await?.into_inner();
            encode(encoding, &room_info(room))
        }
        "ListRooms" => {
            let r: lk::ListRoomsRequest = decode(encoding, body)?;
            let req = pb::ListRoomsRequest { names: r.names };
            let rooms = api.list_rooms(authed(headers, req)).await?.into_inner();
            let rooms = rooms.rooms.into_iter().map(room_info).collect();
            encode(encoding, &lk::ListRoomsResponse { rooms })
        }
        "DeleteRoom" => {
            let r: lk::DeleteRoomRequest = decode(encoding, body)?;
            let req = pb::DeleteRoomRequest { room: r.room };
            api.delete_room(authed(headers, req)).await?;
            encode(encoding, &lk::DeleteRoomResponse {})
        }
        "ListParticipants" => {
            let r: lk::ListParticipantsRequest = decode(encoding, body)?;
            let participants = everyone(api, headers, &r.room).await?;
            encode(encoding, &lk::ListParticipantsResponse { participants })
        }
        "GetParticipant" => {
            let r: lk::RoomParticipantIdentity = decode(encoding, body)?;
            let found = everyone(api, headers, &r.room)
                .await?
                .into_iter()
                .find(|p| p.identity == r.identity)
                .ok_or_else(|| {
                    TwirpError("not_found", format!("no participant {:?}", r.identity))
                })?;
            encode(encoding, &found)
        }
        "RemoveParticipant" => {
            let r: lk::RoomParticipantIdentity = decode(encoding, body)?;
            let req = pb::RoomParticipantIdentity {
                room: r.room,
                identity: r.identity,
            };
            api.remove_participant(authed(headers, req)).await?;
            encode(encoding, &lk::RemoveParticipantResponse {})
        }
        "MutePublishedTrack" => {
            let r: lk::MuteRoomTrackRequest = decode(encoding, body)?;
            let req = pb::MuteRoomTrackRequest {
                room: r.room,
                identity: r.identity,
                track_sid: r.track_sid,
                muted: r.muted,
            };
            let answer = api.mute_published_track(authed(headers, req)).await?;
            let track = answer.into_inner().track.map(track_info);
            encode(encoding, &lk::MuteRoomTrackResponse { track })
        }
        "UpdateParticipant" => {
            let r: lk::UpdateParticipantRequest = decode(encoding, body)?;
            let req = pb::UpdateParticipantRequest {
                room: r.room,
                identity: r.identity,
                permission: r.permission.map(|p| pb::ParticipantPermission {
                    can_publish: Some(p.can_publish),
                }),
                // LiveKit leaves what is empty as it is.
                name: Some(r.name).filter(|n| !n.is_empty()),
                metadata: Some(r.metadata).filter(|m| !m.is_empty()),
                attributes: r.attributes.into_iter().collect(),
            };
            let p = api.update_participant(authed(headers, req)).await?;
            encode(encoding, &participant_info(p.into_inner()))
        }
        "UpdateSubscriptions" => {
            let r: lk::UpdateSubscriptionsRequest = decode(encoding, body)?;
            let mut track_sids = r.track_sids;
            track_sids.extend(r.participant_tracks.into_iter().flat_map(|p| p.track_sids));
            let req = pb::UpdateSubscriptionsRequest {
                room: r.room,
                identity: r.identity,
                track_sids,
                subscribe: r.subscribe,
            };
            api.update_subscriptions(authed(headers, req)).await?;
            encode(encoding, &lk::UpdateSubscriptionsResponse {})
        }
        "SendData" => {
            let r: lk::SendDataRequest = decode(encoding, body)?;
            #[allow(deprecated)]
            let req = pb::SendDataRequest {
                room: r.room,
                data: r.data,
                reliable: r.kind != lk::data_packet::Kind::Lossy as i32,
                topic: r.topic,
                destination_identities: r.destination_identities,
                destination_sids: r.destination_sids,
            };
            api.send_data(authed(headers, req)).await?;
            encode(encoding, &lk::SendDataResponse {})
        }
        other => {
            return Err(TwirpError(
                "bad_route",
                format!("no method {other:?} in livekit.RoomService"),
            ));
        }
    })
}

/// Every participant of a room, through all pages (LiveKit's ListParticipants has none).
async fn everyone(
    api: &Api,
    headers: &HeaderMap,
    room: &str,
) -> Result<Vec<lk::ParticipantInfo>, TwirpError> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let req = pb::ListParticipantsRequest {
            room: room.to_owned(),
            page_size: 0,
            page_token,
        };
        let page = api
            .list_participants(authed(headers, req))
            .await?
            .into_inner();
        all.extend(page.participants.into_iter().map(participant_info));
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

fn room_info(r: pb::Room) -> lk::Room {
    lk::Room {
        // Rooms are named, not numbered, across the cluster: the name is their id.
        sid: format!("RM_{}", r.name),
        name: r.name,
        empty_timeout: r.empty_timeout,
        max_participants: r.max_participants,
        creation_time: (r.creation_time_ms / 1000) as i64,
        creation_time_ms: r.creation_time_ms as i64,
        num_participants: r.num_participants,
        num_publishers: r.num_publishers,
        ..Default::default()
    }
}

fn participant_info(p: pb::ParticipantInfo) -> lk::ParticipantInfo {
    let tracks: Vec<lk::TrackInfo> = p.tracks.into_iter().map(track_info).collect();
    lk::ParticipantInfo {
        sid: p.sid,
        identity: p.identity,
        name: p.name,
        state: lk::participant_info::State::Active as i32,
        is_publisher: !tracks.is_empty(),
        tracks,
        permission: Some(lk::ParticipantPermission {
            can_subscribe: true,
            can_publish: p.stage,
            can_publish_data: true,
            ..Default::default()
        }),
        metadata: p.metadata,
        attributes: p
            .attributes
            .into_iter()
            .chain([("sfu.node".to_owned(), p.node)])
            .collect(),
        ..Default::default()
    }
}

fn track_info(t: pb::TrackInfo) -> lk::TrackInfo {
    let kind = if t.kind == "video" {
        lk::TrackType::Video
    } else {
        lk::TrackType::Audio
    };
    lk::TrackInfo {
        sid: t.sid,
        r#type: kind as i32,
        muted: t.muted,
        mime_type: t.codec,
        ..Default::default()
    }
}
