//! Starting and stopping a node: media workers plus the HTTP server.

use crate::config::Config;
use crate::http::{AppState, router};
use crate::media::{MediaPlane, WorkerConfig};
use crate::metrics::Metrics;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running node.
pub struct Server {
    pub http_addr: SocketAddr,
    pub media: MediaPlane,
    pub metrics: Arc<Metrics>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Starts a node on the current tokio runtime.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let metrics = Arc::new(Metrics::new());
        let workers = WorkerConfig {
            workers: config.worker_count(),
            bind_ip: config.rtc.bind_ip,
            first_port: config.rtc.udp_port,
            announced_ips: config.announced_ips(),
            max_participants: config.room.max_participants,
            default_max_layer: config.room.default_max_layer,
            core: sfu_core::RoomConfig::default(),
        };
        let media = MediaPlane::start(workers.clone(), metrics.clone())?;
        let listener = tokio::net::TcpListener::bind(config.http_bind)
            .await
            .with_context(|| format!("binding HTTP {}", config.http_bind))?;
        let http_addr = listener.local_addr()?;
        let config = Arc::new(config);
        let app = router(AppState::new(
            config.clone(),
            media.clone(),
            metrics.clone(),
        ));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                tracing::error!("HTTP server: {e}");
            }
        });
        if config.is_dev() {
            tracing::warn!(
                "development mode: API key {:?}, secret {:?}; configure keys for anything else",
                crate::config::DEV_API_KEY,
                crate::config::DEV_API_SECRET
            );
        }
        tracing::info!(
            http = %http_addr,
            udp = ?media.udp_addrs(),
            announced = ?workers.announced_ips,
            "node started: open http://{}/",
            display_addr(http_addr)
        );
        Ok(Self {
            http_addr,
            media,
            metrics,
            shutdown: Some(tx),
            task,
        })
    }

    /// Stops accepting HTTP requests and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits until the HTTP server ends.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// `0.0.0.0:7880` is not something to paste in a browser; show `127.0.0.1:7880` instead.
fn display_addr(a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), a.port())
    } else {
        a
    }
}
