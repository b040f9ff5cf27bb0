//! Small HTTP helpers of the upstream client: URL and header plumbing, error text.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{UpstreamError, MAX_ERROR_BODY};
use crate::reference::RepoName;

pub(super) fn user_agent() -> HeaderValue {
    HeaderValue::from_static(concat!("regmirror/", env!("CARGO_PKG_VERSION")))
}

/// The token scope for pulling `repo`.
pub(super) fn pull_scope(repo: &RepoName) -> String {
    format!("repository:{repo}:pull")
}

/// Percent-encodes a query value.
pub(super) fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads a small response body (token answers), capped.
pub async fn read_small(resp: Response<Incoming>) -> Result<Bytes, UpstreamError> {
    let limited = http_body_util::Limited::new(resp.into_body(), MAX_ERROR_BODY);
    match tokio::time::timeout(Duration::from_secs(30), limited.collect()).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) => Err(UpstreamError::Body(e.to_string())),
        Err(_) => Err(UpstreamError::Timeout("reading a small body".into())),
    }
}

/// Resolves a `Location` against the URI that answered with it.
pub(super) fn resolve(base: &Uri, location: &str) -> Result<Uri, UpstreamError> {
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
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
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
