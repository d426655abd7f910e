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
}

impl Problem {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            title: status.canonical_reason().unwrap_or("error"),
            status: status.as_u16(),
            detail: detail.into(),
        }
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
            ErrorCode::PeerFailed | ErrorCode::Internal => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        Problem::new(status, kind, e.message)
    }
}
