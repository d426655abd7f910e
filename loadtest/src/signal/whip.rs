//! WHIP (RFC 9725, publish) and WHEP (play): one offer/answer over HTTP with a bearer token,
//! `DELETE` on the session URL to end. Endpoint paths come from the scenario
//! (`target.whip_path`, `target.whep_path`), so any WHIP/WHEP server can be tested.

use super::Endpoint;
use anyhow::{Context, bail};

/// A WHIP or WHEP session.
pub struct Session {
    /// The server's answer.
    pub answer: String,
    /// The session URL (`Location`), to end it.
    location: Option<String>,
    http: reqwest::Client,
}

/// Offers `sdp` to the WHIP endpoint (`publish`) or to the WHEP endpoint, watching
/// `publisher` where the path names one; returns the session with the answer.
pub async fn start(
    e: &Endpoint,
    base: &str,
    identity: &str,
    publish: bool,
    publisher: &str,
    sdp: String,
) -> anyhow::Result<Session> {
    let (name, path) = if publish {
        ("WHIP", &e.whip_path)
    } else {
        ("WHEP", &e.whep_path)
    };
    let base = base.trim_end_matches('/');
    let url = format!(
        "{base}{}",
        path.replace("{room}", &e.room)
            .replace("{publisher}", publisher)
    );
    let token = e.tokens.for_peer(&e.room, identity, publish)?;
    let r = super::honouring_busy(|| async {
        let r = e
            .http
            .post(&url)
            .header("content-type", "application/sdp")
            .bearer_auth(&token)
            .body(sdp.clone())
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(super::Busy(super::retry_after(r.headers())).into());
        }
        Ok(r)
    })
    .await?;
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
    let body = r
        .text()
        .await
        .with_context(|| format!("reading the {name} answer"))?;
    if status.as_u16() != 201 {
        bail!("{name} {url} answered {status}: {}", body.trim());
    }
    Ok(Session {
        answer: body,
        location,
        http: e.http.clone(),
    })
}

impl Session {
    /// Ends the session (best effort: the server also times it out).
    pub async fn end(self) {
        if let Some(l) = &self.location {
            let _ = self.http.delete(l).send().await;
        }
    }
}
