//! How a simulated peer signals with the system under test.
//!
//! - [`whip`]: one HTTP offer/answer (WHIP for publishers, WHEP for subscribers).
//! - [`sfu`]: this project's WebSocket protocol, optionally placed by its control plane; the
//!   node offers to subscribers, and offers again when tracks come and go.
//! - [`janus`]: Janus's VideoRoom plugin over its HTTP API.
//! - [`livekit`]: LiveKit's client protocol (protobuf over a WebSocket at `/rtc`), against a
//!   LiveKit server or this project's nodes.

pub mod janus;
pub mod livekit;
pub mod sfu;
pub mod whip;

use crate::scenario::{Scenario, TargetKind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A server's "come back later": `429 Too Many Requests`, with its `Retry-After`.
#[derive(Debug)]
pub struct Busy(pub Duration);

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the server is busy; retry after {:?}", self.0)
    }
}

impl std::error::Error for Busy {}

/// How long a peer keeps coming back before its join counts as failed.
const BUSY_PATIENCE: Duration = Duration::from_secs(90);

/// Joins the servers told to come back later, over the whole run.
pub static BUSY_RETRIES: AtomicU64 = AtomicU64::new(0);

/// The `Retry-After` of a 429 answer (seconds; 1 if absent or unreadable).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    let secs = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(secs.max(1))
}

/// Runs `attempt` again while the server answers [`Busy`], waiting as told plus up to half as
/// long again at random (so a storm told to wait one second does not come back in the same
/// millisecond), for at most [`BUSY_PATIENCE`].
pub async fn honouring_busy<T, F, Fut>(mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + BUSY_PATIENCE;
    loop {
        match attempt().await {
            Err(e) => {
                let Some(Busy(wait)) = e.downcast_ref::<Busy>() else {
                    return Err(e);
                };
                let jitter = wait.mul_f64(rand::random::<f64>() * 0.5);
                let at = tokio::time::Instant::now() + *wait + jitter;
                if at > deadline {
                    return Err(e.context("still busy after retrying for 90 s"));
                }
                BUSY_RETRIES.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep_until(at).await;
            }
            ok => return ok,
        }
    }
}

/// How each peer gets its access token.
#[derive(Clone)]
pub enum Tokens {
    /// Minted per peer with an API key and secret (LiveKit-style claims).
    Mint { api_key: String, api_secret: String },
    /// One fixed token for everyone.
    Fixed(String),
}

impl Tokens {
    /// The scenario's token, or minted ones with its key (the development key by default).
    pub fn from_scenario(s: &Scenario) -> Self {
        match &s.auth.token {
            Some(t) => Tokens::Fixed(t.clone()),
            None => Tokens::Mint {
                api_key: s.auth.api_key.clone().unwrap_or_else(|| "devkey".into()),
                api_secret: s.auth.api_secret.clone().unwrap_or_else(|| "secret".into()),
            },
        }
    }

    pub fn for_peer(&self, room: &str, identity: &str, publish: bool) -> anyhow::Result<String> {
        Ok(match self {
            Tokens::Mint {
                api_key,
                api_secret,
            } => {
                let claims = sfu_node::auth::join_claims(
                    api_key,
                    identity,
                    room,
                    publish,
                    true,
                    Duration::from_secs(24 * 3600),
                );
                sfu_node::auth::mint(api_secret, &claims)?
            }
            Tokens::Fixed(t) => t.clone(),
        })
    }
}

/// Where the peers of one room join.
pub struct Endpoint {
    pub kind: TargetKind,
    /// Base URL (for Janus, its HTTP API).
    pub url: String,
    /// The control plane placing peers (`sfu` only).
    pub control: Option<String>,
    pub room: String,
    /// Janus room number (Janus numbers its rooms).
    pub janus_room: u64,
    pub whip_path: String,
    pub whep_path: String,
    pub tokens: Tokens,
    /// Shared by all peers (one connection pool).
    pub http: reqwest::Client,
}

impl Endpoint {
    pub fn new(s: &Scenario, room: String, http: reqwest::Client) -> Self {
        Self {
            kind: s.target.kind,
            url: s.target.url.clone(),
            control: s.target.control.clone(),
            janus_room: janus::room_number(&room),
            room,
            whip_path: s.target.whip_path.clone(),
            whep_path: s.target.whep_path.clone(),
            tokens: Tokens::from_scenario(s),
            http,
        }
    }
}
