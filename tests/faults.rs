//! Faults: an upstream that returns corrupted bytes, cuts bodies halfway, lies about digests or
//! answers 429/5xx. Through the real mirror binary, the client must get an error (a status, or
//! a body that ends in an error: never a clean EOF with wrong bytes), nothing may be cached,
//! and the next pull from the healed upstream must succeed and be cached.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use support::fake_upstream::{sha256_digest, FakeUpstream, Fault, Image, Knob, OCI_MANIFEST};
use support::mirror::{Mirror, UpstreamSpec};

/// A fake upstream with one two-layer image, and a mirror in front of it.
struct Rig {
    fake: FakeUpstream,
    mirror: Mirror,
    img: Image,
    http: reqwest::Client,
}

async fn rig() -> Rig {
    rig_with("").await
}

/// A rig whose upstream table gets the `upstream_extra` TOML lines (timeouts).
async fn rig_with(upstream_extra: &str) -> Rig {
    let fake = FakeUpstream::start().await;
    // Layers big enough to take several chunks, so a mirror that streams has sent bytes
    // before it can know the digest is wrong.
    let img = fake.add_image("team/app", "v1", 2, 256 * 1024);
    let mut spec = UpstreamSpec::new("fake", &fake.url(), &["fake.test"], true);
    spec.extra = upstream_extra.into();
    let mirror = Mirror::start(&[spec]);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    Rig {
        fake,
        mirror,
        img,
        http,
    }
}

/// What a client got: the status, and the body or the error that ended it.
struct Fetched {
    status: StatusCode,
    retry_after: Option<String>,
    body: Result<Bytes, reqwest::Error>,
}

impl Fetched {
    fn json(&self) -> serde_json::Value {
        let body = self.body.as_ref().expect("an error body that ends cleanly");
        serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(body)))
    }

    /// The `errors[0].code` of an OCI error body, which must be there.
    fn code(&self) -> String {
        let json = self.json();
        let code = json["errors"][0]["code"].as_str();
        code.unwrap_or_else(|| panic!("no errors[0].code in {json}"))
            .to_string()
    }
}

impl Rig {
    async fn get(&self, path: &str) -> Fetched {
        let resp = self.http.get(format!("{}{path}", self.mirror.url())).send();
        let resp = resp.await.expect("mirror answers with headers");
        let status = resp.status();
        let retry_after = resp.headers().get("retry-after");
        let retry_after = retry_after.map(|v| v.to_str().unwrap_or("?").to_string());
        Fetched {
            status,
            retry_after,
            body: resp.bytes().await,
        }
    }

    async fn get_blob(&self, digest: &str) -> Fetched {
        self.get(&format!("/v2/team/app/blobs/{digest}")).await
    }

    /// A manifest and a blob path: one request of each kind that goes upstream.
    fn manifest_and_blob_paths(&self) -> [String; 2] {
        let blob = format!("/v2/team/app/blobs/{}", self.img.layers[1].0);
        ["/v2/team/app/manifests/v1".to_string(), blob]
    }

    async fn cached_blobs(&self) -> u64 {
        let stats = self.mirror.stats().await;
        stats["cached_blobs"]
            .as_u64()
            .expect("integer cached_blobs in /stats")
    }

    /// Regular files in the cache dir whose path starts with `part` (`blobs`, `tmp`).
    fn files_under(&self, part: &str) -> Vec<PathBuf> {
        let root = self.mirror.cache_dir.clone();
        let files = self.mirror.cached_files();
        files
            .into_iter()
            .filter(|f| f.strip_prefix(&root).is_ok_and(|r| r.starts_with(part)))
            .collect()
    }

    /// Nothing published, no spool file left behind (after a short grace period for cleanup),
    /// and `/stats` agrees.
    async fn assert_nothing_cached(&self) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(self.files_under("blobs"), Vec::<PathBuf>::new());
        let deadline = Instant::now() + Duration::from_secs(3);
        while !self.mirror.cached_files().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(self.mirror.cached_files(), Vec::<PathBuf>::new());
        assert_eq!(self.cached_blobs().await, 0);
    }

    /// After a fault: nothing cached; then, with the upstream healed, every one of `paths` works.
    async fn assert_nothing_cached_then_heal(&self, paths: &[String]) {
        self.assert_nothing_cached().await;
        self.fake.heal();
        for path in paths {
            assert_eq!(
                self.get(path).await.status,
                StatusCode::OK,
                "{path} after healing"
            );
        }
    }

    /// Gets the blob `times` times, each time whole and right, without a blob GET upstream.
    async fn assert_served_from_cache(&self, digest: &str, bytes: &Bytes, times: usize) {
        let before = self.fake.all_blob_gets();
        for _ in 0..times {
            let got = self.get_blob(digest).await;
            assert_eq!(got.status, StatusCode::OK);
            assert_eq!(got.body.as_ref().expect("cached body"), bytes);
        }
        assert_eq!(
            self.fake.all_blob_gets(),
            before,
            "a cached blob needs no upstream GET"
        );
    }

    /// Waits until `/stats` counts `n` cached blobs: publishing may trail the last byte sent.
    async fn wait_cached_blobs(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.cached_blobs().await != n {
            assert!(Instant::now() < deadline, "cached_blobs never reached {n}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A failed pull: a non-2xx status, or a 2xx whose body ends in an error.
fn assert_failed(got: &Fetched, what: &str) {
    if got.status.is_success() {
        if let Ok(body) = &got.body {
            panic!(
                "{what}: client got {} and a body that ended cleanly ({} bytes, {})",
                got.status,
                body.len(),
                sha256_digest(body)
            );
        }
    }
}

/// Pulls a layer while `faults` are on (expecting an error and nothing cached), heals, pulls
/// again (expecting the right bytes, fetched upstream), then proves the blob is now cached.
async fn blob_fault_then_heal(faults: &[Fault]) {
    blob_fault_then_heal_with(faults, "").await;
}

async fn blob_fault_then_heal_with(faults: &[Fault], upstream_extra: &str) {
    let r = rig_with(upstream_extra).await;
    let (digest, bytes) = &r.img.layers[0];
    for fault in faults {
        r.fake.push_knob(Knob::new(fault.clone()).blobs());
    }

    let got = r.get_blob(digest).await;
    assert_failed(&got, &format!("{faults:?}"));
    r.assert_nothing_cached().await;

    r.fake.heal();
    let before = r.fake.blob_gets(digest);
    let got = r.get_blob(digest).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.as_ref().expect("healed body"), bytes);
    assert!(
        r.fake.blob_gets(digest) > before,
        "healed pull went upstream"
    );

    r.wait_cached_blobs(1).await;
    assert_eq!(r.files_under("blobs").len(), 1);
    r.assert_served_from_cache(digest, bytes, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_is_an_error_and_not_cached() {
    blob_fault_then_heal(&[Fault::Corrupt]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_cut_halfway_is_an_error_and_not_cached() {
    blob_fault_then_heal(&[Fault::CutHalfway]).await;
}

// Without an upstream Content-Length the mirror cannot hold back bytes by length: it must end
// its own (chunked) body with an error instead of the terminating chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_chunked_blob_is_an_error_and_not_cached() {
    blob_fault_then_heal(&[Fault::Corrupt, Fault::Chunked]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_blob_cut_halfway_is_an_error_and_not_cached() {
    blob_fault_then_heal(&[Fault::CutHalfway, Fault::Chunked]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_stalled_halfway_is_an_error_and_not_cached() {
    blob_fault_then_heal_with(&[Fault::StallHalfway], "idle_timeout = \"1s\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_slower_than_response_timeout_is_504() {
    let r = rig_with("response_timeout = \"1s\"").await;
    let paths = r.manifest_and_blob_paths();
    r.fake
        .push_knob(Knob::new(Fault::DelayHeaders(Duration::from_secs(20))));
    for path in &paths {
        let start = Instant::now();
        let got = r.get(path).await;
        assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT, "{path}");
        got.code();
        let took = start.elapsed();
        assert!(took < Duration::from_secs(10), "{path}: 504 after {took:?}");
    }
    r.assert_nothing_cached_then_heal(&paths).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_bytes_not_matching_the_requested_digest_are_refused() {
    let r = rig().await;
    let real = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;
    let digest = sha256_digest(real);
    // The upstream serves other bytes under this digest, and even claims the digest in its header.
    r.fake
        .put_manifest_raw("team/app", &digest, OCI_MANIFEST, &r.img.manifest, &digest);

    let got = r.get(&format!("/v2/team/app/manifests/{digest}")).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    got.code();
    r.assert_nothing_cached().await;

    r.fake
        .put_manifest_raw("team/app", &digest, OCI_MANIFEST, real, &digest);
    let before = r.fake.manifest_gets();
    let got = r.get(&format!("/v2/team/app/manifests/{digest}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.unwrap().as_ref(), real);
    assert!(
        r.fake.manifest_gets() > before,
        "the bad manifest was not cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_whose_digest_header_disagrees_with_the_body_is_refused() {
    let r = rig().await;
    let body = r.img.manifest.clone();
    let honest = r.img.digest.clone();
    let claimed = sha256_digest(b"some other manifest");
    // A consistent liar: the tag and the claimed digest both serve `body` with the wrong header,
    // so HEAD-then-GET-by-digest and GET-by-tag both meet the disagreement.
    for reference in ["v2", claimed.as_str()] {
        r.fake
            .put_manifest_raw("team/liar", reference, OCI_MANIFEST, &body, &claimed);
    }

    let got = r.get("/v2/team/liar/manifests/v2").await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    got.code();
    r.assert_nothing_cached().await;

    r.fake
        .put_manifest_raw("team/liar", "v2", OCI_MANIFEST, &body, &honest);
    r.fake
        .put_manifest_raw("team/liar", &honest, OCI_MANIFEST, &body, &honest);
    let resp = r
        .http
        .get(format!("{}/v2/team/liar/manifests/v2", r.mirror.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let header = resp.headers().get("docker-content-digest").cloned();
    assert_eq!(header.unwrap().to_str().unwrap(), honest);
    assert_eq!(resp.bytes().await.unwrap(), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_or_cut_manifest_body_is_502_and_not_cached() {
    let r = rig().await;
    for fault in [Fault::Corrupt, Fault::CutHalfway] {
        r.fake.push_knob(Knob::new(fault.clone()).manifests());
        for reference in ["v1", r.img.digest.as_str()] {
            let got = r.get(&format!("/v2/team/app/manifests/{reference}")).await;
            assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{fault:?} {reference}");
            got.code();
        }
        r.fake.heal();
    }
    r.assert_nothing_cached().await;
    let got = r.get("/v2/team/app/manifests/v1").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.unwrap(), r.img.manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_429_is_relayed_and_5xx_becomes_502() {
    let r = rig().await;
    let paths = r.manifest_and_blob_paths();
    r.fake.push_knob(Knob::new(Fault::Status(429)));
    for path in &paths {
        let got = r.get(path).await;
        assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert_eq!(got.code(), "TOOMANYREQUESTS", "{path}");
        assert_eq!(
            got.retry_after.as_deref(),
            Some("1"),
            "{path}: Retry-After relayed"
        );
    }
    for status in [500, 503] {
        r.fake.heal();
        r.fake.push_knob(Knob::new(Fault::Status(status)));
        for path in &paths {
            let got = r.get(path).await;
            assert_eq!(
                got.status,
                StatusCode::BAD_GATEWAY,
                "upstream {status} on {path}"
            );
            got.code();
        }
    }
    r.assert_nothing_cached_then_heal(&paths).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_blob_is_served_while_upstream_blob_gets_fail() {
    let r = rig().await;
    let (digest, bytes) = &r.img.layers[0];
    let got = r.get_blob(digest).await;
    assert_eq!(got.status, StatusCode::OK);
    r.wait_cached_blobs(1).await;

    // Only GETs fail: the auth gate's HEAD checks may still reach upstream, by design.
    r.fake
        .push_knob(Knob::new(Fault::Status(500)).blobs().get_only());
    r.assert_served_from_cache(digest, bytes, 3).await;
}
