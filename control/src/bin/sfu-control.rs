//! `sfu-control`: the cluster's API (gRPC, plus JSON `/v1/join` for browsers).

use anyhow::Context;
use clap::Parser;
use std::collections::BTreeMap;
use std::net::SocketAddr;

#[derive(Parser)]
#[command(
    version,
    about = "Control plane of an SFU cluster: rooms, participants, nodes, placement"
)]
struct Cli {
    /// etcd endpoints (comma-separated).
    #[arg(long, env = "SFU_ETCD", value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// Cluster name (registry prefix), as the nodes use.
    #[arg(long, env = "SFU_CLUSTER", default_value = "default")]
    cluster: String,
    /// Listen address for gRPC and JSON.
    #[arg(long, env = "SFU_CONTROL_BIND", default_value_t = sfu_control::service::default_bind())]
    bind: SocketAddr,
    /// API keys as key:secret pairs (comma-separated; secrets of 32+ bytes). Required unless
    /// --dev.
    #[arg(long, env = "SFU_KEYS", hide_env_values = true)]
    keys: Option<String>,
    /// Use the public development key ("devkey" / "secret"): for a cluster on one machine.
    #[arg(long, env = "SFU_DEV")]
    dev: bool,
    #[command(flatten)]
    etcd_access: sfu_control::cli_args::EtcdAccessArgs,
    #[command(flatten)]
    tls: sfu_control::cli_args::TlsArgs,
    /// Seconds a client has for the TLS handshake and then for each request's headers.
    #[arg(long, env = "SFU_HEADER_TIMEOUT", default_value_t = 10)]
    header_timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    sfu_control::tls::install_default_provider();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SFU_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    // clap takes an empty variable for an absent one; an empty key list is a mistake.
    let empty_env = std::env::var_os("SFU_KEYS").is_some_and(|v| v.is_empty());
    let keys: BTreeMap<String, String> =
        match (cli.keys.as_deref().or(empty_env.then_some("")), cli.dev) {
            (Some(k), _) => sfu_control::keys::parse_keys(k).context("--keys / SFU_KEYS")?,
            (None, true) => {
                tracing::warn!(
                    "development mode: API key {:?}, secret {:?}; anyone who can reach this \
                 service can mint tokens",
                    sfu_control::keys::DEV_API_KEY,
                    sfu_control::keys::DEV_API_SECRET
                );
                sfu_control::keys::dev_keys()
            }
            (None, false) => anyhow::bail!(
                "no API keys: give --keys KEY:SECRET (or SFU_KEYS; secrets of {}+ bytes, the \
             nodes' keys), or --dev for the public development key",
                sfu_control::keys::MIN_SECRET_BYTES
            ),
        };
    let tls = match (&cli.tls.tls_cert, &cli.tls.tls_key) {
        (Some(cert), Some(key)) => {
            Some(sfu_control::tls::server_config(cert, key).context("--tls-cert / --tls-key")?)
        }
        _ => None,
    };
    let control = sfu_control::service::connect_with(
        &cli.etcd,
        &cli.etcd_access.access(),
        cli.tls.tls_ca.as_deref(),
        &cli.cluster,
        &keys,
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(cli.bind)
        .await
        .with_context(|| format!("binding {}", cli.bind))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        tls = tls.is_some(),
        "sfu-control serving gRPC and /v1/join"
    );
    let options = sfu_control::http_server::ServeOptions {
        tls,
        header_timeout: std::time::Duration::from_secs(cli.header_timeout_secs.max(1)),
        ..Default::default()
    };
    sfu_control::service::serve_with(control, listener, options, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
