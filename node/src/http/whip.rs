//! WHIP (RFC 9725) and WHEP endpoints.
//!
//! `POST /whip/{room}` publishes, `POST /whep/{room}` plays (`?participant=IDENTITY` picks the
//! publisher; by default the one that joined first). Both answer `201 Created` with the SDP
//! answer and a `Location` for the session; `DELETE` on it ends the session; `PATCH` with an
//! `application/trickle-ice-sdpfrag` body trickles candidates (ICE restarts are not supported
//! and get `422`). The session URL holds a 128-bit random id and is the capability to end or
//! patch the session.

use super::{AppState, Problem, check_room_name};
use crate::media::{Command, JoinRequest, ParticipantKind};
use crate::signaling::Outbound;
use crate::signaling::protocol::{PeerTarget, ServerMessage};
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

const SDP: &str = "application/sdp";
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

/// Which endpoint a session belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Endpoint {
    Whip,
    Whep,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Whip => "whip",
            Endpoint::Whep => "whep",
        }
    }
}

struct Session {
    endpoint: Endpoint,
    room: String,
    participant: String,
    etag: String,
    remote_ufrag: Option<String>,
    /// The access token that opened it (a hash), for WHEP's sessions-per-token limit.
    token: u64,
}

/// A key for the access token in `headers` (its hash: the token itself need not be kept).
fn token_key(headers: &HeaderMap) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

/// Live WHIP/WHEP sessions by id.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A poisoned lock only means a handler panicked mid-update; the map is still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/whip/{room}", post(whip))
        .route("/whep/{room}", post(whep))
        .route("/whip/{room}/{session}", delete(end).patch(patch))
        .route("/whep/{room}/{session}", delete(end).patch(patch))
}

#[derive(Deserialize)]
struct WhepQuery {
    participant: Option<String>,
}

async fn whip(
    State(state): State<AppState>,
    ConnectInfo(source): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    start(state, source, Endpoint::Whip, room, None, headers, body).await
}

async fn whep(
    State(state): State<AppState>,
    ConnectInfo(source): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    Query(query): Query<WhepQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    start(
        state,
        source,
        Endpoint::Whep,
        room,
        query.participant,
        headers,
        body,
    )
    .await
}

async fn start(
    state: AppState,
    peer: SocketAddr,
    endpoint: Endpoint,
    room: String,
    source: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    check_room_name(&room)?;
    let grants = state.bearer(&headers)?;
    grants.may_join(&room)?;
    state.admitting(peer.ip())?;
    let allowed = match endpoint {
        Endpoint::Whip => grants.can_publish,
        Endpoint::Whep => grants.can_subscribe,
    };
    if !allowed {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the access token does not allow {}",
                match endpoint {
                    Endpoint::Whip => "publishing",
                    Endpoint::Whep => "subscribing",
                }
            ),
        ));
    }
    // One viewer token is often shared (an embed, a link), but it may not open sessions
    // without end: each is a peer connection and a place in the room.
    let token = token_key(&headers);
    let per_token = state.config.limits.whep_sessions_per_token as usize;
    if endpoint == Endpoint::Whep && per_token > 0 {
        let open = state
            .sessions
            .lock()
            .values()
            .filter(|s| s.endpoint == Endpoint::Whep && s.token == token)
            .count();
        if open >= per_token {
            return Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sessions",
                format!(
                    "this access token already plays {open} sessions (limits.whep_sessions_per_token)"
                ),
            ));
        }
    }
    let sdp = read_body(&state, &headers, body, SDP).await?;
    let remote_ufrag = sdp
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .map(str::to_owned);

    let (events, mut events_rx) = crate::signaling::events();
    let kind = match endpoint {
        Endpoint::Whip => ParticipantKind::Whip,
        Endpoint::Whep => ParticipantKind::Whep { source },
    };
    let joined = state
        .admit_and_join(JoinRequest {
            room: room.clone(),
            grants,
            kind,
            auto_subscribe: false,
            events: Some(events),
            place: false,
        })
        .await?;
    let participant = joined.participant.sid;
    let answer = state
        .media
        .request(&room, |reply| match endpoint {
            Endpoint::Whip => Command::Publish {
                room: room.clone(),
                participant: participant.clone(),
                sdp,
                sources: Default::default(),
                track_sids: Default::default(),
                reply,
            },
            Endpoint::Whep => Command::Play {
                room: room.clone(),
                participant: participant.clone(),
                sdp,
                reply,
            },
        })
        .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            let _ = state.media.send(
                &room,
                Command::Leave {
                    room: room.clone(),
                    participant,
                    reason: "negotiation failed".into(),
                },
            );
            return Err(e.into());
        }
    };

    let id = format!("{:032x}", rand::random::<u128>());
    let etag = format!("\"{:016x}\"", rand::random::<u64>());
    state.sessions.lock().insert(
        id.clone(),
        Session {
            endpoint,
            room: room.clone(),
            participant,
            etag: etag.clone(),
            remote_ufrag,
            token,
        },
    );
    // Forget the session once the participant is gone, whatever ended it.
    let sessions = state.sessions.clone();
    let session_id = id.clone();
    tokio::spawn(async move {
        while let Some(m) = events_rx.recv().await {
            if matches!(&m, Outbound::Message(m) if matches!(**m, ServerMessage::Left { .. })) {
                break;
            }
        }
        sessions.lock().remove(&session_id);
    });

    let location = format!("/{}/{}/{}", endpoint.path(), encode_segment(&room), id);
    let mut response = (StatusCode::CREATED, answer).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    h.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
    for (name, value) in [(header::LOCATION, location), (header::ETAG, etag)] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    Ok(response)
}

async fn end(
    State(state): State<AppState>,
    Path((_room, id)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let session = state
        .sessions
        .lock()
        .remove(&id)
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "not_found", "no such session"))?;
    let _ = state.media.send(
        &session.room,
        Command::Leave {
            room: session.room.clone(),
            participant: session.participant,
            reason: format!("{} session deleted", session.endpoint.path()),
        },
    );
    Ok(StatusCode::OK)
}

async fn patch(
    State(state): State<AppState>,
    Path((_room, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, Problem> {
    let (room, participant, endpoint, etag, remote_ufrag) = {
        let sessions = state.sessions.lock();
        let s = sessions
            .get(&id)
            .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "not_found", "no such session"))?;
        (
            s.room.clone(),
            s.participant.clone(),
            s.endpoint,
            s.etag.clone(),
            s.remote_ufrag.clone(),
        )
    };
    if let Some(m) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
        && m.trim() != "*"
        && m.trim() != etag
    {
        return Err(Problem::new(
            StatusCode::PRECONDITION_FAILED,
            "etag_mismatch",
            "If-Match does not match the session's ETag",
        ));
    }
    let fragment = read_body(&state, &headers, body, SDPFRAG).await?;
    let (ufrag, candidates) = trickle_fragment(&fragment);
    if let (Some(new), Some(old)) = (ufrag, remote_ufrag.as_deref())
        && new != old
    {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ice_restart_unsupported",
            "ICE restarts are not supported; start a new session",
        ));
    }
    let target = match endpoint {
        Endpoint::Whip => PeerTarget::Publisher,
        Endpoint::Whep => PeerTarget::Subscriber,
    };
    for (candidate, sdp_mid) in candidates {
        state
            .media
            .request(&room, |reply| Command::Trickle {
                room: room.clone(),
                participant: participant.clone(),
                target,
                candidate,
                sdp_mid,
                reply,
            })
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A trickle-ICE fragment (RFC 8840): its `a=ice-ufrag`, if any, and its candidates (without
/// `a=`), each with the `a=mid` it follows.
pub(crate) fn trickle_fragment(fragment: &str) -> (Option<&str>, Vec<(String, Option<String>)>) {
    let ufrag = fragment
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"));
    let mut mid = None;
    let mut candidates = Vec::new();
    for line in fragment.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.to_owned());
        } else if let Some(c) = line
            .strip_prefix("a=")
            .filter(|c| c.starts_with("candidate:"))
        {
            candidates.push((c.to_owned(), mid.clone()));
        }
    }
    (ufrag, candidates)
}

/// Reads a text body of the given content type, within the SDP size limit.
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    content_type: &str,
) -> Result<String, Problem> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !given.trim().to_ascii_lowercase().starts_with(content_type) {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("expected Content-Type {content_type}"),
        ));
    }
    let limit = state.config.limits.max_sdp_bytes;
    let bytes = to_bytes(body, limit).await.map_err(|_| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body larger than {limit} bytes"),
        )
    })?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "invalid_sdp", "body is not UTF-8"))
}

/// Percent-encodes a path segment (everything but RFC 3986 unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_path_segments() {
        assert_eq!(super::encode_segment("my room/ü"), "my%20room%2F%C3%BC");
        assert_eq!(super::encode_segment("demo-1_a.b~"), "demo-1_a.b~");
    }
}
