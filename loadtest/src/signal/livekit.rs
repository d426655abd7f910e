//! LiveKit's client signaling protocol, as a client: protobuf `SignalRequest`/`SignalResponse`
//! in binary WebSocket frames at `/rtc` (the `livekit-protocol` crate's types), so the same
//! scenarios run against a LiveKit server and against this project's nodes speaking it.
//!
//! The steps are those of LiveKit's SDKs: the WebSocket connection is the join (the token
//! names the room; `auto_subscribe` in the query), the server's `JoinResponse` comes first; a
//! publisher announces each track of its offer with an `AddTrackRequest` (its `cid` is the
//! track id in the offer's `a=msid`) and waits for each `TrackPublishedResponse` before
//! offering on its publisher connection; the server offers on the subscriber connection (again
//! whenever the tracks change) and the client answers. The client pings as the
//! `JoinResponse` says.
//!
//! Once the peer runs, one task of its own owns the socket ([`Running`]): it passes offers on,
//! sends what the peer asks and the pings, so the peer's event loop, which wakes for every
//! media packet, never polls a WebSocket. Placement through this project's control plane
//! works as for the [`sfu`](super::sfu) target; a session that ends without the server saying
//! so ends in [`Lost`], so that the peer joins again elsewhere.

use super::Endpoint;
use super::sfu::Lost;
use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as lk;
use lk::{signal_request, signal_response};
use prost::Message as _;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::sfu::Ws;

/// The protocol version asked for: what livekit-client 2.x speaks.
const PROTOCOL: i32 = 16;
/// How long one signaling step may take before the peer gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Between pings when the server does not say.
const DEFAULT_PING: Duration = Duration::from_secs(10);

/// A LiveKit session while joining.
pub struct Session {
    ws: Ws,
    /// Subscriber offers (sdp, id) that arrived while waiting for another message.
    offers: VecDeque<(String, u32)>,
    ping: Duration,
    /// The node the control plane chose (or the endpoint's URL), and its id.
    pub node_url: String,
    pub node: Option<String>,
}

/// A LiveKit session while the peer runs: see the module documentation.
pub struct Running {
    requests: mpsc::UnboundedSender<signal_request::Message>,
    offers: mpsc::UnboundedReceiver<anyhow::Result<(String, u32)>>,
    /// The id of the offer being answered, echoed in the answer.
    offer_id: u32,
    task: tokio::task::JoinHandle<()>,
}

/// Connects (the connection is the join) and waits for the `JoinResponse`.
pub async fn join(
    e: &Endpoint,
    base: &str,
    identity: &str,
    publish: bool,
    subscribe: bool,
    avoid: &[String],
) -> anyhow::Result<Session> {
    let token = e.tokens.for_peer(&e.room, identity, publish)?;
    let (ws, node_url, node) =
        super::honouring_busy(|| connect(e, base, &token, subscribe, avoid)).await?;
    let mut s = Session {
        ws,
        offers: VecDeque::new(),
        ping: DEFAULT_PING,
        node_url,
        node,
    };
    let join = s
        .expect("join", |m| match m {
            signal_response::Message::Join(j) => Some(j),
            _ => None,
        })
        .await?;
    if join.ping_interval > 0 {
        s.ping = Duration::from_secs(join.ping_interval as u64);
    }
    Ok(s)
}

async fn connect(
    e: &Endpoint,
    base: &str,
    token: &str,
    subscribe: bool,
    avoid: &[String],
) -> anyhow::Result<(Ws, String, Option<String>)> {
    let (url, node) = super::sfu::node_url(e, base, token, avoid).await?;
    let query = format!(
        "access_token={token}&auto_subscribe={}&sdk=rust&protocol={PROTOCOL}&version={}",
        u8::from(subscribe),
        env!("CARGO_PKG_VERSION"),
    );
    let ws = super::sfu::open(&url, &query).await?;
    Ok((ws, url, node))
}

/// What a response means to a session that waits for something else.
enum Other {
    Offer(String, u32),
    Leave(String),
    Ignored,
}

fn other(m: signal_response::Message) -> Other {
    match m {
        signal_response::Message::Offer(o) => Other::Offer(o.sdp, o.id),
        signal_response::Message::Leave(l) => Other::Leave(format!("{:?}", l.reason())),
        _ => Other::Ignored,
    }
}

fn decode(m: Message) -> anyhow::Result<Option<signal_response::Message>> {
    let Message::Binary(b) = m else {
        return Ok(None);
    };
    let r = lk::SignalResponse::decode(b).context("a malformed SignalResponse")?;
    Ok(r.message)
}

fn encode(m: signal_request::Message) -> Message {
    let r = lk::SignalRequest { message: Some(m) };
    Message::Binary(r.encode_to_vec().into())
}

impl Session {
    async fn send(&mut self, m: signal_request::Message) -> anyhow::Result<()> {
        self.ws.send(encode(m)).await.context("sending a request")
    }

    /// Reads responses until `want` picks one (a `Leave` or a closed socket fails); offers that
    /// come meanwhile are kept for [`Running`].
    async fn expect<T>(
        &mut self,
        what: &str,
        mut want: impl FnMut(signal_response::Message) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .with_context(|| format!("no {what} within {} s", STEP_TIMEOUT.as_secs()))?
                .ok_or_else(|| anyhow!("signaling closed while waiting for {what}"))?
                .context("reading the WebSocket")?;
            let Some(m) = decode(m)? else { continue };
            // Offers and leaves are looked at first: `want` takes the message.
            match &m {
                signal_response::Message::Offer(_) | signal_response::Message::Leave(_) => {
                    match other(m) {
                        Other::Offer(sdp, id) => self.offers.push_back((sdp, id)),
                        Other::Leave(reason) => bail!("the server ended the session: {reason}"),
                        Other::Ignored => {}
                    }
                    continue;
                }
                _ => {}
            }
            if let Some(t) = want(m) {
                return Ok(t);
            }
        }
    }

    /// Publishes the tracks of `offer`: announces each, then offers; returns the answer.
    pub async fn publish(&mut self, offer: String) -> anyhow::Result<String> {
        let tracks = announced_tracks(&offer)?;
        for t in &tracks {
            self.send(signal_request::Message::AddTrack(t.clone()))
                .await?;
        }
        for t in &tracks {
            let cid = t.cid.clone();
            self.expect("track_published", |m| match m {
                signal_response::Message::TrackPublished(p) if p.cid == cid => Some(()),
                _ => None,
            })
            .await?;
        }
        self.send(signal_request::Message::Offer(lk::SessionDescription {
            r#type: "offer".into(),
            sdp: offer,
            id: 1,
            ..Default::default()
        }))
        .await?;
        self.expect("answer", |m| match m {
            signal_response::Message::Answer(a) => Some(a.sdp),
            _ => None,
        })
        .await
    }

    /// Hands the socket to a task of its own; see the module documentation.
    pub fn run(self) -> Running {
        let (requests, rx) = mpsc::unbounded_channel();
        let (tx, offers) = mpsc::unbounded_channel();
        for o in self.offers {
            let _ = tx.send(Ok(o));
        }
        let task = tokio::spawn(own_socket(self.ws, rx, tx, self.ping));
        Running {
            requests,
            offers,
            offer_id: 0,
            task,
        }
    }
}

/// The tracks an offer sends, as LiveKit's `AddTrackRequest`s: one per sending media section,
/// its `cid` the track id of its `a=msid`, simulcast layers from its `a=rid` lines.
fn announced_tracks(sdp: &str) -> anyhow::Result<Vec<lk::AddTrackRequest>> {
    let mut tracks = Vec::new();
    for section in sdp.split("\r\nm=").skip(1) {
        let audio = section.starts_with("audio");
        if !audio && !section.starts_with("video") {
            continue;
        }
        let lines = || section.lines().map(str::trim_end);
        let Some(cid) = lines()
            .find_map(|l| l.strip_prefix("a=msid:"))
            .and_then(|m| m.split_whitespace().nth(1))
        else {
            continue;
        };
        let rids: Vec<&str> = lines()
            .filter_map(|l| l.strip_prefix("a=rid:"))
            .filter_map(|r| r.split_whitespace().next())
            .collect();
        let layers = rids
            .iter()
            .enumerate()
            .map(|(i, _)| lk::VideoLayer {
                quality: i as i32,
                width: 320 << i,
                height: 180 << i,
                ..Default::default()
            })
            .collect();
        let (r#type, source) = if audio {
            (lk::TrackType::Audio, lk::TrackSource::Microphone)
        } else {
            (lk::TrackType::Video, lk::TrackSource::Camera)
        };
        tracks.push(lk::AddTrackRequest {
            cid: cid.to_owned(),
            name: cid.to_owned(),
            r#type: r#type as i32,
            source: source as i32,
            width: if audio { 0 } else { 1280 },
            height: if audio { 0 } else { 720 },
            layers,
            ..Default::default()
        });
    }
    if tracks.is_empty() {
        bail!("the offer sends no track with an a=msid");
    }
    Ok(tracks)
}

/// Owns the socket while the peer runs: passes offers on, sends requests and pings; the end
/// is passed on as an error, [`Lost`] unless the server ended the session.
async fn own_socket(
    mut ws: Ws,
    mut requests: mpsc::UnboundedReceiver<signal_request::Message>,
    offers: mpsc::UnboundedSender<anyhow::Result<(String, u32)>>,
    every: Duration,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let end = loop {
        tokio::select! {
            m = ws.next() => {
                let m = match m {
                    None | Some(Ok(Message::Close(_))) => break Lost("signaling closed".into()).into(),
                    Some(Err(e)) => break anyhow!(Lost(format!("reading the WebSocket: {e}"))),
                    Some(Ok(m)) => m,
                };
                let m = match decode(m) {
                    Ok(Some(m)) => m,
                    Ok(None) => continue,
                    Err(e) => break e,
                };
                match other(m) {
                    Other::Offer(sdp, id) => {
                        if offers.send(Ok((sdp, id))).is_err() {
                            return;
                        }
                    }
                    Other::Leave(reason) => break anyhow!("the server ended the session: {reason}"),
                    Other::Ignored => {}
                }
            }
            r = requests.recv() => {
                let Some(r) = r else {
                    // The peer ended the session: leave and close.
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    return;
                };
                let leaving = matches!(r, signal_request::Message::Leave(_));
                if let Err(e) = ws.send(encode(r)).await {
                    break anyhow!(Lost(format!("writing the WebSocket: {e}")));
                }
                if leaving {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    return;
                }
            }
            _ = ping.tick() => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                let p = signal_request::Message::PingReq(lk::Ping { timestamp: now, rtt: 0 });
                if let Err(e) = ws.send(encode(p)).await {
                    break anyhow!(Lost(format!("writing the WebSocket: {e}")));
                }
            }
        }
    };
    let _ = offers.send(Err(end));
}

impl Running {
    /// The next subscriber offer from the server. Cancel-safe.
    pub async fn next_offer(&mut self) -> anyhow::Result<String> {
        let (sdp, id) = self
            .offers
            .recv()
            .await
            .unwrap_or_else(|| Err(Lost("signaling closed".into()).into()))?;
        self.offer_id = id;
        Ok(sdp)
    }

    pub fn answer(&mut self, sdp: String) -> anyhow::Result<()> {
        self.requests
            .send(signal_request::Message::Answer(lk::SessionDescription {
                r#type: "answer".into(),
                sdp,
                id: self.offer_id,
                ..Default::default()
            }))
            .map_err(|_| anyhow!(Lost("signaling closed".into())))
    }

    /// Leaves and closes the socket (best effort).
    pub async fn end(self) {
        let leave = lk::LeaveRequest {
            reason: lk::DisconnectReason::ClientInitiated as i32,
            ..Default::default()
        };
        let _ = self.requests.send(signal_request::Message::Leave(leave));
        let _ = tokio::time::timeout(Duration::from_secs(3), self.task).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_announces_its_tracks_by_msid_with_simulcast_layers() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=msid:s a1\r\na=sendonly\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=msid:s v1\r\na=rid:q send\r\n\
            a=rid:h send\r\na=rid:f send\r\na=sendonly\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n";
        let t = announced_tracks(sdp).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].cid.as_str(), t[0].r#type),
            ("a1", lk::TrackType::Audio as i32)
        );
        assert!(t[0].layers.is_empty());
        assert_eq!(
            (t[1].cid.as_str(), t[1].r#type),
            ("v1", lk::TrackType::Video as i32)
        );
        let q: Vec<i32> = t[1].layers.iter().map(|l| l.quality).collect();
        assert_eq!(q, [0, 1, 2], "low, medium and high for q, h and f");
        assert!(announced_tracks("v=0\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n").is_err());
    }
}
