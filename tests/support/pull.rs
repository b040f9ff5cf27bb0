//! A scripted pull client for auth tests: GETs with a chosen credential, the docker-style token
//! dance against whatever realm a challenge names, and the two checks every auth test makes —
//! "this requester gets every byte of the image" and "this requester gets none of it, by any
//! path". It knows nothing of how the mirror decides.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;

use super::oci::{sha256_digest, Seeded};

/// Every manifest type, so registries never down-convert to schema 1.
pub const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// What a request carries in `Authorization`.
#[derive(Clone, Debug)]
pub enum Cred {
    Anonymous,
    Bearer(String),
    Basic(String, String),
}

impl Cred {
    pub fn basic(user: &str, password: &str) -> Cred {
        Cred::Basic(user.into(), password.into())
    }
}

/// What came back for one request.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub body: Bytes,
    pub challenge: Option<String>,
    pub x_cache: Option<String>,
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn with(req: reqwest::RequestBuilder, cred: &Cred) -> reqwest::RequestBuilder {
    match cred {
        Cred::Anonymous => req,
        Cred::Bearer(t) => req.bearer_auth(t),
        Cred::Basic(u, p) => req.basic_auth(u, Some(p)),
    }
}

pub async fn get(url: &str, cred: &Cred) -> Got {
    let req = with(client().get(url).header("accept", ACCEPT), cred);
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (challenge, x_cache) = (header("www-authenticate"), header("x-cache"));
    Got {
        status: resp.status(),
        challenge,
        x_cache,
        body: resp.bytes().await.unwrap(),
    }
}

/// `Bearer realm="..",service="..",scope=".."` -> {realm, service, scope}.
pub fn parse_bearer(header: &str) -> HashMap<String, String> {
    let params = header
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a Bearer challenge: {header}"));
    let mut out = HashMap::new();
    for part in params.split("\",") {
        if let Some((k, v)) = part.split_once('=') {
            out.insert(k.trim().to_string(), v.trim_matches('"').to_string());
        }
    }
    out
}

/// Asks `url` without credentials, follows the Bearer challenge to its realm (which must start
/// with `expected_realm`) with `login` (Basic, or anonymous), and returns the token.
pub async fn token_for(url: &str, expected_realm: &str, login: &Cred) -> String {
    let challenge = bearer_challenge(url, &[expected_realm]).await;
    token_from(&challenge, login).await
}

/// Asks `url` without credentials and returns the Bearer challenge of its 401, whose realm must
/// start with one of `expected_realms`.
pub async fn bearer_challenge(url: &str, expected_realms: &[&str]) -> HashMap<String, String> {
    let got = get(url, &Cred::Anonymous).await;
    assert_eq!(
        got.status,
        StatusCode::UNAUTHORIZED,
        "unauthenticated {url}"
    );
    let challenge = parse_bearer(&got.challenge.expect("WWW-Authenticate on 401"));
    let realm = &challenge["realm"];
    assert!(
        expected_realms.iter().any(|r| realm.starts_with(r)),
        "realm {realm}"
    );
    challenge
}

/// Asks the realm `challenge` names for its service and scope with `login` (Basic, or
/// anonymous), as docker does, and returns the token.
pub async fn token_from(challenge: &HashMap<String, String>, login: &Cred) -> String {
    let req = client().get(&challenge["realm"]).query(&[
        ("service", challenge["service"].as_str()),
        ("scope", challenge["scope"].as_str()),
    ]);
    let resp = with(req, login).send().await.unwrap();
    assert!(
        resp.status().is_success(),
        "token request: {}",
        resp.status()
    );
    let json: serde_json::Value = resp.json().await.unwrap();
    json["token"].as_str().expect("a token").to_string()
}

/// Pulls `image` from `base` (`http://mirror/v2/` + optional alias prefix, e.g.
/// `http://127.0.0.1:PORT/v2/basic.test/`) by tag, by digest and every blob, checking each byte.
pub async fn assert_can_pull(base: &str, image: &Seeded, cred: &Cred) {
    for reference in [image.tag.as_str(), image.manifest_digest.as_str()] {
        let url = format!("{base}{}/manifests/{reference}", image.repo);
        let got = get(&url, cred).await;
        assert_eq!(got.status, StatusCode::OK, "{url} with {cred:?}");
        assert_eq!(sha256_digest(&got.body), image.manifest_digest, "{url}");
    }
    for digest in image.blob_digests() {
        let url = format!("{base}{}/blobs/{digest}", image.repo);
        let got = get(&url, cred).await;
        assert_eq!(got.status, StatusCode::OK, "{url} with {cred:?}");
        assert_eq!(sha256_digest(&got.body), digest, "{url}");
    }
}

/// Every way to ask for `private`'s content: manifest by tag and digest and blobs under its own
/// name, and manifest and blob digests under `other_repo`. (path, digest that must not come back)
pub fn probes(private: &Seeded, other_repo: &str) -> Vec<(String, String)> {
    let digest = &private.manifest_digest;
    let mut out = vec![
        (
            format!("{}/manifests/{}", private.repo, private.tag),
            digest.clone(),
        ),
        (
            format!("{}/manifests/{digest}", private.repo),
            digest.clone(),
        ),
        (format!("{other_repo}/manifests/{digest}"), digest.clone()),
    ];
    for blob in private.blob_digests() {
        out.push((format!("{}/blobs/{blob}", private.repo), blob.clone()));
        out.push((format!("{other_repo}/blobs/{blob}"), blob.clone()));
    }
    out
}

/// `who` (with `cred`) gets 401/403/404 and never the content, on every probe under `base`;
/// returns the statuses, in probe order.
pub async fn assert_denied(
    base: &str,
    private: &Seeded,
    other_repo: &str,
    who: &str,
    cred: &Cred,
) -> Vec<StatusCode> {
    let mut statuses = Vec::new();
    for (path, content) in probes(private, other_repo) {
        let got = get(&format!("{base}{path}"), cred).await;
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
        assert_ne!(sha256_digest(&got.body), content, "{who}: {path} leaked");
        statuses.push(got.status);
    }
    statuses
}
