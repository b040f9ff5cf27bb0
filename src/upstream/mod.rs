//! HTTP client side: one [`Upstream`] per configured registry, speaking the distribution pull
//! API over a pooled hyper client (HTTP/1.1 and HTTP/2, rustls with ring).
//!
//! It follows blob redirects itself (Docker Hub answers 307 to a CDN), dropping the
//! requester's `Authorization` when the redirect leaves the registry's host. It knows nothing
//! of caching or of our clients' responses.

mod tls;

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::UpstreamConfig;
use crate::reference::{Digest, RepoName};

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

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
    /// Settings (aliases, prefix rule, timeouts).
    pub config: UpstreamConfig,
    /// `scheme://authority` plus any base path, without a trailing slash.
    base: String,
    client: HttpsClient,
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
    pub fn new(name: &str, config: &UpstreamConfig) -> Upstream {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls::client_config()).clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        Upstream {
            name: name.to_owned(),
            config: config.clone(),
            base: config.url.trim_end_matches('/').to_owned(),
            client,
        }
    }

    /// `GET|HEAD /v2/`.
    pub async fn ping(
        &self,
        method: Method,
        fwd: &Forward,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.send(method, "/v2/".to_owned(), fwd).await
    }

    /// `GET|HEAD /v2/<repo>/manifests/<reference>`.
    pub async fn manifest(
        &self,
        method: Method,
        repo: &RepoName,
        reference: &str,
        fwd: &Forward,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.send(method, format!("/v2/{repo}/manifests/{reference}"), fwd)
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
        self.send(method, format!("/v2/{repo}/blobs/{digest}"), fwd)
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
        self.send(Method::GET, format!("/v2/{repo}/tags/list{q}"), fwd)
            .await
    }

    async fn send(
        &self,
        method: Method,
        path: String,
        fwd: &Forward,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut uri: Uri = format!("{}{}", self.base, path)
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
    ) -> Result<Request<Empty<Bytes>>, UpstreamError> {
        let mut b = Request::builder().method(method.clone()).uri(uri.clone());
        let h = b.headers_mut().expect("fresh builder");
        h.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("regmirror/", env!("CARGO_PKG_VERSION"))),
        );
        if let (Some(a), true) = (&fwd.authorization, same_host) {
            h.insert(header::AUTHORIZATION, a.clone());
        }
        if let Some(a) = &fwd.accept {
            h.insert(header::ACCEPT, a.clone());
        }
        if let Some(r) = &fwd.range {
            h.insert(header::RANGE, r.clone());
        }
        b.body(Empty::new())
            .map_err(|e| UpstreamError::Protocol(e.to_string()))
    }
}

/// Resolves a `Location` against the URI that answered with it.
fn resolve(base: &Uri, location: &str) -> Result<Uri, UpstreamError> {
    let bad = |e: String| UpstreamError::Protocol(format!("bad redirect Location: {e}"));
    if location.starts_with("http://") || location.starts_with("https://") {
        return location
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()));
    }
    if !location.starts_with('/') {
        return Err(bad("relative paths are not supported".into()));
    }
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(
        location
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?,
    );
    Uri::from_parts(parts).map_err(|e| bad(e.to_string()))
}

/// An error and its causes on one line (hyper's errors hide the useful part in `source`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve() {
        let base: Uri = "http://r.example:5000/v2/a/blobs/x".parse().unwrap();
        assert_eq!(
            resolve(&base, "/b?c=1").unwrap().to_string(),
            "http://r.example:5000/b?c=1"
        );
        assert_eq!(
            resolve(&base, "https://cdn.example/y").unwrap().to_string(),
            "https://cdn.example/y"
        );
        assert!(resolve(&base, "rel").is_err());
    }
}
