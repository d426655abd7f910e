//! Starting and stopping a node: registry membership, media workers, relay links, HTTP.

use crate::cluster::{Router, report_load, route_events};
use crate::config::Config;
use crate::http::{AppState, router};
use crate::media::{MediaPlane, WorkerConfig};
use crate::metrics::Metrics;
use anyhow::Context;
use sfu_control::records::{NodeRecord, NodeState};
use sfu_control::{EtcdRegistry, Keys, Membership, MemoryRegistry};
use sfu_relay::quic::{Identity, LinkManager};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// A running node.
pub struct Server {
    pub http_addr: SocketAddr,
    pub node_id: String,
    /// Where other nodes reach this node's relay endpoint (clustered nodes only).
    pub relay_addr: Option<SocketAddr>,
    pub media: MediaPlane,
    pub metrics: Arc<Metrics>,
    pub membership: Membership,
    pub drain: Arc<crate::drain::Drain>,
    drain_timeout: Duration,
    links: Option<Arc<LinkManager>>,
    /// The federation gateway, if this node is one.
    pub federation: Option<Arc<crate::federation::Federation>>,
    shutdown: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
    http: JoinHandle<()>,
}

impl Server {
    /// Starts a node on the current tokio runtime.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        // HTTP clients built elsewhere in this process (tests, embedders) need a default.
        sfu_control::tls::install_default_provider();
        config.validate()?;
        let node_id = if config.cluster.node_id.is_empty() {
            format!("node-{:08x}", rand::random::<u32>())
        } else {
            config.cluster.node_id.clone()
        };
        let announced = config.announced_ips();
        let keys = Keys::new(&config.cluster.name);
        let ttl = Duration::from_secs(config.cluster.lease_ttl_secs);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut etcd = None;
        let membership = if config.cluster.enabled() {
            let registry =
                EtcdRegistry::connect_with(&config.cluster.etcd, &config.cluster.etcd_access)
                    .await
                    .context("connecting to etcd")?;
            etcd = Some(registry.clone());
            Membership::start(registry, keys.clone(), ttl, events_tx)
        } else {
            Membership::start(MemoryRegistry::new(), keys.clone(), ttl, events_tx)
        };

        // HTTPS the node calls (webhooks, other nodes' admin API) and HTTPS it serves.
        let outgoing =
            sfu_control::tls::http_client(config.tls.ca.as_deref(), Duration::from_secs(5))
                .context("tls.ca")?;
        let server_tls = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => {
                Some(sfu_control::tls::server_config(cert, key).context("tls.cert / tls.key")?)
            }
            _ => None,
        };
        let metrics = Arc::new(Metrics::new());
        let drain = Arc::new(crate::drain::Drain::default());
        let workers = WorkerConfig {
            workers: config.worker_count(),
            // Media answers go out from the address the kernel picks for the destination, and
            // ICE drops an answer that does not come from the address its check went to: a
            // node announcing only loopback binds loopback, so that a browser on another local
            // address (which reaches it through loopback) gets answers from 127.0.0.1.
            bind_ip: if config.rtc.bind_ip.is_unspecified()
                && announced.iter().all(|ip| ip.is_loopback())
            {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                config.rtc.bind_ip
            },
            first_port: config.rtc.udp_port,
            udp_gso: config.rtc.udp_gso,
            announced_ips: announced.clone(),
            max_participants: config.room.max_participants,
            default_max_layer: config.room.default_max_layer,
            large_room_threshold: config.room.large_room_threshold,
            core: sfu_core::RoomConfig {
                speakers: sfu_core::SpeakerConfig {
                    top_k: config.room.top_k,
                    last_n: config.room.last_n,
                },
                ..Default::default()
            },
            node_id: node_id.as_str().into(),
            fanout: config.cluster.fanout,
            membership: membership.clone(),
            recordings_dir: config.recording.dir.clone(),
            webhooks: {
                let keys = config.effective_keys();
                let key = config
                    .webhook
                    .api_key
                    .clone()
                    .or_else(|| keys.keys().next().cloned())
                    .unwrap_or_default();
                let secret = keys.get(&key).cloned().unwrap_or_default();
                crate::webhook::Webhooks::start(
                    config.webhook.urls.clone(),
                    key,
                    secret,
                    metrics.webhooks_dropped.clone(),
                    outgoing.clone(),
                )
            },
        };
        let webhooks = workers.webhooks.clone();
        let media = MediaPlane::start(workers, metrics.clone())?;
        media
            .recordings()
            .set_min_free_mb(config.recording.min_free_mb);
        if let Some(s3) = &config.recording.s3 {
            let uploader = crate::recording::upload::Uploader::new(s3.clone(), outgoing.clone());
            media.recordings().set_uploader(uploader);
        }

        let listener = tokio::net::TcpListener::bind(config.http_bind)
            .await
            .with_context(|| format!("binding HTTP {}", config.http_bind))?;
        let http_addr = listener.local_addr()?;
        let host = announced
            .first()
            .copied()
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
        let http_url = config.cluster.http_advertise.clone().unwrap_or_else(|| {
            let scheme = if server_tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", SocketAddr::new(host, http_addr.port()))
        });

        // Levels other nodes share with this one reach the federation too, on a gateway.
        let mesh_router = Arc::new(Router::new(media.clone()));
        let levels_tap = mesh_router.levels_tap();
        let (links, relay_addr) = if config.cluster.enabled() {
            let dir = config
                .cluster
                .certs_dir
                .as_ref()
                .context("cluster.certs_dir")?;
            let files = sfu_relay::certs::node_files(dir, &node_id);
            let identity = Identity::from_files(&node_id, &files.ca, &files.cert, &files.key)
                .with_context(|| {
                    format!(
                        "loading node certificate for {node_id} from {}",
                        dir.display()
                    )
                })?;
            // The direct media path: peers send relayed media to the workers' sockets.
            let direct_ports = if config.cluster.direct_media {
                media.udp_addrs().iter().map(|a| a.port()).collect()
            } else {
                Vec::new()
            };
            let links = LinkManager::start_with_direct(
                config.cluster.relay_bind,
                &identity,
                mesh_router,
                direct_ports,
            )?;
            let bound = links.local_addr()?;
            let advertise = config
                .cluster
                .relay_advertise
                .unwrap_or_else(|| SocketAddr::new(host, bound.port()));
            (Some(links), Some(advertise))
        } else {
            (None, None)
        };

        let record = NodeRecord {
            id: node_id.clone(),
            region: config.cluster.region.clone(),
            http_url: http_url.clone(),
            relay_addr,
            state: NodeState::Active,
            capacity: config.cluster.capacity,
            limits: crate::cluster::limits(&config),
            load: Default::default(),
            updated_ms: 0,
        };
        let mut tasks = vec![
            tokio::spawn(route_events(
                node_id.as_str().into(),
                events_rx,
                media.clone(),
                membership.clone(),
                links.clone(),
            )),
            tokio::spawn(report_load(
                membership.clone(),
                record,
                media.clone(),
                drain.clone(),
                metrics.clone(),
            )),
        ];

        // Serve once registered (at once with the in-memory registry); with etcd unreachable,
        // start anyway: joins are refused until the registry answers.
        let registered = async {
            while !membership.registered() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(ttl, registered).await.is_err() {
            tracing::warn!("registry not reachable yet; refusing joins until it is");
        }

        let config = Arc::new(config);
        let state = AppState::new(
            config.clone(),
            outgoing,
            media.clone(),
            metrics.clone(),
            membership.clone(),
            node_id.as_str().into(),
            drain.clone(),
        );
        tasks.push(tokio::spawn(crate::http::gate::sample_worker_cpu(
            state.gate.clone(),
            media.worker_count(),
        )));
        let mut app = router(state);
        let federation = match (&config.federation, etcd) {
            (Some(f), Some(etcd)) => {
                let fed = Arc::new(
                    crate::federation::Federation::start(
                        f,
                        &node_id,
                        media.clone(),
                        membership.clone(),
                        etcd,
                        metrics.federation.clone(),
                        webhooks,
                    )
                    .await
                    .context("federation")?,
                );
                fed.take_levels(&levels_tap);
                let auth = sfu_control::auth::Authenticator::new(&config.effective_keys());
                app = app.merge(crate::federation::http::routes(fed.clone(), auth));
                Some(fed)
            }
            (Some(_), None) => anyhow::bail!("a federation gateway needs a cluster (etcd)"),
            _ => None,
        };
        let (tx, rx) = oneshot::channel::<()>();
        let options = sfu_control::http_server::ServeOptions {
            tls: server_tls,
            header_timeout: Duration::from_secs(config.limits.header_timeout_secs),
            ..Default::default()
        };
        let http = tokio::spawn(sfu_control::http_server::serve(
            listener,
            app,
            options,
            async {
                let _ = rx.await;
            },
        ));
        if config.is_dev() {
            tracing::warn!(
                "development mode: API key {:?}, secret {:?}; {}",
                crate::config::DEV_API_KEY,
                crate::config::DEV_API_SECRET,
                if config.loopback_only() {
                    "only this machine can reach the node; to open it to the network, give \
                     keys and an address: --keys KEY:SECRET --bind 0.0.0.0:7880"
                } else {
                    "anyone who can reach this node can mint tokens (--dev)"
                }
            );
        }
        tracing::info!(
            node = %node_id,
            http = %http_addr,
            udp = ?media.udp_addrs(),
            relay = ?relay_addr,
            cluster = config.cluster.enabled(),
            "node started: open {http_url}/"
        );
        Ok(Self {
            drain_timeout: Duration::from_secs(config.drain_timeout_secs),
            http_addr,
            node_id,
            relay_addr,
            media,
            metrics,
            membership,
            drain,
            links,
            federation,
            shutdown: Some(tx),
            tasks,
            http,
        })
    }

    /// Starts draining with the configured deadline (what SIGTERM does).
    pub fn start_drain(&self) {
        self.drain.start(
            self.node_id.as_str().into(),
            self.media.clone(),
            self.membership.clone(),
            self.drain_timeout,
        );
    }

    /// Leaves the cluster (its registry keys go at once), closes relay links and stops
    /// accepting HTTP requests.
    pub async fn stop(mut self) {
        // Recordings first, so that their files are finalised while media still flows.
        self.media.stop_all_recordings().await;
        self.membership.leave().await;
        if let Some(l) = &self.links {
            l.close();
        }
        if let Some(f) = &self.federation {
            f.close();
        }
        for t in &self.tasks {
            t.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.http).await;
    }
}
