//! The systems under test and how a simulated peer joins them.
//!
//! - `whip`: any WHIP/WHEP server (this project's node among them): publishers POST to the WHIP
//!   endpoint, subscribers to the WHEP endpoint, with a bearer token.

use anyhow::{Context, bail};
use std::time::Duration;

/// A session created at the target, to be ended when the peer stops.
pub struct Session {
    pub answer: String,
    pub location: Option<String>,
}

/// Where peers join.
pub enum Target {
    /// `{base}/whip/{room}` and `{base}/whep/{room}`.
    Whip {
        base: String,
        room: String,
        tokens: Tokens,
        http: reqwest::Client,
    },
}

/// How bearer tokens are obtained.
pub enum Tokens {
    /// Minted per peer with an API key and secret (LiveKit-style claims).
    Mint { api_key: String, api_secret: String },
    /// One fixed token for everyone.
    Fixed(String),
    /// No token.
    None,
}

impl Tokens {
    fn for_peer(
        &self,
        room: &str,
        identity: &str,
        publish: bool,
    ) -> anyhow::Result<Option<String>> {
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
                    !publish,
                    Duration::from_secs(24 * 3600),
                );
                Some(sfu_node::auth::mint(api_secret, &claims)?)
            }
            Tokens::Fixed(t) => Some(t.clone()),
            Tokens::None => None,
        })
    }
}

impl Target {
    pub fn whip(base: &str, room: &str, tokens: Tokens) -> Self {
        Target::Whip {
            base: base.trim_end_matches('/').to_owned(),
            room: room.to_owned(),
            tokens,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Offers `sdp` and returns the answer.
    pub async fn start(&self, peer: usize, publish: bool, sdp: String) -> anyhow::Result<Session> {
        match self {
            Target::Whip {
                base,
                room,
                tokens,
                http,
            } => {
                let endpoint = if publish { "whip" } else { "whep" };
                let identity = format!("{endpoint}-{peer}");
                let mut req = http
                    .post(format!("{base}/{endpoint}/{room}"))
                    .header("content-type", "application/sdp")
                    .body(sdp);
                if let Some(t) = tokens.for_peer(room, &identity, publish)? {
                    req = req.bearer_auth(t);
                }
                let r = req
                    .send()
                    .await
                    .with_context(|| format!("POST {endpoint}"))?;
                let status = r.status();
                let location = r
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .map(|l| {
                        if l.starts_with("http") {
                            l.to_owned()
                        } else {
                            format!("{base}{l}")
                        }
                    });
                let body = r.text().await?;
                if status.as_u16() != 201 {
                    bail!("{endpoint} answered {status}: {body}");
                }
                Ok(Session {
                    answer: body,
                    location,
                })
            }
        }
    }

    /// Ends a session (best effort).
    pub async fn end(&self, session: &Session) {
        match self {
            Target::Whip { http, .. } => {
                if let Some(l) = &session.location {
                    let _ = http.delete(l).send().await;
                }
            }
        }
    }
}
