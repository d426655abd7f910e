//! What a load test runs: the target, the rooms and peers, their media, the pace.
//!
//! Read from a TOML file (`--scenario FILE`), then overridden by flags. Every mistake is
//! reported with the field it concerns and why, e.g. `video.fps: must be between 1 and 60`.
//!
//! ```toml
//! rooms = 2
//! publishers = 2                    # per room
//! publishers_subscribe = true       # publishers also receive the others' media
//! subscribers = 50                  # per room
//! join_rate = 20                    # peers started per second
//! warmup_secs = 3
//! duration_secs = 30
//! light_receivers = false           # measure from RTP headers, decrypt 1 packet in 64
//! light_gro = true                  # light receivers take a sender's GSO runs whole (UDP_GRO)
//!
//! [target]
//! kind = "sfu"                      # sfu (WebSocket protocol) | whip (WHIP/WHEP) | janus
//! url = "http://127.0.0.1:7880"
//! control = "http://127.0.0.1:7900" # optional: place peers through the control plane
//!
//! [video]
//! bitrate_kbps = 1500               # of the top layer
//! fps = 30
//! keyframe_interval_secs = 3
//! keyframe_factor = 5               # a keyframe is this many delta frames in size
//! simulcast = true                  # three layers: 1/8, 1/3 and full bitrate
//!
//! [audio]
//! bitrate_kbps = 32
//! ptime_ms = 20
//! audio_level = true                # RFC 6464 header extension
//!
//! [speakers]
//! turn_secs = 5                     # publishers take turns speaking (0: all at once)
//! ```

use serde::{Deserialize, Serialize};
use std::path::Path;

/// A scenario mistake: the field (a dotted key of the file, or the flag that set it) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ScenarioError {
    pub field: String,
    pub reason: String,
}

pub(crate) fn err(field: &str, reason: impl Into<String>) -> ScenarioError {
    ScenarioError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Which kind of system is tested.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// This project's nodes, over the WebSocket signaling protocol.
    Sfu,
    /// A LiveKit server, or this project's nodes, over LiveKit's client protocol.
    #[serde(rename = "livekit")]
    #[value(name = "livekit")]
    LiveKit,
    /// Any WHIP (publishers) and WHEP (subscribers) server.
    Whip,
    /// Janus's VideoRoom plugin over its HTTP API.
    Janus,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub kind: TargetKind,
    /// Base URL (`http://host:port`; for Janus, its HTTP API, e.g. `http://127.0.0.1:8088/janus`).
    pub url: String,
    /// Where subscribers connect, round robin (default: `url`).
    #[serde(default)]
    pub subscriber_urls: Vec<String>,
    /// The control plane, to place each peer (`sfu` targets only).
    #[serde(default)]
    pub control: Option<String>,
    /// WHIP endpoint under `url` (`whip` targets); `{room}` is replaced by the room name.
    #[serde(default = "default_whip_path")]
    pub whip_path: String,
    /// WHEP endpoint under `url` (`whip` targets); `{room}` as above, `{publisher}` by the
    /// identity of the publisher this subscriber watches (subscribers spread over publishers).
    #[serde(default = "default_whep_path")]
    pub whep_path: String,
}

fn default_whip_path() -> String {
    "/whip/{room}".into()
}

fn default_whep_path() -> String {
    "/whep/{room}?participant={publisher}".into()
}

impl Default for TargetSpec {
    /// A node on this machine in development mode, over WHIP and WHEP.
    fn default() -> Self {
        Self {
            kind: TargetKind::Whip,
            url: "http://127.0.0.1:7880".into(),
            subscriber_urls: Vec::new(),
            control: None,
            whip_path: default_whip_path(),
            whep_path: default_whep_path(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VideoSpec {
    pub bitrate_kbps: u32,
    #[serde(default = "default_fps")]
    pub fps: u32,
    #[serde(default = "default_keyframe_interval")]
    pub keyframe_interval_secs: f64,
    #[serde(default = "default_keyframe_factor")]
    pub keyframe_factor: u32,
    #[serde(default)]
    pub simulcast: bool,
}

impl Default for VideoSpec {
    fn default() -> Self {
        Self {
            bitrate_kbps: 1500,
            fps: default_fps(),
            keyframe_interval_secs: default_keyframe_interval(),
            keyframe_factor: default_keyframe_factor(),
            simulcast: false,
        }
    }
}

fn default_fps() -> u32 {
    30
}

fn default_keyframe_factor() -> u32 {
    5
}

fn default_keyframe_interval() -> f64 {
    3.0
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AudioSpec {
    pub bitrate_kbps: u32,
    #[serde(default = "default_ptime")]
    pub ptime_ms: u32,
    #[serde(default = "yes")]
    pub audio_level: bool,
}

impl Default for AudioSpec {
    fn default() -> Self {
        Self {
            bitrate_kbps: 48,
            ptime_ms: default_ptime(),
            audio_level: true,
        }
    }
}

fn default_ptime() -> u32 {
    20
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SpeakerSpec {
    /// Publishers of a room take turns speaking for this long each (0: all speak at once).
    #[serde(default)]
    pub turn_secs: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    pub api_key: Option<String>,
    pub api_secret: Option<String>,
    /// One fixed token for every peer instead of minted ones.
    pub token: Option<String>,
}

/// See the module documentation.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub target: TargetSpec,
    #[serde(default = "one")]
    pub rooms: u32,
    /// Room names are this prefix and the room's number.
    #[serde(default = "default_room")]
    pub room_prefix: String,
    /// Publishers per room.
    #[serde(default = "one")]
    pub publishers: u32,
    /// Whether publishers also receive the other publishers' media (a meeting).
    #[serde(default)]
    pub publishers_subscribe: bool,
    /// Subscribers per room.
    #[serde(default)]
    pub subscribers: u32,
    #[serde(default = "default_join_rate")]
    pub join_rate: f64,
    #[serde(default = "default_warmup")]
    pub warmup_secs: f64,
    #[serde(default = "default_duration")]
    pub duration_secs: f64,
    /// Receivers measure media from the clear RTP headers and authenticate and decrypt only a
    /// sample ([`crate::light`]): a fraction of the CPU per packet; latency from the sample.
    #[serde(default)]
    pub light_receivers: bool,
    /// Light receivers ask the kernel for a sender's runs of equal-size datagrams as one
    /// message (`UDP_GRO`, [`crate::stamped`]): the kernel's receive path is then paid per
    /// message rather than per datagram. Off, they read datagram by datagram as a browser does.
    #[serde(default = "yes")]
    pub light_gro: bool,
    pub video: Option<VideoSpec>,
    pub audio: Option<AudioSpec>,
    #[serde(default)]
    pub speakers: SpeakerSpec,
    /// Never written out: it holds secrets.
    #[serde(default, skip_serializing)]
    pub auth: AuthSpec,
    /// Address the peers' sockets bind to.
    #[serde(default = "default_bind")]
    pub bind: String,
}

impl Default for Scenario {
    /// What runs without a file: one publisher (1.5 Mbps video, 48 kbps audio) and ten
    /// subscribers in one room of a node on this machine, over WHIP and WHEP.
    fn default() -> Self {
        Self {
            target: TargetSpec::default(),
            rooms: 1,
            room_prefix: default_room(),
            publishers: 1,
            publishers_subscribe: false,
            subscribers: 10,
            join_rate: default_join_rate(),
            warmup_secs: default_warmup(),
            duration_secs: default_duration(),
            light_receivers: false,
            light_gro: true,
            video: Some(VideoSpec::default()),
            audio: Some(AudioSpec::default()),
            speakers: SpeakerSpec::default(),
            auth: AuthSpec::default(),
            bind: default_bind(),
        }
    }
}

fn one() -> u32 {
    1
}
fn default_room() -> String {
    "loadtest".into()
}
fn default_join_rate() -> f64 {
    20.0
}
fn default_warmup() -> f64 {
    3.0
}
fn default_duration() -> f64 {
    15.0
}
fn default_bind() -> String {
    "127.0.0.1".into()
}

impl Scenario {
    /// Parses TOML text and checks it.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| {
            // toml names the offending key in its message; keep its first line.
            let msg = e.message().to_owned();
            let field = e
                .span()
                .and_then(|span| field_at(text, span.start))
                .unwrap_or_else(|| "scenario".to_owned());
            err(&field, msg)
        })?;
        s.validate()?;
        Ok(s)
    }

    pub fn from_file(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("scenario", format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    /// Checks every value; the first mistake is returned.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let t = &self.target;
        for (field, url) in std::iter::once(("target.url", &t.url))
            .chain(
                t.subscriber_urls
                    .iter()
                    .map(|u| ("target.subscriber_urls", u)),
            )
            .chain(t.control.iter().map(|u| ("target.control", u)))
        {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(err(field, format!("{url:?} is not an http(s) URL")));
            }
        }
        if t.control.is_some() && !matches!(t.kind, TargetKind::Sfu | TargetKind::LiveKit) {
            return Err(err(
                "target.control",
                "placement is only for kind = \"sfu\" or \"livekit\"",
            ));
        }
        for (field, path) in [
            ("target.whip_path", &t.whip_path),
            ("target.whep_path", &t.whep_path),
        ] {
            if !path.starts_with('/') || !path.contains("{room}") {
                return Err(err(
                    field,
                    format!("{path:?} must start with '/' and contain {{room}}"),
                ));
            }
        }
        if self.rooms == 0 || self.rooms > 10_000 {
            return Err(err("rooms", "must be between 1 and 10000"));
        }
        if self.room_prefix.is_empty() || self.room_prefix.contains('/') {
            return Err(err("room_prefix", "must be non-empty and contain no '/'"));
        }
        if self.publishers + self.subscribers == 0 {
            return Err(err("subscribers", "a scenario needs at least one peer"));
        }
        if self.publishers_subscribe && self.publishers < 2 {
            return Err(err(
                "publishers_subscribe",
                "needs at least 2 publishers per room (nobody receives their own media)",
            ));
        }
        if self.subscribers > 0 && self.publishers == 0 {
            return Err(err(
                "publishers",
                "subscribers need at least one publisher per room",
            ));
        }
        if self.peers() > 100_000 {
            return Err(err("subscribers", "more than 100000 peers in all"));
        }
        if self.publishers > 0 && self.video.is_none() && self.audio.is_none() {
            return Err(err("video", "publishers need video or audio (or both)"));
        }
        if !(self.join_rate > 0.0 && self.join_rate <= 1000.0) {
            return Err(err(
                "join_rate",
                "must be more than 0 and at most 1000 peers per second",
            ));
        }
        if !(0.0..=3600.0).contains(&self.warmup_secs) {
            return Err(err("warmup_secs", "must be between 0 and 3600"));
        }
        if !(self.duration_secs >= 1.0 && self.duration_secs <= 86_400.0) {
            return Err(err("duration_secs", "must be between 1 and 86400"));
        }
        if let Some(v) = &self.video {
            if !(10..=50_000).contains(&v.bitrate_kbps) {
                return Err(err("video.bitrate_kbps", "must be between 10 and 50000"));
            }
            if !(1..=60).contains(&v.fps) {
                return Err(err("video.fps", "must be between 1 and 60"));
            }
            if !(v.keyframe_interval_secs >= 0.1 && v.keyframe_interval_secs <= 600.0) {
                return Err(err(
                    "video.keyframe_interval_secs",
                    "must be between 0.1 and 600",
                ));
            }
            if !(1..=50).contains(&v.keyframe_factor) {
                return Err(err("video.keyframe_factor", "must be between 1 and 50"));
            }
        }
        if let Some(a) = &self.audio {
            if !(6..=510).contains(&a.bitrate_kbps) {
                return Err(err(
                    "audio.bitrate_kbps",
                    "must be between 6 and 510 (Opus)",
                ));
            }
            if ![10, 20, 40, 60].contains(&a.ptime_ms) {
                return Err(err("audio.ptime_ms", "must be 10, 20, 40 or 60"));
            }
        }
        if !(self.speakers.turn_secs >= 0.0 && self.speakers.turn_secs <= 3600.0) {
            return Err(err("speakers.turn_secs", "must be between 0 and 3600"));
        }
        if self.bind.parse::<std::net::IpAddr>().is_err() {
            return Err(err("bind", format!("{:?} is not an IP address", self.bind)));
        }
        if self.auth.api_key.is_some() != self.auth.api_secret.is_some() {
            return Err(err("auth", "api_key and api_secret go together"));
        }
        Ok(())
    }

    /// Total peers.
    pub fn peers(&self) -> u64 {
        self.rooms as u64 * (self.publishers as u64 + self.subscribers as u64)
    }

    pub fn room(&self, n: u32) -> String {
        if self.rooms == 1 {
            self.room_prefix.clone()
        } else {
            format!("{}-{n}", self.room_prefix)
        }
    }
}

/// The dotted key path of the line holding byte `offset` of TOML text: the last table header
/// above it and the line's key.
fn field_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[start..end].trim();
    let unbracket = |l: &str| l.trim_matches(['[', ']']).trim().to_owned();
    if line.starts_with('[') {
        return Some(unbracket(line));
    }
    let table = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(unbracket);
    let key = line.split('=').next()?.trim();
    if key.is_empty() {
        return table;
    }
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
rooms = 2
publishers = 1
subscribers = 10
light_receivers = true

[target]
kind = "sfu"
url = "http://127.0.0.1:7880"

[video]
bitrate_kbps = 1500
simulcast = true

[audio]
bitrate_kbps = 32
"#;

    fn broken(replace: &str, with: &str) -> ScenarioError {
        let text = GOOD.replace(replace, with);
        Scenario::from_toml(&text).expect_err("a malformed scenario is refused")
    }

    #[test]
    fn a_good_scenario_parses_with_defaults() {
        let s = Scenario::from_toml(GOOD).unwrap();
        assert_eq!(s.peers(), 22);
        assert!(s.light_receivers);
        assert_eq!(s.video.as_ref().unwrap().fps, 30);
        assert_eq!(s.audio.as_ref().unwrap().ptime_ms, 20);
        assert_eq!(s.room(1), "loadtest-1");
    }

    #[test]
    fn the_shipped_scenarios_parse() {
        for text in [
            include_str!("../scenarios/one-to-many.toml"),
            include_str!("../scenarios/cluster-2000.toml"),
        ] {
            let s = Scenario::from_toml(text).unwrap();
            assert_eq!(s.target.kind, TargetKind::Sfu);
        }
    }

    #[test]
    fn each_mistake_names_its_field_and_reason() {
        let cases = [
            (
                broken("kind = \"sfu\"", "kind = \"mediasoup\""),
                "target.kind",
                "unknown variant",
            ),
            (
                broken("url = \"http://127.0.0.1:7880\"", "url = \"ftp://x\""),
                "target.url",
                "not an http(s) URL",
            ),
            (
                broken("rooms = 2", "rooms = 0"),
                "rooms",
                "between 1 and 10000",
            ),
            (
                broken("rooms = 2", "rooms = \"two\""),
                "rooms",
                "invalid type",
            ),
            (
                broken("bitrate_kbps = 1500", "bitrate_kbps = 5"),
                "video.bitrate_kbps",
                "between 10 and 50000",
            ),
            (
                broken("simulcast = true", "simulcast = true\nfps = 100"),
                "video.fps",
                "between 1 and 60",
            ),
            (
                broken("bitrate_kbps = 32", "bitrate_kbps = 32\nptime_ms = 30"),
                "audio.ptime_ms",
                "10, 20, 40 or 60",
            ),
            (
                broken("subscribers = 10", "subscribers = 10\njoin_rate = 0"),
                "join_rate",
                "more than 0",
            ),
            (
                broken("subscribers = 10", "subscribers = 10\nbogus = 1"),
                "bogus",
                "unknown field",
            ),
            (
                broken("subscribers = 10", "subscribers = 10\nbind = \"localhost\""),
                "bind",
                "not an IP address",
            ),
        ];
        for (e, field, reason) in &cases {
            assert_eq!(&e.field, field, "{e}");
            assert!(e.reason.contains(reason), "{e}");
        }
        // Placement is refused for other targets, naming the field.
        let whip = GOOD.replace(
            "kind = \"sfu\"",
            "kind = \"whip\"\ncontrol = \"http://c:7900\"",
        );
        let e = Scenario::from_toml(&whip).unwrap_err();
        assert_eq!(e.field, "target.control");
        let e = Scenario::from_toml("rooms = 1").unwrap_err();
        assert!(e.reason.contains("missing field"), "{e}");
    }
}
