//! Webhooks: room, participant and track events POSTed to the configured URLs.
//!
//! Signed as LiveKit signs them, so existing receivers verify them unchanged: the
//! `Authorization` header is a JWT (HS256, API key as `iss`) whose `sha256` claim is the
//! base64 SHA-256 of the body. Media never waits for a webhook: workers hand events to a
//! bounded queue without blocking (a full queue drops the event and counts it in
//! `sfu_webhooks_dropped_total`), and a task delivers each one, retrying with exponential
//! backoff.
//!
//! `room_started` and `room_finished` are decided for the whole cluster, not per node: the
//! node whose registry transaction writes a room's first participant record sends
//! `room_started`, the one whose transaction deletes its last record sends `room_finished`
//! (see `Membership::set_json_alone`), so however participants race on however many nodes the
//! two alternate and each is sent once per period of presence. Presence is what the registry
//! holds, which follows joins and leaves by a few milliseconds: a participant that leaves
//! before another node has written its newcomer's record ends one period and the newcomer
//! starts the next. Two limits: if etcd cannot be reached when a record is written, the node
//! cannot tell and sends neither event; and a node that dies with a room's last participants
//! sends no `room_finished` (their records expire with its lease, written by nobody), so the
//! next `room_started` of that room follows without one.

use base64::Engine;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Events waiting for delivery before new ones are dropped.
const QUEUE: usize = 4096;
/// Delivery attempts per receiver, with these pauses between them.
const BACKOFF: [Duration; 4] = [
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

#[derive(Serialize, Clone, Debug)]
pub struct RoomRef {
    pub name: String,
}

#[derive(Serialize, Clone, Debug)]
pub struct ParticipantRef {
    pub sid: String,
    pub identity: String,
    pub name: String,
}

#[derive(Serialize, Clone, Debug)]
pub struct TrackRef {
    pub sid: String,
    pub kind: String,
    pub participant: String,
}

/// A recording, in `egress_started` and `egress_ended`.
#[derive(Serialize, Clone, Debug)]
pub struct EgressRef {
    pub id: String,
    /// `track`.
    pub kind: String,
    pub track: String,
    /// `active`, `complete` or `failed`.
    pub state: crate::recording::RecordingState,
    /// The file's path on the recording node.
    pub file: String,
    pub duration_ms: u64,
    pub size_bytes: u64,
    /// Why it failed or ended by itself (empty otherwise).
    pub error: String,
    /// With S3 configured: the uploaded file's URL, or why the upload failed (`egress_ended`
    /// is sent once the upload is over).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub upload_error: String,
}

impl From<&crate::recording::RecordingInfo> for EgressRef {
    fn from(i: &crate::recording::RecordingInfo) -> Self {
        Self {
            id: i.id.clone(),
            kind: i.kind.to_owned(),
            track: i.track.clone(),
            state: i.state,
            file: i.file.clone(),
            duration_ms: i.duration_ms,
            size_bytes: i.size_bytes,
            error: i.error.clone(),
            url: i.url.clone(),
            upload_error: i.upload_error.clone(),
        }
    }
}

/// One event, as sent (JSON).
#[derive(Serialize, Clone, Debug)]
pub struct Event {
    /// `room_started`, `room_finished`, `participant_joined`, `participant_left`,
    /// `track_published`, `track_unpublished`, `egress_started`, `egress_ended`.
    pub event: &'static str,
    pub id: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub node: String,
    pub room: RoomRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participant: Option<ParticipantRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track: Option<TrackRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressRef>,
}

impl Event {
    pub fn new(event: &'static str, node: &str, room: &str) -> Self {
        Self {
            event,
            id: format!("EV_{:016x}", rand::random::<u64>()),
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            node: node.to_owned(),
            room: RoomRef {
                name: room.to_owned(),
            },
            participant: None,
            track: None,
            egress: None,
        }
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    exp: u64,
    sha256: String,
}

/// Handle for queueing events; cheap to clone. Without receivers it does nothing.
#[derive(Clone, Default)]
pub struct Webhooks {
    tx: Option<mpsc::Sender<Event>>,
    /// Events dropped because the queue was full (exported as a metric).
    dropped: Counter,
}

impl Webhooks {
    /// Starts delivering to `urls` with `http` (`https://` receivers are verified as
    /// `sfu_control::tls::http_client` does), signing with `api_key`/`api_secret`; counts
    /// events it has to drop in `dropped`.
    pub fn start(
        urls: Vec<String>,
        api_key: String,
        api_secret: String,
        dropped: Counter,
        http: reqwest::Client,
    ) -> Self {
        Self::with_queue(urls, api_key, api_secret, dropped, http, QUEUE)
    }

    fn with_queue(
        urls: Vec<String>,
        api_key: String,
        api_secret: String,
        dropped: Counter,
        http: reqwest::Client,
        queue: usize,
    ) -> Self {
        if urls.is_empty() {
            return Self { tx: None, dropped };
        }
        let (tx, mut rx) = mpsc::channel::<Event>(queue);
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let body = serde_json::to_vec(&event).unwrap_or_default();
                let token = sign(&api_key, &api_secret, &body);
                for url in &urls {
                    tokio::spawn(deliver(
                        http.clone(),
                        url.clone(),
                        body.clone(),
                        token.clone(),
                        event.event,
                    ));
                }
            }
        });
        Self {
            tx: Some(tx),
            dropped,
        }
    }

    /// Queues an event without waiting.
    pub fn send(&self, event: Event) {
        if let Some(tx) = &self.tx
            && tx.try_send(event).is_err()
        {
            self.dropped.inc();
        }
    }
}

/// The signature: a JWT carrying the body's hash.
pub fn sign(api_key: &str, api_secret: &str, body: &[u8]) -> String {
    let claims = Claims {
        iss: api_key,
        exp: sfu_control::auth::expiry_in(Duration::from_secs(300)),
        sha256: base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body)),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(api_secret.as_bytes()),
    )
    .unwrap_or_default()
}

async fn deliver(
    http: reqwest::Client,
    url: String,
    body: Vec<u8>,
    token: String,
    event: &'static str,
) {
    for (attempt, pause) in std::iter::once(Duration::ZERO).chain(BACKOFF).enumerate() {
        tokio::time::sleep(pause).await;
        let r = http
            .post(&url)
            .header("content-type", "application/webhook+json")
            .header("authorization", &token)
            .body(body.clone())
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => tracing::debug!(url, event, attempt, status = %r.status(), "webhook refused"),
            Err(e) => tracing::debug!(url, event, attempt, "webhook failed: {e}"),
        }
    }
    tracing::warn!(
        url,
        event,
        "webhook given up after {} attempts",
        BACKOFF.len() + 1
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[tokio::test]
    async fn events_a_full_queue_cannot_take_are_counted_in_the_metrics() {
        let metrics = Metrics::new();
        // Nothing listens at this address; the queue holds one event, and the delivery task
        // cannot take it before this test yields (a current-thread runtime).
        let hooks = Webhooks::with_queue(
            vec!["http://127.0.0.1:9/hook".into()],
            "devkey".into(),
            "secret".into(),
            metrics.webhooks_dropped.clone(),
            sfu_control::tls::http_client(None, Duration::from_secs(5)).unwrap(),
            1,
        );
        for _ in 0..10 {
            hooks.send(Event::new("room_started", "n1", "r"));
        }
        assert_eq!(metrics.webhooks_dropped.get(), 9);
        assert!(
            metrics.encode().contains("sfu_webhooks_dropped_total 9"),
            "{}",
            metrics.encode()
        );
    }
}
