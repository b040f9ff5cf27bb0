//! The fake upstream's accept loop, routing and responses: the read side of the distribution
//! API (`/v2/`, manifests, blobs with `Range`, tags/list), no auth, no push. Faults are decided
//! in `knobs.rs`; this file only records each request and applies what the knobs return.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use hyper::http::response::Builder;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use super::knobs::{header_delay, shape, take_faults, Fault};
use super::{Kind, Seen, State};

type Resp = Response<BoxBody<Bytes, io::Error>>;

/// Serves connections until the task is aborted (when the `FakeUpstream` is dropped).
pub(super) async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (resp, delay) = handle(&state, req);
                async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(resp)
                }
            });
            // Errors here are mostly our own cut-halfway knob or the mirror hanging up: expected.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The response, and how long to hold it back (`DelayHeaders`).
fn handle(state: &State, req: Request<Incoming>) -> (Resp, Duration) {
    let (kind, name, reference) = route(req.uri().path());
    let seen = Seen {
        method: req.method().clone(),
        kind,
        name,
        reference,
        path: req.uri().path_and_query().map_or("", |p| p.as_str()).into(),
        range: req
            .headers()
            .get(RANGE)
            .and_then(|v| v.to_str().ok())
            .map(String::from),
    };
    state.seen.lock().unwrap().push(seen.clone());
    let mut knobs = state.knobs.lock().unwrap();
    let faults = take_faults(&mut knobs, &seen.method, kind, &seen.reference);
    drop(knobs);
    (respond(state, &seen, &faults), header_delay(&faults))
}

fn respond(state: &State, req: &Seen, faults: &[Fault]) -> Resp {
    if let Some(status) = faults.iter().find_map(|f| match f {
        Fault::Status(s) => Some(*s),
        _ => None,
    }) {
        return injected(status);
    }
    if req.method != Method::GET && req.method != Method::HEAD {
        return error(405, "UNSUPPORTED", "the fake upstream is read-only");
    }
    let head = req.method == Method::HEAD;
    let (name, reference) = (req.name.as_str(), req.reference.as_str());
    match req.kind {
        Kind::Base => Response::builder()
            .header("Docker-Distribution-API-Version", "registry/2.0")
            .header(CONTENT_TYPE, "application/json")
            .body(full(Bytes::from_static(b"{}")))
            .unwrap(),
        Kind::Manifest => manifest(state, name, reference, head, faults),
        Kind::Blob => blob(state, reference, req.range.as_deref(), head, faults),
        Kind::Tags => tags(state, name),
        Kind::Other => error(404, "NOT_FOUND", "no such route"),
    }
}

/// Splits a path into (kind, repository name, reference). Names may contain slashes, so the
/// API keyword is searched from the right, like distribution's router does.
fn route(path: &str) -> (Kind, String, String) {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return (Kind::Other, String::new(), String::new());
    };
    if rest.is_empty() {
        return (Kind::Base, String::new(), String::new());
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return (Kind::Tags, name.into(), String::new());
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return (Kind::Manifest, name.into(), reference.into());
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        return (Kind::Blob, name.into(), digest.into());
    }
    (Kind::Other, String::new(), String::new())
}

fn manifest(state: &State, name: &str, reference: &str, head: bool, faults: &[Fault]) -> Resp {
    let key = (name.to_string(), reference.to_string());
    let Some(m) = state.content.lock().unwrap().manifests.get(&key).cloned() else {
        return error(404, "MANIFEST_UNKNOWN", "manifest unknown");
    };
    let builder = Response::builder()
        .header(CONTENT_TYPE, m.media_type)
        .header("Docker-Content-Digest", m.digest_header);
    finish(builder, m.body, head, faults)
}

fn blob(state: &State, digest: &str, range: Option<&str>, head: bool, faults: &[Fault]) -> Resp {
    let Some(data) = state.content.lock().unwrap().blobs.get(digest).cloned() else {
        return error(404, "BLOB_UNKNOWN", "blob unknown to registry");
    };
    let total = data.len();
    let builder = Response::builder()
        .header(CONTENT_TYPE, "application/octet-stream")
        .header("Docker-Content-Digest", digest)
        .header("Accept-Ranges", "bytes");
    let Some(range) = range else {
        return finish(builder, data, head, faults);
    };
    match parse_range(range, total) {
        Some((start, end)) => {
            let builder = builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(CONTENT_RANGE, format!("bytes {start}-{end}/{total}"));
            finish(builder, data.slice(start..=end), head, faults)
        }
        None => {
            let mut resp = error(416, "RANGE_INVALID", "range not satisfiable");
            let unsatisfied = format!("bytes */{total}").parse().unwrap();
            resp.headers_mut().insert(CONTENT_RANGE, unsatisfied);
            resp
        }
    }
}

/// `bytes=N-` or `bytes=N-M` (inclusive), clamped to the blob; `None` when unsatisfiable.
fn parse_range(range: &str, total: usize) -> Option<(usize, usize)> {
    let (start, end) = range.strip_prefix("bytes=")?.split_once('-')?;
    let start: usize = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => total.checked_sub(1)?,
        e => e.parse::<usize>().ok()?.min(total.checked_sub(1)?),
    };
    (start <= end).then_some((start, end))
}

fn tags(state: &State, name: &str) -> Resp {
    let content = state.content.lock().unwrap();
    let mut known = false;
    let mut tags: Vec<&str> = Vec::new();
    for (repo, reference) in content.manifests.keys() {
        if repo == name {
            known = true;
            if !reference.contains(':') {
                tags.push(reference);
            }
        }
    }
    if !known {
        return error(404, "NAME_UNKNOWN", "repository name not known to registry");
    }
    tags.sort_unstable();
    let body = serde_json::json!({"name": name, "tags": tags});
    Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(full(Bytes::from(serde_json::to_vec(&body).unwrap())))
        .unwrap()
}

/// Adds the body: the intact length is always declared on HEAD; on GET the body faults decide.
fn finish(builder: Builder, data: Bytes, head: bool, faults: &[Fault]) -> Resp {
    let len = data.len();
    if head {
        let empty = Empty::new().map_err(|never| match never {}).boxed();
        return builder.header(CONTENT_LENGTH, len).body(empty).unwrap();
    }
    let shaped = shape(data, faults);
    let builder = if shaped.declare_length {
        builder.header(CONTENT_LENGTH, len)
    } else {
        builder
    };
    builder.body(shaped.body).unwrap()
}

/// The answer to a `Fault::Status` knob.
fn injected(status: u16) -> Resp {
    let mut resp = error(
        status,
        code_for(status),
        "fault injected by the fake upstream",
    );
    if status == 429 {
        // Rate-limiting registries say when to come back; a mirror should pass that on.
        let retry = hyper::header::HeaderValue::from_static("1");
        resp.headers_mut().insert(hyper::header::RETRY_AFTER, retry);
    }
    resp
}

fn code_for(status: u16) -> &'static str {
    match status {
        401 => "UNAUTHORIZED",
        403 => "DENIED",
        404 => "NOT_FOUND",
        429 => "TOOMANYREQUESTS",
        _ => "UNKNOWN",
    }
}

fn error(status: u16, code: &str, message: &str) -> Resp {
    let body = serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]});
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(full(Bytes::from(serde_json::to_vec(&body).unwrap())))
        .unwrap()
}

fn full(bytes: Bytes) -> BoxBody<Bytes, io::Error> {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}
