//! Per-request dispatch: `/v2/...` to the proxy, `/stats` to the counters; one tracing span
//! per request, and the single call that turns a `ProxyError` into a response.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::Instrument;

use bytes::Bytes;
use http_body_util::BodyExt;

use super::access::Access;
use crate::body::{self, Body};
use crate::error::{self, OciCode};
use crate::proxy::token::TOKEN_PATH;
use crate::proxy::{ConnInfo, Proxy};
use crate::stats::Stats;

/// Largest token request body forwarded (OAuth2 form posts are tiny).
const MAX_TOKEN_BODY: usize = 64 * 1024;

/// The hyper service of one connection.
#[derive(Clone)]
pub struct Service {
    proxy: Arc<Proxy>,
    access: Arc<Access>,
    conn: ConnInfo,
}

impl Service {
    pub fn new(proxy: Arc<Proxy>, access: Arc<Access>, peer: SocketAddr, tls: bool) -> Service {
        Service {
            proxy,
            access,
            conn: ConnInfo { peer, tls },
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let proxy = self.proxy.clone();
        let access = self.access.clone();
        let conn = self.conn;
        let span = tracing::info_span!(
            "request",
            method = %req.method(),
            path = %req.uri().path(),
            peer = %self.conn.peer,
            upstream = tracing::field::Empty,
            repo = tracing::field::Empty,
            digest = tracing::field::Empty,
            cache = tracing::field::Empty,
        );
        Box::pin(
            async move {
                let start = Instant::now();
                let (mut parts, body) = req.into_parts();
                parts.extensions.insert(conn);
                let resp = dispatch(&proxy, &access, &mut parts, body).await;
                let status = resp.status();
                if status.is_client_error() || status.is_server_error() {
                    Stats::add(&proxy.stats.errors, 1);
                }
                tracing::info!(
                    status = status.as_u16(),
                    elapsed_ms = start.elapsed().as_millis() as u64,
                    "response"
                );
                Ok(resp)
            }
            .instrument(span),
        )
    }
}

async fn dispatch(
    proxy: &Proxy,
    access: &Access,
    parts: &mut http::request::Parts,
    body: Incoming,
) -> Response<Body> {
    let path = parts.uri.path().to_owned();
    if path == "/healthz" {
        return json(&serde_json::json!({"status": "ok"}));
    }
    if !access.allows_ip(
        parts
            .extensions
            .get::<ConnInfo>()
            .expect("set by call")
            .peer
            .ip(),
    ) {
        return error::oci_error(
            StatusCode::FORBIDDEN,
            OciCode::Denied,
            "client address not allowed",
        );
    }
    let api = path == "/v2" || path.starts_with("/v2/");
    let token = path.starts_with(TOKEN_PATH);
    if (api || token) && access.requires_credentials() {
        if !access.check(parts.headers.get(header::AUTHORIZATION)) {
            let mut r = error::oci_error(
                StatusCode::UNAUTHORIZED,
                OciCode::Unauthorized,
                "mirror credentials required",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"regmirror\""),
            );
            return r;
        }
        // The mirror's own credentials are never forwarded upstream.
        parts.headers.remove(header::AUTHORIZATION);
    }
    if path == "/v2" {
        return redirect("/v2/");
    }
    let result = if api {
        proxy.handle(parts).await
    } else if token {
        match read_body(body).await {
            Some(b) => proxy.token(parts, b).await,
            None => {
                return error::oci_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    OciCode::SizeInvalid,
                    "token request body too large",
                )
            }
        }
    } else {
        return other(proxy, parts);
    };
    result.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "request failed");
        error::to_response(&e)
    })
}

async fn read_body(body: Incoming) -> Option<Bytes> {
    http_body_util::Limited::new(body, MAX_TOKEN_BODY)
        .collect()
        .await
        .ok()
        .map(|c| c.to_bytes())
}

fn other(proxy: &Proxy, parts: &http::request::Parts) -> Response<Body> {
    match (parts.method.clone(), parts.uri.path()) {
        (Method::GET, "/stats") => json(&proxy.stats_snapshot()),
        _ => error::oci_error(
            StatusCode::NOT_FOUND,
            error::OciCode::Unsupported,
            "not found",
        ),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Response<Body> {
    let data = serde_json::to_vec_pretty(v).expect("serializable");
    let mut r = Response::new(body::full(data));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn redirect(to: &'static str) -> Response<Body> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    r
}
