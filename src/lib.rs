//! regmirror: a pull-through caching mirror for container registries.
//!
//! Docker daemons (`registry-mirrors`), containerd (`hosts.toml`, `?ns=`) and podman/skopeo
//! (`registries.conf` path prefixes) pull through it; the first pull of an image goes
//! upstream, later pulls are served from disk, verified by digest.
//!
//! Module map (dependencies point down this list, never up):
//! - [`server`]: accept loop, graceful shutdown, per-request dispatch and logging span.
//! - [`error`]: the one place a [`proxy::ProxyError`] becomes an OCI error response.
//! - [`proxy`]: routing, the auth gate, manifests, blobs, single-flight downloads.
//! - [`cache`]: memory tier (moka) and the per-blob index (size, access, owners).
//! - [`store`]: the content-addressed blob store trait, its disk backend, spool files.
//! - [`upstream`]: the HTTP client towards registries (rustls, redirects).
//! - [`reference`]: names, tags and digests parsed into newtypes at the edge.
//! - [`config`], [`stats`], [`body`]: configuration tree, lock-free counters, body type.
// `unsafe` is denied everywhere but `store::mmap` (zero-copy blob reads; see its doc).
#![deny(unsafe_code)]

pub mod body;
pub mod cache;
pub mod config;
pub mod error;
pub mod proxy;
pub mod reference;
pub mod server;
pub mod stats;
pub mod store;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

pub use config::Config;

/// Runs the mirror on `listeners` until `shutdown` resolves, then drains in-flight requests.
/// Tests call this with `127.0.0.1:0` listeners and a config built in code.
pub async fn run(
    config: Config,
    listeners: server::Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), proxy::ProxyInitError> {
    let proxy = Arc::new(proxy::Proxy::new(config).await?);
    server::serve(proxy, listeners, shutdown)
        .await
        .map_err(proxy::ProxyInitError::Setup)
}
