//! The accept loops: one task per connection (TLS handshake inside it), HTTP/1.1 and HTTP/2
//! (hyper-util `auto`; ALPN on TLS), limits on connections and header size and time, and a
//! graceful shutdown that stops accepting and lets in-flight responses finish until the
//! configured deadline.

pub mod access;
mod service;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::proxy::Proxy;

/// The sockets to serve: the plain listener and, when `[server.tls]` is set, the TLS one.
pub struct Listeners {
    pub plain: TcpListener,
    pub tls: Option<TcpListener>,
}

/// What every connection task shares.
struct Shared {
    proxy: Arc<Proxy>,
    access: Arc<access::Access>,
    builder: auto::Builder<TokioExecutor>,
}

/// Serves `proxy` until `shutdown` resolves, then drains.
pub async fn serve(
    proxy: Arc<Proxy>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let cfg = proxy.config.server.clone();
    let tls = match (&cfg.tls, listeners.tls) {
        (Some(t), Some(l)) => {
            let cert = tls::ReloadableCert::new(t.cert.clone(), t.key.clone())?;
            tls::reload_on_sighup(cert.clone());
            Some((l, TlsAcceptor::from(tls::server_config(cert)?)))
        }
        (Some(_), None) => {
            return Err("server.tls is configured but no TLS listener was given".into())
        }
        (None, _) => None,
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(64 * 1024)
        .max_headers(128);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(64 * 1024)
        .max_concurrent_streams(256);
    let shared = Arc::new(Shared {
        access: Arc::new(access::Access::new(&cfg)?),
        proxy,
        builder,
    });
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = &mut shutdown => break,
        };
        let (accepted, acceptor) = tokio::select! {
            r = listeners.plain.accept() => (r, None),
            r = accept_tls(&tls) => (r, tls.as_ref().map(|(_, a)| a.clone())),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            shared.clone(),
            stream,
            peer,
            acceptor,
            graceful.watcher(),
            permit,
        ));
    }
    drop(listeners.plain);
    drop(tls);
    tracing::info!(deadline = ?cfg.shutdown_timeout, "shutting down: draining in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(cfg.shutdown_timeout) => tracing::warn!("shutdown deadline reached; dropping remaining connections"),
    }
    Ok(())
}

async fn accept_tls(
    tls: &Option<(TcpListener, TlsAcceptor)>,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    match tls {
        Some((l, _)) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves one connection (after the TLS handshake, bounded by the header timeout).
async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    watcher: Watcher,
    permit: OwnedSemaphorePermit,
) {
    let tls = acceptor.is_some();
    let svc = service::Service::new(shared.proxy.clone(), shared.access.clone(), peer, tls);
    let result = match acceptor {
        None => {
            let conn = shared
                .builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc);
            watcher.watch(conn.into_owned()).await
        }
        Some(acceptor) => {
            let timeout = shared.proxy.config.server.header_read_timeout;
            let tls_stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let conn = shared
                .builder
                .serve_connection_with_upgrades(TokioIo::new(tls_stream), svc);
            watcher.watch(conn.into_owned()).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
    drop(permit);
}
