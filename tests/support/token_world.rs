//! The token-auth world the auth-mode tests share: a token server with users, grants and a
//! private repository prefix, a distribution registry using it, a public and a private image,
//! and helpers to start mirrors in front of it and to read the token server's log.
//!
//! It asserts only what every such test needs (the token server heard from the mirror alone);
//! what a test expects of the mirror stays in the test.

use reqwest::StatusCode;

use super::mirror::{Mirror, MirrorOptions, UpstreamSpec};
use super::oci::{self, SeedFormat, Seeded};
use super::registry::{Registry, RegistryAuth};
use super::tokens::{briefs, TokenRequest, TokenServer};

pub const PUBLIC: &str = "mirrortest/hello";
pub const PRIVATE: &str = "private/secret";
pub const MIRROR_USER: &str = "mirroruser";
pub const MIRROR_PASSWORD: &str = "mirror-pw-31415926";

/// A token-auth registry (anonymous pull except on `private/`) with both images seeded.
pub struct World {
    pub tokens: TokenServer,
    pub registry: Registry,
    pub public: Seeded,
    pub private: Seeded,
    /// Token requests made while seeding; everything after is the test's.
    pub seeding: usize,
}

pub fn world() -> World {
    let tokens = TokenServer::builder()
        .user("admin", "adminpw")
        .grant("admin", "*", &["pull", "push"])
        .user("alice", "alicepw")
        .grant("alice", PRIVATE, &["pull"])
        .user("bob", "bobpw")
        .grant("bob", "other/thing", &["pull"])
        .user(MIRROR_USER, MIRROR_PASSWORD)
        .grant(MIRROR_USER, "*", &["pull"])
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
    World {
        seeding: tokens.requests().len(),
        tokens,
        registry,
        public,
        private,
    }
}

/// A mirror with the registry as its default (Docker Hub-like) upstream.
pub fn mirror(w: &World, upstream_extra: &str, options: MirrorOptions) -> Mirror {
    let aliases = ["docker.io", "registry-1.docker.io", "index.docker.io"];
    let mut up = UpstreamSpec::new("docker", &w.registry.url(), &aliases, true);
    up.extra = upstream_extra.into();
    Mirror::launch(&[up], &options)
}

/// Token requests since seeding, after checking every one came from the mirror.
pub fn all_via_mirror(w: &World) -> Vec<TokenRequest> {
    let requests = w.tokens.requests().split_off(w.seeding);
    assert!(!requests.is_empty(), "the token server was never asked");
    let direct: Vec<_> = requests.iter().filter(|r| !r.sent_by_mirror()).collect();
    assert!(
        direct.is_empty(),
        "direct token requests:\n{}",
        briefs(&requests)
    );
    requests
}

pub fn our_realm(m: &Mirror) -> String {
    format!("{}/_regmirror/token/docker", m.url())
}

/// A pull token for the private repository from the mirror's token endpoint, logged in as `user`.
pub async fn proxy_token(m: &Mirror, user: &str, password: &str) -> String {
    let service = super::tokens::SERVICE;
    let url = format!(
        "{}?service={service}&scope=repository:{PRIVATE}:pull",
        our_realm(m)
    );
    let resp = super::pull::client()
        .get(&url)
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "token endpoint for {user}");
    let json: serde_json::Value = resp.json().await.unwrap();
    json["token"].as_str().expect("a token").to_string()
}

/// Checks the mirror's log holds none of `secrets`.
pub fn assert_not_logged(m: &Mirror, secrets: &[String]) {
    let log = m.log();
    for s in secrets {
        assert!(
            !log.contains(s.as_str()),
            "the mirror logged a secret ({} chars)",
            s.len()
        );
    }
}
