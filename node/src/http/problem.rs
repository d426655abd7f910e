//! HTTP error responses as RFC 9457 problem details (`application/problem+json`).

use crate::auth::AuthError;
use crate::signaling::protocol::{ErrorCode, SignalError};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A problem detail response.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Seconds to wait before trying again (`Retry-After`), for `429`.
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            title: status.canonical_reason().unwrap_or("error"),
            status: status.as_u16(),
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// Tells the client when to come back (`Retry-After`, whole seconds).
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.retry_after = Some(secs.max(1));
        self
    }

    /// `429 Too Many Requests`: the node admits joins at a limited rate; come back after
    /// `wait` (rounded up to whole seconds, as `Retry-After` counts).
    pub fn too_many_requests(wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut p = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_joins",
            format!(
                "this node admits joins at a limited rate; retry in {}s",
                secs.max(1)
            ),
        );
        p.retry_after = Some(secs.max(1));
        p
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_string(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Self {
        if e.is_forbidden() {
            Problem::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
        } else {
            Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
        }
    }
}

impl From<SignalError> for Problem {
    fn from(e: SignalError) -> Self {
        let (status, kind) = match e.code {
            ErrorCode::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
            ErrorCode::InvalidSdp => (StatusCode::BAD_REQUEST, "invalid_sdp"),
            ErrorCode::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ErrorCode::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ErrorCode::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ErrorCode::InvalidState => (StatusCode::CONFLICT, "invalid_state"),
            ErrorCode::RoomFull => (StatusCode::SERVICE_UNAVAILABLE, "room_full"),
            ErrorCode::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ErrorCode::PeerFailed | ErrorCode::Internal => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        Problem::new(status, kind, e.message)
    }
}
