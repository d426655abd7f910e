//! `sfu-node`: run a node (the default), or mint an access token.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use sfu_node::config::{self, Config};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    version,
    about = "A cascading SFU node: WebRTC rooms over WebSocket, WHIP and WHEP"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node (what happens without a subcommand too).
    Serve,
    /// Mint an access token.
    Token(TokenArgs),
    /// Create a development cluster CA (if missing) and node certificates in a directory.
    Certs(CertsArgs),
}

#[derive(Args)]
struct CertsArgs {
    /// Directory for ca.pem, ca.key and NODE.pem / NODE.key per node.
    #[arg(long)]
    dir: PathBuf,
    /// Node ids to issue certificates for (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
}

/// Settings that override the configuration file. Each also reads an environment variable.
#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "SFU_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// HTTP listen address (signaling, WHIP/WHEP, demo page, metrics).
    #[arg(long, env = "SFU_HTTP_BIND", global = true)]
    bind: Option<SocketAddr>,
    /// First media UDP port; worker i uses port + i.
    #[arg(long, env = "SFU_UDP_PORT", global = true)]
    udp_port: Option<u16>,
    /// Address to announce to peers (repeat or comma-separate for several).
    #[arg(long, env = "SFU_NODE_IP", value_delimiter = ',', global = true)]
    node_ip: Vec<IpAddr>,
    /// Media worker threads (0: one per core).
    #[arg(long, env = "SFU_WORKERS", global = true)]
    workers: Option<usize>,
    /// API keys as key:secret pairs, comma-separated (secrets of 32+ bytes). None: development
    /// mode, allowed only on loopback unless --dev.
    #[arg(long, env = "SFU_KEYS", global = true, hide_env_values = true)]
    keys: Option<String>,
    /// Use the public development key even on an open address or in a cluster.
    #[arg(long, env = "SFU_DEV", global = true)]
    dev: bool,
    /// Log filter (tracing EnvFilter syntax), e.g. "info,sfu_node=debug".
    #[arg(long, env = "SFU_LOG", global = true)]
    log: Option<String>,
    /// This node's id in the cluster (also its certificate name).
    #[arg(long, env = "SFU_NODE_ID", global = true)]
    node_id: Option<String>,
    /// etcd endpoints (comma-separated); none means standalone.
    #[arg(long, env = "SFU_ETCD", value_delimiter = ',', global = true)]
    etcd: Vec<String>,
    /// Cluster name (registry prefix).
    #[arg(long, env = "SFU_CLUSTER", global = true)]
    cluster: Option<String>,
    #[arg(long, env = "SFU_REGION", global = true)]
    region: Option<String>,
    /// Where the relay (QUIC) endpoint listens.
    #[arg(long, env = "SFU_RELAY_BIND", global = true)]
    relay_bind: Option<SocketAddr>,
    /// Where other nodes reach the relay endpoint.
    #[arg(long, env = "SFU_RELAY_ADVERTISE", global = true)]
    relay_advertise: Option<SocketAddr>,
    /// Directory with the cluster CA and this node's certificate (see `certs`).
    #[arg(long, env = "SFU_CERTS_DIR", global = true)]
    certs_dir: Option<PathBuf>,
    /// Nodes a track is fed to directly before others are redirected.
    #[arg(long, env = "SFU_FANOUT", global = true)]
    fanout: Option<usize>,
    /// Participants this node takes before placement prefers others (default: measured load
    /// decides).
    #[arg(long, env = "SFU_CAPACITY", global = true)]
    capacity: Option<u32>,
    /// Where recordings are written (default: `recordings/` in the working directory).
    #[arg(long, env = "SFU_RECORDINGS_DIR", global = true)]
    recordings_dir: Option<PathBuf>,
    #[command(flatten)]
    etcd_access: sfu_control::cli_args::EtcdAccessArgs,
    #[command(flatten)]
    tls: sfu_control::cli_args::TlsArgs,
}

#[derive(Args)]
struct TokenArgs {
    /// Participant identity (the token's `sub`).
    #[arg(long)]
    identity: String,
    /// Room the token grants access to.
    #[arg(long)]
    room: String,
    /// Display name (defaults to the identity).
    #[arg(long)]
    name: Option<String>,
    #[arg(long, env = "SFU_API_KEY", default_value = config::DEV_API_KEY)]
    api_key: String,
    #[arg(long, env = "SFU_API_SECRET", default_value = config::DEV_API_SECRET, hide_env_values = true)]
    api_secret: String,
    /// Do not allow publishing.
    #[arg(long)]
    no_publish: bool,
    /// Do not allow subscribing.
    #[arg(long)]
    no_subscribe: bool,
    /// Grant room administration.
    #[arg(long)]
    admin: bool,
    /// Validity in seconds.
    #[arg(long, default_value_t = 6 * 3600)]
    valid_for: u64,
}

fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut c = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(b) = args.bind {
        c.http_bind = b;
    }
    if let Some(p) = args.udp_port {
        c.rtc.udp_port = p;
    }
    if !args.node_ip.is_empty() {
        c.rtc.node_ips = args.node_ip.clone();
    }
    if let Some(w) = args.workers {
        c.rtc.workers = w;
    }
    // clap takes an empty variable for an absent one; an empty key list is a mistake.
    let empty_env = std::env::var_os("SFU_KEYS").is_some_and(|v| v.is_empty());
    if let Some(k) = args.keys.as_deref().or(empty_env.then_some("")) {
        c.keys = config::parse_keys(k).context("--keys / SFU_KEYS")?;
    }
    c.dev |= args.dev;
    if let Some(l) = &args.log {
        c.log = l.clone();
    }
    let k = &mut c.cluster;
    if let Some(v) = &args.node_id {
        k.node_id = v.clone();
    }
    if !args.etcd.is_empty() {
        k.etcd = args.etcd.clone();
    }
    if let Some(v) = &args.cluster {
        k.name = v.clone();
    }
    if let Some(v) = &args.region {
        k.region = v.clone();
    }
    if let Some(v) = args.relay_bind {
        k.relay_bind = v;
    }
    if let Some(v) = args.relay_advertise {
        k.relay_advertise = Some(v);
    }
    if let Some(v) = &args.certs_dir {
        k.certs_dir = Some(v.clone());
    }
    if let Some(v) = args.fanout {
        k.fanout = v;
    }
    if let Some(v) = args.capacity {
        k.capacity = v;
    }
    if let Some(v) = &args.recordings_dir {
        c.recording.dir = v.clone();
    }
    if args.etcd_access.any() {
        k.etcd_access = args.etcd_access.access();
    }
    if args.tls.tls_cert.is_some() {
        c.tls.cert = args.tls.tls_cert.clone();
        c.tls.key = args.tls.tls_key.clone();
    }
    if args.tls.tls_ca.is_some() {
        c.tls.ca = args.tls.tls_ca.clone();
    }
    c.validate()?;
    Ok(c)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    sfu_control::tls::install_default_provider();
    match cli.command {
        Some(Cmd::Token(t)) => {
            let mut claims = sfu_node::auth::join_claims(
                &t.api_key,
                &t.identity,
                &t.room,
                !t.no_publish,
                !t.no_subscribe,
                Duration::from_secs(t.valid_for),
            );
            claims.name = Some(t.name.unwrap_or(t.identity));
            claims.video.room_admin = t.admin;
            println!("{}", sfu_node::auth::mint(&t.api_secret, &claims)?);
            Ok(())
        }
        Some(Cmd::Certs(a)) => {
            let files = sfu_relay::certs::ensure_dev_certs(&a.dir, &a.nodes)?;
            for (node, f) in a.nodes.iter().zip(files) {
                println!("{node}: {} {}", f.cert.display(), f.key.display());
            }
            println!("CA: {}", a.dir.join("ca.pem").display());
            Ok(())
        }
        Some(Cmd::Serve) | None => {
            let config = load_config(&cli.serve)?;
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_new(&config.log)
                        .context("invalid log filter")?,
                )
                .init();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let server = sfu_node::Server::start(config).await?;
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                // Ctrl-C stops at once. SIGTERM (or the drain API) drains first: participants
                // are sent elsewhere, and the node exits when empty; a second signal forces it.
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
                    _ = term.recv() => {
                        server.start_drain();
                        tokio::select! {
                            _ = server.drain.finished() => {}
                            _ = term.recv() => tracing::warn!("second signal: stopping now"),
                            _ = tokio::signal::ctrl_c() => tracing::warn!("interrupted: stopping now"),
                        }
                    }
                    _ = server.drain.finished() => tracing::info!("drained; stopping"),
                }
                server.stop().await;
                anyhow::Ok(())
            })
        }
    }
}
