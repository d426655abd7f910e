//! Relay links over QUIC (quinn): one connection per node pair, mutual TLS with the cluster CA.
//!
//! The node with the smaller id dials; both accept. A link is one connection with one
//! bidirectional control stream (opened by the dialer; a `Hello` each way first), QUIC
//! datagrams for media, and unidirectional streams for packets too large for a datagram.
//! Each side checks that the other's certificate was issued by the cluster CA *and* names the
//! node id its `Hello` claims.
//!
//! This is the I/O shell around the sans-IO [`core`](crate::core): it moves frames and
//! datagrams between the network and a [`LinkHandler`], and does nothing clever. When both
//! nodes offer their media workers' ports in their `Hello`s, it also exports the keys of the
//! link's [`direct`](crate::direct) path from the TLS session and records the peer's
//! confirmations; the workers send and receive on that path themselves.

use crate::direct::{self, DirectPath, KEY_LEN};
use crate::wire::{self, MAX_STREAM_PACKET};
use anyhow::{Context, anyhow, bail};
use bytes::{Bytes, BytesMut};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use sfu_proto::relay::{Frame, Hello, PROTOCOL_VERSION, frame::Body};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

use crate::core::NodeId;

/// ALPN of the relay protocol; a peer speaking another version is refused by TLS.
pub const ALPN: &[u8] = b"sfu-relay/2";
/// A link with no packet for this long is dead (keep-alives go every second).
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// The largest UDP payload of a 9,000-byte jumbo frame over IPv6.
const JUMBO_UDP_PAYLOAD: u16 = 8952;
/// Backoff between dial attempts.
const DIAL_BACKOFF: [Duration; 4] = [
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// A node's TLS identity: the cluster CA, its certificate chain and key.
pub struct Identity {
    pub node_id: NodeId,
    roots: Arc<rustls::RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The protocol both sides must name in TLS: [`ALPN`] for mesh links; federation links
    /// name their own, so a mesh endpoint and a federation endpoint never talk.
    alpn: &'static [u8],
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            node_id: self.node_id.clone(),
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            alpn: self.alpn,
        }
    }
}

impl Identity {
    /// Loads PEM files.
    pub fn from_files(
        node_id: &str,
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("reading {}", p.display()))
        };
        Self::from_pem(node_id, &read(ca)?, &read(cert)?, &read(key)?)
    }

    pub fn from_pem(node_id: &str, ca: &[u8], cert: &[u8], key: &[u8]) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca) {
            roots.add(c.context("cluster CA certificate")?)?;
        }
        if roots.is_empty() {
            bail!("no CA certificate found");
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .context("node certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key).context("node key")?;
        Ok(Self {
            node_id: node_id.into(),
            roots: Arc::new(roots),
            chain,
            key,
            alpn: ALPN,
        })
    }

    /// The same identity speaking another protocol (ALPN) than the relay's.
    pub fn with_alpn(mut self, alpn: &'static [u8]) -> Self {
        self.alpn = alpn;
        self
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn server_config(&self) -> anyhow::Result<quinn::ServerConfig> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            Self::provider(),
        )
        .build()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![self.alpn.to_vec()];
        let mut config =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
        config.transport_config(transport());
        Ok(config)
    }

    fn client_config(&self) -> anyhow::Result<quinn::ClientConfig> {
        let mut tls = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![self.alpn.to_vec()];
        let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
        config.transport_config(transport());
        Ok(config)
    }
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // Idle timeouts fit in a u32 of milliseconds.
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("5 s is a valid idle timeout"),
    ));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // Room for bursts of keyframes for many tracks.
    t.datagram_receive_buffer_size(Some(16 << 20));
    t.datagram_send_buffer_size(16 << 20);
    t.max_concurrent_uni_streams(1024u32.into());
    // Media rides in datagrams, which QUIC never retransmits: the link repairs its own losses
    // (NACKs to the origin's cache), so loss is no sign of congestion here. A loss-based
    // controller (quinn's default, CUBIC) shrinks its window at every random loss: at 5 %
    // loss and 30 ms of jitter it let through under half of one 1.5 Mbps video and queued
    // the rest for seconds (BENCHMARKS.md, impairment). BBR paces at the delivery rate it
    // measures and keeps it through random loss.
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    // Relayed packets share datagrams (see `wire`): on a path with jumbo frames (a data
    // centre's, loopback) MTU discovery finds room for several video packets in each; on a
    // 1,500-byte path its probes fail and datagrams stay at its size.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(JUMBO_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    Arc::new(t)
}

/// What a link manager reports. Implemented by the node, which routes frames and datagrams to
/// the worker owning each room.
pub trait LinkHandler: Send + Sync + 'static {
    fn link_up(&self, link: Link);
    fn link_down(&self, node: &NodeId);
    fn frame(&self, from: &NodeId, frame: Frame);
    fn datagram(&self, from: &NodeId, datagram: Bytes);
    /// The peer sent bytes that are no frame on the control stream (the link is closed): a
    /// federation gateway counts it.
    fn malformed(&self, _from: &NodeId, _error: &anyhow::Error) {}
}

/// A live link to one node, cheap to clone: send frames and datagrams on it from any thread.
#[derive(Clone)]
pub struct Link {
    pub node: NodeId,
    pub connection: quinn::Connection,
    frames: mpsc::UnboundedSender<Frame>,
    /// The direct media path, when both ends offered one.
    pub direct: Option<Arc<DirectPath>>,
}

impl Link {
    /// A link whose control frames go through `frames` (whoever reads it writes them to the
    /// connection): a federation gateway translates the frames its workers send.
    pub fn new(
        node: NodeId,
        connection: quinn::Connection,
        frames: mpsc::UnboundedSender<Frame>,
    ) -> Self {
        Self {
            node,
            connection,
            frames,
            direct: None,
        }
    }

    /// Queues a control frame.
    pub fn send_frame(&self, frame: Frame) {
        let _ = self.frames.send(frame);
    }

    /// The largest datagram the path takes now (MTU discovery raises it after the handshake).
    pub fn max_datagram_size(&self) -> usize {
        self.connection.max_datagram_size().unwrap_or(0)
    }

    /// Sends a media datagram, or, if it is too large for a datagram on this path, a
    /// unidirectional stream carrying it. Returns false if it could not be sent.
    pub fn send_datagram(&self, d: Bytes) -> bool {
        let fits = self
            .connection
            .max_datagram_size()
            .is_some_and(|max| d.len() <= max);
        if fits {
            return self.connection.send_datagram(d).is_ok();
        }
        let conn = self.connection.clone();
        tokio::spawn(async move {
            if let Ok(mut s) = conn.open_uni().await {
                let _ = s.write_all(&d).await;
                let _ = s.finish();
            }
        });
        true
    }
}

/// Keeps one link to every known peer.
pub struct LinkManager {
    me: NodeId,
    endpoint: quinn::Endpoint,
    /// Behind a lock: a federation gateway's trust changes as peers are added and removed.
    client: Mutex<quinn::ClientConfig>,
    handler: Arc<dyn LinkHandler>,
    /// Our media workers' UDP ports, offered to peers for the direct path (empty: none).
    direct_ports: Vec<u16>,
    /// Peers we dial (those sorting after us), with their dialer task.
    dialing: Mutex<HashMap<NodeId, (SocketAddr, tokio::task::JoinHandle<()>)>>,
    /// Live links, to replace a stale one when the peer reconnects.
    live: Mutex<HashMap<NodeId, quinn::Connection>>,
}

impl LinkManager {
    /// Binds the endpoint and starts accepting links, with no direct path.
    pub fn start(
        bind: SocketAddr,
        identity: &Identity,
        handler: Arc<dyn LinkHandler>,
    ) -> anyhow::Result<Arc<Self>> {
        Self::start_with_direct(bind, identity, handler, Vec::new())
    }

    /// Binds the endpoint and starts accepting links; offers peers a direct path to the media
    /// workers listening on `direct_ports` (at the address they reach the endpoint at).
    pub fn start_with_direct(
        bind: SocketAddr,
        identity: &Identity,
        handler: Arc<dyn LinkHandler>,
        direct_ports: Vec<u16>,
    ) -> anyhow::Result<Arc<Self>> {
        let endpoint = quinn::Endpoint::server(identity.server_config()?, bind)
            .with_context(|| format!("binding relay endpoint {bind}"))?;
        let manager = Arc::new(Self {
            me: identity.node_id.clone(),
            endpoint,
            client: Mutex::new(identity.client_config()?),
            handler,
            direct_ports,
            dialing: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
        });
        let m = manager.clone();
        tokio::spawn(async move { m.accept_loop().await });
        Ok(manager)
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The peers that exist now (from the registry). Links are dialed to those sorting after
    /// us; dialers of peers no longer listed stop.
    pub fn set_peers(self: &Arc<Self>, peers: &[(NodeId, SocketAddr)]) {
        let mut dialing = self.dialing.lock().unwrap_or_else(|e| e.into_inner());
        dialing.retain(|node, (addr, task)| {
            let keep = peers.iter().any(|(n, a)| n == node && a == addr);
            if !keep {
                task.abort();
            }
            keep
        });
        for (node, addr) in peers {
            if *node <= self.me || dialing.contains_key(node) {
                continue;
            }
            let m = self.clone();
            let (node2, addr2) = (node.clone(), *addr);
            let task = tokio::spawn(async move { m.dial_loop(node2, addr2).await });
            dialing.insert(node.clone(), (*addr, task));
        }
    }

    /// Trusts `identity`'s CAs (and presents its certificate) from now on, in new links both
    /// ways; links up stay as they are.
    pub fn set_identity(&self, identity: &Identity) -> anyhow::Result<()> {
        self.endpoint
            .set_server_config(Some(identity.server_config()?));
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = identity.client_config()?;
        Ok(())
    }

    /// Closes every link and the endpoint.
    pub fn close(&self) {
        for (_, (_, task)) in self
            .dialing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            task.abort();
        }
        self.endpoint.close(0u32.into(), b"shutting down");
    }

    async fn dial_loop(self: Arc<Self>, node: NodeId, addr: SocketAddr) {
        // A link still up is kept, not replaced: the peer's registry record can flap (an etcd
        // outage) while the link carries media the whole time.
        let live = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&node)
            .cloned();
        if let Some(conn) = live {
            conn.closed().await;
        }
        let mut attempt = 0usize;
        loop {
            match self.dial(&node, addr).await {
                Ok(conn) => {
                    attempt = 0;
                    conn.closed().await;
                }
                Err(e) => {
                    tracing::debug!(peer = %node, %addr, "dialing relay link: {e:#}");
                }
            }
            tokio::time::sleep(DIAL_BACKOFF[attempt.min(DIAL_BACKOFF.len() - 1)]).await;
            attempt += 1;
        }
    }

    async fn dial(
        self: &Arc<Self>,
        node: &NodeId,
        addr: SocketAddr,
    ) -> anyhow::Result<quinn::Connection> {
        let name = ServerName::try_from(node.to_string())
            .map_err(|_| anyhow!("node id {node} is not a DNS name"))?;
        let client = self
            .client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let connecting = self.endpoint.connect_with(client, addr, &name.to_str())?;
        let conn = tokio::time::timeout(IDLE_TIMEOUT, connecting).await??;
        let (mut send, mut recv) = conn.open_bi().await?;
        let ours = self.hello();
        write_frame(&mut send, &hello_frame(&ours)).await?;
        let mut buf = BytesMut::new();
        let theirs = read_hello(&mut recv, &mut buf).await?;
        let peer: NodeId = theirs.node_id.as_str().into();
        if *peer != **node {
            conn.close(1u32.into(), b"unexpected node");
            bail!("{addr} answered as {peer}, expected {node}");
        }
        let direct = self.direct_path(&conn, &ours, &theirs);
        self.run(node.clone(), conn.clone(), send, recv, buf, direct);
        Ok(conn)
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let m = self.clone();
            tokio::spawn(async move {
                if let Err(e) = m.accept(incoming).await {
                    tracing::info!("refused relay link: {e:#}");
                }
            });
        }
    }

    async fn accept(self: &Arc<Self>, incoming: quinn::Incoming) -> anyhow::Result<()> {
        let conn = tokio::time::timeout(IDLE_TIMEOUT, incoming).await??;
        let (mut send, mut recv) = tokio::time::timeout(IDLE_TIMEOUT, conn.accept_bi()).await??;
        let mut buf = BytesMut::new();
        let theirs = read_hello(&mut recv, &mut buf).await?;
        let peer: NodeId = theirs.node_id.as_str().into();
        // The CA vouched for the certificate; it must also name the node the peer claims to be.
        let certs = conn
            .peer_identity()
            .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or_else(|| anyhow!("no client certificate"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| anyhow!("empty client certificate chain"))?;
        let cert = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| anyhow!("client certificate: {e}"))?;
        let name =
            ServerName::try_from(peer.to_string()).map_err(|_| anyhow!("bad node id {peer}"))?;
        if cert.verify_is_valid_for_subject_name(&name).is_err() {
            conn.close(2u32.into(), b"certificate does not match node id");
            bail!(
                "{} claims to be {peer} but its certificate says otherwise",
                conn.remote_address()
            );
        }
        let ours = self.hello();
        write_frame(&mut send, &hello_frame(&ours)).await?;
        let direct = self.direct_path(&conn, &ours, &theirs);
        self.run(peer, conn, send, recv, buf, direct);
        Ok(())
    }

    /// Our `Hello`: with the direct path's ports and a fresh channel id, if we offer it.
    fn hello(&self) -> Hello {
        let mut channel = [0u8; 4];
        if !self.direct_ports.is_empty() {
            // Unguessable, so that stray datagrams of an old link do not even reach the AEAD.
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut channel);
        }
        Hello {
            node_id: self.me.to_string(),
            protocol_version: PROTOCOL_VERSION,
            direct_ports: self.direct_ports.iter().map(|p| u32::from(*p)).collect(),
            direct_channel: u32::from_be_bytes(channel),
        }
    }

    /// The link's direct path, if both ends offered one: the peer's ports at the address the
    /// connection reaches it at, and a key per direction exported from the TLS session.
    fn direct_path(
        &self,
        conn: &quinn::Connection,
        ours: &Hello,
        theirs: &Hello,
    ) -> Option<Arc<DirectPath>> {
        if ours.direct_ports.is_empty() || theirs.direct_ports.is_empty() {
            return None;
        }
        let export = |sender: &str| {
            let mut key = [0u8; KEY_LEN];
            conn.export_keying_material(
                &mut key,
                direct::EXPORTER_LABEL,
                &direct::exporter_context(sender),
            )
            .ok()
            .map(|_| key)
        };
        let ip = conn.remote_address().ip();
        let peer_addrs = theirs
            .direct_ports
            .iter()
            .filter_map(|p| u16::try_from(*p).ok())
            .map(|p| SocketAddr::new(ip, p))
            .collect();
        Some(Arc::new(DirectPath::new(
            peer_addrs,
            theirs.direct_channel,
            export(&ours.node_id)?,
            ours.direct_channel,
            export(&theirs.node_id)?,
        )))
    }

    /// Runs a link: reader, writer and media tasks; reports it up, and down when it closes.
    fn run(
        self: &Arc<Self>,
        node: NodeId,
        conn: quinn::Connection,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        mut buf: BytesMut,
        direct: Option<Arc<DirectPath>>,
    ) {
        let replaced = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.clone(), conn.clone());
        if let Some(old) = replaced {
            // Whatever was tied to the old link (flows, subscriptions) went with it: say it is
            // down before the new one is up, on this side as on the peer's, which sees the old
            // connection close.
            old.close(3u32.into(), b"replaced");
            tracing::info!(peer = %node, "relay link replaced by a new connection");
            self.handler.link_down(&node);
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
        self.handler.link_up(Link {
            node: node.clone(),
            connection: conn.clone(),
            frames: tx,
            direct: direct.clone(),
        });
        tracing::info!(peer = %node, remote = %conn.remote_address(), "relay link up");
        // Writer.
        tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                if write_frame(&mut send, &f).await.is_err() {
                    break;
                }
            }
        });
        // Control frames.
        let (h, n, c) = (self.handler.clone(), node.clone(), conn.clone());
        tokio::spawn(async move {
            loop {
                match read_frame(&mut recv, &mut buf).await {
                    // The peer opens what one of our workers sends directly: it may switch.
                    Ok(Frame {
                        body: Some(Body::DirectConfirmed(c)),
                    }) => {
                        if let Some(d) = &direct {
                            d.confirm(c.worker);
                        }
                    }
                    Ok(f) => h.frame(&n, f),
                    Err(e) => {
                        if e.downcast_ref::<wire::WireError>().is_some() {
                            h.malformed(&n, &e);
                        }
                        tracing::debug!(peer = %n, "control stream ended: {e:#}");
                        c.close(4u32.into(), b"control stream error");
                        break;
                    }
                }
            }
        });
        // Datagrams.
        let (h, n, c) = (self.handler.clone(), node.clone(), conn.clone());
        tokio::spawn(async move {
            while let Ok(d) = c.read_datagram().await {
                h.datagram(&n, d);
            }
        });
        // Packets too large for a datagram.
        let (h, n, c) = (self.handler.clone(), node.clone(), conn.clone());
        tokio::spawn(async move {
            while let Ok(mut s) = c.accept_uni().await {
                let (h, n) = (h.clone(), n.clone());
                tokio::spawn(async move {
                    if let Ok(d) = s.read_to_end(MAX_STREAM_PACKET).await {
                        h.datagram(&n, Bytes::from(d));
                    }
                });
            }
        });
        // Down.
        let m = self.clone();
        tokio::spawn(async move {
            let reason = conn.closed().await;
            let mut live = m.live.lock().unwrap_or_else(|e| e.into_inner());
            if live
                .get(&node)
                .is_some_and(|c| c.stable_id() == conn.stable_id())
            {
                live.remove(&node);
                drop(live);
                tracing::info!(peer = %node, "relay link down: {reason}");
                m.handler.link_down(&node);
            }
        });
    }
}

fn hello_frame(h: &Hello) -> Frame {
    Frame {
        body: Some(Body::Hello(h.clone())),
    }
}

async fn write_frame(send: &mut quinn::SendStream, f: &Frame) -> anyhow::Result<()> {
    let mut b = BytesMut::new();
    wire::encode_frame(f, &mut b);
    send.write_all(&b).await?;
    Ok(())
}

async fn read_frame(recv: &mut quinn::RecvStream, buf: &mut BytesMut) -> anyhow::Result<Frame> {
    loop {
        if let Some(f) = wire::decode_frame(buf)? {
            return Ok(f);
        }
        let mut chunk = [0u8; 4096];
        match recv.read(&mut chunk).await? {
            Some(n) => buf.extend_from_slice(&chunk[..n]),
            None => bail!("stream finished"),
        }
    }
}

async fn read_hello(recv: &mut quinn::RecvStream, buf: &mut BytesMut) -> anyhow::Result<Hello> {
    let f = tokio::time::timeout(IDLE_TIMEOUT, read_frame(recv, buf)).await??;
    match f.body {
        Some(Body::Hello(h)) if h.protocol_version == PROTOCOL_VERSION => Ok(h),
        Some(Body::Hello(h)) => bail!(
            "protocol version {} (ours is {PROTOCOL_VERSION})",
            h.protocol_version
        ),
        _ => bail!("expected Hello"),
    }
}
