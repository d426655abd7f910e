//! This project's WebSocket signaling protocol (`docs/signaling.md`), as a client: placement
//! through the control plane (`POST {control}/v1/join`) when there is one, `join`, `publish`
//! on the publisher connection, and answers to the node's offers on the subscriber connection.
//!
//! While joining, a [`Session`] reads the socket itself. Once the peer runs, [`Session::run`]
//! hands reading to a task of its own that passes only offers on: the peer's event loop wakes
//! for every media packet, and polling a WebSocket that often is not free (tungstenite
//! prepares its read buffer on every poll).
//!
//! A session that ends without the node saying so (the socket closed or broke: the node died)
//! or because the node asked the client to move ends in [`Lost`]: the peer may join again,
//! naming the lost node in `avoid` so that the control plane places it elsewhere.

use super::Endpoint;
use anyhow::{Context, anyhow, bail};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub(super) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long one signaling step may take before the peer gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Read buffer per WebSocket. tungstenite's default (128 KiB) would cost every simulated peer
/// that much memory for messages of a few KiB; the buffer grows when a message needs it.
const READ_BUFFER: usize = 1024;

/// The signaling connection ended without the node ending the session: the node died, the
/// network broke, or the node asked the client to move. Joining again is the remedy.
#[derive(Debug)]
pub struct Lost(pub String);

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "signaling lost: {}", self.0)
    }
}

impl std::error::Error for Lost {}

/// A WebSocket session while joining.
pub struct Session {
    ws: Ws,
    /// Offers that arrived while waiting for another message (e.g. during `publish`).
    offers: VecDeque<String>,
    /// The node the control plane chose (or the endpoint's URL).
    pub node_url: String,
    /// Its id, when the control plane chose it.
    pub node: Option<String>,
}

/// A WebSocket session while the peer runs: offers arrive from the reading task.
pub struct Running {
    sink: SplitSink<Ws, Message>,
    offers: mpsc::UnboundedReceiver<anyhow::Result<String>>,
    reader: tokio::task::JoinHandle<()>,
}

/// The node to join, skipping `avoid`: the control plane's choice (URL and id), or the
/// endpoint's URL.
pub(super) async fn node_url(
    e: &Endpoint,
    base: &str,
    token: &str,
    avoid: &[String],
) -> anyhow::Result<(String, Option<String>)> {
    let Some(control) = &e.control else {
        return Ok((base.to_owned(), None));
    };
    let r = e
        .http
        .post(format!("{}/v1/join", control.trim_end_matches('/')))
        .json(&json!({ "token": token, "avoid": avoid }))
        .send()
        .await
        .context("asking the control plane")?;
    if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(super::Busy(super::retry_after(r.headers())).into());
    }
    let r: Value = r
        .json()
        .await
        .context("reading the control plane's answer")?;
    let url = r["url"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("placement failed: {r}"))?;
    Ok((url, r["node"].as_str().map(str::to_owned)))
}

/// Connects and joins, placed away from the nodes in `avoid` (those the peer just lost). With
/// `subscribe`, the node subscribes the peer to every track of the room, present and future,
/// and offers them.
pub async fn join(
    e: &Endpoint,
    base: &str,
    identity: &str,
    publish: bool,
    subscribe: bool,
    avoid: &[String],
) -> anyhow::Result<Session> {
    let token = e.tokens.for_peer(&e.room, identity, publish)?;
    let (ws, url, node) = super::honouring_busy(|| connect(e, base, &token, avoid)).await?;
    let mut s = Session {
        ws,
        offers: VecDeque::new(),
        node_url: url,
        node,
    };
    s.send(json!({ "type": "join", "auto_subscribe": subscribe }))
        .await?;
    s.expect("joined").await?;
    Ok(s)
}

/// Asks where to join and opens the WebSocket there: [`super::Busy`] if the control plane
/// or the node says to come back later.
async fn connect(
    e: &Endpoint,
    base: &str,
    token: &str,
    avoid: &[String],
) -> anyhow::Result<(Ws, String, Option<String>)> {
    let (url, node) = node_url(e, base, token, avoid).await?;
    let ws = open(&url, &format!("access_token={token}")).await?;
    Ok((ws, url, node))
}

/// Opens the WebSocket at `{url}/rtc?{query}`: [`super::Busy`] if the node says to come back
/// later.
pub(super) async fn open(url: &str, query: &str) -> anyhow::Result<Ws> {
    let ws_url = format!(
        "{}/rtc?{query}",
        url.trim_end_matches('/').replacen("http", "ws", 1)
    );
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let connect = tokio_tungstenite::connect_async_with_config(ws_url, Some(config), true);
    match tokio::time::timeout(STEP_TIMEOUT, connect)
        .await
        .context("WebSocket connect timed out")?
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 429 => {
            let secs = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(1);
            Err(super::Busy(Duration::from_secs(secs.max(1))).into())
        }
        Err(e) => Err(anyhow!(e).context(format!("connecting to {url}/rtc"))),
    }
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

    /// Hands reading to a task of its own; see the module documentation.
    pub fn run(self) -> Running {
        let (sink, stream) = self.ws.split();
        let (tx, offers) = mpsc::unbounded_channel();
        for o in self.offers {
            let _ = tx.send(Ok(o));
        }
        let reader = tokio::spawn(read_offers(stream, tx));
        Running {
            sink,
            offers,
            reader,
        }
    }
}

/// Passes the node's offers on until the session ends; the end is passed on as an error,
/// [`Lost`] unless the node ended the session.
async fn read_offers(
    mut stream: SplitStream<Ws>,
    tx: mpsc::UnboundedSender<anyhow::Result<String>>,
) {
    let end = loop {
        let m = match stream.next().await {
            None | Some(Ok(Message::Close(_))) => break Lost("signaling closed".into()).into(),
            Some(Err(e)) => break anyhow!(Lost(format!("reading the WebSocket: {e}"))),
            Some(Ok(m)) => m,
        };
        let Message::Text(t) = m else { continue };
        let v: Value = match serde_json::from_str(&t) {
            Ok(v) => v,
            Err(e) => break anyhow!(e).context("a malformed message from the node"),
        };
        let offer = match v["type"].as_str() {
            Some("offer") => sdp_of(&v),
            Some("left") => break anyhow!("the node ended the session: {}", v["reason"]),
            Some("migrate") => {
                break Lost(format!("the node asked to migrate to {}", v["url"])).into();
            }
            _ => continue,
        };
        if tx.send(offer).is_err() {
            return;
        }
    };
    let _ = tx.send(Err(end));
}

impl Running {
    /// The next offer from the node (a subscriber waits for these). Cancel-safe.
    pub async fn next_offer(&mut self) -> anyhow::Result<String> {
        self.offers
            .recv()
            .await
            .unwrap_or_else(|| Err(Lost("signaling closed".into()).into()))
    }

    pub async fn answer(&mut self, sdp: String) -> anyhow::Result<()> {
        let text = json!({ "type": "answer", "sdp": sdp }).to_string();
        self.sink
            .send(Message::Text(text.into()))
            .await
            .context("sending the answer")
    }

    /// Leaves and closes the socket (best effort).
    pub async fn end(mut self) {
        let leave = json!({ "type": "leave" }).to_string();
        let _ = self.sink.send(Message::Text(leave.into())).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.sink.close()).await;
        self.reader.abort();
    }
}

fn sdp_of(v: &Value) -> anyhow::Result<String> {
    v["sdp"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{} without sdp", v["type"]))
}
