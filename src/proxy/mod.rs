//! The pull-through logic: route a request, apply the auth gate, answer from the cache or
//! fetch from upstream while verifying, publish only verified content.
//!
//! Depends on `cache`, `store` and `upstream`; never the other way round. Errors are returned
//! as [`ProxyError`] and turned into HTTP in `crate::error` only.

mod blob;
mod download;
mod flight;
mod gate;
mod manifest;
pub mod media;
mod multipart;
mod range;
mod respond;
mod route;
pub mod token;
mod transfer;

use std::sync::Arc;

use http::{header, request::Parts, HeaderValue, Method, Response};

use crate::body::Body;
use crate::cache::{BlobIndex, Credential, Memory, Owner, TagKey};
use crate::config::Config;
use crate::reference::{Digest, ReferenceError};
use crate::stats::Stats;
use crate::store::{BlobStore, FsStore, StoreError};
use crate::upstream::{Forward, Upstream, UpstreamError, UpstreamStatus};

pub use route::{Endpoint, Routed, Router, Target};

/// Everything that can go wrong while answering a pull request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    Reference(#[from] ReferenceError),
    #[error("namespace `{0}` is not a configured upstream alias")]
    UnknownNamespace(String),
    #[error("no default upstream is configured; use ?ns= or an alias prefix")]
    NoDefaultUpstream,
    #[error("unknown endpoint")]
    NotFound,
    #[error("this mirror is read-only: only GET and HEAD are supported")]
    MethodNotAllowed,
    #[error("manifest media type {0} is not in the request's Accept")]
    NotAcceptable(String),
    #[error("upstream manifest is larger than the {limit} byte limit")]
    ManifestTooLarge { limit: u64 },
    #[error("upstream manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("upstream content failed verification: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("upstream answered {}", .0.status)]
    UpstreamStatus(UpstreamStatus),
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("{0}")]
    Internal(String),
    /// The error of a flight this request joined.
    #[error("{0}")]
    Shared(Arc<ProxyError>),
}

impl From<StoreError> for ProxyError {
    fn from(e: StoreError) -> Self {
        ProxyError::Internal(e.to_string())
    }
}

/// What the server knows of a request's connection (in the request's extensions).
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: std::net::SocketAddr,
    /// Arrived on the TLS listener.
    pub tls: bool,
}

/// Why the mirror could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyInitError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Setup(String),
}

/// The requester, as far as the auth gate and upstream forwarding are concerned.
#[derive(Clone)]
pub struct Requester {
    /// Forwarded upstream verbatim; never logged.
    pub authorization: Option<HeaderValue>,
    /// A hash of `authorization`, the key of cached auth decisions.
    pub credential: Credential,
}

impl Requester {
    fn from_parts(parts: &Parts) -> Requester {
        let authorization = parts.headers.get(header::AUTHORIZATION).cloned();
        let credential = match &authorization {
            None => Credential::Anonymous,
            Some(v) => {
                use sha2::Digest as _;
                let h = sha2::Sha256::digest(v.as_bytes());
                let mut k = [0u8; 16];
                k.copy_from_slice(&h[..16]);
                Credential::Hashed(k)
            }
        };
        Requester {
            authorization,
            credential,
        }
    }

    fn forward(&self) -> Forward {
        Forward {
            authorization: self.authorization.clone(),
            ..Forward::default()
        }
    }
}

/// The shared result of a tag revalidation.
type TagAnswer = Result<(manifest::Found, respond::CacheStatus), Arc<ProxyError>>;

/// Shared state of the mirror.
pub struct Proxy {
    pub config: Config,
    pub stats: Arc<Stats>,
    router: Router,
    store: Arc<dyn BlobStore>,
    memory: Memory,
    index: Arc<BlobIndex>,
    downloads: download::Downloads,
    /// Token realms learned from upstream challenges.
    realms: token::Realms,
    /// Tag revalidations in flight, per tag, client kind and credential.
    tag_flights: flight::Flights<(TagKey, Credential), TagAnswer>,
    /// Manifest fetches by digest in flight.
    manifest_fetches: flight::Flights<Digest, Result<manifest::Found, Arc<ProxyError>>>,
}

impl Proxy {
    /// Opens the store, scans it, and sets up the upstream clients.
    pub async fn new(config: Config) -> Result<Proxy, ProxyInitError> {
        let store: Arc<dyn BlobStore> = Arc::new(FsStore::open(&config.cache.dir)?);
        let scanned = store.list().await?;
        let index = Arc::new(BlobIndex::from_scan(scanned));
        let stats = Arc::new(Stats::default());
        let (n, bytes) = index.totals();
        let upstreams = config
            .upstreams
            .iter()
            .map(|(name, u)| Upstream::new(name, u).map(Arc::new))
            .collect::<Result<Vec<_>, String>>()
            .map_err(ProxyInitError::Setup)?;
        tracing::info!(blobs = n, bytes, dir = %config.cache.dir.display(), "cache opened");
        Ok(Proxy {
            memory: Memory::new(config.cache.memory.as_u64(), config.cache.auth_ttl),
            router: Router::new(upstreams),
            downloads: download::Downloads::default(),
            tag_flights: flight::Flights::default(),
            realms: token::Realms::default(),
            manifest_fetches: flight::Flights::default(),
            store,
            index,
            stats,
            config,
        })
    }

    /// The `/stats` document: request counters plus what the store holds now.
    pub fn stats_snapshot(&self) -> crate::stats::Snapshot {
        self.stats.snapshot(self.index.totals())
    }

    /// Answers one `/v2/...` request.
    pub async fn handle(&self, parts: &Parts) -> Result<Response<Body>, ProxyError> {
        Stats::add(&self.stats.requests, 1);
        if parts.method != Method::GET && parts.method != Method::HEAD {
            return Err(ProxyError::MethodNotAllowed);
        }
        let ns = query_param(parts.uri.query(), "ns");
        let who = Requester::from_parts(parts);
        let routed = self.router.route(parts.uri.path(), ns.as_deref())?;
        let up = match &routed {
            Routed::Base(up) => up.clone(),
            Routed::Repo(t) => t.upstream.clone(),
        };
        let result = match routed {
            Routed::Base(up) => self.base(&up, parts, &who).await,
            Routed::Repo(t) => self.repo(&t, parts, &who).await,
        };
        result.map_err(|e| {
            // Relayed challenges (also those of a flight this request joined) point at our
            // token endpoint.
            let mut status = match &e {
                ProxyError::UpstreamStatus(s) => s.clone(),
                ProxyError::Shared(inner) => match &**inner {
                    ProxyError::UpstreamStatus(s) => s.clone(),
                    _ => return e,
                },
                _ => return e,
            };
            self.rewrite_challenge(&up, parts, &mut status);
            ProxyError::UpstreamStatus(status)
        })
    }

    async fn repo(
        &self,
        t: &Target,
        parts: &Parts,
        who: &Requester,
    ) -> Result<Response<Body>, ProxyError> {
        let span = tracing::Span::current();
        span.record("upstream", t.upstream.name.as_str());
        span.record("repo", t.repo.as_str());
        match &t.endpoint {
            Endpoint::Manifest(r) => self.manifest(t, r, parts, who).await,
            Endpoint::Blob(d) => {
                span.record("digest", tracing::field::display(d));
                self.blob(t, d, parts, who).await
            }
            Endpoint::TagsList => self.tags_list(t, parts, who).await,
        }
    }

    /// `/v2/`: relays the upstream's answer so clients learn its auth challenge.
    async fn base(
        &self,
        up: &Upstream,
        parts: &Parts,
        who: &Requester,
    ) -> Result<Response<Body>, ProxyError> {
        let resp = up.ping(parts.method.clone(), &who.forward()).await?;
        if resp.status().is_success() {
            return Ok(respond::api_ok(&parts.method));
        }
        Err(relay_status(resp).await)
    }

    /// `/v2/<name>/tags/list`: passed through (with pagination), never cached.
    async fn tags_list(
        &self,
        t: &Target,
        parts: &Parts,
        who: &Requester,
    ) -> Result<Response<Body>, ProxyError> {
        let query = parts.uri.query().map(|q| {
            q.split('&')
                .filter(|kv| kv.starts_with("n=") || kv.starts_with("last="))
                .collect::<Vec<_>>()
                .join("&")
        });
        let query = query.filter(|q| !q.is_empty());
        let resp = t
            .upstream
            .tags_list(&t.repo, query.as_deref(), &who.forward())
            .await?;
        if !resp.status().is_success() {
            return Err(relay_status(resp).await);
        }
        Ok(respond::passthrough_json(resp, &parts.method))
    }

    fn owner(&self, t: &Target) -> Owner {
        Owner {
            upstream: t.upstream.key.clone(),
            repo: t.repo.clone(),
        }
    }
}

/// A non-success upstream answer as an error to relay (4xx) or report (5xx).
pub(crate) async fn relay_status(resp: Response<hyper::body::Incoming>) -> ProxyError {
    let status = resp.status();
    if status.is_server_error() || status.is_informational() || status.is_redirection() {
        return ProxyError::Upstream(UpstreamError::ServerError(status));
    }
    ProxyError::UpstreamStatus(UpstreamStatus::read(resp).await)
}

/// The first value of `key` in a query string (percent-decoding is not needed: aliases are
/// plain host names, and anything else fails the alias match).
fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
}
