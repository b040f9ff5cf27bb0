//! A restarted mirror serves what it cached before: the store is rescanned, and the first
//! tag revalidation re-learns which blobs belong to the repository from the verified manifest
//! on disk, so no blob request of any kind (GET or HEAD) reaches upstream.

mod support;

use support::fake_upstream::{sha256_digest, FakeUpstream, Kind, OCI_INDEX, OCI_MANIFEST};
use support::mirror::{Mirror, UpstreamSpec};

async fn pull(m: &Mirror, img: &support::fake_upstream::Image) {
    let base = format!("{}/v2/{}", m.url(), img.name);
    let r = reqwest::Client::new()
        .get(format!("{base}/manifests/{}", img.tag))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), img.manifest);
    let blobs =
        std::iter::once(img.config_digest.clone()).chain(img.layers.iter().map(|l| l.0.clone()));
    for d in blobs {
        let r = reqwest::get(format!("{base}/blobs/{d}")).await.unwrap();
        assert_eq!(r.status(), 200, "{d}");
        assert_eq!(sha256_digest(&r.bytes().await.unwrap()), d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_mirror_serves_its_cache_without_blob_requests_upstream() {
    let fake = FakeUpstream::start().await;
    let img = fake.add_image("team/app", "v1", 3, 200_000);
    let spec = [UpstreamSpec::new("fake", &fake.url(), &["fake.test"], true)];
    let mut first = Mirror::start(&spec);
    pull(&first, &img).await;
    first.wait_cached_blobs(5).await;
    fake.reset_counters();
    let second = first.restart_on_same_cache(&spec);
    let stats = second.stats().await;
    assert_eq!(stats["cached_blobs"], 5, "{stats}");
    pull(&second, &img).await;
    let blob_requests = fake.seen().iter().filter(|s| s.kind == Kind::Blob).count();
    assert_eq!(blob_requests, 0, "{:?}", fake.seen());
    assert_eq!(fake.manifest_gets(), 0);
    assert_eq!(fake.manifest_heads(), 1, "one revalidation of the tag");
}

/// Pulls like a client of an index: the index by tag, then the child by digest and its blobs.
async fn pull_index(m: &Mirror, child: &support::fake_upstream::Image) {
    let r = reqwest::Client::new()
        .get(format!("{}/v2/team/multi/manifests/v1", m.url()))
        .header("Accept", format!("{OCI_INDEX}, {OCI_MANIFEST}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut by_digest = child.clone();
    by_digest.tag = child.digest.clone();
    pull(m, &by_digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_images_too_relearn_ownership_through_their_child_manifests() {
    let fake = FakeUpstream::start().await;
    let child = fake.add_image("team/multi", "child", 2, 100_000);
    fake.add_index("team/multi", "v1", &[&child]);
    let spec = [UpstreamSpec::new("fake", &fake.url(), &["fake.test"], true)];
    let mut first = Mirror::start(&spec);
    pull_index(&first, &child).await;
    // Index, child manifest, config and two layers.
    first.wait_cached_blobs(5).await;
    fake.reset_counters();
    let second = first.restart_on_same_cache(&spec);
    pull_index(&second, &child).await;
    let blob_requests = fake.seen().iter().filter(|s| s.kind == Kind::Blob).count();
    assert_eq!(blob_requests, 0, "{:?}", fake.seen());
    assert_eq!(fake.manifest_gets(), 0);
}
