//! The token-auth world the auth tests share: a token server with users, grants and a private
//! repository prefix, a distribution registry using it, a public and a private image, and
//! helpers to start mirrors in front of it and to read the token server's log. Its first
//! piece, a token-auth registry standing in for Docker Hub as the mirror's default upstream,
//! also serves the end-to-end and TLS tests.
//!
//! It asserts only what every such test needs (the token server heard from the mirror alone);
//! what a test expects of the mirror stays in the test.

use reqwest::StatusCode;

use super::mirror::{Mirror, MirrorOptions, UpstreamSpec};
use super::oci::{self, SeedFormat, Seeded};
use super::registry::{Registry, RegistryAuth};
use super::tokens::{briefs, TokenRequest, TokenServer, TokenServerBuilder};

pub const PUBLIC: &str = "mirrortest/hello";
pub const PRIVATE: &str = "private/secret";
pub const MIRROR_USER: &str = "mirroruser";
pub const MIRROR_PASSWORD: &str = "mirror-pw-31415926";
/// Seeding credentials: `admin` may push anywhere.
pub const ADMIN: Option<&str> = Some("admin:adminpw");
/// The names Docker Hub answers to, which the default upstream takes over.
pub const DOCKER_ALIASES: [&str; 3] = ["docker.io", "registry-1.docker.io", "index.docker.io"];

/// A distribution registry doing token auth against its own token server, which has the users,
/// grants and private prefixes of `tokens` plus `admin` (push anywhere, to seed); anything not
/// private may be pulled anonymously, as on Docker Hub.
pub fn token_registry(tokens: TokenServerBuilder) -> (TokenServer, Registry) {
    let tokens = tokens
        .user("admin", "adminpw")
        .grant("admin", "*", &["pull", "push"])
        .start();
    let registry = Registry::start(RegistryAuth::Token(&tokens));
    (tokens, registry)
}

/// `registry` as the mirror's default upstream `docker`, under Docker Hub's names.
pub fn docker_upstream(registry: &Registry) -> UpstreamSpec {
    UpstreamSpec::new("docker", &registry.url(), &DOCKER_ALIASES, true)
}

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
    let (tokens, registry) = token_registry(
        TokenServer::builder()
            .user("alice", "alicepw")
            .grant("alice", PRIVATE, &["pull"])
            .user("bob", "bobpw")
            .grant("bob", "other/thing", &["pull"])
            .user(MIRROR_USER, MIRROR_PASSWORD)
            .grant(MIRROR_USER, "*", &["pull"])
            .private("private/"),
    );
    let seed = |layout: &oci::Layout, repo: &str| {
        oci::seed(layout, &registry, repo, SeedFormat::Schema2, ADMIN)
    };
    let public = seed(&oci::runnable_image(), PUBLIC);
    let private = seed(&oci::private_image(), PRIVATE);
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
    let mut up = docker_upstream(&w.registry);
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
