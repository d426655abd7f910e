//! Field-by-field mappings between LiveKit's wire types and the JSON protocol's messages, for
//! [`super::livekit`]: tracks, qualities and rids, candidates, track settings, leave reasons.

// See `super::livekit` on the deprecated fields.
#![allow(deprecated)]

use super::livekit::{Decoded, MAX_TRACKS_PER_REQUEST};
use super::protocol::{ClientMessage, ErrorCode, PeerTarget, SignalError};
use livekit_protocol as lk;
use lk::signal_response;
use serde_json::Value;

pub(super) fn reply(m: signal_response::Message) -> Decoded {
    Decoded::Reply(Box::new(response(m)))
}

pub(super) fn response(m: signal_response::Message) -> lk::SignalResponse {
    lk::SignalResponse { message: Some(m) }
}

/// The mute state of each track a resuming client publishes, from its `SyncState`.
pub(super) fn sync_mutes(s: &lk::SyncState) -> impl Iterator<Item = (String, bool)> + '_ {
    s.publish_tracks
        .iter()
        .filter_map(|p| p.track.as_ref())
        .take(MAX_TRACKS_PER_REQUEST)
        .map(|t| (t.sid.clone(), t.muted))
}

pub(super) fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or("").to_owned()
}

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Rooms have no sid of their own: one derived from the name is the same on every node.
pub(super) fn room_sid(room: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    room.hash(&mut h);
    format!("RM_{:016x}", h.finish())
}

pub(super) fn permission(can_publish: bool) -> lk::ParticipantPermission {
    lk::ParticipantPermission {
        can_subscribe: true,
        can_publish,
        // Data packets are open to every participant, audience too (see media::room::data).
        can_publish_data: true,
        ..Default::default()
    }
}

/// This client's own permissions, from our `permissions` (or `permissions_changed`).
pub(super) fn own_permission(p: &Value) -> lk::ParticipantPermission {
    lk::ParticipantPermission {
        can_subscribe: p["can_subscribe"].as_bool().unwrap_or(true),
        can_update_metadata: p["can_update_metadata"].as_bool().unwrap_or(false),
        ..permission(p["can_publish"].as_bool().unwrap_or(false))
    }
}

/// A participant's attributes, from its view's `attributes` object (absent: none).
pub(super) fn attributes_of(v: &Value) -> std::collections::HashMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), str_of(v)))
        .collect()
}

/// The `RequestResponse` to a refused `UpdateParticipantMetadata`, from our `error`.
pub(super) fn request_refused(
    error: &Value,
    request: lk::UpdateParticipantMetadata,
) -> lk::SignalResponse {
    use lk::request_response::{Reason, Request};
    let reason = match error["code"].as_str().unwrap_or("") {
        "forbidden" => Reason::NotAllowed,
        "too_large" | "rate_limited" => Reason::LimitExceeded,
        "not_found" => Reason::NotFound,
        "bad_request" => Reason::InvalidRequest,
        _ => Reason::UnclassifiedError,
    };
    response(signal_response::Message::RequestResponse(
        lk::RequestResponse {
            request_id: request.request_id,
            reason: reason as i32,
            message: str_of(&error["message"]),
            request: Some(Request::UpdateMetadata(request)),
        },
    ))
}

/// `ConnectionQualityUpdate` from our `connection_quality`.
pub(super) fn quality_update(m: &Value) -> lk::ConnectionQualityUpdate {
    let updates = m["updates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| lk::ConnectionQualityInfo {
            participant_sid: str_of(&u["participant"]),
            quality: match u["quality"].as_str().unwrap_or("") {
                "excellent" => lk::ConnectionQuality::Excellent,
                "good" => lk::ConnectionQuality::Good,
                "poor" => lk::ConnectionQuality::Poor,
                _ => lk::ConnectionQuality::Lost,
            } as i32,
            score: u["score"].as_f64().unwrap_or(0.0) as f32,
        })
        .collect();
    lk::ConnectionQualityUpdate { updates }
}

/// LiveKit's simulcast rids are `q`, `h`, `f` (low to high); others go by position.
pub(super) fn quality_of(rid: &str, index: usize) -> i32 {
    match rid {
        "q" => lk::VideoQuality::Low as i32,
        "h" => lk::VideoQuality::Medium as i32,
        "f" => lk::VideoQuality::High as i32,
        _ => index.min(2) as i32,
    }
}

pub(super) fn rid_of(layer: &lk::VideoLayer) -> String {
    if !layer.rid.is_empty() {
        return layer.rid.clone();
    }
    match lk::VideoQuality::try_from(layer.quality) {
        Ok(lk::VideoQuality::Low) => "q",
        Ok(lk::VideoQuality::Medium) => "h",
        _ => "f",
    }
    .to_owned()
}

pub(super) fn track_info(t: &Value) -> lk::TrackInfo {
    let video = t["kind"] == "video";
    let layers: Vec<lk::VideoLayer> = t["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, rid)| lk::VideoLayer {
            quality: quality_of(rid.as_str().unwrap_or(""), i),
            rid: str_of(rid),
            ..Default::default()
        })
        .collect();
    let source = match t["source"].as_str().unwrap_or("") {
        "microphone" => lk::TrackSource::Microphone,
        "screen_share" => lk::TrackSource::ScreenShare,
        _ if !video => lk::TrackSource::Microphone,
        _ => lk::TrackSource::Camera,
    };
    lk::TrackInfo {
        sid: str_of(&t["sid"]),
        r#type: if video {
            lk::TrackType::Video
        } else {
            lk::TrackType::Audio
        } as i32,
        name: str_of(&t["name"]),
        muted: t["muted"].as_bool().unwrap_or(false),
        simulcast: layers.len() > 1,
        layers,
        source: source as i32,
        mime_type: str_of(&t["codec"]),
        ..Default::default()
    }
}

pub(super) fn disconnect_reason(reason: &str) -> lk::DisconnectReason {
    if reason.contains("same identity") || reason.contains("replaced") {
        lk::DisconnectReason::DuplicateIdentity
    } else if reason.contains("removed") {
        lk::DisconnectReason::ParticipantRemoved
    } else if reason.contains("deleted") {
        lk::DisconnectReason::RoomDeleted
    } else if reason.contains("client left") {
        lk::DisconnectReason::ClientInitiated
    } else {
        lk::DisconnectReason::UnknownReason
    }
}

/// `TrickleRequest`: the candidate is `RTCIceCandidateInit` as JSON.
pub(super) fn trickle(t: &lk::TrickleRequest) -> Result<Option<Decoded>, SignalError> {
    let init: Value = serde_json::from_str(&t.candidate_init).map_err(|e| {
        SignalError::new(
            ErrorCode::BadRequest,
            format!("malformed candidate_init: {e}"),
        )
    })?;
    let candidate = str_of(&init["candidate"]);
    if candidate.is_empty() {
        // End of candidates.
        return Ok(None);
    }
    let target = if t.target == lk::SignalTarget::Subscriber as i32 {
        PeerTarget::Subscriber
    } else {
        PeerTarget::Publisher
    };
    Ok(Some(Decoded::Request(ClientMessage::Trickle {
        target,
        candidate,
        sdp_mid: init["sdpMid"].as_str().map(str::to_owned),
    })))
}

/// `UpdateTrackSettings`: one settings request per track. A quality without a size asks for
/// a layer's usual height.
pub(super) fn track_settings(s: lk::UpdateTrackSettings) -> Result<Vec<Decoded>, SignalError> {
    if s.track_sids.len() > MAX_TRACKS_PER_REQUEST {
        return Err(SignalError::new(
            ErrorCode::BadRequest,
            "at most 1000 tracks per request",
        ));
    }
    let (width, height) = if s.width > 0 || s.height > 0 {
        (Some(s.width), Some(s.height))
    } else {
        match lk::VideoQuality::try_from(s.quality) {
            Ok(lk::VideoQuality::Low) => (None, Some(180)),
            Ok(lk::VideoQuality::Medium) => (None, Some(360)),
            _ => (None, None),
        }
    };
    Ok(s.track_sids
        .into_iter()
        .map(|track| {
            Decoded::Request(ClientMessage::TrackSettings {
                track,
                width,
                height,
                enabled: !s.disabled,
                pinned: false,
            })
        })
        .collect())
}
