//! A second kind of upstream: a real distribution registry with Basic auth (`auth: htpasswd`,
//! bcrypt users, re-read when the file changes), reached through its alias `basic.test`.
//! Everything in it is private: only users in the file may pull.
//!
//! Issue text: "a second upstream with Basic auth (htpasswd)" — (a) the mirror's configured
//! credentials pull a private image for clients that send none; (b) without them, a client's
//! own Basic credentials are relayed and a client without gets the Basic challenge; and a
//! user removed upstream is refused within `auth_ttl`.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use support::mirror::{Mirror, MirrorOptions, UpstreamSpec};
use support::net::require_program;
use support::oci::{self, SeedFormat, Seeded};
use support::pull::{assert_can_pull, assert_denied, get, Cred};
use support::registry::{write_htpasswd, Registry, RegistryAuth, BASIC_REALM};

const PRIVATE: &str = "private/secret";
const OTHER: &str = "team/other";
const MIRROR_PASSWORD: &str = "basic-mirror-pw-1618";

struct World {
    /// Holds the htpasswd file.
    _dir: tempfile::TempDir,
    registry: Registry,
    htpasswd: PathBuf,
    private: Seeded,
    other: Seeded,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd, &users(true));
    let registry = Registry::start(RegistryAuth::Htpasswd(&htpasswd));
    let admin = Some("admin:adminpw");
    let private = oci::seed(
        &oci::private_image(),
        &registry,
        PRIVATE,
        SeedFormat::Oci,
        admin,
    );
    let other = oci::seed(
        &oci::runnable_image(),
        &registry,
        OTHER,
        SeedFormat::Oci,
        admin,
    );
    World {
        _dir: dir,
        registry,
        htpasswd,
        private,
        other,
    }
}

/// The registry's users; alice only while `with_alice`.
fn users(with_alice: bool) -> Vec<(&'static str, &'static str)> {
    let mut u = vec![("admin", "adminpw"), ("mirror", MIRROR_PASSWORD)];
    if with_alice {
        u.push(("alice", "alicepw"));
    }
    u
}

fn mirror(w: &World, upstream_extra: &str, cache_extra: &str) -> Mirror {
    let mut up = UpstreamSpec::new("basic", &w.registry.url(), &["basic.test"], true);
    up.extra = upstream_extra.into();
    let options = MirrorOptions {
        cache: cache_extra.into(),
        ..MirrorOptions::default()
    };
    Mirror::launch(&[up], &options)
}

/// `http://mirror/v2/basic.test/`: requests routed by the alias path prefix.
fn base(m: &Mirror) -> String {
    format!("{}/v2/basic.test/", m.url())
}

/// `skopeo copy` of the private image from the mirror (plain http) with `extra` options.
fn skopeo_copy(m: &Mirror, extra: &[&str]) -> std::process::Output {
    let dest = tempfile::tempdir().unwrap();
    let src = format!("docker://{}/basic.test/{PRIVATE}:latest", m.addr);
    let layout = format!("oci:{}:secret", dest.path().display());
    let conf = tempfile::NamedTempFile::new().unwrap();
    Command::new(require_program("skopeo"))
        .args(["--insecure-policy", "--registries-conf"])
        .arg(conf.path())
        .args(["copy", "--src-tls-verify=false"])
        .args(extra)
        .args([&src, &layout])
        .envs(support::docker::offline_env())
        .output()
        .expect("run skopeo")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_credentials_pull_for_clients_that_send_none() {
    let w = world();
    let pw_file = w.registry.dir.path().join("mirror-password");
    std::fs::write(&pw_file, MIRROR_PASSWORD).unwrap();
    let extra = format!(
        "username = \"mirror\"\npassword_file = \"{}\"",
        pw_file.display()
    );
    let m = mirror(&w, &extra, "");
    let ping = get(&format!("{}/v2/", m.url()), &Cred::Anonymous).await;
    assert_eq!(
        ping.status,
        StatusCode::OK,
        "GET /v2/ with the mirror's identity"
    );
    assert_can_pull(&base(&m), &w.private, &Cred::Anonymous).await;
    assert_can_pull(&base(&m), &w.other, &Cred::Anonymous).await;
    let out = skopeo_copy(&m, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "anonymous skopeo through the mirror: {err}"
    );
    // Only the mirror's identity could have fetched that; it never wrote the secret down.
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("mirror:{MIRROR_PASSWORD}"));
    let mirror_log = m.log();
    assert!(!mirror_log.contains(MIRROR_PASSWORD) && !mirror_log.contains(&basic));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_basic_credentials_are_relayed_and_others_get_the_challenge() {
    let w = world();
    let m = mirror(&w, "", "");
    let challenge = format!("Basic realm=\"{BASIC_REALM}\"");
    for url in [
        format!("{}/v2/", m.url()),
        format!("{}{PRIVATE}/manifests/latest", base(&m)),
    ] {
        let got = get(&url, &Cred::Anonymous).await;
        assert_eq!(got.status, StatusCode::UNAUTHORIZED, "{url}");
        assert_eq!(
            got.challenge.as_deref(),
            Some(challenge.as_str()),
            "{url}: relayed as is"
        );
    }
    let alice = Cred::basic("alice", "alicepw");
    assert_eq!(
        get(&format!("{}/v2/", m.url()), &alice).await.status,
        StatusCode::OK
    );
    assert_denied(&base(&m), &w.private, OTHER, "anonymous", &Cred::Anonymous).await;
    assert_can_pull(&base(&m), &w.private, &alice).await;

    let refused = [
        ("anonymous, cached", Cred::Anonymous),
        ("wrong password, cached", Cred::basic("alice", "alicepw2")),
        ("unknown user, cached", Cred::basic("mallory", "alicepw")),
    ];
    for (who, cred) in &refused {
        let statuses = assert_denied(&base(&m), &w.private, OTHER, who, cred).await;
        assert!(
            statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
            "{who}: {statuses:?}"
        );
    }
    assert!(
        !skopeo_copy(&m, &[]).status.success(),
        "anonymous skopeo got the image"
    );
    let out = skopeo_copy(&m, &["--src-creds", "alice:alicepw"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "skopeo with alice's credentials: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_removed_upstream_is_refused_within_auth_ttl() {
    let w = world();
    let m = mirror(&w, "", "auth_ttl = \"1s\"");
    let alice = Cred::basic("alice", "alicepw");
    assert_can_pull(&base(&m), &w.private, &alice).await;
    m.wait_cached_blobs(1 + w.private.blob_digests().len() as u64)
        .await;
    let hit = get(
        &format!("{}{PRIVATE}/blobs/{}", base(&m), w.private.layer_digests[0]),
        &alice,
    )
    .await;
    assert_eq!(hit.x_cache.as_deref(), Some("HIT"));

    write_htpasswd(&w.htpasswd, &users(false));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let statuses = assert_denied(&base(&m), &w.private, OTHER, "alice, removed", &alice).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    // Still cached, still served to a user the registry knows.
    assert_can_pull(&base(&m), &w.private, &Cred::basic("admin", "adminpw")).await;
}
