//! The one place errors become HTTP: a status code plus the OCI error envelope
//! `{"errors":[{"code":...,"message":...}]}`.
//!
//! Client faults map to 4xx, upstream faults to 502/504, our own faults to 500 with the cause
//! logged and a generic message sent. Upstream 4xx answers (401 with its challenge, 403, 404,
//! 429 with Retry-After) pass through with their code.

use http::{header, HeaderValue, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::body::{self, Body};
use crate::proxy::ProxyError;
use crate::upstream::UpstreamError;

/// Error codes of the distribution spec (plus Docker Hub's TOOMANYREQUESTS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OciCode {
    BlobUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    Toomanyrequests,
    Unavailable,
    Unknown,
}

/// One entry of the envelope.
#[derive(Debug, Serialize)]
struct OciErrorBody<'a> {
    code: OciCode,
    message: &'a str,
}

/// The envelope.
#[derive(Debug, Serialize)]
struct OciErrors<'a> {
    errors: [OciErrorBody<'a>; 1],
}

/// Builds an OCI error response.
pub fn oci_error(status: StatusCode, code: OciCode, message: &str) -> Response<Body> {
    let json = serde_json::to_vec(&OciErrors {
        errors: [OciErrorBody { code, message }],
    })
    .expect("serializing a fixed shape");
    let mut resp = Response::new(body::full(json));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

/// Turns any proxy error into the response the client gets.
pub fn to_response(err: &ProxyError) -> Response<Body> {
    use ProxyError as E;
    let (status, code) = match err {
        E::Reference(r) => match r {
            crate::reference::ReferenceError::Name(_) => {
                (StatusCode::BAD_REQUEST, OciCode::NameInvalid)
            }
            crate::reference::ReferenceError::Digest(_) => {
                (StatusCode::BAD_REQUEST, OciCode::DigestInvalid)
            }
            crate::reference::ReferenceError::Tag(_) => {
                (StatusCode::BAD_REQUEST, OciCode::ManifestInvalid)
            }
        },
        E::UnknownNamespace(_) | E::NoDefaultUpstream => {
            (StatusCode::NOT_FOUND, OciCode::NameUnknown)
        }
        E::NotFound => (StatusCode::NOT_FOUND, OciCode::Unsupported),
        E::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, OciCode::Unsupported),
        E::NotAcceptable(_) => (StatusCode::NOT_FOUND, OciCode::ManifestUnknown),
        E::ManifestTooLarge { .. } => (StatusCode::BAD_GATEWAY, OciCode::ManifestInvalid),
        E::ManifestInvalid(_) => (StatusCode::BAD_GATEWAY, OciCode::ManifestInvalid),
        E::DigestMismatch { .. } => (StatusCode::BAD_GATEWAY, OciCode::DigestInvalid),
        E::UpstreamStatus(s) => return upstream_status(s),
        E::Shared(inner) => return to_response(inner),
        E::Upstream(UpstreamError::Timeout(_)) => {
            (StatusCode::GATEWAY_TIMEOUT, OciCode::Unavailable)
        }
        E::Upstream(_) => (StatusCode::BAD_GATEWAY, OciCode::Unavailable),
        E::Internal(_) => {
            tracing::error!(error = %err, "internal error");
            return oci_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                OciCode::Unknown,
                "internal error (see the mirror's log)",
            );
        }
    };
    oci_error(status, code, &err.to_string())
}

/// An upstream 4xx relayed to the client: same status, challenge and Retry-After; the body
/// is the upstream's envelope when it is one, else a synthesized one.
fn upstream_status(s: &crate::upstream::UpstreamStatus) -> Response<Body> {
    let status = s.status;
    let mut resp = if looks_like_oci_errors(&s.body) {
        let mut r = Response::new(body::full(s.body.clone()));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r.headers_mut().insert(
            "docker-distribution-api-version",
            HeaderValue::from_static("registry/2.0"),
        );
        r
    } else {
        let code = match status {
            StatusCode::UNAUTHORIZED => OciCode::Unauthorized,
            StatusCode::FORBIDDEN => OciCode::Denied,
            StatusCode::TOO_MANY_REQUESTS => OciCode::Toomanyrequests,
            StatusCode::NOT_FOUND => OciCode::NameUnknown,
            _ => OciCode::Unknown,
        };
        oci_error(status, code, &format!("upstream answered {status}"))
    };
    if let Some(v) = &s.www_authenticate {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, v.clone());
    }
    if let Some(v) = &s.retry_after {
        resp.headers_mut().insert(header::RETRY_AFTER, v.clone());
    }
    resp
}

/// Whether an upstream body is an OCI error envelope worth relaying verbatim.
fn looks_like_oci_errors(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Env {
        errors: Vec<serde_json::Value>,
    }
    serde_json::from_slice::<Env>(body).is_ok_and(|e| !e.errors.is_empty())
}
