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
    /// API keys as key:secret pairs (comma-separated). None: the development key.
    #[arg(long, env = "SFU_KEYS", hide_env_values = true)]
    keys: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SFU_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let keys: BTreeMap<String, String> = match &cli.keys {
        Some(k) => k
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, s) = p.split_once(':').context("keys are key:secret pairs")?;
                Ok((k.trim().to_owned(), s.trim().to_owned()))
            })
            .collect::<anyhow::Result<_>>()?,
        None => {
            tracing::warn!("development mode: API key \"devkey\", secret \"secret\"");
            [("devkey".to_owned(), "secret".to_owned())].into()
        }
    };
    let control = sfu_control::service::connect(&cli.etcd, &cli.cluster, &keys).await?;
    let listener = tokio::net::TcpListener::bind(cli.bind)
        .await
        .with_context(|| format!("binding {}", cli.bind))?;
    tracing::info!(addr = %listener.local_addr()?, "sfu-control serving gRPC and /v1/join");
    sfu_control::service::serve(control, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
