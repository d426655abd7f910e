//! Janus's VideoRoom plugin (multistream API, Janus 1.x) over its HTTP API
//! (`http://host:8088/janus`), as a client.
//!
//! One Janus session per simulated peer, with one plugin handle per role. A publisher creates
//! the room if needed and `joinandconfigure`s with its offer; a subscriber waits until the
//! room has the publishers it expects, `join`s as subscriber to all of them (but itself), gets
//! Janus's offer and `start`s with its answer. Asynchronous replies are read by long-polling
//! the session while a step waits for them; afterwards a keep-alive every
//! [`KEEPALIVE`] holds the session open (Janus drops silent sessions after 60 s by default),
//! so a running peer costs Janus no parked HTTP request.

use super::Endpoint;
use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use std::time::Duration;

/// How long one signaling step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Keep-alive period: well inside Janus's default 60 s session timeout.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// A Janus session (cheap to clone: a URL and the shared HTTP client).
#[derive(Clone)]
pub struct Session {
    http: reqwest::Client,
    session_url: String,
}

/// A VideoRoom plugin handle on a session.
pub struct Handle {
    url: String,
    id: u64,
}

/// The Janus room number for a room name: Janus numbers rooms (unless configured with
/// `string_ids`), so names are hashed (FNV-1a) into the positive 31-bit range.
pub fn room_number(name: &str) -> u64 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    ((h & 0x7fff_ffff) | 1) as u64
}

fn transaction() -> String {
    format!("{:016x}", rand::random::<u64>())
}

async fn post(http: &reqwest::Client, url: &str, mut body: Value) -> anyhow::Result<Value> {
    body["transaction"] = json!(transaction());
    let what = body["janus"].as_str().unwrap_or("request").to_owned();
    let r: Value = http
        .post(url)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url} ({what})"))?
        .json()
        .await
        .with_context(|| format!("reading Janus's reply to {what}"))?;
    if r["janus"] == "error" {
        bail!("Janus refused {what}: {}", r["error"]);
    }
    Ok(r)
}

impl Session {
    /// Creates a session.
    pub async fn open(e: &Endpoint) -> anyhow::Result<Self> {
        let base = e.url.trim_end_matches('/');
        let r = post(&e.http, base, json!({ "janus": "create" })).await?;
        let id = r["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("Janus created no session: {r}"))?;
        Ok(Self {
            http: e.http.clone(),
            session_url: format!("{base}/{id}"),
        })
    }

    /// Attaches the VideoRoom plugin.
    pub async fn attach(&self) -> anyhow::Result<Handle> {
        let r = post(
            &self.http,
            &self.session_url,
            json!({ "janus": "attach", "plugin": "janus.plugin.videoroom" }),
        )
        .await?;
        let id = r["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("Janus attached no handle: {r}"))?;
        Ok(Handle {
            url: format!("{}/{id}", self.session_url),
            id,
        })
    }

    async fn message(&self, h: &Handle, body: Value, jsep: Option<Value>) -> anyhow::Result<Value> {
        let mut m = json!({ "janus": "message", "body": body });
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        post(&self.http, &h.url, m).await
    }

    /// Long-polls until a VideoRoom event for `h` carrying a JSEP arrives (or a plugin error).
    async fn jsep_event(&self, h: &Handle) -> anyhow::Result<(Value, Value)> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        let url = format!("{}?maxev=10", self.session_url);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                bail!("no reply from Janus within {} s", STEP_TIMEOUT.as_secs());
            }
            let r = self
                .http
                .get(&url)
                .timeout(left)
                .send()
                .await
                .context("long-polling the Janus session")?;
            let v: Value = r.json().await.context("reading Janus events")?;
            let batch = match v {
                Value::Array(a) => a,
                other => vec![other],
            };
            for ev in batch {
                if ev["sender"].as_u64() != Some(h.id) {
                    continue;
                }
                let data = &ev["plugindata"]["data"];
                if let Some(err) = data.get("error") {
                    bail!("VideoRoom refused: {err}");
                }
                if let Some(jsep) = ev.get("jsep") {
                    return Ok((data.clone(), jsep.clone()));
                }
            }
        }
    }

    /// Makes sure the room exists (an existing room is fine).
    async fn ensure_room(&self, h: &Handle, room: u64) -> anyhow::Result<()> {
        let v = self
            .message(
                h,
                json!({
                    "request": "create",
                    "room": room,
                    "publishers": 1000,
                    "bitrate": 0,
                    "videocodec": "vp8",
                    "audiocodec": "opus",
                    "audiolevel_ext": true,
                    "notify_joining": false,
                }),
                None,
            )
            .await?;
        let data = &v["plugindata"]["data"];
        // 427: the room exists already.
        match data["error_code"].as_u64() {
            None | Some(427) => Ok(()),
            Some(_) => bail!("creating room {room}: {}", data["error"]),
        }
    }

    /// Publishes into the room with `offer`; returns the handle, Janus's answer and our
    /// publisher id in the room (to leave out of our own subscription).
    pub async fn publish(
        &self,
        e: &Endpoint,
        display: &str,
        offer: String,
    ) -> anyhow::Result<(Handle, String, Option<u64>)> {
        let h = self.attach().await?;
        self.ensure_room(&h, e.janus_room).await?;
        self.message(
            &h,
            json!({
                "request": "joinandconfigure",
                "room": e.janus_room,
                "ptype": "publisher",
                "display": display,
            }),
            Some(json!({ "type": "offer", "sdp": offer })),
        )
        .await?;
        let (data, jsep) = self.jsep_event(&h).await?;
        let answer = jsep["sdp"]
            .as_str()
            .ok_or_else(|| anyhow!("Janus answered without sdp"))?
            .to_owned();
        Ok((h, answer, data["id"].as_u64()))
    }

    /// The room's publishers but `own`, waiting up to [`STEP_TIMEOUT`] for `want` of them.
    async fn publishers(
        &self,
        h: &Handle,
        room: u64,
        want: usize,
        own: Option<u64>,
    ) -> anyhow::Result<Vec<u64>> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            let r = self
                .message(
                    h,
                    json!({ "request": "listparticipants", "room": room }),
                    None,
                )
                .await?;
            let feeds: Vec<u64> = r["plugindata"]["data"]["participants"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["publisher"].as_bool().unwrap_or(false))
                        .filter_map(|p| p["id"].as_u64())
                        .filter(|id| Some(*id) != own)
                        .collect()
                })
                .unwrap_or_default();
            let late = tokio::time::Instant::now() > deadline;
            if feeds.len() >= want.max(1) || (late && !feeds.is_empty()) {
                return Ok(feeds);
            }
            if late {
                bail!("no publisher in Janus room {room}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Subscribes to the room's publishers (but `own`); returns the handle and Janus's offer.
    pub async fn subscribe(
        &self,
        e: &Endpoint,
        want: usize,
        own: Option<u64>,
    ) -> anyhow::Result<(Handle, String)> {
        let h = self.attach().await?;
        let feeds = self.publishers(&h, e.janus_room, want, own).await?;
        let streams: Vec<Value> = feeds.iter().map(|f| json!({ "feed": f })).collect();
        self.message(
            &h,
            json!({ "request": "join", "room": e.janus_room, "ptype": "subscriber", "streams": streams }),
            None,
        )
        .await?;
        let (_, jsep) = self.jsep_event(&h).await?;
        let offer = jsep["sdp"]
            .as_str()
            .ok_or_else(|| anyhow!("Janus offered without sdp"))?
            .to_owned();
        Ok((h, offer))
    }

    /// Subscriber: answers Janus's offer.
    pub async fn start(&self, h: &Handle, answer: String) -> anyhow::Result<()> {
        self.message(
            h,
            json!({ "request": "start" }),
            Some(json!({ "type": "answer", "sdp": answer })),
        )
        .await?;
        Ok(())
    }

    /// Keeps the session alive (without long-polling) until the returned task is aborted.
    pub fn keep_alive(&self) -> tokio::task::JoinHandle<()> {
        let http = self.http.clone();
        let url = self.session_url.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(KEEPALIVE).await;
                let _ = post(&http, &url, json!({ "janus": "keepalive" })).await;
            }
        })
    }

    /// Ends the session (and with it every handle).
    pub async fn end(self) {
        let _ = post(&self.http, &self.session_url, json!({ "janus": "destroy" })).await;
    }
}

#[cfg(test)]
mod tests {
    use super::room_number;

    #[test]
    fn room_numbers_are_stable_positive_and_distinct() {
        assert_eq!(room_number("loadtest"), room_number("loadtest"));
        assert_ne!(room_number("loadtest-1"), room_number("loadtest-2"));
        assert!((1..=0x7fff_ffff).contains(&room_number("")));
    }
}
