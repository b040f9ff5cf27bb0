//! An in-process fake OCI registry with fault knobs and request counters, in the spirit of
//! rust-oci-client's "bad registry" test server.
//!
//! It owns the content a test adds (blobs, manifests, tags), serves the pull side of the
//! distribution API without auth on `127.0.0.1:0`, misbehaves on command ([`Knob`]) and counts
//! every request so tests can prove what did, and did not, reach the upstream. It must never
//! listen on anything but loopback, and it implements no push endpoints.
//!
//! - `server.rs`: accept loop, routing and responses.
//! - `knobs.rs`: the faults and how they shape a response body.

mod knobs;
mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::Method;
use sha2::{Digest as _, Sha256};

// Re-exported for the tests; test binaries that never touch a knob would warn without this.
#[allow(unused_imports)]
pub use knobs::{Fault, Knob};

/// Media type of the image manifests built by [`FakeUpstream::add_image`].
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the image indexes built by [`FakeUpstream::add_index`].
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an image config blob.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of a (pretend) gzipped layer; the bytes are random, nobody unpacks them.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Which part of the API a request addressed, for counters and knob scoping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `/v2/`, the version check.
    Base,
    /// `/v2/<name>/manifests/<reference>`
    Manifest,
    /// `/v2/<name>/blobs/<digest>`
    Blob,
    /// `/v2/<name>/tags/list`
    Tags,
    /// Anything else (answered 404 or 405).
    Other,
}

/// One request as the fake saw it, kept so tests can assert on exactly what reached upstream.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub kind: Kind,
    /// Repository name, empty for `Base`/`Other`.
    pub name: String,
    /// Tag or digest for manifests, digest for blobs, empty otherwise.
    pub reference: String,
    /// Path and query exactly as received.
    pub path: String,
    /// The `Range` header, if any (resumed blob fetches).
    pub range: Option<String>,
}

/// A manifest as stored: `digest_header` lets a test make the upstream lie about the digest.
#[derive(Clone)]
struct StoredManifest {
    media_type: String,
    body: Bytes,
    digest_header: String,
}

/// Everything the fake serves. Blobs are global (not per repository): tests never need the
/// cross-repository isolation a real registry has, and sharing keeps `add_blob` repo-free.
#[derive(Default)]
struct Content {
    blobs: HashMap<String, Bytes>,
    /// Keyed by (repository, tag or digest).
    manifests: HashMap<(String, String), StoredManifest>,
}

/// State shared between the test and the server tasks; std mutexes are fine because no lock
/// is held across an `.await`.
#[derive(Default)]
struct State {
    content: Mutex<Content>,
    knobs: Mutex<Vec<Knob>>,
    seen: Mutex<Vec<Seen>>,
}

/// A small image added by [`FakeUpstream::add_image`], with everything a test wants to compare.
#[derive(Clone, Debug)]
pub struct Image {
    pub name: String,
    pub tag: String,
    pub manifest: Bytes,
    pub digest: String,
    pub config_digest: String,
    /// (digest, bytes) of each layer, in manifest order.
    pub layers: Vec<(String, Bytes)>,
}

/// The running fake; the accept loop stops when this is dropped.
pub struct FakeUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FakeUpstream {
    /// Binds 127.0.0.1:0 and starts serving on the current tokio runtime.
    pub async fn start() -> FakeUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let accept = tokio::spawn(server::accept_loop(listener, state.clone()));
        FakeUpstream {
            addr,
            state,
            accept,
        }
    }

    /// `http://127.0.0.1:PORT`, for the mirror's upstream `url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stores a blob and returns its `sha256:` digest.
    pub fn add_blob(&self, bytes: impl Into<Bytes>) -> String {
        let bytes = bytes.into();
        let digest = sha256_digest(&bytes);
        let mut content = self.state.content.lock().unwrap();
        content.blobs.insert(digest.clone(), bytes);
        digest
    }

    /// Stores a manifest under `tag` and under its digest, honestly; returns the digest.
    pub fn add_manifest(&self, repo: &str, tag: &str, media_type: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        self.put_manifest_raw(repo, tag, media_type, bytes, &digest);
        self.put_manifest_raw(repo, &digest, media_type, bytes, &digest);
        digest
    }

    /// Stores `bytes` under exactly one `reference` with whatever `Docker-Content-Digest` the
    /// test says: the way to build an upstream whose bytes or headers lie.
    pub fn put_manifest_raw(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
        digest_header: &str,
    ) {
        let stored = StoredManifest {
            media_type: media_type.into(),
            body: Bytes::copy_from_slice(bytes),
            digest_header: digest_header.into(),
        };
        let key = (repo.to_string(), reference.to_string());
        self.state
            .content
            .lock()
            .unwrap()
            .manifests
            .insert(key, stored);
    }

    /// Stores an OCI index of `children` (all linux/amd64) under `repo:tag`; returns
    /// `(digest, bytes)`.
    pub fn add_index(&self, repo: &str, tag: &str, children: &[&Image]) -> (String, Vec<u8>) {
        let manifests: Vec<_> = children
            .iter()
            .map(|c| {
                serde_json::json!({"mediaType": OCI_MANIFEST, "digest": c.digest, "size": c.manifest.len(),
                                   "platform": {"architecture": "amd64", "os": "linux"}})
            })
            .collect();
        let index =
            serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        let bytes = serde_json::to_vec(&index).unwrap();
        (self.add_manifest(repo, tag, OCI_INDEX, &bytes), bytes)
    }

    /// Builds and stores an OCI image with `layers` random layers of `layer_size` bytes each.
    pub fn add_image(&self, repo: &str, tag: &str, layers: usize, layer_size: usize) -> Image {
        let layers: Vec<(String, Bytes)> = (0..layers)
            .map(|_| {
                let bytes = Bytes::from(random_bytes(layer_size));
                (self.add_blob(bytes.clone()), bytes)
            })
            .collect();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| &l.0).collect::<Vec<_>>()},
        });
        let config = serde_json::to_vec(&config).unwrap();
        let config_digest = self.add_blob(config.clone());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config_digest, config.len()),
            "layers": layers.iter().map(|(d, b)| descriptor(OCI_LAYER, d, b.len())).collect::<Vec<_>>(),
        });
        let manifest = Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap());
        let digest = self.add_manifest(repo, tag, OCI_MANIFEST, &manifest);
        Image {
            name: repo.into(),
            tag: tag.into(),
            manifest,
            digest,
            config_digest,
            layers,
        }
    }

    /// Turns a fault on; it stays until [`heal`](Self::heal) or until its `times` run out.
    pub fn push_knob(&self, knob: Knob) {
        self.state.knobs.lock().unwrap().push(knob);
    }

    /// Turns every fault off.
    pub fn heal(&self) {
        self.state.knobs.lock().unwrap().clear();
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Forgets the requests seen so far (counters start again from zero).
    pub fn reset_counters(&self) {
        self.state.seen.lock().unwrap().clear();
    }

    /// Total number of requests of any kind.
    pub fn requests(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    /// Requests with this method and kind, any name or reference.
    pub fn count(&self, method: &Method, kind: Kind) -> usize {
        self.count_where(|s| s.method == *method && s.kind == kind)
    }

    /// GETs of one blob.
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.count_where(|s| {
            s.method == Method::GET && s.kind == Kind::Blob && s.reference == digest
        })
    }

    /// HEADs of one blob.
    pub fn blob_heads(&self, digest: &str) -> usize {
        self.count_where(|s| {
            s.method == Method::HEAD && s.kind == Kind::Blob && s.reference == digest
        })
    }

    /// GETs of any blob.
    pub fn all_blob_gets(&self) -> usize {
        self.count(&Method::GET, Kind::Blob)
    }

    /// GETs of any manifest.
    pub fn manifest_gets(&self) -> usize {
        self.count(&Method::GET, Kind::Manifest)
    }

    /// HEADs of any manifest.
    pub fn manifest_heads(&self) -> usize {
        self.count(&Method::HEAD, Kind::Manifest)
    }

    fn count_where(&self, pred: impl Fn(&Seen) -> bool) -> usize {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| pred(s))
            .count()
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Unpredictable bytes (sha256 in counter mode over a per-process seed): distinct layers per
/// call so tests never share content by accident, without a `rand` dependency.
pub fn random_bytes(len: usize) -> Vec<u8> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let seed = format!(
        "{nanos}-{}-{}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    );
    let mut out = Vec::with_capacity(len + 32);
    let mut block = 0u64;
    while out.len() < len {
        out.extend_from_slice(&Sha256::digest(format!("{seed}-{block}")));
        block += 1;
    }
    out.truncate(len);
    out
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": digest, "size": size})
}
