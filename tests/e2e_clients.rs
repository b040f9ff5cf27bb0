//! End to end with the two other ways clients reach a mirror: containerd (`ctr` with a
//! hosts.toml, which adds `?ns=<registry host>`) and skopeo (a path-prefix mirror in
//! registries.conf, `/v2/<alias>/<name>/...`). Two real registries stand behind one mirror: the
//! default one with token auth like Docker Hub (anonymous pull allowed), the second without auth;
//! the access logs show which one served what.

mod support;

use std::path::Path;

use support::docker::{write_hosts_dir, Dockerd};
use support::mirror::{Mirror, UpstreamSpec};
use support::oci::{self, SeedFormat, Seeded};
use support::registry::{Registry, RegistryAuth};
use support::token_world::{docker_upstream, token_registry, ADMIN};
use support::tokens::TokenServer;

/// `default` stands for Docker Hub; `second` is only reachable as `reg2.test`.
struct World {
    _tokens: TokenServer,
    default: Registry,
    second: Registry,
    mirror: Mirror,
}

fn world() -> World {
    let (tokens, default) = token_registry(TokenServer::builder());
    let second = Registry::start(RegistryAuth::None);
    let mirror = Mirror::start(&[
        docker_upstream(&default),
        UpstreamSpec::new("second", &second.url(), &["reg2.test"], false),
    ]);
    World {
        _tokens: tokens,
        default,
        second,
        mirror,
    }
}

/// The runnable image as `mirrortest/hello`, in OCI format, pushed with `creds`.
fn seed_hello(registry: &Registry, creds: Option<&str>) -> Seeded {
    oci::seed(
        &oci::runnable_image(),
        registry,
        "mirrortest/hello",
        SeedFormat::Oci,
        creds,
    )
}

fn stdout(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_ns_query_routes_to_second_upstream() {
    let w = world();
    let hello = seed_hello(&w.second, None);
    // Only its containerd is used; it has no registry config of its own.
    let d = Dockerd::start_with(serde_json::json!({}));
    let hosts = tempfile::tempdir().unwrap();
    let hosts_dir = write_hosts_dir(
        hosts.path(),
        "reg2.test",
        "https://reg2.test",
        &w.mirror.url(),
    );
    let reference = "reg2.test/mirrortest/hello:latest";
    // A fresh namespace: if dockerd shares a system containerd, nothing is there from before.
    let ns = format!("regmirror-{}", std::process::id());
    let pull = d.ctr_pull(&ns, &hosts_dir, reference);
    stdout(&pull, "ctr images pull");

    let images = stdout(&d.ctr(&ns, &["images", "ls"]), "ctr images ls");
    let line = images
        .lines()
        .find(|l| l.starts_with(reference))
        .expect(&images);
    assert!(line.contains(&hello.manifest_digest), "{line}");
    let content = stdout(&d.ctr(&ns, &["content", "ls", "-q"]), "ctr content ls");
    for blob in hello.blob_digests() {
        assert!(
            content.lines().any(|l| l == blob),
            "{blob} not in containerd"
        );
    }
    // Served by the second registry; the default one never heard of the image.
    let fetched = w.second.blob_gets_since(0);
    for blob in hello.blob_digests() {
        assert!(
            fetched.iter().any(|l| l.path.ends_with(&blob)),
            "{fetched:?}"
        );
    }
    let default_lines = w.default.access();
    assert!(
        !default_lines.iter().any(|l| l.path.contains("mirrortest")),
        "{default_lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ns_is_an_oci_client_error() {
    let w = world();
    let url = format!(
        "{}/v2/mirrortest/hello/manifests/latest?ns=unknown.test",
        w.mirror.url()
    );
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "status {}", resp.status());
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["errors"][0]["code"].is_string(), "{body}");
}

/// A registries.conf sending docker.io pulls to the mirror under the `docker.io/` path prefix.
fn registries_conf(dir: &Path, mirror: &Mirror) -> std::path::PathBuf {
    let conf = format!(
        "[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n\n\
         [[registry.mirror]]\nlocation = \"{}/docker.io\"\ninsecure = true\n",
        mirror.addr
    );
    let path = dir.join("registries.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// The digest `index.json` of the layout at `dir` records for `tag`.
fn layout_digest(dir: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    let name =
        |m: &&serde_json::Value| m["annotations"]["org.opencontainers.image.ref.name"] == tag;
    let entry = entries
        .iter()
        .find(name)
        .unwrap_or_else(|| panic!("{tag} not in {index}"));
    entry["digest"].as_str().unwrap().to_string()
}

fn layout_blob(dir: &Path, digest: &str) -> Vec<u8> {
    let path = dir.join("blobs/sha256").join(&digest["sha256:".len()..]);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_path_prefix_mirror_copies_to_oci_layout() {
    let w = world();
    let hello = seed_hello(&w.default, ADMIN);
    let multi = oci::seed(
        &oci::multi_platform_index(),
        &w.default,
        "mirrortest/multi",
        SeedFormat::Index,
        ADMIN,
    );
    let tmp = tempfile::tempdir().unwrap();
    let conf = registries_conf(tmp.path(), &w.mirror);
    let dest = tmp.path().join("layout");
    let oci_ref = |tag: &str| format!("oci:{}:{tag}", dest.display());
    let copy = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        oci::skopeo_with(&args, Some(&conf))
    };

    // --preserve-digests: the layout must hold exactly what the registry holds. skopeo first asks
    // the realm for `repository:docker.io/mirrortest/...` (its name for the repository); the
    // upstream refuses that token and skopeo retries with the scope the challenge names.
    for (repo, tag) in [("hello", "hello"), ("multi", "multi")] {
        let src = format!("docker://docker.io/mirrortest/{repo}:latest");
        copy(&["copy", "--all", "--preserve-digests", &src, &oci_ref(tag)]);
    }
    assert_eq!(layout_digest(&dest, "hello"), hello.manifest_digest);
    assert_image_in_layout(&dest, &hello);
    assert_eq!(layout_digest(&dest, "multi"), multi.manifest_digest);
    for child in &multi.children {
        assert_image_in_layout(&dest, child);
    }

    // It came through the mirror (skopeo cannot reach docker.io itself) from the default upstream.
    let fetched = w.default.blob_gets_since(0);
    for blob in hello.blob_digests().iter().chain(&multi.blob_digests()) {
        assert!(
            fetched.iter().any(|l| l.path.ends_with(blob.as_str())),
            "{blob}: {fetched:?}"
        );
    }
    assert!(w
        .second
        .access()
        .iter()
        .all(|l| !l.path.contains("mirrortest")));
}

/// The manifest and every blob it references are in the layout, each matching its digest.
fn assert_image_in_layout(dir: &Path, seeded: &Seeded) {
    assert_eq!(
        oci::sha256_digest(&layout_blob(dir, &seeded.manifest_digest)),
        seeded.manifest_digest
    );
    for blob in seeded.blob_digests() {
        assert_eq!(oci::sha256_digest(&layout_blob(dir, &blob)), blob);
    }
}
