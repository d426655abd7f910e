//! The HTTP server of nodes and of the control plane: HTTP/1.1 (with WebSocket upgrades) and
//! HTTP/2 (gRPC) on one listener, optionally over TLS.
//!
//! Instead of `axum::serve`, because that sets no timer: a client that opens connections and
//! sends its request headers slowly (or never) would hold each connection open forever. Here
//! the TLS handshake and the request headers must both arrive within `header_timeout`. Every
//! request carries its peer's address as `ConnectInfo<SocketAddr>`, as
//! `into_make_service_with_connect_info` gives it.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How connections are served.
#[derive(Clone)]
pub struct ServeOptions {
    /// TLS for every connection, or plain TCP.
    pub tls: Option<Arc<ServerConfig>>,
    /// Time for the TLS handshake, and then for each request's headers.
    pub header_timeout: Duration,
    /// After shutdown, time left to open requests before their connections are dropped.
    pub grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            tls: None,
            header_timeout: Duration::from_secs(10),
            grace: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets open requests finish
/// (up to `options.grace`). Upgraded connections (WebSockets) are the router's own to close.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) {
    let acceptor = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let mut http = Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    http.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let service = router
            .clone()
            .map_request(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let http = http.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let limit = options.header_timeout;
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(&http, tcp, service, watcher).await,
                Some(acceptor) => match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => serve_connection(&http, tls, service, watcher).await,
                    Ok(Err(e)) => tracing::debug!("TLS handshake with {peer}: {e}"),
                    Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                },
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(options.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("open HTTP requests did not finish within the grace period");
    }
}

async fn serve_connection<I, S>(
    http: &Builder<TokioExecutor>,
    io: I,
    service: S,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<hyper::Request<Incoming>, Response = axum::response::Response>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    let connection =
        http.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    // Errors here are the client's (reset, bad request, header timeout): nothing to report.
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        tracing::trace!("HTTP connection: {e}");
    }
}
