//! Success responses: the headers the distribution spec and real clients expect
//! (`Docker-Content-Digest`, `Content-Length`, the manifest's media type, `Vary: Accept`...).

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;

use crate::body::{self, Body};
use crate::reference::Digest;

const API_VERSION: HeaderValue = HeaderValue::from_static("registry/2.0");

/// Cache status, reported in the `X-Cache` header and the request's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the cache without fetching content.
    Hit,
    /// Content fetched from upstream for this request.
    Miss,
    /// Joined a download already in flight.
    Joined,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Joined => "JOINED",
        }
    }
}

fn base(status: StatusCode, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert("docker-distribution-api-version", API_VERSION);
    r
}

/// `200 {}` for `/v2/`.
pub fn api_ok(method: &Method) -> Response<Body> {
    let b = if method == Method::HEAD {
        body::empty()
    } else {
        body::full(&b"{}"[..])
    };
    let mut r = base(StatusCode::OK, b);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(2u64));
    r
}

/// A manifest, or its headers for HEAD.
pub fn manifest(
    method: &Method,
    digest: &Digest,
    media_type: &str,
    bytes: Bytes,
    cache: CacheStatus,
) -> Response<Body> {
    let len = bytes.len() as u64;
    let b = if method == Method::HEAD {
        body::empty()
    } else {
        body::full(bytes)
    };
    let mut r = base(StatusCode::OK, b);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    insert_digest(h, digest);
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    h.insert("x-cache", HeaderValue::from_static(cache.as_str()));
    r
}

fn insert_digest(h: &mut http::HeaderMap, digest: &Digest) {
    let v = HeaderValue::from_str(&digest.to_string()).expect("digests are ASCII");
    h.insert("docker-content-digest", v.clone());
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{digest}\"")).expect("ASCII"),
    );
}

/// Blob headers; `range` is `Some((start, end_inclusive, total))` for a 206.
pub fn blob(
    body: Body,
    digest: &Digest,
    len: Option<u64>,
    range: Option<(u64, u64, u64)>,
    cache: CacheStatus,
) -> Response<Body> {
    let status = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut r = base(status, body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    if let Some((s, e, total)) = range {
        let v = HeaderValue::from_str(&format!("bytes {s}-{e}/{total}")).expect("ASCII");
        h.insert(header::CONTENT_RANGE, v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=31536000, immutable"),
    );
    insert_digest(h, digest);
    h.insert("x-cache", HeaderValue::from_static(cache.as_str()));
    r
}

/// An upstream JSON answer (tags/list) streamed through with its status and pagination link.
pub fn passthrough_json(resp: Response<hyper::body::Incoming>, method: &Method) -> Response<Body> {
    let (parts, incoming) = resp.into_parts();
    let b = if method == Method::HEAD {
        body::empty()
    } else {
        incoming.map_err(std::io::Error::other).boxed_unsync()
    };
    let mut r = base(parts.status, b);
    for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH, header::LINK] {
        if let Some(v) = parts.headers.get(&name) {
            r.headers_mut().insert(name, v.clone());
        }
    }
    r
}
