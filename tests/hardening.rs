//! Who may use the mirror and how much a client can hold it up: the CIDR allowlist, mirror
//! access credentials (tokens, htpasswd) that are consumed and never forwarded, upstream blob
//! redirects (followed, bounded, `Authorization` dropped off the registry's host:port), the
//! slowloris guard and the connection limit.
//!
//! Issue text: "CIDR deny; a redirecting upstream (blob 307 to another port) with the
//! Authorization drop checked; slowloris client gets cut off while others are served."

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use support::mirror::{Mirror, MirrorOptions, UpstreamSpec};
use support::oci::{sha256_digest, OCI_MANIFEST};
use support::redirector::{Redirector, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A mirror whose only (default) upstream is `r`, with `options`.
fn mirror_for(r: &Redirector, options: &MirrorOptions) -> Mirror {
    Mirror::launch(
        &[UpstreamSpec::new("redir", &r.url(), &["redir.test"], true)],
        options,
    )
}

/// GET `url` with mirror credentials: `("bearer", token)` or `(user, password)` for Basic.
async fn get_as(url: String, auth: Option<(&str, &str)>) -> reqwest::Response {
    let req = client().get(url).header("accept", OCI_MANIFEST);
    let req = match auth {
        Some(("bearer", token)) => req.bearer_auth(token),
        Some((user, password)) => req.basic_auth(user, Some(password)),
        None => req,
    };
    req.send().await.unwrap()
}

/// The OCI error code of a response body.
async fn oci_code(resp: reqwest::Response) -> String {
    let body: serde_json::Value = resp.json().await.expect("an OCI error body");
    body["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_the_allowlist_get_403_denied_except_on_healthz() {
    let r = Redirector::start(1024).await;
    let options = MirrorOptions {
        server: "allow = [\"10.0.0.0/8\"]".into(),
        ..MirrorOptions::default()
    };
    let m = mirror_for(&r, &options);
    let layer = &r.image.blobs[1].0;
    let paths = [
        "/v2/".to_string(),
        "/v2/team/app/manifests/latest".into(),
        format!("/v2/team/app/blobs/{layer}"),
        "/_regmirror/token/redir?scope=repository:team/app:pull".into(),
        "/stats".into(),
    ];
    for path in &paths {
        let resp = client()
            .get(format!("{}{path}", m.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "GET {path}");
        assert_eq!(oci_code(resp).await, "DENIED", "GET {path}");
    }
    let health = client()
        .get(format!("{}/healthz", m.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert!(r.hits().is_empty(), "denied requests reached upstream");
}

/// Without valid mirror credentials (`auth`), the API, `/v2/` and the token endpoint all answer
/// 401 UNAUTHORIZED with the mirror's own Basic challenge.
async fn assert_mirror_login_required(m: &Mirror, auth: Option<(&str, &str)>) {
    let urls = [
        format!("{}/v2/team/app/manifests/latest", m.url()),
        format!("{}/v2/", m.url()),
        format!("{}/_regmirror/token/redir?service=x", m.url()),
    ];
    for url in urls {
        let resp = get_as(url.clone(), auth).await;
        let what = format!("{url} with {auth:?}");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
        let challenge = resp.headers().get("www-authenticate").cloned();
        let challenge = challenge.as_ref().and_then(|v| v.to_str().ok());
        assert_eq!(challenge, Some("Basic realm=\"regmirror\""), "{what}");
        assert_eq!(oci_code(resp).await, "UNAUTHORIZED", "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_access_credentials_are_required_and_never_forwarded() {
    let r = Redirector::start(64 * 1024).await;
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let hash = bcrypt::hash("wonderland", 4).unwrap();
    std::fs::write(&htpasswd, format!("alice:{hash}\n")).unwrap();
    let options = MirrorOptions {
        tables: format!(
            "[server.access]\ntokens = [\"mirror-token-1\"]\nhtpasswd = \"{}\"\n",
            htpasswd.display()
        ),
        ..MirrorOptions::default()
    };
    let m = mirror_for(&r, &options);
    let manifest = format!("{}/v2/team/app/manifests/latest", m.url());

    let refused = [
        None,
        Some(("bearer", "mirror-token-2")),
        Some(("alice", "wrong")),
        Some(("bob", "wonderland")),
    ];
    for auth in refused {
        assert_mirror_login_required(&m, auth).await;
    }
    assert!(
        r.hits().is_empty(),
        "unauthenticated requests reached upstream"
    );
    let health = get_as(format!("{}/healthz", m.url()), None).await;
    assert_eq!(health.status(), StatusCode::OK);

    let accepted = [
        ("bearer", "mirror-token-1"),
        ("alice", "wonderland"),
        ("anyone", "mirror-token-1"),
    ];
    for auth in accepted {
        let resp = get_as(manifest.clone(), Some(auth)).await;
        assert_eq!(resp.status(), StatusCode::OK, "manifest with {auth:?}");
        assert_eq!(sha256_digest(&resp.bytes().await.unwrap()), r.image.digest);
    }
    let (layer, bytes) = &r.image.blobs[1];
    let blob_url = format!("{}/v2/team/app/blobs/{layer}", m.url());
    let resp = get_as(blob_url, Some(("alice", "wonderland"))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(&resp.bytes().await.unwrap(), bytes);
    // Whatever the client sent the mirror stayed with the mirror.
    let hits = r.hits();
    assert!(!hits.is_empty());
    let leaked: Vec<_> = hits.iter().filter(|h| h.authorization.is_some()).collect();
    assert!(leaked.is_empty(), "forwarded upstream: {leaked:?}");
}

/// Each blob went registry (with the client's Authorization), hop on the same host:port (still
/// with it), CDN on another port (without it); no CDN request ever carried it.
fn assert_authorization_stays_on_the_registry(r: &Redirector, digests: &[&String]) {
    let hits = r.hits();
    for digest in digests {
        let on = |side: Side, path: &str| {
            hits.iter()
                .filter(|h| h.side == side && h.path.starts_with(path))
                .collect::<Vec<_>>()
        };
        let first = on(Side::Registry, &format!("/v2/team/app/blobs/{digest}"));
        let hop = on(Side::Registry, &format!("/hop/{digest}"));
        let cdn = on(Side::Cdn, &format!("/cdn/{digest}"));
        assert!(
            !first.is_empty() && !hop.is_empty() && !cdn.is_empty(),
            "{hits:?}"
        );
        for h in first.iter().chain(&hop) {
            assert_eq!(h.authorization.as_deref(), Some("Bearer x"), "{h:?}");
        }
    }
    let cdn_with_auth: Vec<_> = hits
        .iter()
        .filter(|h| h.side == Side::Cdn && h.authorization.is_some())
        .collect();
    assert!(cdn_with_auth.is_empty(), "{cdn_with_auth:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirects_are_followed_and_authorization_stays_on_the_registry() {
    let r = Redirector::start(512 * 1024).await;
    let m = mirror_for(&r, &MirrorOptions::default());
    let get = |path: String| {
        client()
            .get(format!("{}{path}", m.url()))
            .header("accept", OCI_MANIFEST)
            .bearer_auth("x")
            .send()
    };

    // A redirect loop: bounded, an upstream error, nothing cached.
    let (config, config_bytes) = &r.image.blobs[0];
    let looped = get(format!("/v2/loop/app/blobs/{config}")).await.unwrap();
    assert_eq!(looped.status(), StatusCode::BAD_GATEWAY);
    let loop_hits = r.hits().iter().filter(|h| h.path.contains("loop")).count();
    assert_eq!(loop_hits, 6, "the request and 5 redirects: {:?}", r.hits());
    assert!(m.cached_files().iter().all(|f| !f.ends_with(&config[7..])));

    let resp = get("/v2/team/app/manifests/latest".into()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(sha256_digest(&resp.bytes().await.unwrap()), r.image.digest);
    let (layer, layer_bytes) = &r.image.blobs[1];
    for (digest, bytes) in [(config, config_bytes), (layer, layer_bytes)] {
        let resp = get(format!("/v2/team/app/blobs/{digest}")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{digest}");
        assert_eq!(resp.headers()["x-cache"], "MISS");
        let body = resp.bytes().await.unwrap();
        assert_eq!(&body, bytes);
        assert_eq!(&sha256_digest(&body), digest);
    }

    assert_authorization_stays_on_the_registry(&r, &[config, layer]);

    // Verified and cached: the next pull does not go upstream for bytes.
    let before = r.hits().iter().filter(|h| h.side == Side::Cdn).count();
    let again = get(format!("/v2/team/app/blobs/{layer}")).await.unwrap();
    assert_eq!(again.headers()["x-cache"], "HIT");
    assert_eq!(&again.bytes().await.unwrap(), layer_bytes);
    let after = r.hits().iter().filter(|h| h.side == Side::Cdn).count();
    assert_eq!(
        before, after,
        "a cached blob was fetched from the CDN again"
    );
}

/// Sends `request` a byte every `pace`; returns when the server closes the connection (with
/// what it answered) or, if it never does, after `limit`.
async fn trickle(addr: SocketAddr, request: &[u8], pace: Duration, limit: Duration) -> Trickled {
    let started = Instant::now();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let request = request.to_vec();
    let writer = tokio::spawn(async move {
        for b in request {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(pace).await;
        }
        // Keep the write side open: only the server may end this.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    Trickled {
        closed_after: read.is_ok().then(|| started.elapsed()),
        answer: String::from_utf8_lossy(&answer).into_owned(),
    }
}

#[derive(Debug)]
struct Trickled {
    /// `None`: still open at the limit.
    closed_after: Option<Duration>,
    answer: String,
}

/// Pulls `url` (expecting `bytes`) on fresh connections for `period`, each within 2 s;
/// returns how many were served.
async fn normal_pulls(url: &str, bytes: &bytes::Bytes, period: Duration) -> usize {
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < period {
        let t = Instant::now();
        let resp = client().get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(&resp.bytes().await.unwrap(), bytes);
        let took = t.elapsed();
        assert!(took < Duration::from_secs(2), "a normal pull took {took:?}");
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_cut_off_while_others_are_served() {
    let r = Redirector::start(256 * 1024).await;
    let options = MirrorOptions {
        server: "header_read_timeout = \"1s\"".into(),
        ..MirrorOptions::default()
    };
    let m = mirror_for(&r, &options);
    let (layer, bytes) = r.image.blobs[1].clone();
    let blob_url = format!("{}/v2/team/app/blobs/{layer}", m.url());
    assert_eq!(client().get(&blob_url).send().await.unwrap().status(), 200);

    let request =
        b"GET /v2/team/app/manifests/latest HTTP/1.1\r\nHost: mirror\r\nAccept: */*\r\n\r\n";
    let slow: Vec<_> = (0..20)
        .map(|_| {
            let addr = m.addr;
            tokio::spawn(async move {
                trickle(
                    addr,
                    request,
                    Duration::from_millis(300),
                    Duration::from_secs(8),
                )
                .await
            })
        })
        .collect();
    // Meanwhile: normal clients, each on a fresh connection, all served promptly.
    let served = normal_pulls(&blob_url, &bytes, Duration::from_secs(3)).await;
    assert!(served >= 5, "only {served} normal pulls in 3 s");
    for s in slow {
        let t = s.await.unwrap();
        let after = t
            .closed_after
            .unwrap_or_else(|| panic!("slowloris never cut off: {t:?}"));
        assert!(
            after >= Duration::from_millis(700) && after < Duration::from_secs(4),
            "cut off after {after:?} (header_read_timeout 1s)"
        );
        assert!(
            !t.answer.contains(" 200 "),
            "a slowloris client was served: {t:?}"
        );
    }
    // A client that is slow but within the limit is served.
    let t = trickle(
        m.addr,
        request,
        Duration::from_millis(8),
        Duration::from_secs(5),
    )
    .await;
    assert!(t.answer.starts_with("HTTP/1.1 200"), "{t:?}");
}

/// Sends a whole request on a new connection; waits up to `wait` for the status line.
async fn status_line(addr: SocketAddr, wait: Duration) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 256];
    match tokio::time::timeout(wait, tcp.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            text.lines().next().map(str::to_string)
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_further_clients_until_a_slot_frees() {
    let r = Redirector::start(1024).await;
    let options = MirrorOptions {
        server: "max_connections = 2\nheader_read_timeout = \"20s\"".into(),
        ..MirrorOptions::default()
    };
    let m = mirror_for(&r, &options);
    assert_eq!(
        status_line(m.addr, Duration::from_secs(5)).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    // Two clients take both slots with half-sent requests.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(m.addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        holders.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = tokio::spawn(status_line(m.addr, Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served beyond max_connections = 2"
    );
    let released = Instant::now();
    drop(holders.pop());
    let line = third.await.unwrap();
    assert_eq!(line.as_deref(), Some("HTTP/1.1 200 OK"));
    assert!(
        released.elapsed() < Duration::from_secs(3),
        "served {:?} after a slot freed",
        released.elapsed()
    );
}
