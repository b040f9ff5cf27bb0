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

use crate::body::{self, Body};
use crate::error;
use crate::proxy::Proxy;
use crate::stats::Stats;

/// The hyper service of one connection.
#[derive(Clone)]
pub struct Service {
    proxy: Arc<Proxy>,
    peer: SocketAddr,
}

impl Service {
    pub fn new(proxy: Arc<Proxy>, peer: SocketAddr) -> Service {
        Service { proxy, peer }
    }
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let proxy = self.proxy.clone();
        let span = tracing::info_span!(
            "request",
            method = %req.method(),
            path = %req.uri().path(),
            peer = %self.peer,
            upstream = tracing::field::Empty,
            repo = tracing::field::Empty,
            digest = tracing::field::Empty,
            cache = tracing::field::Empty,
        );
        Box::pin(
            async move {
                let start = Instant::now();
                let (parts, _body) = req.into_parts();
                let resp = dispatch(&proxy, &parts).await;
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

async fn dispatch(proxy: &Proxy, parts: &http::request::Parts) -> Response<Body> {
    let path = parts.uri.path();
    if path == "/v2" || path.starts_with("/v2/") {
        if path == "/v2" {
            return redirect("/v2/");
        }
        return match proxy.handle(parts).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "request failed");
                error::to_response(&e)
            }
        };
    }
    match (parts.method.clone(), path) {
        (Method::GET, "/stats") => json(&proxy.stats.snapshot()),
        (Method::GET | Method::HEAD, "/healthz") => json(&serde_json::json!({"status": "ok"})),
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
