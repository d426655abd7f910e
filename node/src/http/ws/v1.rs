//! LiveKit's `/rtc/v1` (one peer connection for both directions, the join request and the
//! first publisher offer in the URL), answered so that clients fall back to `/rtc` at once.
//!
//! livekit-client 2.x (`singlePeerConnection`, on by default since 2.16) first opens a
//! WebSocket at `/rtc/v1?join_request=…` carrying its publisher offer. When the upgrade is
//! refused it asks `/rtc/v1/validate`: a `404` whose body does not say "requested room does not
//! exist" makes it drop its peer connection and join again at `/rtc` with two peer connections
//! (a `401`/`403` is reported as "not allowed", anything else fails the join). The node's
//! sessions always have a publisher and a subscriber connection (`docs/signaling.md` says what
//! the single-connection mode would need), so `/rtc/v1` is a `404` problem, and its validate
//! checks the token first: a client with a bad token is told so at once instead of trying
//! `/rtc` too.

use super::{ConnectQuery, token_of};
use crate::http::{AppState, Problem, check_room_name};
use axum::extract::{Query, State};
use axum::http::StatusCode;

/// What a client of `/rtc/v1` is told: the path is not served, use `/rtc`.
fn not_served() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "v1 RTC path not served: this node speaks LiveKit's protocol with two peer \
         connections at /rtc",
    )
}

/// `GET /rtc/v1`: refused before any upgrade (a `404`, whatever the token).
pub async fn upgrade() -> Problem {
    not_served()
}

/// `GET /rtc/v1/validate`: the token's refusal as `/rtc/validate` gives it, else a `404` that
/// sends the client to `/rtc`.
pub async fn validate(
    State(state): State<AppState>,
    Query(query): Query<ConnectQuery>,
    headers: axum::http::HeaderMap,
) -> Problem {
    let checked = state
        .auth
        .verify(token_of(&query, &headers))
        .map_err(Problem::from)
        .and_then(|grants| {
            let room = grants.room.clone().unwrap_or_default();
            check_room_name(&room)?;
            grants.may_join(&room)?;
            Ok(())
        });
    match checked {
        Err(refused) => refused,
        Ok(()) => not_served(),
    }
}
