//! Checks the fake upstream itself, with reqwest straight at it (no mirror): if these fail, the
//! mirror tests that build on the fake mean nothing.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use support::fake_upstream::{sha256_digest, FakeUpstream, Fault, Knob, OCI_MANIFEST};

async fn get(url: String) -> reqwest::Response {
    reqwest::get(url)
        .await
        .expect("request to the fake upstream")
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn serves_manifests_blobs_and_tags_with_counters() {
    let fake = FakeUpstream::start().await;
    let img = fake.add_image("team/app", "v1", 2, 1000);
    let base = fake.url();

    assert_eq!(get(format!("{base}/v2/")).await.status(), StatusCode::OK);
    for reference in [img.tag.as_str(), img.digest.as_str()] {
        let resp = get(format!("{base}/v2/team/app/manifests/{reference}")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "content-type"), Some(OCI_MANIFEST));
        assert_eq!(
            header(&resp, "docker-content-digest"),
            Some(img.digest.as_str())
        );
        assert_eq!(resp.bytes().await.unwrap(), img.manifest);
    }
    let head = reqwest::Client::new()
        .head(format!("{base}/v2/team/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    let len = img.manifest.len().to_string();
    assert_eq!(header(&head, "content-length"), Some(len.as_str()));

    let (digest, bytes) = &img.layers[0];
    let resp = get(format!("{base}/v2/team/app/blobs/{digest}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(sha256_digest(&resp.bytes().await.unwrap()), *digest);
    assert_eq!(bytes.len(), 1000);

    let tags: serde_json::Value = get(format!("{base}/v2/team/app/tags/list"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));

    let missing = get(format!("{base}/v2/team/app/manifests/nope")).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN");

    assert_eq!(fake.manifest_gets(), 3);
    assert_eq!(fake.manifest_heads(), 1);
    assert_eq!(fake.blob_gets(digest), 1);
    assert_eq!(
        fake.count(&Method::GET, support::fake_upstream::Kind::Tags),
        1
    );
    assert_eq!(fake.requests(), 7);
}

#[tokio::test]
async fn corrupt_keeps_length_and_once_heals() {
    let fake = FakeUpstream::start().await;
    let digest = fake.add_blob(vec![7u8; 4096]);
    let url = format!("{}/v2/team/app/blobs/{digest}", fake.url());
    fake.push_knob(Knob::new(Fault::Corrupt).blobs().once());

    // A HEAD must not use up the "once": body faults only apply to GETs.
    let head = reqwest::Client::new().head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);

    let bad = get(url.clone()).await.bytes().await.unwrap();
    assert_eq!(bad.len(), 4096);
    assert_ne!(sha256_digest(&bad), digest);
    let good = get(url).await.bytes().await.unwrap();
    assert_eq!(sha256_digest(&good), digest);
}

#[tokio::test]
async fn cut_halfway_ends_the_body_with_an_error() {
    let fake = FakeUpstream::start().await;
    let digest = fake.add_blob(vec![1u8; 256 * 1024]);
    fake.push_knob(Knob::new(Fault::CutHalfway).only(&digest));
    let resp = get(format!("{}/v2/team/app/blobs/{digest}", fake.url())).await;
    assert_eq!(header(&resp, "content-length"), Some("262144"));
    let mut stream = resp.bytes_stream();
    let mut received = 0;
    let end = loop {
        match stream.next().await {
            Some(Ok(chunk)) => received += chunk.len(),
            Some(Err(e)) => break Some(e),
            None => break None,
        }
    };
    assert!(end.is_some(), "a cut body must not end cleanly");
    assert_eq!(
        received,
        128 * 1024,
        "the first half arrives before the cut"
    );
}

#[tokio::test]
async fn status_knob_applies_n_times_then_heals() {
    let fake = FakeUpstream::start().await;
    fake.add_image("team/app", "v1", 1, 10);
    let url = format!("{}/v2/team/app/manifests/v1", fake.url());
    fake.push_knob(Knob::new(Fault::Status(429)).manifests().times(2));
    for _ in 0..2 {
        let resp = get(url.clone()).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&resp, "retry-after"), Some("1"));
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS");
    }
    assert_eq!(get(url.clone()).await.status(), StatusCode::OK);

    fake.push_knob(Knob::new(Fault::Status(500)).get_only());
    assert_eq!(
        get(url.clone()).await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let head = reqwest::Client::new().head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK, "get_only must spare HEADs");
    fake.heal();
    assert_eq!(get(url).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn throttle_paces_the_body_and_chunked_drops_the_length() {
    let fake = FakeUpstream::start().await;
    let digest = fake.add_blob(vec![3u8; 8000]);
    let url = format!("{}/v2/team/app/blobs/{digest}", fake.url());

    fake.push_knob(
        Knob::new(Fault::Throttle {
            bytes_per_sec: 16_000,
        })
        .once(),
    );
    let start = Instant::now();
    let body = get(url.clone()).await.bytes().await.unwrap();
    let took = start.elapsed();
    assert_eq!(sha256_digest(&body), digest);
    assert!(
        took >= Duration::from_millis(400),
        "8000 B at 16000 B/s took {took:?}"
    );

    fake.push_knob(Knob::new(Fault::Chunked).once());
    let resp = get(url).await;
    assert_eq!(header(&resp, "content-length"), None);
    assert_eq!(header(&resp, "transfer-encoding"), Some("chunked"));
    assert_eq!(sha256_digest(&resp.bytes().await.unwrap()), digest);
}

#[tokio::test]
async fn blob_range_requests_get_206() {
    let fake = FakeUpstream::start().await;
    let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let digest = fake.add_blob(data.clone());
    let url = format!("{}/v2/team/app/blobs/{digest}", fake.url());
    let client = reqwest::Client::new();

    let resp = client
        .get(&url)
        .header("Range", "bytes=600-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&resp, "content-range"), Some("bytes 600-999/1000"));
    assert_eq!(resp.bytes().await.unwrap(), data[600..]);

    let resp = client
        .get(&url)
        .header("Range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(fake.seen()[0].range.as_deref(), Some("bytes=600-"));
}

#[tokio::test]
async fn lying_manifests_can_be_stored() {
    let fake = FakeUpstream::start().await;
    let honest = fake.add_manifest("team/app", "v1", OCI_MANIFEST, b"{\"schemaVersion\":2}");
    fake.put_manifest_raw("team/app", "v2", OCI_MANIFEST, b"{}", &honest);
    let resp = get(format!("{}/v2/team/app/manifests/v2", fake.url())).await;
    assert_eq!(
        header(&resp, "docker-content-digest"),
        Some(honest.as_str())
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"{}");
}

#[tokio::test]
async fn delay_holds_headers_and_stall_goes_silent_halfway() {
    let fake = FakeUpstream::start().await;
    let img = fake.add_image("team/app", "v1", 1, 64 * 1024);
    let delay = Duration::from_millis(300);
    fake.push_knob(Knob::new(Fault::DelayHeaders(delay)).manifests().once());
    let start = Instant::now();
    let resp = get(format!("{}/v2/team/app/manifests/v1", fake.url())).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(start.elapsed() >= delay);

    fake.push_knob(Knob::new(Fault::StallHalfway).blobs());
    let (digest, _) = &img.layers[0];
    let resp = get(format!("{}/v2/team/app/blobs/{digest}", fake.url())).await;
    let mut stream = resp.bytes_stream();
    let mut received = 0;
    let wait = Duration::from_millis(500);
    while let Ok(Some(chunk)) = tokio::time::timeout(wait, stream.next()).await {
        received += chunk.unwrap().len();
    }
    assert_eq!(received, 32 * 1024, "half arrives, then silence");
}
