//! How a simulated peer signals with the system under test.
//!
//! - [`whip`]: one HTTP offer/answer (WHIP for publishers, WHEP for subscribers).
//! - [`sfu`]: this project's WebSocket protocol, optionally placed by its control plane; the
//!   node offers to subscribers, and offers again when tracks come and go.
//! - [`janus`]: Janus's VideoRoom plugin over its HTTP API.

pub mod janus;
pub mod sfu;
pub mod whip;

use crate::scenario::{Scenario, TargetKind};
use std::time::Duration;

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
