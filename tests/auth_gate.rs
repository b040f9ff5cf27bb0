//! The auth gate, end to end against a real token-auth registry: content that one client pulled
//! into the cache is served only to requesters the upstream would let pull it.
//!
//! Issue text: "an anonymous client, and a client holding a valid token for another repository,
//! cannot obtain the private image's manifest or blobs from the cache after an authorized client
//! pulled it, neither under the private repository's name nor by asking for the private blob's
//! digest under a public repository's name; the authorized client can."

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use support::mirror::{Mirror, UpstreamSpec};
use support::oci::{self, sha256_digest, SeedFormat, Seeded};
use support::registry::{Registry, RegistryAuth};
use support::tokens::TokenServer;

/// Every manifest type, so the registry never down-converts to schema 1.
const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";
const PUBLIC: &str = "mirrortest/hello";
const PRIVATE: &str = "private/secret";

/// A token-auth registry holding a public and a private image, and a mirror in front of it.
struct World {
    tokens: TokenServer,
    /// Kept alive for the mirror; its log is printed if the test fails.
    _registry: Registry,
    public: Seeded,
    private: Seeded,
    mirror: Mirror,
}

fn world() -> World {
    let tokens = TokenServer::builder()
        .user("admin", "adminpw")
        .grant("admin", "*", &["pull", "push"])
        .user("alice", "alicepw")
        .grant("alice", PRIVATE, &["pull"])
        .user("bob", "bobpw")
        .grant("bob", "other/thing", &["pull"])
        .private("private/")
        .start();
    let registry = Registry::start(RegistryAuth::Token(&tokens));
    let admin = Some("admin:adminpw");
    let public = oci::seed(
        &oci::runnable_image(),
        &registry,
        PUBLIC,
        SeedFormat::Schema2,
        admin,
    );
    let private = oci::seed(
        &oci::private_image(),
        &registry,
        PRIVATE,
        SeedFormat::Schema2,
        admin,
    );
    let docker_aliases = ["docker.io", "registry-1.docker.io", "index.docker.io"];
    let mirror = Mirror::start(&[UpstreamSpec::new(
        "docker",
        &registry.url(),
        &docker_aliases,
        true,
    )]);
    World {
        tokens,
        _registry: registry,
        public,
        private,
        mirror,
    }
}

/// What came back for one request.
struct Got {
    status: StatusCode,
    body: Bytes,
    challenge: Option<String>,
}

async fn get(url: &str, token: Option<&str>) -> Got {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut req = client.get(url).header("accept", ACCEPT);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    Got {
        status: resp.status(),
        challenge,
        body: resp.bytes().await.unwrap(),
    }
}

/// `Bearer realm="..",service="..",scope=".."` -> {realm, service, scope}.
fn parse_challenge(header: &str) -> HashMap<String, String> {
    let params = header.strip_prefix("Bearer ").expect("a Bearer challenge");
    let mut out = HashMap::new();
    for part in params.split("\",") {
        if let Some((k, v)) = part.split_once('=') {
            out.insert(k.trim().to_string(), v.trim_matches('"').to_string());
        }
    }
    out
}

/// Follows the mirror's 401 challenge for `path` to the realm it names, as docker does, with
/// optional Basic credentials; returns the token.
async fn token_via_challenge(w: &World, path: &str, basic: Option<(&str, &str)>) -> String {
    let got = get(&format!("{}{path}", w.mirror.url()), None).await;
    assert_eq!(
        got.status,
        StatusCode::UNAUTHORIZED,
        "unauthenticated {path}"
    );
    let challenge = parse_challenge(&got.challenge.expect("WWW-Authenticate on 401"));
    // The realm is the upstream's token server, or the mirror's token proxy in front of it.
    let realm = &challenge["realm"];
    let known = [w.tokens.realm(), w.mirror.url()];
    assert!(
        known.iter().any(|k| realm.starts_with(k.as_str())),
        "realm {realm}"
    );
    let asked_before = w.tokens.requests().len();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = client.get(&challenge["realm"]).query(&[
        ("service", challenge["service"].as_str()),
        ("scope", challenge["scope"].as_str()),
    ]);
    if let Some((user, password)) = basic {
        req = req.basic_auth(user, Some(password));
    }
    let resp = req.send().await.unwrap();
    assert!(
        resp.status().is_success(),
        "token request: {}",
        resp.status()
    );
    // The upstream's token server issued it, to the user whose credentials we sent.
    let asked = w.tokens.requests();
    let last = asked[asked_before..]
        .last()
        .expect("token server not asked");
    assert_eq!(last.user.as_deref(), basic.map(|(user, _)| user));
    let json: serde_json::Value = resp.json().await.unwrap();
    json["token"].as_str().unwrap().to_string()
}

fn manifest_path(repo: &str, reference: &str) -> String {
    format!("/v2/{repo}/manifests/{reference}")
}

fn blob_path(repo: &str, digest: &str) -> String {
    format!("/v2/{repo}/blobs/{digest}")
}

/// Pulls `image` (by tag, by digest, every blob) through the mirror and checks every byte.
async fn assert_can_pull(w: &World, image: &Seeded, token: &str) {
    let base = w.mirror.url();
    for reference in [image.tag.as_str(), image.manifest_digest.as_str()] {
        let got = get(
            &format!("{base}{}", manifest_path(&image.repo, reference)),
            Some(token),
        )
        .await;
        assert_eq!(
            got.status,
            StatusCode::OK,
            "manifest {}:{reference}",
            image.repo
        );
        assert_eq!(sha256_digest(&got.body), image.manifest_digest);
    }
    for digest in image.blob_digests() {
        let got = get(
            &format!("{base}{}", blob_path(&image.repo, &digest)),
            Some(token),
        )
        .await;
        assert_eq!(got.status, StatusCode::OK, "blob {}@{digest}", image.repo);
        assert_eq!(sha256_digest(&got.body), digest, "blob body");
    }
}

/// Every way to ask for the private image's content: its manifest (tag and digest) and blobs
/// under its own name, and its manifest and blob digests under the public repository's name.
/// Returns (path, digest of the content that must not come back).
fn private_probes(private: &Seeded) -> Vec<(String, String)> {
    let digest = &private.manifest_digest;
    let mut probes = vec![
        (manifest_path(PRIVATE, &private.tag), digest.clone()),
        (manifest_path(PRIVATE, digest), digest.clone()),
        (manifest_path(PUBLIC, digest), digest.clone()),
    ];
    for blob in private.blob_digests() {
        probes.push((blob_path(PRIVATE, &blob), blob.clone()));
        probes.push((blob_path(PUBLIC, &blob), blob.clone()));
    }
    probes
}

/// Asserts `who` (holding `token`, or nothing) gets an error and never the content.
async fn assert_denied(w: &World, who: &str, token: Option<&str>) {
    for (path, content_digest) in private_probes(&w.private) {
        let got = get(&format!("{}{path}", w.mirror.url()), token).await;
        let denied = [
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::NOT_FOUND,
        ];
        assert!(
            denied.contains(&got.status),
            "{who}: GET {path} answered {} (want 401/403/404)",
            got.status
        );
        assert_ne!(
            sha256_digest(&got.body),
            content_digest,
            "{who}: {path} leaked"
        );
    }
}

/// Waits until the mirror reports at least `n` cached blobs: the denials below mean something
/// only if the private content is really in the cache when they are asked for.
async fn wait_cached_blobs(mirror: &Mirror, n: u64) {
    let start = Instant::now();
    loop {
        let stats = mirror.stats().await;
        let cached = stats["cached_blobs"]
            .as_u64()
            .expect("cached_blobs in /stats");
        if cached >= n {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "stats: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_client_pulls_public_image_with_token_from_challenge_realm() {
    let w = world();
    let token = token_via_challenge(&w, &manifest_path(PUBLIC, "latest"), None).await;
    assert_can_pull(&w, &w.public, &token).await;
    let anonymous = w.tokens.requests().into_iter().filter(|r| r.user.is_none());
    let scopes: Vec<String> = anonymous.flat_map(|r| r.scopes).collect();
    assert!(
        scopes.contains(&format!("repository:{PUBLIC}:pull")),
        "{scopes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_private_image_is_served_only_to_authorized_client() {
    let w = world();
    let private_tag = manifest_path(PRIVATE, "latest");
    let alice = token_via_challenge(&w, &private_tag, Some(("alice", "alicepw"))).await;
    assert_can_pull(&w, &w.private, &alice).await;
    wait_cached_blobs(&w.mirror, w.private.blob_digests().len() as u64).await;

    assert_denied(&w, "no credentials", None).await;
    let anonymous = token_via_challenge(&w, &private_tag, None).await;
    assert_denied(&w, "anonymous token", Some(&anonymous)).await;
    // Bob's token is valid, for the public repository the cross-repository probes name.
    let bob_public =
        token_via_challenge(&w, &manifest_path(PUBLIC, "latest"), Some(("bob", "bobpw"))).await;
    assert_denied(&w, "token for another repository", Some(&bob_public)).await;
    let bob_private = token_via_challenge(&w, &private_tag, Some(("bob", "bobpw"))).await;
    assert_denied(&w, "ungranted user's token", Some(&bob_private)).await;

    assert_can_pull(&w, &w.private, &alice).await;
}
