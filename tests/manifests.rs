//! Manifest semantics through the mirror: response headers, tag TTL and revalidation with a
//! HEAD (no GET when the digest did not change), a moved tag, and `Accept` honoured (never a
//! media type the client did not accept; `Vary: Accept`).

mod support;

use std::time::Duration;

use support::fake_upstream::{sha256_digest, FakeUpstream, OCI_INDEX, OCI_MANIFEST};
use support::mirror::{Mirror, UpstreamSpec};

const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";

async fn get(url: &str, accept: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(url)
        .header("Accept", accept)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_responses_carry_the_distribution_headers() {
    let fake = FakeUpstream::start().await;
    let img = fake.add_image("team/app", "v1", 1, 100);
    let mirror = Mirror::start(&[UpstreamSpec::new("fake", &fake.url(), &["fake.test"], true)]);
    let url = format!("{}/v2/team/app/manifests/v1", mirror.url());
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let r = reqwest::Client::new()
            .request(method.clone(), &url)
            .header("Accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{method}");
        let h = r.headers();
        assert_eq!(h["content-type"], OCI_MANIFEST);
        assert_eq!(h["docker-content-digest"], img.digest.as_str());
        assert_eq!(h["content-length"], img.manifest.len().to_string().as_str());
        assert_eq!(h["docker-distribution-api-version"], "registry/2.0");
        assert_eq!(h["vary"], "Accept");
        if method == reqwest::Method::GET {
            assert_eq!(r.bytes().await.unwrap(), img.manifest);
        }
    }
    // By digest too.
    let r = get(
        &format!("{}/v2/team/app/manifests/{}", mirror.url(), img.digest),
        OCI_MANIFEST,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(sha256_digest(&r.bytes().await.unwrap()), img.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_trusted_for_tag_ttl_then_revalidated_with_a_head() {
    let fake = FakeUpstream::start().await;
    let v1 = fake.add_image("team/app", "latest", 1, 100);
    let mirror = Mirror::start_with(
        &[UpstreamSpec::new("fake", &fake.url(), &["fake.test"], true)],
        "tag_ttl = \"1s\"",
    );
    let url = format!("{}/v2/team/app/manifests/latest", mirror.url());
    assert_eq!(
        get(&url, OCI_MANIFEST).await.bytes().await.unwrap(),
        v1.manifest
    );
    let (heads, gets) = (fake.manifest_heads(), fake.manifest_gets());
    assert_eq!(gets, 1);

    // Within the TTL: no upstream request at all.
    for _ in 0..5 {
        let r = get(&url, OCI_MANIFEST).await;
        assert_eq!(r.headers()["x-cache"], "HIT");
    }
    assert_eq!((fake.manifest_heads(), fake.manifest_gets()), (heads, gets));

    // After it: one HEAD, no GET (same digest).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        get(&url, OCI_MANIFEST).await.bytes().await.unwrap(),
        v1.manifest
    );
    assert_eq!(
        (fake.manifest_heads(), fake.manifest_gets()),
        (heads + 1, gets)
    );

    // The tag moves upstream: after the TTL the new manifest is fetched and served.
    let v2 = fake.add_image("team/app", "latest", 1, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = get(&url, OCI_MANIFEST).await;
    assert_eq!(r.headers()["docker-content-digest"], v2.digest.as_str());
    assert_eq!(r.bytes().await.unwrap(), v2.manifest);
    assert_eq!(fake.manifest_gets(), gets + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_type_the_client_did_not_accept_is_never_served() {
    let fake = FakeUpstream::start().await;
    let child = fake.add_image("team/multi", "child", 1, 100);
    let (index_digest, index) = fake.add_index("team/multi", "v1", &[&child]);
    let mirror = Mirror::start(&[UpstreamSpec::new("fake", &fake.url(), &["fake.test"], true)]);
    let url = format!("{}/v2/team/multi/manifests/v1", mirror.url());

    // A client that takes indexes caches it...
    let r = get(&url, &format!("{OCI_INDEX}, {OCI_MANIFEST}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], OCI_INDEX);
    assert_eq!(r.bytes().await.unwrap(), index);

    // ...but a client that only takes single manifests never gets it, by tag or by digest.
    for u in [
        url.clone(),
        format!("{}/v2/team/multi/manifests/{index_digest}", mirror.url()),
    ] {
        let r = get(&u, &format!("{DOCKER_V2}, {OCI_MANIFEST}")).await;
        assert_eq!(r.status(), 404, "{u}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN");
    }
    // No Accept at all means anything.
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], OCI_INDEX);
}
