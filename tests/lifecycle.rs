//! The binary's life cycle: configuration loading (`check-config`, env overrides, errors that
//! name the key and the file) and graceful shutdown (in-flight responses finish, new
//! connections are refused, exit status 0).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::fake_upstream::{sha256_digest, FakeUpstream, Fault, Knob};
use support::mirror::{Mirror, UpstreamSpec};

fn check_config(file_text: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("given.toml");
    std::fs::write(&path, file_text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_regmirror"));
    cmd.arg("check-config").arg("-c").arg(&path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_effective_config_with_env_overrides() {
    let (ok, out, err) = check_config(
        "[cache]\ntag_ttl = \"2m\"\n",
        &[
            ("REGMIRROR_SERVER__LISTEN", "127.0.0.1:5999"),
            ("REGMIRROR_CACHE__MEMORY", "64 MiB"),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("listen = \"127.0.0.1:5999\""), "{out}");
    assert!(out.contains("tag_ttl = \"2m\""), "{out}");
    assert!(out.contains("memory = \"64.0 MiB\""), "{out}");
    // No upstream configured: Docker Hub is the default upstream.
    assert!(
        out.contains("[upstreams.docker]") && out.contains("registry-1.docker.io"),
        "{out}"
    );
}

#[test]
fn check_config_redacts_secrets() {
    let cfg = "[server.access]\ntokens = [\"lan-token-123\"]\n\
               [upstreams.hub]\nurl = \"https://registry-1.docker.io\"\ndefault = true\n\
               username = \"bot\"\npassword = \"hunter2-secret\"\n";
    let (ok, out, err) = check_config(cfg, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("username = \"bot\""), "{out}");
    assert!(
        !out.contains("hunter2-secret") && !out.contains("lan-token-123"),
        "{out}"
    );
    assert!(out.contains("<redacted>"), "{out}");
}

#[test]
fn config_errors_name_the_key_and_the_source() {
    let (ok, _, err) = check_config("[cache]\ntag_tll = \"5m\"\n", &[]);
    assert!(!ok);
    assert!(
        err.contains("cache.tag_tll") && err.contains("given.toml"),
        "{err}"
    );

    let (ok, _, err) = check_config("[cache]\ntag_ttl = \"5 parsecs\"\n", &[]);
    assert!(!ok);
    assert!(
        err.contains("cache.tag_ttl") && err.contains("given.toml"),
        "{err}"
    );

    let (ok, _, err) = check_config("", &[("REGMIRROR_SERVER__LISTEN", "nowhere")]);
    assert!(!ok);
    assert!(
        err.contains("server.listen") && err.contains("REGMIRROR_"),
        "{err}"
    );

    let two_defaults = "[upstreams.a]\nurl = \"https://a.example\"\ndefault = true\n\
                        [upstreams.b]\nurl = \"https://b.example\"\ndefault = true\n";
    let (ok, _, err) = check_config(two_defaults, &[]);
    assert!(!ok);
    assert!(err.contains("default"), "{err}");

    let (ok, _, err) = check_config("[upstreams.a]\nurl = \"ftp://a.example\"\n", &[]);
    assert!(!ok);
    assert!(err.contains("upstreams.a.url"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_downloads_finish() {
    let fake = FakeUpstream::start().await;
    let blob = support::fake_upstream::random_bytes(3 * 1024 * 1024);
    let digest = fake.add_blob(blob.clone());
    fake.push_knob(
        Knob::new(Fault::Throttle {
            bytes_per_sec: 1024 * 1024,
        })
        .blobs(),
    );
    let mut mirror = Mirror::start(&[UpstreamSpec::new("fake", &fake.url(), &["fake.test"], true)]);

    let url = format!("{}/v2/team/app/blobs/{digest}", mirror.url());
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut got = stream.next().await.unwrap().unwrap().to_vec();

    let addr = mirror.addr;
    let stopper = std::thread::spawn(move || mirror.terminate(Duration::from_secs(20)));
    // Give the signal time to land: the listener must close while the body is still flowing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = tokio::net::TcpStream::connect(addr).await.is_err();

    let start = Instant::now();
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.expect("in-flight body must complete after SIGTERM"));
    }
    assert!(
        start.elapsed() > Duration::from_millis(500),
        "the body was still in flight at SIGTERM"
    );
    assert_eq!(sha256_digest(&got), digest);
    assert!(refused, "new connections must be refused after SIGTERM");
    assert!(stopper.join().unwrap(), "mirror must exit 0 after draining");
}
