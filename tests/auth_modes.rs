//! The token proxy and the auth gate against a real token-auth registry holding a public and a
//! private image: dockerd and skopeo get every token through the mirror, and private content
//! goes through the cache only to those upstream lets in, in both orders and after revocation.
//!
//! Issue text: "token proxy used by dockerd and skopeo with the upstream token server reachable
//! only through regmirror (check the token server's log: no direct client request); anonymous
//! vs authorized access to private content through the cache (both orders, and after the
//! authorized client's access is revoked)."

mod support;

use std::time::Duration;

use base64::Engine as _;
use support::docker::Dockerd;
use support::mirror::MirrorOptions;
use support::net::require_program;
use support::pull::{assert_can_pull, assert_denied, get, token_for, Cred};
use support::token_world::{all_via_mirror, mirror, our_realm, world, PRIVATE, PUBLIC};
use support::tokens::briefs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_gets_every_token_through_the_mirror() {
    let w = world();
    let m = mirror(&w, "", MirrorOptions::default());
    let d = Dockerd::start(&m.url());
    d.docker_ok(&["pull", "mirrortest/hello:latest"]);
    let denied = d.docker(&["pull", "private/secret:latest"]);
    assert!(
        !denied.status.success(),
        "anonymous dockerd pulled the private image"
    );
    // docker's credentials for Docker Hub, which dockerd presents to Docker Hub's mirror.
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:alicepw");
    let config = serde_json::json!({"auths": {"https://index.docker.io/v1/": {"auth": auth}}});
    std::fs::create_dir_all(d.dir.path().join("cli")).unwrap();
    std::fs::write(d.dir.path().join("cli/config.json"), config.to_string()).unwrap();
    d.docker_ok(&["pull", "private/secret:latest"]);
    let digests = d.docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        "private/secret:latest",
    ]);
    assert!(digests.contains(&w.private.manifest_digest), "{digests}");

    let requests = all_via_mirror(&w);
    let alice = requests.iter().find(|r| r.user.as_deref() == Some("alice"));
    let alice =
        alice.unwrap_or_else(|| panic!("alice's login never arrived:\n{}", briefs(&requests)));
    assert!(
        alice.scopes.contains(&format!("repository:{PRIVATE}:pull")),
        "{}",
        alice.brief()
    );
    assert!(
        requests.iter().any(|r| r.user.is_none()),
        "{}",
        briefs(&requests)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_behind_a_path_prefix_mirror_gets_tokens_for_upstream_names() {
    let w = world();
    let m = mirror(&w, "", MirrorOptions::default());
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("registries.conf");
    let text = format!(
        "[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n\n\
         [[registry.mirror]]\nlocation = \"{}/docker.io\"\ninsecure = true\n",
        m.addr
    );
    std::fs::write(&conf, text).unwrap();
    let dest = format!("oci:{}:secret", tmp.path().join("layout").display());
    let src = "docker://docker.io/private/secret:latest".to_string();
    let copy = |extra: &[&str]| {
        let mut args = vec![
            "--insecure-policy",
            "--registries-conf",
            conf.to_str().unwrap(),
        ];
        args.extend(["copy"].iter().chain(extra));
        args.extend([src.as_str(), dest.as_str()]);
        std::process::Command::new(require_program("skopeo"))
            .args(args)
            .envs(support::docker::offline_env())
            .output()
            .unwrap()
    };
    let anonymous = copy(&[]);
    assert!(
        !anonymous.status.success(),
        "skopeo pulled the private image anonymously"
    );
    // skopeo looks credentials up by the mirror's own name (it never sends --src-creds to a
    // mirror), so alice's login goes in an auth file under the mirror's host:port.
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:alicepw");
    let authfile = tmp.path().join("auth.json");
    let auths = serde_json::json!({"auths": {m.addr.to_string(): {"auth": auth}}});
    std::fs::write(&authfile, auths.to_string()).unwrap();
    let out = copy(&["--src-authfile", authfile.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "skopeo copy as alice: {err}");
    for layer in &w.private.layer_digests {
        let file = tmp.path().join("layout/blobs/sha256").join(&layer[7..]);
        assert!(file.is_file(), "{layer} not in the layout");
    }
    // Every token request came through the mirror, for `private/secret` (not the client-side
    // `docker.io/private/secret`), and alice's login reached the token server.
    let requests = all_via_mirror(&w);
    let scopes: Vec<&String> = requests.iter().flat_map(|r| &r.scopes).collect();
    assert!(
        scopes.iter().all(|s| !s.contains("docker.io/")),
        "{scopes:?}"
    );
    let wanted = format!("repository:{PRIVATE}:pull");
    let granted = requests
        .iter()
        .any(|r| r.user.as_deref() == Some("alice") && r.scopes.contains(&wanted));
    assert!(granted, "{}", briefs(&requests));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_content_anonymous_first_then_authorized_then_anonymous_again() {
    let w = world();
    let m = mirror(&w, "", MirrorOptions::default());
    let base = format!("{}/v2/", m.url());
    let tag_url = format!("{base}{PRIVATE}/manifests/latest");

    assert_denied(&base, &w.private, PUBLIC, "anonymous", &Cred::Anonymous).await;
    let anon = Cred::Bearer(token_for(&tag_url, &our_realm(&m), &Cred::Anonymous).await);
    assert_denied(&base, &w.private, PUBLIC, "anonymous token", &anon).await;
    // Refusals are not remembered against the content: alice gets all of it.
    let alice =
        Cred::Bearer(token_for(&tag_url, &our_realm(&m), &Cred::basic("alice", "alicepw")).await);
    assert_can_pull(&base, &w.private, &alice).await;

    assert_denied(
        &base,
        &w.private,
        PUBLIC,
        "anonymous, cached",
        &Cred::Anonymous,
    )
    .await;
    assert_denied(&base, &w.private, PUBLIC, "anonymous token, cached", &anon).await;
    let bob = Cred::Bearer(token_for(&tag_url, &our_realm(&m), &Cred::basic("bob", "bobpw")).await);
    assert_denied(&base, &w.private, PUBLIC, "bob, cached", &bob).await;
    assert_can_pull(&base, &w.private, &alice).await;
    let second = get(
        &format!("{base}{PRIVATE}/blobs/{}", w.private.layer_digests[0]),
        &alice,
    )
    .await;
    assert_eq!(second.x_cache.as_deref(), Some("HIT"));
    all_via_mirror(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_content_authorized_first_then_anonymous_then_access_revoked() {
    let w = world();
    let options = MirrorOptions {
        cache: "auth_ttl = \"1s\"".into(),
        ..MirrorOptions::default()
    };
    let m = mirror(&w, "", options);
    let base = format!("{}/v2/", m.url());
    let tag_url = format!("{base}{PRIVATE}/manifests/latest");
    let login = Cred::basic("alice", "alicepw");

    let alice = Cred::Bearer(token_for(&tag_url, &our_realm(&m), &login).await);
    assert_can_pull(&base, &w.private, &alice).await;
    assert_denied(&base, &w.private, PUBLIC, "anonymous", &Cred::Anonymous).await;
    let anon = Cred::Bearer(token_for(&tag_url, &our_realm(&m), &Cred::Anonymous).await);
    assert_denied(&base, &w.private, PUBLIC, "anonymous token", &anon).await;

    // Revoked upstream: alice's next token (through the mirror) lacks the access, and once
    // auth_ttl has passed nothing cached reaches her.
    w.tokens.revoke("alice", PRIVATE);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let revoked = Cred::Bearer(token_for(&tag_url, &our_realm(&m), &login).await);
    let requests = all_via_mirror(&w);
    let last = requests.last().unwrap();
    assert_eq!(
        (last.user.as_deref(), last.status),
        (Some("alice"), 200),
        "{}",
        last.brief()
    );
    assert_denied(
        &base,
        &w.private,
        PUBLIC,
        "alice after revocation",
        &revoked,
    )
    .await;
    // The content is still cached, and still served to someone upstream lets in.
    let admin =
        Cred::Bearer(token_for(&tag_url, &our_realm(&m), &Cred::basic("admin", "adminpw")).await);
    assert_can_pull(&base, &w.private, &admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_url_names_the_realm_and_oauth_posts_are_forwarded() {
    let w = world();
    let options = MirrorOptions {
        server: "public_url = \"http://mirror.lan:5000/\"".into(),
        ..MirrorOptions::default()
    };
    let m = mirror(&w, "", options);
    let got = get(
        &format!("{}/v2/{PRIVATE}/manifests/latest", m.url()),
        &Cred::Anonymous,
    )
    .await;
    let challenge = support::pull::parse_bearer(&got.challenge.expect("a challenge"));
    assert_eq!(
        challenge["realm"],
        "http://mirror.lan:5000/_regmirror/token/docker"
    );
    assert_eq!(challenge["scope"], format!("repository:{PRIVATE}:pull"));

    // containerd's OAuth2 password grant: a form POST, forwarded with its body.
    let form = [
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", "alicepw"),
        ("service", challenge["service"].as_str()),
        ("scope", challenge["scope"].as_str()),
        ("client_id", "regmirror-tests"),
    ];
    let resp = support::pull::client()
        .post(our_realm(&m))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let json: serde_json::Value = resp.json().await.unwrap();
    let token = json["access_token"].as_str().expect("an access_token");
    let requests = all_via_mirror(&w);
    let last = requests.last().unwrap();
    assert_eq!(
        (last.method.as_str(), last.user.as_deref()),
        ("POST", Some("alice")),
        "{}",
        last.brief()
    );
    let base = format!("{}/v2/", m.url());
    assert_can_pull(&base, &w.private, &Cred::Bearer(token.to_string())).await;
}
