//! A redirecting upstream, shaped like Docker Hub in front of its CDN: the registry side serves
//! `/v2/` and manifests and answers every blob request with a `307` to a second hop on the same
//! host, which answers `307` to a "CDN" server on another port that serves the bytes. Blobs of
//! repositories under `loop/` redirect forever instead.
//!
//! Both servers record every request with its `Authorization` header, so tests can see which hop
//! got the requester's credentials. It checks no credentials itself and must never listen on
//! anything but loopback.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};

use super::oci::{sha256_digest, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST};

/// Which of the two servers saw a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Registry,
    Cdn,
}

/// One request as a server saw it.
#[derive(Clone, Debug)]
pub struct Hit {
    pub side: Side,
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub authorization: Option<String>,
}

/// The image the registry side serves under every repository name.
#[derive(Clone, Debug)]
pub struct RedirImage {
    pub manifest: Bytes,
    pub digest: String,
    /// (digest, bytes) of the config and the layer.
    pub blobs: Vec<(String, Bytes)>,
}

struct State {
    image: RedirImage,
    cdn: Mutex<Option<SocketAddr>>,
    hits: Mutex<Vec<Hit>>,
}

/// The two running servers; their accept loops stop on drop.
pub struct Redirector {
    pub registry: SocketAddr,
    pub cdn: SocketAddr,
    pub image: RedirImage,
    state: Arc<State>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Redirector {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Redirector {
    /// Starts both servers on the current tokio runtime; the layer is `layer_size` random bytes.
    pub async fn start(layer_size: usize) -> Redirector {
        let image = build_image(layer_size);
        let state = Arc::new(State {
            image: image.clone(),
            cdn: Mutex::new(None),
            hits: Mutex::new(Vec::new()),
        });
        let (registry, t1) = serve(state.clone(), Side::Registry).await;
        let (cdn, t2) = serve(state.clone(), Side::Cdn).await;
        *state.cdn.lock().unwrap() = Some(cdn);
        Redirector {
            registry,
            cdn,
            image,
            state,
            tasks: vec![t1, t2],
        }
    }

    /// `http://127.0.0.1:PORT` of the registry side, the mirror's upstream URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.registry)
    }

    /// Every request so far, oldest first.
    pub fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }
}

fn build_image(layer_size: usize) -> RedirImage {
    let mut layer = vec![0u8; layer_size];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut layer).unwrap();
    let layer = Bytes::from(layer);
    let config = Bytes::from(
        serde_json::json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&layer)]}})
        .to_string(),
    );
    let desc = |media: &str, b: &Bytes| serde_json::json!({"mediaType": media, "digest": sha256_digest(b), "size": b.len()});
    let manifest = Bytes::from(
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc(OCI_CONFIG, &config),
            "layers": [desc(OCI_LAYER, &layer)],
        })
        .to_string(),
    );
    RedirImage {
        digest: sha256_digest(&manifest),
        blobs: vec![
            (sha256_digest(&config), config),
            (sha256_digest(&layer), layer),
        ],
        manifest,
    }
}

async fn serve(state: Arc<State>, side: Side) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, side, req)) }
                });
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    (addr, task)
}

type Reply = Response<Full<Bytes>>;

fn handle(state: &State, side: Side, req: Request<hyper::body::Incoming>) -> Reply {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    state.hits.lock().unwrap().push(Hit {
        side,
        method: req.method().clone(),
        path: path.clone(),
        authorization,
    });
    let head = req.method() == Method::HEAD;
    let blobs: HashMap<&str, &Bytes> = state
        .image
        .blobs
        .iter()
        .map(|(d, b)| (d.as_str(), b))
        .collect();
    let path = path.split('?').next().unwrap_or("");
    match side {
        Side::Cdn => match path.strip_prefix("/cdn/").and_then(|d| blobs.get(d)) {
            Some(b) => bytes_reply("application/octet-stream", b, head),
            None => status(StatusCode::NOT_FOUND),
        },
        Side::Registry => registry_route(state, path, head),
    }
}

fn registry_route(state: &State, path: &str, head: bool) -> Reply {
    if path == "/v2/" {
        return bytes_reply("application/json", &Bytes::from_static(b"{}"), head);
    }
    if let Some(digest) = path.strip_prefix("/hop/") {
        let cdn = state.cdn.lock().unwrap().expect("cdn started");
        return redirect(&format!("http://{cdn}/cdn/{digest}?signature=opaque"));
    }
    if let Some(n) = path.strip_prefix("/loop/") {
        let n: u64 = n.parse().unwrap_or(0);
        return redirect(&format!("/loop/{}", n + 1));
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return status(StatusCode::NOT_FOUND);
    };
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        if name.starts_with("loop/") {
            return redirect("/loop/0");
        }
        return redirect(&format!("/hop/{digest}"));
    }
    if rest.contains("/manifests/") {
        let mut r = bytes_reply(OCI_MANIFEST, &state.image.manifest, head);
        let digest = state.image.digest.parse().unwrap();
        r.headers_mut().insert("docker-content-digest", digest);
        return r;
    }
    status(StatusCode::NOT_FOUND)
}

fn bytes_reply(content_type: &str, body: &Bytes, head: bool) -> Reply {
    let data = if head { Bytes::new() } else { body.clone() };
    let mut r = Response::new(Full::new(data));
    let h = r.headers_mut();
    h.insert("content-type", content_type.parse().unwrap());
    h.insert("content-length", body.len().into());
    h.insert(
        "docker-distribution-api-version",
        "registry/2.0".parse().unwrap(),
    );
    r
}

fn redirect(location: &str) -> Reply {
    let mut r = status(StatusCode::TEMPORARY_REDIRECT);
    r.headers_mut()
        .insert("location", location.parse().unwrap());
    r
}

fn status(code: StatusCode) -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}
