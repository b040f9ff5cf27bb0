//! Builds small OCI image layouts on disk (tar + gzip layers, JSON config and manifest,
//! `index.json`, `oci-layout`) and seeds them into a registry with `skopeo copy`.
//!
//! The images: a runnable busybox image, a two-platform image index, and a private image with a
//! random layer nobody else has. After seeding, the digests are read back from the registry (the
//! conversion to Docker schema2 changes the manifest digest), so tests assert on what the
//! registry really serves. It must not talk to the mirror.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use super::net::require_program;
use super::registry::Registry;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// What the runnable image prints.
pub const HELLO: &str = "hello from regmirror";

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A blob in a layout: what a manifest or index points at.
#[derive(Clone, Debug)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// An OCI image layout in a temp dir, tagged `tag`, whose `index.json` points at `top`.
pub struct Layout {
    pub dir: tempfile::TempDir,
    pub tag: String,
    pub top: Descriptor,
}

impl Layout {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The skopeo source reference `oci:<dir>:<tag>`.
    pub fn reference(&self) -> String {
        format!("oci:{}:{}", self.path().display(), self.tag)
    }
}

/// Writes content-addressed blobs under `blobs/sha256/`.
struct Writer {
    dir: tempfile::TempDir,
}

impl Writer {
    fn new() -> Writer {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        Writer { dir }
    }

    fn put(&self, media_type: &str, bytes: &[u8]) -> Descriptor {
        let digest = sha256_digest(bytes);
        let file = self.dir.path().join("blobs/sha256").join(&digest[7..]);
        std::fs::write(file, bytes).unwrap();
        Descriptor {
            media_type: media_type.into(),
            digest,
            size: bytes.len() as u64,
        }
    }

    /// A config + manifest over `layers` (each an uncompressed tar), for `arch`.
    fn image(&self, arch: &str, layers: &[Vec<u8>], cmd: &[&str]) -> Descriptor {
        let mut diff_ids = Vec::new();
        let mut layer_descs = Vec::new();
        for tar in layers {
            diff_ids.push(sha256_digest(tar));
            layer_descs.push(self.put(OCI_LAYER, &gzip(tar)).json());
        }
        let config = serde_json::json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = self.put(OCI_CONFIG, config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.json(),
            "layers": layer_descs,
        });
        self.put(OCI_MANIFEST, manifest.to_string().as_bytes())
    }

    fn finish(self, tag: &str, top: Descriptor) -> Layout {
        let mut entry = top.json();
        entry["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [entry]});
        std::fs::write(self.dir.path().join("index.json"), index.to_string()).unwrap();
        Layout {
            dir: self.dir,
            tag: tag.into(),
            top,
        }
    }
}

/// A linux/amd64 image whose `Cmd` runs `/bin/busybox echo hello from regmirror`.
pub fn runnable_image() -> Layout {
    let w = Writer::new();
    let top = w.image("amd64", &[busybox_tar()], &["/bin/busybox", "echo", HELLO]);
    w.finish("latest", top)
}

/// An image index: linux/amd64 runnable as above, linux/arm64 with a small marker layer.
pub fn multi_platform_index() -> Layout {
    let w = Writer::new();
    let amd64 = w.image("amd64", &[busybox_tar()], &["/bin/busybox", "echo", HELLO]);
    let marker = tar_of(&[("etc/arm64-marker", b"arm64 says hi\n".to_vec())]);
    let arm64 = w.image("arm64", &[marker], &["/bin/sh"]);
    let entry = |d: &Descriptor, arch: &str| {
        let mut e = d.json();
        e["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
        e
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [entry(&amd64, "amd64"), entry(&arm64, "arm64")],
    });
    let top = w.put(OCI_INDEX, index.to_string().as_bytes());
    w.finish("latest", top)
}

/// A linux/amd64 image with one layer of fresh random bytes, so no other image shares a blob.
pub fn private_image() -> Layout {
    let mut secret = vec![0u8; 64 * 1024];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).unwrap();
    let w = Writer::new();
    let layer = tar_of(&[("secret/data.bin", secret)]);
    let top = w.image("amd64", &[layer], &["/secret/data.bin"]);
    w.finish("latest", top)
}

/// A layer with `/bin/busybox` (Debian's static build) and `/bin/sh -> busybox`.
fn busybox_tar() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox missing: install Debian's busybox-static");
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    b.append_data(&mut dir, "bin/", std::io::empty()).unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_mode(0o755);
    file.set_size(busybox.len() as u64);
    b.append_data(&mut file, "bin/busybox", &busybox[..])
        .unwrap();
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_mode(0o777);
    link.set_size(0);
    b.append_link(&mut link, "bin/sh", "busybox").unwrap();
    b.into_inner().unwrap()
}

/// An uncompressed tar of regular files (mode 0644).
fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// How to push a layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedFormat {
    /// Convert the single image to Docker schema2 (`--format v2s2`), what Docker Hub serves.
    Schema2,
    /// Keep the OCI manifest.
    Oci,
    /// Copy an index with every platform (`--all`); it stays an OCI index.
    Index,
}

/// What the registry holds after seeding, read back from it.
#[derive(Clone, Debug)]
pub struct Seeded {
    /// `name:tag` inside the registry, e.g. `mirrortest/hello:latest`.
    pub repo: String,
    pub tag: String,
    pub manifest_digest: String,
    pub media_type: String,
    /// The manifest (or index) exactly as the registry serves it.
    pub manifest: bytes::Bytes,
    /// `None` for an index.
    pub config_digest: Option<String>,
    pub layer_digests: Vec<String>,
    /// For an index: each platform's manifest, in index order.
    pub children: Vec<Seeded>,
}

impl Seeded {
    /// Config and layer digests, including every child's.
    pub fn blob_digests(&self) -> Vec<String> {
        let mut out: Vec<String> = self.config_digest.iter().cloned().collect();
        out.extend(self.layer_digests.iter().cloned());
        for c in &self.children {
            out.extend(c.blob_digests());
        }
        out
    }

    /// The size the manifest (or a child's) gives for blob `digest`.
    pub fn blob_size(&self, digest: &str) -> Option<u64> {
        let json: serde_json::Value = serde_json::from_slice(&self.manifest).unwrap();
        let mut descs = json["layers"].as_array().cloned().unwrap_or_default();
        descs.push(json["config"].clone());
        let own = descs.iter().find(|d| d["digest"] == digest);
        own.and_then(|d| d["size"].as_u64())
            .or_else(|| self.children.iter().find_map(|c| c.blob_size(digest)))
    }
}

/// Pushes `layout` to `registry` as `repo:tag` (with `creds` = `user:password` when the
/// registry wants auth) and reads back what it stored.
pub fn seed(
    layout: &Layout,
    registry: &Registry,
    repo: &str,
    format: SeedFormat,
    creds: Option<&str>,
) -> Seeded {
    let dest = format!("docker://{}/{repo}:{}", registry.host(), layout.tag);
    let mut args = vec!["copy".to_string(), "--dest-tls-verify=false".into()];
    match format {
        SeedFormat::Schema2 => args.extend(["--format".into(), "v2s2".into()]),
        SeedFormat::Oci => args.extend(["--format".into(), "oci".into()]),
        SeedFormat::Index => args.push("--all".into()),
    }
    if let Some(c) = creds {
        args.extend(["--dest-creds".into(), c.into()]);
    }
    args.extend([layout.reference(), dest]);
    skopeo(&args);
    read_back(registry, repo, &layout.tag, creds)
}

fn read_back(registry: &Registry, repo: &str, reference: &str, creds: Option<&str>) -> Seeded {
    let sep = if reference.starts_with("sha256:") {
        '@'
    } else {
        ':'
    };
    let src = format!("docker://{}/{repo}{sep}{reference}", registry.host());
    let mut args = vec![
        "inspect".to_string(),
        "--raw".into(),
        "--tls-verify=false".into(),
    ];
    if let Some(c) = creds {
        args.extend(["--creds".into(), c.into()]);
    }
    args.push(src);
    let manifest = skopeo(&args);
    let json: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let digest_of = |v: &serde_json::Value| v["digest"].as_str().unwrap().to_string();
    let children = json["manifests"]
        .as_array()
        .map(|ms| {
            let child = |m| read_back(registry, repo, &digest_of(m), creds);
            ms.iter().map(child).collect()
        })
        .unwrap_or_default();
    let layers = json["layers"].as_array().cloned().unwrap_or_default();
    Seeded {
        repo: repo.into(),
        tag: reference.into(),
        manifest_digest: sha256_digest(&manifest),
        media_type: json["mediaType"].as_str().unwrap_or_default().into(),
        config_digest: json.get("config").map(digest_of),
        layer_digests: layers.iter().map(digest_of).collect(),
        children,
        manifest: manifest.into(),
    }
}

/// Runs skopeo without any trust policy or system registries config; panics with its output on
/// failure, returns its stdout.
pub fn skopeo(args: &[String]) -> Vec<u8> {
    skopeo_with(args, None)
}

/// Like `skopeo`, with `registries_conf` as the registries configuration.
pub fn skopeo_with(args: &[String], registries_conf: Option<&Path>) -> Vec<u8> {
    let empty;
    let conf: PathBuf = match registries_conf {
        Some(p) => p.into(),
        None => {
            empty = tempfile::NamedTempFile::new().unwrap();
            empty.path().into()
        }
    };
    let out = Command::new(require_program("skopeo"))
        .arg("--insecure-policy")
        .arg("--registries-conf")
        .arg(&conf)
        .args(args)
        .envs(super::docker::offline_env())
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
