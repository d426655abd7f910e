//! This project's WebSocket signaling protocol (`docs/signaling.md`), as a client: placement
//! through the control plane (`POST {control}/v1/join`) when there is one, `join`, `publish`
//! on the publisher connection, and answers to the node's offers on the subscriber connection.

use super::Endpoint;
use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long one signaling step may take before the peer gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// A joined WebSocket session.
pub struct Session {
    ws: Ws,
    /// Offers that arrived while waiting for another message (e.g. during `publish`).
    offers: VecDeque<String>,
    /// The node the control plane chose (or the endpoint's URL).
    pub node_url: String,
}

/// The node to join: the control plane's choice, or the endpoint's URL.
async fn node_url(e: &Endpoint, base: &str, token: &str) -> anyhow::Result<String> {
    let Some(control) = &e.control else {
        return Ok(base.to_owned());
    };
    let r: Value = e
        .http
        .post(format!("{}/v1/join", control.trim_end_matches('/')))
        .json(&json!({ "token": token }))
        .send()
        .await
        .context("asking the control plane")?
        .json()
        .await
        .context("reading the control plane's answer")?;
    r["url"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("placement failed: {r}"))
}

/// Connects and joins. With `subscribe`, the node subscribes the peer to every track of the
/// room, present and future, and offers them.
pub async fn join(
    e: &Endpoint,
    base: &str,
    identity: &str,
    publish: bool,
    subscribe: bool,
) -> anyhow::Result<Session> {
    let token = e.tokens.for_peer(&e.room, identity, publish)?;
    let url = node_url(e, base, &token).await?;
    let ws_url = format!(
        "{}/rtc?access_token={token}",
        url.trim_end_matches('/').replacen("http", "ws", 1)
    );
    let (ws, _) = tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::connect_async(ws_url))
        .await
        .context("WebSocket connect timed out")?
        .with_context(|| format!("connecting to {url}/rtc"))?;
    let mut s = Session {
        ws,
        offers: VecDeque::new(),
        node_url: url,
    };
    s.send(json!({ "type": "join", "auto_subscribe": subscribe }))
        .await?;
    s.expect("joined").await?;
    Ok(s)
}

impl Session {
    async fn send(&mut self, v: Value) -> anyhow::Result<()> {
        self.ws.send(Message::Text(v.to_string().into())).await?;
        Ok(())
    }

    /// Reads messages until one of type `kind` (an `error` or a closed socket fails); offers
    /// that come meanwhile are kept for [`Session::next_offer`].
    async fn expect(&mut self, kind: &str) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .with_context(|| format!("no {kind} within {} s", STEP_TIMEOUT.as_secs()))?
                .ok_or_else(|| anyhow!("signaling closed while waiting for {kind}"))?
                .context("reading the WebSocket")?;
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).context("a malformed message from the node")?;
            match v["type"].as_str() {
                Some(k) if k == kind => return Ok(v),
                Some("offer") => self.offers.push_back(sdp_of(&v)?),
                Some("error") => bail!("{kind}: the node answered {}: {}", v["code"], v["message"]),
                Some("left") => bail!("the node ended the session: {}", v["reason"]),
                _ => {}
            }
        }
    }

    /// Publishes: sends the offer, returns the answer.
    pub async fn publish(&mut self, sdp: String) -> anyhow::Result<String> {
        self.send(json!({ "type": "publish", "sdp": sdp })).await?;
        let a = self.expect("publish_answer").await?;
        sdp_of(&a)
    }

    /// The next offer from the node (a subscriber waits for these). Cancel-safe: a message is
    /// only taken off the socket inside one poll.
    pub async fn next_offer(&mut self) -> anyhow::Result<String> {
        if let Some(o) = self.offers.pop_front() {
            return Ok(o);
        }
        loop {
            let m = self
                .ws
                .next()
                .await
                .ok_or_else(|| anyhow!("signaling closed"))?
                .context("reading the WebSocket")?;
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).context("a malformed message from the node")?;
            match v["type"].as_str() {
                Some("offer") => return sdp_of(&v),
                Some("left") => bail!("the node ended the session: {}", v["reason"]),
                Some("migrate") => bail!("the node asked to migrate to {}", v["url"]),
                _ => {}
            }
        }
    }

    pub async fn answer(&mut self, sdp: String) -> anyhow::Result<()> {
        self.send(json!({ "type": "answer", "sdp": sdp })).await
    }

    pub async fn end(mut self) {
        let _ = self.send(json!({ "type": "leave" })).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}

fn sdp_of(v: &Value) -> anyhow::Result<String> {
    v["sdp"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{} without sdp", v["type"]))
}
