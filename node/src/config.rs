//! Node configuration: defaults, then a TOML file, then environment variables and flags.
//!
//! With no configuration at all the node runs in development mode on loopback: API key
//! `devkey`, secret `secret`, HTTP on 127.0.0.1:7880, media on UDP port 7882 and up announced
//! as 127.0.0.1, and a log line saying so. The development key is public, so it is never used
//! where anyone but this machine could present it: a node bound to another address, or one in
//! a cluster (etcd), refuses to start without keys unless told `--dev`.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

pub use sfu_control::keys::{DEV_API_KEY, DEV_API_SECRET, MIN_SECRET_BYTES};

/// Complete node configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the HTTP server (signaling, WHIP/WHEP, demo, metrics) listens.
    pub http_bind: SocketAddr,
    /// Media transport.
    pub rtc: RtcConfig,
    /// API key → secret. Empty means development mode, which needs [`Config::dev`] unless
    /// the node is reachable from this machine only.
    pub keys: BTreeMap<String, String>,
    /// Development mode asked for: the public development key even on an open address or in a
    /// cluster (`--dev`).
    pub dev: bool,
    /// Per-room limits and forwarding choices.
    pub room: RoomLimits,
    /// Limits on signaling input.
    pub limits: InputLimits,
    /// Membership in a cluster of nodes.
    pub cluster: ClusterConfig,
    /// `tracing` filter, e.g. `info,sfu_node=debug`.
    pub log: String,
    /// How long a draining node waits for its participants to leave before it exits.
    pub drain_timeout_secs: u64,
    /// Webhook receivers.
    pub webhook: WebhookConfig,
    /// HTTPS for the HTTP server, and trust for HTTPS the node calls.
    pub tls: TlsConfig,
    /// Track recordings.
    pub recording: RecordingConfig,
    /// Federation gateway settings (this node carries links to other organisations' clusters).
    pub federation: Option<crate::federation::FederationConfig>,
    /// The web app served at `/`.
    pub web: WebConfig,
}

/// The meeting app (built from `app/` by `npm run --prefix app build`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Directory of the built app, served at `/`; relative paths are from the node's working
    /// directory. Without it, `/` serves the demo page (also at `/demo.html`).
    pub app_dir: std::path::PathBuf,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            app_dir: "app/dist".into(),
        }
    }
}

/// Where recordings go.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordingConfig {
    /// Directory recordings are written to (created when the first one starts); relative
    /// paths are from the node's working directory.
    pub dir: std::path::PathBuf,
    /// Free space (MB) the directory's filesystem must keep: a recording is refused below it
    /// (`507`), and a running one stops, its file finalised (failed, "disk full"). 0: no check.
    pub min_free_mb: u64,
    /// `[recording.s3]`: upload finished files to S3-compatible storage.
    pub s3: Option<crate::recording::upload::S3Config>,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            dir: "recordings".into(),
            min_free_mb: 256,
            s3: None,
        }
    }
}

/// TLS: the HTTP server (signaling, WHIP/WHEP, admin API) serves HTTPS with `cert` and `key`;
/// HTTPS the node calls (webhooks) is verified with the system's roots plus `ca`.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    pub ca: Option<std::path::PathBuf>,
}

/// Where to send webhooks (room, participant and track events).
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    pub urls: Vec<String>,
    /// The API key whose secret signs the webhooks (default: the first configured key).
    pub api_key: Option<String>,
}

/// Media transport settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RtcConfig {
    /// First UDP port; worker `i` uses `udp_port + i`.
    pub udp_port: u16,
    /// Address the UDP sockets bind to.
    pub bind_ip: IpAddr,
    /// Addresses announced to peers as ICE host candidates. Empty: this host's interface
    /// addresses (non-loopback first, then 127.0.0.1).
    pub node_ips: Vec<IpAddr>,
    /// Media worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Send a run of same-size datagrams to one destination as one message the kernel cuts
    /// up (UDP GSO, Linux 4.18+; turned off by itself where the kernel or device refuses).
    /// Off: one message per datagram, as before 2026-12-04.
    pub udp_gso: bool,
}

/// Cluster membership. With no etcd endpoints the node runs standalone, with an in-memory
/// registry and no relay links.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id: a DNS-style name, also the name in its certificate. Empty: a random one.
    pub node_id: String,
    /// Cluster name; nodes of one cluster share a registry prefix.
    pub name: String,
    pub region: String,
    /// etcd endpoints (`http://host:2379`, or `https://` with `etcd_access.ca`). Empty:
    /// standalone.
    pub etcd: Vec<String>,
    /// TLS and user for a secured etcd.
    pub etcd_access: sfu_control::registry::EtcdAccess,
    /// Where the relay (QUIC) endpoint listens.
    pub relay_bind: SocketAddr,
    /// Where other nodes reach it. Default: the first announced address and the bound port.
    pub relay_advertise: Option<SocketAddr>,
    /// Base URL clients use for this node. Default: the first announced address and the HTTP
    /// port.
    pub http_advertise: Option<String>,
    /// Directory with `ca.pem`, `{node_id}.pem` and `{node_id}.key`.
    pub certs_dir: Option<std::path::PathBuf>,
    /// Nodes a track is fed to directly before further nodes are redirected to them.
    pub fanout: usize,
    /// Relayed media goes straight between the media workers' UDP sockets (sealed with keys
    /// from the relay link's TLS session) when the peer offers it too and the path works;
    /// false: in the relay link's QUIC datagrams only (e.g. where the media ports are closed
    /// between nodes: the path is then never confirmed and media stays in QUIC anyway). On by
    /// default: see BENCHMARKS.md for what it saves.
    pub direct_media: bool,
    /// Registry lease time to live, in seconds (keep-alives go every third of it).
    pub lease_ttl_secs: u64,
    /// Participants this node takes before placement prefers others (0: none stated; the
    /// measured CPU of its media workers and its egress decide).
    pub capacity: u32,
    /// Media this node may send, in Mbit/s (0: its fastest network interface's speed, or
    /// 1,000 if unknown).
    pub egress_capacity_mbps: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            name: "default".to_owned(),
            region: String::new(),
            etcd: Vec::new(),
            etcd_access: Default::default(),
            relay_bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 7890),
            relay_advertise: None,
            http_advertise: None,
            certs_dir: None,
            fanout: 4,
            direct_media: true,
            lease_ttl_secs: 5,
            capacity: 0,
            egress_capacity_mbps: 0,
        }
    }
}

impl ClusterConfig {
    /// Whether the node joins a cluster (rather than running standalone).
    pub fn enabled(&self) -> bool {
        !self.etcd.is_empty()
    }
}

/// Room limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomLimits {
    /// Participants per room on this node; 0 means no limit.
    pub max_participants: usize,
    /// Highest simulcast layer sent to subscribers by default (0 = lowest).
    pub default_max_layer: usize,
    /// Audio tracks each subscriber receives: the loudest (0: all).
    pub top_k: usize,
    /// Participants whose video each subscriber receives: the most recent speakers, plus
    /// pinned tracks and screen shares (0: all).
    pub last_n: usize,
    /// Rooms above this many participants are large: their audience is counted, not
    /// announced one by one (a room created through the API may set its own).
    pub large_room_threshold: u32,
}

/// Limits on signaling input, so oversized input gets an error instead of eating memory.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InputLimits {
    /// Largest WebSocket JSON message accepted.
    pub max_message_bytes: usize,
    /// Largest SDP accepted over WHIP/WHEP.
    pub max_sdp_bytes: usize,
    /// Joins per second the node admits before answering `429` (0: the default for its
    /// media workers, see [`JOINS_PER_WORKER`]).
    pub joins_per_sec: u32,
    /// A WebSocket client from which nothing (not even the answer to a ping, which browsers
    /// send by themselves) arrived for this long is gone: its session ends. The node pings
    /// every third of it.
    pub ws_idle_secs: u64,
    /// WHEP sessions one access token may have open at once (0: no limit).
    pub whep_sessions_per_token: u32,
    /// Joins wait (`429`, `Retry-After`) while the media workers use more than this share of a
    /// core each, on average over the last second: a join then would degrade everyone already
    /// in (0: never).
    pub max_worker_cpu: f64,
    /// Joins per second admitted from one source address (bursts of twice that; addresses of
    /// this machine are exempt; 0: no limit).
    pub joins_per_sec_per_source: u32,
    /// Seconds an HTTP client has for the TLS handshake and then for each request's headers:
    /// connections opened and left silent do not pile up.
    pub header_timeout_secs: u64,
}

/// Joins per second per media worker admitted by default. Measured (BENCHMARKS.md, "Large
/// rooms"): a join costs a worker a few milliseconds of CPU (DTLS handshake, negotiation),
/// so this rate keeps joining under half of a worker's time while media flows.
pub const JOINS_PER_WORKER: u32 = 50;

impl Default for Config {
    fn default() -> Self {
        Self {
            // Loopback until told otherwise: with no keys, this machine is all it may serve.
            http_bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7880),
            rtc: RtcConfig::default(),
            keys: BTreeMap::new(),
            dev: false,
            room: RoomLimits::default(),
            limits: InputLimits::default(),
            cluster: ClusterConfig::default(),
            drain_timeout_secs: 60,
            webhook: WebhookConfig::default(),
            tls: TlsConfig::default(),
            recording: RecordingConfig::default(),
            federation: None,
            web: WebConfig::default(),
            // webrtc-rs logs expected protocol noise (unknown DTLS extensions, stray STUN) at
            // warn; keep it out of operators' logs unless asked for.
            log: "info,rtc=error,rtc_dtls=error,rtc_ice=error,rtc_srtp=error,rtc_interceptor=error"
                .to_owned(),
        }
    }
}

impl Default for RtcConfig {
    fn default() -> Self {
        Self {
            udp_port: 7882,
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            node_ips: Vec::new(),
            workers: 0,
            udp_gso: true,
        }
    }
}

impl Default for RoomLimits {
    fn default() -> Self {
        Self {
            max_participants: 0,
            default_max_layer: 2,
            top_k: 3,
            last_n: 0,
            large_room_threshold: crate::media::roster::DEFAULT_LARGE_ROOM_THRESHOLD,
        }
    }
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_sdp_bytes: 64 * 1024,
            joins_per_sec: 0,
            ws_idle_secs: 45,
            whep_sessions_per_token: 10,
            max_worker_cpu: 0.95,
            joins_per_sec_per_source: 10,
            header_timeout_secs: 10,
        }
    }
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }

    /// Development mode on 127.0.0.1 with ephemeral HTTP and UDP ports and two media workers:
    /// what tests and local tools start in-process.
    pub fn loopback() -> Self {
        let mut c = Config {
            http_bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            ..Default::default()
        };
        c.rtc.udp_port = 0;
        c.rtc.node_ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        // Tests and local tools run their peers on the same cores as the node.
        c.limits.max_worker_cpu = 0.0;
        c.rtc.workers = 2;
        c.cluster.relay_bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        c
    }

    /// Whether no API keys were configured, so the development key is in use.
    pub fn is_dev(&self) -> bool {
        self.keys.is_empty()
    }

    /// The API keys in effect (the development key in development mode).
    pub fn effective_keys(&self) -> BTreeMap<String, String> {
        if self.is_dev() {
            [(DEV_API_KEY.to_owned(), DEV_API_SECRET.to_owned())].into()
        } else {
            self.keys.clone()
        }
    }

    /// Number of media workers to run.
    pub fn worker_count(&self) -> usize {
        if self.rtc.workers > 0 {
            self.rtc.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// Joins per second admitted (see [`InputLimits::joins_per_sec`]).
    pub fn joins_per_sec(&self) -> u32 {
        if self.limits.joins_per_sec > 0 {
            self.limits.joins_per_sec
        } else {
            JOINS_PER_WORKER * self.worker_count() as u32
        }
    }

    /// Addresses to announce as ICE candidates.
    pub fn announced_ips(&self) -> Vec<IpAddr> {
        if !self.rtc.node_ips.is_empty() {
            return self.rtc.node_ips.clone();
        }
        if !self.rtc.bind_ip.is_unspecified() {
            return vec![self.rtc.bind_ip];
        }
        // Signaling on loopback only reaches clients on this machine: they need no other
        // address, and none is opened.
        if self.http_bind.ip().is_loopback() {
            return vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        }
        let mut ips: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
            .map(|addrs| {
                addrs
                    .filter_map(|a| a.address?.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())))
                    .filter(|ip| !ip.is_loopback())
                    .collect()
            })
            .unwrap_or_default();
        ips.dedup();
        ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        ips
    }

    /// Whether only this machine can reach the node: HTTP and media on loopback, no cluster.
    pub fn loopback_only(&self) -> bool {
        self.http_bind.ip().is_loopback()
            && self.announced_ips().iter().all(IpAddr::is_loopback)
            && !self.cluster.enabled()
    }

    /// Checks values that parse but cannot work, or must not.
    pub fn validate(&self) -> anyhow::Result<()> {
        sfu_control::keys::check_keys(&self.keys)?;
        if self.keys.is_empty() && !self.dev && !self.loopback_only() {
            bail!(
                "no API keys: the development key is public, so a node {} needs keys \
                 (--keys KEY:SECRET or SFU_KEYS, secrets of {MIN_SECRET_BYTES}+ bytes); \
                 --dev allows the development key anyway",
                if self.cluster.enabled() {
                    "in a cluster".to_owned()
                } else {
                    format!("reachable beyond this machine (HTTP on {})", self.http_bind)
                }
            );
        }
        if self.limits.max_message_bytes < 1024 || self.limits.max_sdp_bytes < 1024 {
            bail!("limits must be at least 1024 bytes");
        }
        if self.limits.ws_idle_secs == 0 {
            bail!("limits.ws_idle_secs must be at least 1");
        }
        if self.limits.header_timeout_secs == 0 {
            bail!("limits.header_timeout_secs must be at least 1");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            bail!("tls.cert and tls.key go together: HTTPS needs both");
        }
        let c = &self.cluster;
        if !c.node_id.is_empty()
            && !c
                .node_id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.')
        {
            bail!(
                "cluster.node_id {:?}: use letters, digits, '-' and '.' (it is a certificate name)",
                c.node_id
            );
        }
        if c.enabled() && c.certs_dir.is_none() {
            bail!("a clustered node needs cluster.certs_dir (create one with `sfu-node certs`)");
        }
        if !(1..=5).contains(&c.lease_ttl_secs) {
            bail!("cluster.lease_ttl_secs must be between 1 and 5");
        }
        if c.fanout == 0 {
            bail!("cluster.fanout must be at least 1");
        }
        Ok(())
    }
}

/// Parses `key:secret,key2:secret2` (the `--keys` flag and `SFU_KEYS`). An empty setting is
/// an error, not development mode: `SFU_KEYS=""` is a deployment mistake.
pub fn parse_keys(s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(sfu_control::keys::parse_keys(s)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn defaults_are_development_mode_on_loopback_7880() {
        let c = Config::default();
        assert!(c.is_dev());
        assert_eq!(c.http_bind, "127.0.0.1:7880".parse::<SocketAddr>().unwrap());
        assert_eq!(c.announced_ips(), [IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        assert_eq!(
            c.effective_keys().get("devkey").map(String::as_str),
            Some("secret")
        );
        assert!(c.validate().is_ok());
    }

    #[test]
    fn the_development_key_never_serves_beyond_this_machine_unless_asked() {
        let open = Config {
            http_bind: "0.0.0.0:7880".parse().unwrap(),
            ..Default::default()
        };
        let e = open.validate().unwrap_err().to_string();
        assert!(e.contains("no API keys") && e.contains("--dev"), "{e}");
        let mut media_open = Config::default();
        media_open.rtc.node_ips = vec!["192.0.2.1".parse().unwrap()];
        assert!(
            media_open.validate().is_err(),
            "media announced beyond loopback"
        );
        let mut clustered = Config::default();
        clustered.cluster.etcd = vec!["http://127.0.0.1:2379".into()];
        clustered.cluster.certs_dir = Some("/tmp".into());
        let e = clustered.validate().unwrap_err().to_string();
        assert!(e.contains("in a cluster"), "{e}");
        for mut c in [open, media_open, clustered] {
            c.dev = true;
            assert!(c.validate().is_ok(), "--dev allows it");
            c.dev = false;
            c.keys = parse_keys(&format!("prod:{LONG}")).unwrap();
            assert!(c.validate().is_ok(), "keys allow it");
        }
    }

    #[test]
    fn file_values_override_defaults_and_unknown_fields_are_errors() {
        let c: Config = toml::from_str(
            "http_bind = \"127.0.0.1:9000\"\ndev = true\n[rtc]\nudp_port = 9100\n[keys]\nprod = \"0123456789\"\n",
        )
        .unwrap();
        assert_eq!(c.http_bind.port(), 9000);
        assert_eq!(c.rtc.udp_port, 9100);
        assert!(!c.is_dev() && c.dev);
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
    }

    #[test]
    fn keys_flag_parses_and_rejects_garbage() {
        let k = parse_keys(&format!("a:{LONG}, b:{LONG}")).unwrap();
        assert_eq!(k.len(), 2);
        assert!(parse_keys("nocolon").is_err());
        assert!(parse_keys("").is_err() && parse_keys(" , ").is_err());
        assert!(parse_keys(&format!("a:{}", &LONG[1..])).is_err());
        // A configuration file's keys are checked as well.
        let c = Config {
            keys: [("a".to_owned(), LONG[1..].to_owned())].into(),
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("at least 32 bytes"), "31 bytes: {e}");
    }
}
