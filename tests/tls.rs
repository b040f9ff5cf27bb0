//! The TLS listener, end to end: a certificate from a throwaway CA (rcgen), clients that verify
//! it (curl, skopeo, a rustls client), HTTP/2 negotiated by ALPN, token realms rewritten to
//! `https://`, and SIGHUP reloading the certificate while established connections go on.
//!
//! Issue text: "TLS with a generated certificate (rcgen) via skopeo and curl, HTTP/2
//! negotiated; certificate reload."

mod support;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::certs::{peer_cert, TestCa};
use support::mirror::{Mirror, MirrorOptions};
use support::net::require_program;
use support::oci::{self, SeedFormat, Seeded};
use support::registry::Registry;
use support::token_world::{docker_upstream, token_registry, ADMIN};
use support::tokens::{briefs, TokenServer};

/// A token-auth registry (anonymous pull) holding one OCI image, and a mirror serving TLS.
struct World {
    tokens: TokenServer,
    _registry: Registry,
    hello: Seeded,
    ca: TestCa,
    /// DER of the certificate the mirror starts with (serial 1).
    first_cert: Vec<u8>,
    /// Token requests made while seeding (skopeo, directly); the mirror's come after.
    seeding_requests: usize,
    mirror: Mirror,
}

fn world(server_extra: &str) -> World {
    let (tokens, registry) = token_registry(TokenServer::builder());
    let hello = oci::seed(
        &oci::runnable_image(),
        &registry,
        "mirrortest/hello",
        SeedFormat::Oci,
        ADMIN,
    );
    let ca = TestCa::new();
    let cert = ca.issue(1);
    let seeding_requests = tokens.requests().len();
    let options = MirrorOptions {
        server: server_extra.into(),
        tls: Some((cert.cert_path.clone(), cert.key_path.clone())),
        ..MirrorOptions::default()
    };
    let mirror = Mirror::launch(&[docker_upstream(&registry)], &options);
    World {
        tokens,
        _registry: registry,
        hello,
        ca,
        first_cert: cert.der,
        seeding_requests,
        mirror,
    }
}

/// Runs curl with `args`, returning (exit code, stdout, stderr).
fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(require_program("curl"))
        .args(["-sS", "--noproxy", "*", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `curl --cacert <our CA> extra... url`: (exit code, stdout, stderr).
fn curl_ca(w: &World, extra: &[&str], url: &str) -> (i32, String, String) {
    let ca = w.ca.ca_path();
    let mut args = vec!["--cacert", ca.to_str().unwrap()];
    args.extend(extra);
    args.push(url);
    curl(&args)
}

/// What `-w "%{http_version} %{http_code}"` prints for `url` with `extra` options.
fn version_and_status(w: &World, extra: &[&str], url: &str) -> String {
    let mut args = vec!["-o", "/dev/null", "-w", "%{http_version} %{http_code}"];
    args.extend(extra);
    let (code, out, err) = curl_ca(w, &args, url);
    assert_eq!(code, 0, "curl {url}: {err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_negotiates_http2_or_http1_and_verifies_the_certificate() {
    let w = world("");
    let healthz = format!("{}/healthz", w.mirror.tls_url());
    // ALPN: h2 when offered, http/1.1 when that is all the client speaks.
    assert_eq!(version_and_status(&w, &["--http2"], &healthz), "2 200");
    assert_eq!(version_and_status(&w, &["--http1.1"], &healthz), "1.1 200");
    // The certificate names localhost too.
    let port = w.mirror.tls_addr.unwrap().port();
    let by_name = format!("https://localhost:{port}/healthz");
    assert_eq!(version_and_status(&w, &["--http2"], &by_name), "2 200");
    // Without our CA, curl refuses the certificate (exit 60): verification is real.
    let (code, _, err) = curl(&["-o", "/dev/null", &healthz]);
    assert_eq!(code, 60, "an unknown CA must fail verification: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenges_on_the_tls_listener_name_an_https_realm_that_works() {
    let w = world("");
    let tls = w.mirror.tls_url();
    let port = w.mirror.tls_addr.unwrap().port();
    // The relayed challenge sends clients back to the mirror, over https, on the TLS port.
    let manifest = format!("{tls}/v2/mirrortest/hello/manifests/latest");
    let (code, headers, err) = curl_ca(&w, &["--http2", "-D", "-", "-o", "/dev/null"], &manifest);
    assert_eq!(code, 0, "{err}");
    assert!(headers.starts_with("HTTP/2 401"), "{headers}");
    let realm = format!("realm=\"https://127.0.0.1:{port}/_regmirror/token/docker\"");
    let challenge = headers
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .unwrap_or_else(|| panic!("no challenge in {headers}"));
    assert!(challenge.contains(&realm), "{challenge}");

    // Following it over TLS: a token from the upstream's server, via the mirror.
    let service = support::tokens::SERVICE;
    let token_url = format!(
        "{tls}/_regmirror/token/docker?service={service}&scope=repository:mirrortest/hello:pull"
    );
    let (code, body, err) = curl_ca(&w, &["--http2", "--fail"], &token_url);
    assert_eq!(code, 0, "{err}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let bearer = format!(
        "Authorization: Bearer {}",
        token["token"].as_str().expect("a token")
    );
    let accept = format!("Accept: {}", oci::OCI_MANIFEST);
    let out_file = w.mirror.dir.path().join("manifest.json");
    let out = out_file.to_str().unwrap();
    let args = [
        "--http2",
        "--fail",
        "-H",
        &bearer,
        "-H",
        &accept,
        "-o",
        out,
        "-w",
        "%{http_version}",
    ];
    let (code, version, err) = curl_ca(&w, &args, &manifest);
    assert_eq!((code, version.as_str()), (0, "2"), "{err}");
    let got = std::fs::read(&out_file).unwrap();
    assert_eq!(oci::sha256_digest(&got), w.hello.manifest_digest);
    assert_all_from_mirror(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_through_the_tls_listener_verifying_the_certificate() {
    let w = world("");
    let dest = tempfile::tempdir().unwrap();
    let layout = format!("oci:{}:hello", dest.path().display());
    let src = format!(
        "docker://{}/mirrortest/hello:latest",
        w.mirror.tls_addr.unwrap()
    );
    let cert_dir = w.ca.cert_dir().to_str().unwrap().to_string();
    let args: Vec<String> = [
        "copy",
        "--preserve-digests",
        "--src-tls-verify=true",
        "--src-cert-dir",
        &cert_dir,
        &src,
        &layout,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    oci::skopeo(&args);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"],
        w.hello.manifest_digest.as_str()
    );
    for blob in w.hello.blob_digests() {
        let path = dest
            .path()
            .join("blobs/sha256")
            .join(&blob["sha256:".len()..]);
        assert_eq!(oci::sha256_digest(&std::fs::read(&path).unwrap()), blob);
    }
    // skopeo got its token from the https realm the mirror named, never from the token server.
    assert_all_from_mirror(&w);
    // And it really came over TLS: without the CA, skopeo refuses the mirror.
    let out = Command::new(require_program("skopeo"))
        .args([
            "--insecure-policy",
            "inspect",
            "--raw",
            "--tls-verify=true",
            &src,
        ])
        .envs(support::docker::offline_env())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate"), "{err}");
}

/// Since seeding, the token server heard only from the mirror, and at least once.
fn assert_all_from_mirror(w: &World) {
    let requests = w.tokens.requests().split_off(w.seeding_requests);
    assert!(!requests.is_empty(), "no token was fetched at all");
    assert!(
        requests.iter().all(|r| r.sent_by_mirror()),
        "direct token requests:\n{}",
        briefs(&requests)
    );
}

/// An HTTP/2 connection to the TLS listener, and the certificate it was shown.
async fn h2_connect(w: &World) -> (SendRequest<Empty<Bytes>>, Vec<u8>) {
    let tls =
        w.ca.connect(w.mirror.tls_addr.unwrap(), &[b"h2", b"http/1.1"])
            .await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN");
    let cert = peer_cert(&tls);
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    (send, cert)
}

async fn h2_status(send: &mut SendRequest<Empty<Bytes>>, path: &str) -> u16 {
    let req = hyper::Request::get(format!("https://localhost{path}"))
        .body(Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("answer on the established connection")
        .expect("request on the established connection");
    let status = resp.status().as_u16();
    resp.into_body().collect().await.unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_established_connections_go_on() {
    let w = world("");
    let first_der = w.first_cert.clone();
    let (mut old, shown) = h2_connect(&w).await;
    assert_eq!(shown, first_der, "the configured certificate is served");
    assert_eq!(h2_status(&mut old, "/healthz").await, 200);

    // Same paths, new certificate (serial 2); SIGHUP; new handshakes get it.
    let second = w.ca.issue(2);
    assert_ne!(second.der, first_der);
    w.mirror.signal("HUP");
    w.mirror
        .wait_for_log("TLS certificate reloaded", 1, Duration::from_secs(10));
    let (mut fresh, shown) = h2_connect(&w).await;
    assert_eq!(
        shown, second.der,
        "a new handshake after SIGHUP gets the new certificate"
    );
    assert_eq!(h2_status(&mut fresh, "/healthz").await, 200);
    // The connection opened before the reload still works, still on its old session.
    assert_eq!(h2_status(&mut old, "/healthz").await, 200);
    assert_eq!(
        h2_status(&mut old, "/v2/mirrortest/hello/manifests/latest").await,
        401
    );

    // A broken file on the next SIGHUP: the certificate in use stays.
    std::fs::write(&second.cert_path, b"not a certificate").unwrap();
    w.mirror.signal("HUP");
    w.mirror
        .wait_for_log("TLS certificate reload failed", 1, Duration::from_secs(10));
    let (mut after, shown) = h2_connect(&w).await;
    assert_eq!(
        shown, second.der,
        "a failed reload keeps the last good certificate"
    );
    assert_eq!(h2_status(&mut after, "/healthz").await, 200);
    // The plain listener runs beside the TLS one throughout.
    let plain = reqwest::get(format!("{}/healthz", w.mirror.url()))
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_never_finishes_its_handshake_is_cut_off() {
    let w = world("header_read_timeout = \"1s\"");
    use tokio::io::AsyncReadExt;
    let mut tcp = tokio::net::TcpStream::connect(w.mirror.tls_addr.unwrap())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
    let closed = matches!(read, Ok(Ok(0)) | Ok(Err(_)));
    assert!(
        closed,
        "silent TLS client still connected after 5 s: {read:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "cut off after {:?}",
        started.elapsed()
    );
    // The listener still serves everyone else.
    let (mut send, _) = h2_connect(&w).await;
    assert_eq!(h2_status(&mut send, "/healthz").await, 200);
}
