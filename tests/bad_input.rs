//! Bad input: invalid names, digests and tags, unknown `?ns=`, write methods, and an oversized
//! upstream manifest. Each must get a clear OCI error, reach no upstream, and write nothing
//! under the cache dir.
//!
//! Requests go over a raw hyper HTTP/1.1 connection so paths such as `team/../app` reach the
//! mirror byte for byte (reqwest/url would normalise the dots away). Every case is checked
//! before failing, so one run lists every input the mirror mishandles.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use support::fake_upstream::{FakeUpstream, Fault, Image, Knob, OCI_MANIFEST};
use support::mirror::{Mirror, UpstreamSpec};

/// A fake upstream with one image, a mirror in front of it, and the failures seen so far.
struct Rig {
    fake: FakeUpstream,
    mirror: Mirror,
    img: Image,
    failures: Vec<String>,
}

async fn rig() -> Rig {
    let fake = FakeUpstream::start().await;
    let img = fake.add_image("team/app", "v1", 1, 1024);
    let mirror = Mirror::start(&[UpstreamSpec::new("fake", &fake.url(), &["fake.test"], true)]);
    Rig {
        fake,
        mirror,
        img,
        failures: Vec::new(),
    }
}

/// What the mirror answered.
struct Reply {
    status: StatusCode,
    content_type: Option<String>,
    body: Bytes,
}

/// Sends one request with `path` exactly as given, on a fresh connection.
async fn send(addr: SocketAddr, method: Method, path: &str, body: &'static [u8]) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::from_static(body)))
        .unwrap_or_else(|e| panic!("building a request for {path}: {e}"));
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let content_type = resp.headers().get("content-type");
    let content_type = content_type.map(|v| v.to_str().unwrap_or("?").to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        content_type,
        body,
    }
}

/// `errors[0].code` of an OCI error body, or why there is none.
fn oci_code(reply: &Reply) -> Result<String, String> {
    let json: serde_json::Value = serde_json::from_slice(&reply.body)
        .map_err(|_| format!("not JSON: {:?}", String::from_utf8_lossy(&reply.body)))?;
    match json["errors"][0]["code"].as_str() {
        Some(code) => Ok(code.to_string()),
        None => Err(format!("no errors[0].code in {json}")),
    }
}

impl Rig {
    /// Sends one request to the mirror with `path` exactly as given, on a fresh connection.
    async fn send(&self, method: Method, path: &str, body: &'static [u8]) -> Reply {
        send(self.mirror.addr, method, path, body).await
    }

    /// The read endpoints under a repository name: a manifest, a blob and the tag list.
    fn read_endpoints(&self) -> [String; 3] {
        let layer = &self.img.layers[0].0;
        [
            "manifests/v1".to_string(),
            format!("blobs/{layer}"),
            "tags/list".into(),
        ]
    }

    /// Sends the request and records a failure unless the answer has status `want` (any 4xx
    /// when `None`), a JSON content type and a code among `codes` (any code when empty). HEAD
    /// answers have no body, so only their status is checked.
    async fn expect(&mut self, method: Method, path: &str, want: Option<u16>, codes: &[&str]) {
        let head = method == Method::HEAD;
        let reply = self.send(method.clone(), path, b"").await;
        let status_ok = match want {
            Some(w) => reply.status.as_u16() == w,
            None => reply.status.is_client_error(),
        };
        let code = if head {
            Ok(String::new())
        } else {
            oci_code(&reply)
        };
        let code_ok = head
            || code
                .as_ref()
                .is_ok_and(|c| codes.is_empty() || codes.contains(&c.as_str()));
        let json = head || reply.content_type.as_deref() == Some("application/json");
        if !(status_ok && code_ok && json) {
            self.failures.push(format!(
                "{method} {}: got {} {:?} (content-type {:?}), want {} {codes:?}",
                shorten(path),
                reply.status,
                code,
                reply.content_type,
                want.map_or("4xx".to_string(), |w| w.to_string()),
            ));
        }
    }

    /// Fails with every recorded failure, then checks that nothing reached upstream and nothing
    /// was written, and finally that a valid pull works (so the refusals were not just a
    /// broken mirror or an unreachable upstream).
    async fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} bad inputs mishandled:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
        let seen: Vec<String> = self
            .fake
            .seen()
            .iter()
            .map(|s| format!("{} {}", s.method, s.path))
            .collect();
        assert_eq!(seen, Vec::<String>::new(), "invalid input reached upstream");
        assert_eq!(self.mirror.cached_files(), Vec::<std::path::PathBuf>::new());
        let reply = self
            .send(Method::GET, "/v2/team/app/manifests/v1", b"")
            .await;
        assert_eq!(reply.status, StatusCode::OK, "the valid control pull");
        assert_eq!(reply.body, self.img.manifest);
    }
}

fn shorten(path: &str) -> String {
    if path.len() <= 120 {
        return path.to_string();
    }
    format!("{}...({} bytes)", &path[..100], path.len())
}

fn long_name() -> String {
    // Two valid components, 256 bytes in all: one over the spec's 255.
    format!("team/{}", "a".repeat(251))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_are_400_name_invalid() {
    let mut r = rig().await;
    let names = [
        "Team/app".to_string(),
        "team/App".into(),
        "team/../app".into(),
        "team/..".into(),
        "..".into(),
        "team/%2e%2e/app".into(),
        "team//app".into(),
        "team/app/".into(),
        "/team/app".into(),
        "team/-app".into(),
        "team/app_".into(),
        "team/a..b".into(),
        "team/app%20x".into(),
        "localhost:5000/team/app".into(),
        "fake.test/Team/app".into(),
        "fake.test/".into(),
        long_name(),
    ];
    for name in &names {
        for endpoint in r.read_endpoints() {
            let path = format!("/v2/{name}/{endpoint}");
            r.expect(Method::GET, &path, Some(400), &["NAME_INVALID"])
                .await;
        }
        let head = format!("/v2/{name}/manifests/v1");
        r.expect(Method::HEAD, &head, Some(400), &[]).await;
    }
    r.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_digests_are_400_digest_invalid() {
    let mut r = rig().await;
    let hex = "0123456789abcdef".repeat(4);
    let digests = [
        "sha256:../../etc".to_string(),
        "sha256:..%2f..%2fetc".into(),
        format!("sha256:{}", &hex[..63]),
        format!("sha256:{hex}0"),
        format!("md5:{}", &hex[..32]),
        format!("sha256:{}", hex.to_uppercase()),
        format!("sha256:{}", "g".repeat(64)),
        format!("sha512:{hex}"),
        format!("sha256:{}/../{}", &hex[..32], &hex[32..]),
        format!("sha256:{hex}/"),
        format!("sha256:{hex}%00"),
        format!("sha256:{hex}%2f"),
    ];
    for digest in &digests {
        let blob = format!("/v2/team/app/blobs/{digest}");
        r.expect(Method::GET, &blob, Some(400), &["DIGEST_INVALID"])
            .await;
        r.expect(Method::HEAD, &blob, Some(400), &[]).await;
        let manifest = format!("/v2/team/app/manifests/{digest}");
        r.expect(Method::GET, &manifest, Some(400), &["DIGEST_INVALID"])
            .await;
    }
    // Not a digest at all: fine as a tag, never as a blob reference.
    let blob = format!("/v2/team/app/blobs/sha256{hex}");
    r.expect(Method::GET, &blob, Some(400), &["DIGEST_INVALID"])
        .await;
    r.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tags_are_400() {
    let mut r = rig().await;
    let tags = [
        "a".repeat(129),
        ".hidden".into(),
        "-dash".into(),
        "tag%2fx".into(),
        "tag/x".into(),
    ];
    for tag in &tags {
        let path = format!("/v2/team/app/manifests/{tag}");
        // The distribution spec has no TAG_INVALID for pulls; either code reads clearly.
        r.expect(
            Method::GET,
            &path,
            Some(400),
            &["MANIFEST_INVALID", "TAG_INVALID"],
        )
        .await;
        r.expect(Method::HEAD, &path, Some(400), &[]).await;
    }
    r.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_namespaces_are_refused_without_dialing() {
    let mut r = rig().await;
    // A live registry the mirror is not configured for: it must never hear from the mirror,
    // whichever way a request names it.
    let rogue = FakeUpstream::start().await;
    rogue.add_image("team/app", "v1", 1, 16);
    let hosts = [
        "evil.example".to_string(),
        rogue.addr().to_string(),
        rogue.url(),
    ];
    for ns in &hosts {
        for endpoint in r.read_endpoints() {
            let path = format!("/v2/team/app/{endpoint}?ns={ns}");
            r.expect(Method::GET, &path, None, &[]).await;
        }
        r.expect(Method::GET, &format!("/v2/?ns={ns}"), None, &[])
            .await;
    }
    let prefixed = format!("/v2/{}/team/app/manifests/v1", rogue.addr());
    r.expect(Method::GET, &prefixed, None, &[]).await;
    // A configured alias in the path does not make an unknown `ns` acceptable.
    let both = "/v2/fake.test/team/app/manifests/v1?ns=evil.example";
    r.expect(Method::GET, both, None, &[]).await;
    let long = format!("/v2/team/app/manifests/v1?ns={}", "a".repeat(5000));
    r.expect(Method::GET, &long, None, &[]).await;
    r.expect(
        Method::HEAD,
        "/v2/team/app/manifests/v1?ns=evil.example",
        None,
        &[],
    )
    .await;
    assert_eq!(
        rogue.requests(),
        0,
        "the mirror dialed an unconfigured registry"
    );
    r.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_methods_are_405_unsupported() {
    let mut r = rig().await;
    let layer = r.img.layers[0].0.clone();
    let paths = [
        "/v2/".to_string(),
        "/v2/team/app/manifests/v1".into(),
        format!("/v2/team/app/manifests/{}", r.img.digest),
        format!("/v2/team/app/blobs/{layer}"),
        "/v2/team/app/blobs/uploads/".into(),
        "/v2/team/app/tags/list".into(),
    ];
    for path in &paths {
        for method in [Method::PUT, Method::POST, Method::DELETE, Method::PATCH] {
            r.expect(method, path, Some(405), &["UNSUPPORTED"]).await;
        }
    }
    // A push attempt with a body must not leave a file behind either.
    let reply = r
        .send(Method::PUT, "/v2/team/app/manifests/v2", b"{}")
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    r.finish().await;
}

/// Operator's view: the mirror refuses content the upstream sent, and the client cannot fix
/// it by asking differently, so this is a bad gateway (502), with MANIFEST_INVALID naming what
/// is wrong. SIZE_INVALID would suggest a length mismatch, which there is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_upstream_manifest_is_502_manifest_invalid() {
    let r = rig().await;
    let big = oversized_manifest(4 * 1024 * 1024 + 1);
    let big_digest = r.fake.add_manifest("team/app", "big", OCI_MANIFEST, &big);
    let huge = oversized_manifest(8 * 1024 * 1024);
    r.fake.add_manifest("team/app", "huge", OCI_MANIFEST, &huge);
    // Without Content-Length the mirror can only find out by counting while it reads.
    r.fake
        .push_knob(Knob::new(Fault::Chunked).manifests().only("huge"));

    let mut got = Vec::new();
    for reference in ["big", big_digest.as_str(), "huge"] {
        let path = format!("/v2/team/app/manifests/{reference}");
        let reply = r.send(Method::GET, &path, b"").await;
        got.push((reply.status.as_u16(), oci_code(&reply)));
    }
    let want = (502, Ok("MANIFEST_INVALID".to_string()));
    assert_eq!(
        got,
        vec![want.clone(), want.clone(), want],
        "big, big by digest, huge chunked"
    );
    assert_eq!(r.mirror.cached_files(), Vec::<std::path::PathBuf>::new());
    let reply = r.send(Method::GET, "/v2/team/app/manifests/v1", b"").await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// A syntactically valid OCI manifest of exactly `size` bytes, padded in an annotation.
fn oversized_manifest(size: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","layers":[],"annotations":{{"pad":""#
    );
    let tail = r#""}}"#;
    let mut out = head.into_bytes();
    out.resize(size - tail.len(), b'x');
    out.extend_from_slice(tail.as_bytes());
    out
}
