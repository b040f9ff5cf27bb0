//! HTTP client side: one [`Upstream`] per configured registry, speaking the distribution pull
//! API over a pooled hyper client (HTTP/1.1 and HTTP/2, rustls with ring).
//!
//! It follows blob redirects itself (Docker Hub answers 307 to a CDN), dropping the
//! requester's `Authorization` when the redirect leaves the registry's host. It knows nothing
//! of caching or of our clients' responses.

mod auth;
pub mod challenge;
mod tls;
mod wire;

pub use wire::read_small;
use wire::{encode, error_chain, pull_scope, resolve, user_agent};

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::UpstreamConfig;
use crate::reference::{Digest, RepoName};

use auth::MirrorAuth;
use challenge::Challenge;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;
/// Largest upstream error body we read (to relay its OCI error envelope).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Why an upstream exchange failed (becomes 502/504).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {0} unreachable: {1}")]
    Connect(String, String),
    #[error("upstream timed out: {0}")]
    Timeout(String),
    #[error("upstream answered {0}")]
    ServerError(StatusCode),
    #[error("upstream response invalid: {0}")]
    Protocol(String),
    #[error("upstream body failed: {0}")]
    Body(String),
}

/// An upstream 4xx answer to relay to the client (challenge, denial, not found, rate limit).
#[derive(Debug, Clone)]
pub struct UpstreamStatus {
    pub status: StatusCode,
    pub body: Bytes,
    pub www_authenticate: Option<HeaderValue>,
    pub retry_after: Option<HeaderValue>,
}

/// One configured registry.
pub struct Upstream {
    /// Config name, for logs and stats.
    pub name: String,
    /// The same name, shared by cache keys without an allocation per request.
    pub key: std::sync::Arc<str>,
    /// Settings (aliases, prefix rule, timeouts).
    pub config: UpstreamConfig,
    /// `scheme://authority` plus any base path, without a trailing slash.
    base: String,
    client: HttpsClient,
    /// The mirror's own credentials, when configured.
    auth: Option<MirrorAuth>,
}

/// What to send with a request on a client's behalf.
#[derive(Debug, Default, Clone)]
pub struct Forward {
    /// The requester's `Authorization` header, forwarded as is.
    pub authorization: Option<HeaderValue>,
    /// `Accept` for manifests.
    pub accept: Option<HeaderValue>,
    /// `Range` for resumed blob downloads.
    pub range: Option<HeaderValue>,
}

impl Upstream {
    /// Builds the client; fails on unreadable CA files or password sources.
    pub fn new(name: &str, config: &UpstreamConfig) -> Result<Upstream, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls::client_config(name, config)?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        let auth = match (&config.username, config.resolve_password()?) {
            (Some(user), Some(password)) => Some(MirrorAuth::new(user, &password)),
            _ => None,
        };
        Ok(Upstream {
            name: name.to_owned(),
            key: std::sync::Arc::from(name),
            config: config.clone(),
            base: config.url.trim_end_matches('/').to_owned(),
            client,
            auth,
        })
    }

    /// Whether requests without client credentials use the mirror's configured identity.
    pub fn has_credentials(&self) -> bool {
        self.auth.is_some()
    }

    /// `GET|HEAD /v2/`.
    pub async fn ping(
        &self,
        method: Method,
        fwd: &Forward,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.send(method, "/v2/".to_owned(), fwd, "").await
    }

    /// `GET /v2/` with no credentials at all (not even the mirror's): to read the
    /// upstream's auth challenge.
    pub async fn ping_unauthenticated(&self) -> Result<Response<Incoming>, UpstreamError> {
        self.send_once(Method::GET, "/v2/", &Forward::default())
            .await
    }

    /// `GET|HEAD /v2/<repo>/manifests/<reference>`.
    pub async fn manifest(
        &self,
        method: Method,
        repo: &RepoName,
        reference: &str,
        fwd: &Forward,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.send(
            method,
            format!("/v2/{repo}/manifests/{reference}"),
            fwd,
            &pull_scope(repo),
        )
        .await
    }

    /// `GET|HEAD /v2/<repo>/blobs/<digest>`, following redirects.
    pub async fn blob(
        &self,
        method: Method,
        repo: &RepoName,
        digest: &Digest,
        fwd: &Forward,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.send(
            method,
            format!("/v2/{repo}/blobs/{digest}"),
            fwd,
            &pull_scope(repo),
        )
        .await
    }

    /// `GET /v2/<repo>/tags/list` with the client's (already validated) query.
    pub async fn tags_list(
        &self,
        repo: &RepoName,
        query: Option<&str>,
        fwd: &Forward,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let q = query.map(|q| format!("?{q}")).unwrap_or_default();
        self.send(
            Method::GET,
            format!("/v2/{repo}/tags/list{q}"),
            fwd,
            &pull_scope(repo),
        )
        .await
    }

    /// Sends a request; without client credentials and with configured ones, answers the
    /// upstream's challenge with the mirror's identity and retries once.
    async fn send(
        &self,
        method: Method,
        path: String,
        fwd: &Forward,
        scope: &str,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let Some(auth) = self.auth.as_ref().filter(|_| fwd.authorization.is_none()) else {
            return self.send_once(method, &path, fwd).await;
        };
        let mut fwd = fwd.clone();
        fwd.authorization = auth.cached(scope);
        let resp = self.send_once(method.clone(), &path, &fwd).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let Some(ch) = resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(Challenge::parse)
        else {
            return Ok(resp);
        };
        fwd.authorization = Some(if ch.is_basic() {
            auth.use_basic();
            auth.basic()
        } else if ch.is_bearer() {
            self.fetch_token(auth, &ch, scope).await?
        } else {
            return Ok(resp);
        });
        self.send_once(method, &path, &fwd).await
    }

    /// Gets a token for `scope` from the challenge's realm with the mirror's credentials.
    async fn fetch_token(
        &self,
        auth: &MirrorAuth,
        ch: &Challenge,
        scope: &str,
    ) -> Result<HeaderValue, UpstreamError> {
        let realm = ch
            .param("realm")
            .ok_or_else(|| UpstreamError::Protocol("Bearer challenge without realm".into()))?;
        let scope = ch.param("scope").unwrap_or(scope);
        let mut query = Vec::new();
        if let Some(service) = ch.param("service") {
            query.push(format!("service={}", encode(service)));
        }
        if !scope.is_empty() {
            query.push(format!("scope={}", encode(scope)));
        }
        let sep = if realm.contains('?') { '&' } else { '?' };
        let uri: Uri = format!("{realm}{sep}{}", query.join("&"))
            .parse()
            .map_err(|e| UpstreamError::Protocol(format!("bad token realm: {e}")))?;
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, auth.basic());
        let resp = self.raw(Method::GET, uri, headers, Bytes::new()).await?;
        if !resp.status().is_success() {
            tracing::warn!(upstream = %self.name, status = %resp.status(), "the token server refused the configured credentials");
            return Err(UpstreamError::Protocol(format!(
                "token server answered {}",
                resp.status()
            )));
        }
        let body = read_small(resp).await?;
        auth.store_token(scope, &body)
            .map_err(UpstreamError::Protocol)
    }

    /// One request to an arbitrary URL (token realms), with the given headers and body.
    pub async fn raw(
        &self,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(body))
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        *req.headers_mut() = headers;
        req.headers_mut().insert(header::USER_AGENT, user_agent());
        match tokio::time::timeout(self.config.response_timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(format!(
                "no response from {}'s token server",
                self.name
            ))),
            Ok(Err(e)) => Err(UpstreamError::Connect(self.name.clone(), error_chain(&e))),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// One request to the registry, following redirects.
    async fn send_once(
        &self,
        method: Method,
        path: &str,
        fwd: &Forward,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut uri: Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|e| UpstreamError::Protocol(format!("bad upstream URL: {e}")))?;
        let origin = uri.authority().cloned();
        for _ in 0..=MAX_REDIRECTS {
            let same_host = uri.authority() == origin.as_ref();
            let req = self.build(&method, &uri, fwd, same_host)?;
            let fut = self.client.request(req);
            let resp = match tokio::time::timeout(self.config.response_timeout, fut).await {
                Err(_) => {
                    return Err(UpstreamError::Timeout(format!(
                        "no response from {} in {:?}",
                        self.name, self.config.response_timeout
                    )))
                }
                Ok(Err(e)) => {
                    return Err(UpstreamError::Connect(self.name.clone(), error_chain(&e)))
                }
                Ok(Ok(r)) => r,
            };
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                return Ok(resp);
            }
            let next = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| UpstreamError::Protocol("redirect without Location".into()))?;
            uri = resolve(&uri, next)?;
            tracing::debug!(upstream = %self.name, to = %uri.host().unwrap_or(""), "following redirect");
        }
        Err(UpstreamError::Protocol(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }

    fn build(
        &self,
        method: &Method,
        uri: &Uri,
        fwd: &Forward,
        same_host: bool,
    ) -> Result<Request<Full<Bytes>>, UpstreamError> {
        let mut b = Request::builder().method(method.clone()).uri(uri.clone());
        let h = b.headers_mut().expect("fresh builder");
        h.insert(header::USER_AGENT, user_agent());
        if let (Some(a), true) = (&fwd.authorization, same_host) {
            h.insert(header::AUTHORIZATION, a.clone());
        }
        if let Some(a) = &fwd.accept {
            h.insert(header::ACCEPT, a.clone());
        }
        if let Some(r) = &fwd.range {
            h.insert(header::RANGE, r.clone());
        }
        b.body(Full::new(Bytes::new()))
            .map_err(|e| UpstreamError::Protocol(e.to_string()))
    }
}

impl UpstreamStatus {
    /// Reads a (small) non-success response into something relayable.
    pub async fn read(resp: Response<Incoming>) -> UpstreamStatus {
        let status = resp.status();
        let headers: HeaderMap = resp.headers().clone();
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_ERROR_BODY);
        let body = match tokio::time::timeout(Duration::from_secs(10), limited.collect()).await {
            Ok(Ok(c)) => c.to_bytes(),
            _ => Bytes::new(),
        };
        UpstreamStatus {
            status,
            body,
            www_authenticate: headers.get(header::WWW_AUTHENTICATE).cloned(),
            retry_after: headers.get(header::RETRY_AFTER).cloned(),
        }
    }
}
