//! The mirror's own upstream identity (`username` + `password`, `password_file` or
//! `password_env`) against a real token-auth registry: clients that send nothing (or only mirror
//! access credentials) pull private content as the mirror, clients that send their own
//! credentials are judged upstream by those, and no secret reaches the mirror's log.
//!
//! Issue text: "configured credentials" (with the token server's log as the witness).

mod support;

use base64::Engine as _;
use reqwest::StatusCode;
use support::mirror::{Mirror, MirrorOptions};
use support::oci;
use support::pull::{assert_can_pull, assert_denied, get, Cred};
use support::token_world::{
    all_via_mirror, assert_not_logged, mirror, our_realm, proxy_token, world, World,
    MIRROR_PASSWORD, MIRROR_USER, PRIVATE, PUBLIC,
};
use support::tokens::briefs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_credentials_pull_private_content_for_lan_clients() {
    let w = world();
    let pw_file = w.registry.dir.path().join("mirror-password");
    std::fs::write(&pw_file, format!("{MIRROR_PASSWORD}\n")).unwrap();
    let extra = format!(
        "username = \"{MIRROR_USER}\"\npassword_file = \"{}\"",
        pw_file.display()
    );
    // LAN clients authenticate to the mirror only; upstream sees the mirror's identity.
    let options = MirrorOptions {
        tables: "[server.access]\ntokens = [\"lan-token-2718\"]\n".into(),
        ..MirrorOptions::default()
    };
    let m = mirror(&w, &extra, options);
    let base = format!("{}/v2/", m.url());
    let lan = Cred::Bearer("lan-token-2718".into());
    assert_eq!(
        get(&base, &lan).await.status,
        StatusCode::OK,
        "GET /v2/ with the mirror's identity"
    );
    assert_can_pull(&base, &w.private, &lan).await;
    assert_can_pull(&base, &w.public, &lan).await;
    assert_can_pull(&base, &w.private, &lan).await;

    let requests = all_via_mirror(&w);
    let others: Vec<_> = requests
        .iter()
        .filter(|r| r.user.as_deref() != Some(MIRROR_USER))
        .collect();
    assert!(
        others.is_empty(),
        "not as {MIRROR_USER}:\n{}",
        briefs(&requests)
    );
    // One token per scope, reused until it expires.
    let scope = format!("repository:{PRIVATE}:pull");
    let for_private = requests
        .iter()
        .filter(|r| r.scopes.contains(&scope))
        .count();
    assert_eq!(for_private, 1, "{}", briefs(&requests));

    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{MIRROR_USER}:{MIRROR_PASSWORD}"));
    let mut secrets = vec![MIRROR_PASSWORD.to_string(), basic, "lan-token-2718".into()];
    secrets.extend(requests.iter().filter_map(|r| r.issued.clone()));
    assert_not_logged(&m, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_sources_and_a_wrong_password() {
    let w = world();
    let tag = format!("{PRIVATE}/manifests/latest");
    let env_var = "TEST_UPSTREAM_PASSWORD";
    let sources = [
        (format!("password = \"{MIRROR_PASSWORD}\""), vec![]),
        (
            format!("password_env = \"{env_var}\""),
            vec![(env_var.to_string(), MIRROR_PASSWORD.to_string())],
        ),
    ];
    for (line, env) in sources {
        let options = MirrorOptions {
            env,
            ..MirrorOptions::default()
        };
        let m = mirror(
            &w,
            &format!("username = \"{MIRROR_USER}\"\n{line}"),
            options,
        );
        assert_eq!(
            get(&format!("{}/v2/", m.url()), &Cred::Anonymous)
                .await
                .status,
            StatusCode::OK,
            "{line}"
        );
        let got = get(&format!("{}/v2/{tag}", m.url()), &Cred::Anonymous).await;
        assert_eq!(got.status, StatusCode::OK, "{line}");
        assert_eq!(oci::sha256_digest(&got.body), w.private.manifest_digest);
        assert_not_logged(&m, &[MIRROR_PASSWORD.to_string()]);
    }
    let wrong = "wrong-pw-27182818";
    let m = mirror(
        &w,
        &format!("username = \"{MIRROR_USER}\"\npassword = \"{wrong}\""),
        MirrorOptions::default(),
    );
    let got = get(&format!("{}/v2/{tag}", m.url()), &Cred::Anonymous).await;
    assert_ne!(
        got.status,
        StatusCode::OK,
        "served with a wrong upstream password"
    );
    assert_ne!(oci::sha256_digest(&got.body), w.private.manifest_digest);
    assert_not_logged(&m, &[wrong.to_string()]);
}

/// A mirror with its own upstream identity, which can pull everything.
fn mirror_with_identity(w: &World) -> Mirror {
    let extra = format!("username = \"{MIRROR_USER}\"\npassword = \"{MIRROR_PASSWORD}\"");
    mirror(w, &extra, MirrorOptions::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_are_forwarded_instead_of_the_configured_ones() {
    let w = world();
    let m = mirror_with_identity(&w);
    let base = format!("{}/v2/", m.url());
    let tag_url = format!("{base}{PRIVATE}/manifests/latest");

    // A client's own Authorization goes upstream, even a useless one: the upstream's refusal
    // comes back, its challenge naming the mirror's token endpoint.
    let got = get(&tag_url, &Cred::Bearer("not-a-token".into())).await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    let challenge = got.challenge.unwrap_or_default();
    assert!(challenge.contains(&our_realm(&m)), "{challenge}");
    // The token endpoint forwards the client's login, not the mirror's.
    let bob = Cred::Bearer(proxy_token(&m, "bob", "bobpw").await);
    let last = w.tokens.requests().pop().unwrap();
    assert_eq!(last.user.as_deref(), Some("bob"), "{}", last.brief());
    // Bob's token lacks the access, though the mirror's identity has it: denied.
    assert_denied(&base, &w.private, PUBLIC, "bob", &bob).await;
    let alice = Cred::Bearer(proxy_token(&m, "alice", "alicepw").await);
    assert_can_pull(&base, &w.private, &alice).await;
    assert_denied(&base, &w.private, PUBLIC, "bob, cached", &bob).await;
    // Without credentials, clients get the mirror's identity.
    assert_can_pull(&base, &w.private, &Cred::Anonymous).await;
    all_via_mirror(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_works_before_any_challenge_when_the_mirror_has_an_identity() {
    let w = world();
    let m = mirror_with_identity(&w);
    // No request went through the mirror yet, so it has relayed no challenge to learn the
    // realm from; a client that kept the realm URL from an earlier run still gets its token.
    let token = proxy_token(&m, "alice", "alicepw").await;
    let last = w.tokens.requests().pop().unwrap();
    assert_eq!(last.user.as_deref(), Some("alice"), "{}", last.brief());
    assert!(last.sent_by_mirror());
    let base = format!("{}/v2/", m.url());
    assert_can_pull(&base, &w.private, &Cred::Bearer(token)).await;
}
