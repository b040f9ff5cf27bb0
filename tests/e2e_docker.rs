//! End to end with a real dockerd whose only registry mirror is regmirror, in front of a real
//! token-auth distribution registry standing in for Docker Hub.
//!
//! dockerd talks to the mirror exactly as to Docker Hub's mirror: plain `/v2/<name>/...`, tokens
//! fetched from the realm the relayed challenge names (the upstream's token server, directly or
//! through the mirror's token proxy). The upstream registry's access log tells whether a pull was
//! served from the cache.

mod support;

use std::time::Instant;

use support::docker::Dockerd;
use support::mirror::Mirror;
use support::oci::{self, SeedFormat, Seeded, HELLO};
use support::registry::Registry;
use support::token_world::{docker_upstream, token_registry, ADMIN};
use support::tokens::TokenServer;

/// A token-auth registry (anonymous pull allowed) and a mirror using it as the default upstream.
struct World {
    _tokens: TokenServer,
    registry: Registry,
    mirror: Mirror,
}

fn world() -> World {
    let (tokens, registry) = token_registry(TokenServer::builder());
    let mirror = Mirror::start(&[docker_upstream(&registry)]);
    World {
        _tokens: tokens,
        registry,
        mirror,
    }
}

fn seed(w: &World, layout: &oci::Layout, repo: &str, format: SeedFormat) -> Seeded {
    oci::seed(layout, &w.registry, repo, format, ADMIN)
}

/// The digest dockerd recorded for `image` (`name@sha256:...` in RepoDigests).
fn repo_digest(d: &Dockerd, image: &str) -> String {
    let out = d.docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        image,
    ]);
    let digests: Vec<String> = serde_json::from_str(out.trim()).unwrap();
    let first = digests
        .first()
        .unwrap_or_else(|| panic!("no RepoDigests for {image}"));
    first.split_once('@').unwrap().1.to_string()
}

fn run_prints_hello(d: &Dockerd, image: &str) {
    let out = d.docker_ok(&["run", "--rm", "--network", "none", image]);
    assert_eq!(out.trim(), HELLO, "output of `docker run {image}`");
}

async fn stat(mirror: &Mirror, key: &str) -> u64 {
    let stats = mirror.stats().await;
    stats[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer {key} in /stats: {stats}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema2_image_runs_and_second_pull_is_served_from_cache() {
    let started = Instant::now();
    let w = world();
    let hello = seed(
        &w,
        &oci::runnable_image(),
        "mirrortest/hello",
        SeedFormat::Schema2,
    );
    let d = Dockerd::start(&w.mirror.url());
    let image = "mirrortest/hello:latest";

    let first = w.registry.mark();
    d.docker_ok(&["pull", image]);
    assert_eq!(repo_digest(&d, image), hello.manifest_digest);
    run_prints_hello(&d, image);
    // The first pull went upstream: proves the log check below can see blob GETs at all.
    let fetched = w.registry.blob_gets_since(first);
    for blob in hello.blob_digests() {
        assert!(
            fetched.iter().any(|l| l.path.ends_with(&blob)),
            "{blob} not fetched upstream"
        );
    }

    d.docker_ok(&["rmi", image]);
    let hits = stat(&w.mirror, "hits").await;
    let served = stat(&w.mirror, "bytes_served").await;
    let second = w.registry.mark();
    d.docker_ok(&["pull", image]);
    run_prints_hello(&d, image);
    let again = w.registry.blob_gets_since(second);
    assert!(
        again.is_empty(),
        "second pull fetched blobs upstream: {again:?}"
    );
    // ...and dockerd really downloaded them again, from the mirror's cache.
    let layer_bytes: u64 = hello
        .layer_digests
        .iter()
        .filter_map(|l| hello.blob_size(l))
        .sum();
    assert!(
        stat(&w.mirror, "hits").await > hits,
        "no cache hits on the second pull"
    );
    assert!(stat(&w.mirror, "bytes_served").await >= served + layer_bytes);
    eprintln!("schema2 test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_image_and_library_image_pull_and_run() {
    let started = Instant::now();
    let w = world();
    let multi = seed(
        &w,
        &oci::multi_platform_index(),
        "mirrortest/multi",
        SeedFormat::Index,
    );
    assert_eq!(multi.media_type, oci::OCI_INDEX);
    // `docker pull hello` means docker.io/library/hello.
    seed(
        &w,
        &oci::runnable_image(),
        "library/hello",
        SeedFormat::Schema2,
    );
    let d = Dockerd::start(&w.mirror.url());

    d.docker_ok(&["pull", "mirrortest/multi:latest"]);
    // dockerd records the index digest and runs the linux/amd64 child.
    assert_eq!(
        repo_digest(&d, "mirrortest/multi:latest"),
        multi.manifest_digest
    );
    run_prints_hello(&d, "mirrortest/multi:latest");
    let amd64 = &multi.children[0];
    let fetched = w.registry.blob_gets_since(0);
    assert!(fetched
        .iter()
        .any(|l| l.path.ends_with(&amd64.layer_digests[0])));
    // The arm64 layer is never needed, so never fetched.
    let arm64_layer = &multi.children[1].layer_digests[0];
    assert!(!fetched.iter().any(|l| l.path.ends_with(arm64_layer)));

    run_prints_hello(&d, "hello");
    eprintln!("index test took {:?}", started.elapsed());
}
