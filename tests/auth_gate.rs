//! The auth gate, end to end against a real token-auth registry: content that one client pulled
//! into the cache is served only to requesters the upstream would let pull it.
//!
//! Issue text: "an anonymous client, and a client holding a valid token for another repository,
//! cannot obtain the private image's manifest or blobs from the cache after an authorized client
//! pulled it, neither under the private repository's name nor by asking for the private blob's
//! digest under a public repository's name; the authorized client can."

mod support;

use support::mirror::{Mirror, MirrorOptions};
use support::pull::{assert_can_pull, assert_denied, bearer_challenge, token_from, Cred};
use support::token_world::{mirror, world, World, PRIVATE, PUBLIC};

/// The token world (a token-auth registry holding a public and a private image) and a mirror
/// in front of it with no identity of its own.
fn gate() -> (World, Mirror) {
    let w = world();
    let m = mirror(&w, "", MirrorOptions::default());
    (w, m)
}

/// `http://mirror/v2/`, under which the pull helpers build every path.
fn base(m: &Mirror) -> String {
    format!("{}/v2/", m.url())
}

/// Follows the mirror's 401 challenge for `path` (under `/v2/`) to the realm it names, as docker
/// does, logging in with `login` (Basic, or anonymous); returns the token to send.
async fn token_via_challenge(w: &World, m: &Mirror, path: &str, login: &Cred) -> Cred {
    // The realm is the upstream's token server, or the mirror's token proxy in front of it.
    let known = [w.tokens.realm(), m.url()];
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    let challenge = bearer_challenge(&format!("{}{path}", base(m)), &known).await;
    let asked_before = w.tokens.requests().len();
    let token = token_from(&challenge, login).await;
    // The upstream's token server issued it, to the user whose credentials we sent.
    let asked = w.tokens.requests();
    let last = asked[asked_before..]
        .last()
        .expect("token server not asked");
    let user = match login {
        Cred::Basic(user, _) => Some(user.as_str()),
        _ => None,
    };
    assert_eq!(last.user.as_deref(), user);
    Cred::Bearer(token)
}

fn manifest_path(repo: &str, reference: &str) -> String {
    format!("{repo}/manifests/{reference}")
}

/// Asserts `who` (holding `cred`) gets an error and never the content, whichever way it asks:
/// under the private repository's name, or the public one's.
async fn assert_private_denied(w: &World, m: &Mirror, who: &str, cred: &Cred) {
    assert_denied(&base(m), &w.private, PUBLIC, who, cred).await;
}

/// Waits until the mirror reports at least `n` cached blobs: the denials below mean something
/// only if the private content is really in the cache when they are asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_client_pulls_public_image_with_token_from_challenge_realm() {
    let (w, m) = gate();
    let public_tag = manifest_path(PUBLIC, "latest");
    let token = token_via_challenge(&w, &m, &public_tag, &Cred::Anonymous).await;
    assert_can_pull(&base(&m), &w.public, &token).await;
    let anonymous = w.tokens.requests().into_iter().filter(|r| r.user.is_none());
    let scopes: Vec<String> = anonymous.flat_map(|r| r.scopes).collect();
    assert!(
        scopes.contains(&format!("repository:{PUBLIC}:pull")),
        "{scopes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_private_image_is_served_only_to_authorized_client() {
    let (w, m) = gate();
    let private_tag = manifest_path(PRIVATE, "latest");
    let public_tag = manifest_path(PUBLIC, "latest");
    let alice_login = Cred::basic("alice", "alicepw");
    let bob_login = Cred::basic("bob", "bobpw");
    let alice = token_via_challenge(&w, &m, &private_tag, &alice_login).await;
    assert_can_pull(&base(&m), &w.private, &alice).await;
    // The manifest is stored too.
    m.wait_cached_blobs(1 + w.private.blob_digests().len() as u64)
        .await;

    assert_private_denied(&w, &m, "no credentials", &Cred::Anonymous).await;
    let anonymous = token_via_challenge(&w, &m, &private_tag, &Cred::Anonymous).await;
    assert_private_denied(&w, &m, "anonymous token", &anonymous).await;
    // Bob's token is valid, for the public repository the cross-repository probes name.
    let bob_public = token_via_challenge(&w, &m, &public_tag, &bob_login).await;
    assert_private_denied(&w, &m, "token for another repository", &bob_public).await;
    let bob_private = token_via_challenge(&w, &m, &private_tag, &bob_login).await;
    assert_private_denied(&w, &m, "ungranted user's token", &bob_private).await;

    assert_can_pull(&base(&m), &w.private, &alice).await;
}
