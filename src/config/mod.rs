//! The configuration tree: one serde struct per table, loaded by figment
//! (built-in defaults < `mirror.toml` < `REGMIRROR_*` environment) and validated once.
//!
//! The library only ever takes a built [`Config`], so tests construct one in code.
//! Secrets never appear in [`Config::redacted_toml`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

mod load;

pub use load::ConfigError;

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where and how clients connect.
    pub server: ServerConfig,
    /// Disk and memory caches.
    pub cache: CacheConfig,
    /// Registries we mirror, by a short name used in logs and metrics.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Log output.
    pub log: LogConfig,
}

/// The client-facing listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; dockerd's `registry-mirrors` points here.
    pub listen: SocketAddr,
    /// How long in-flight responses may run after SIGTERM/SIGINT before we exit anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Longest a client may take to send its request headers (slowloris guard).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Connections served at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Client networks allowed to use the mirror (CIDRs); others get 403 DENIED.
    pub allow: Vec<ipnet::IpNet>,
    /// The URL clients reach the mirror at (`http://mirror.lan:5000`), used in rewritten token
    /// realms; unset: taken from each request's Host and listener.
    pub public_url: Option<String>,
    /// A TLS listener beside the plain one.
    pub tls: Option<TlsConfig>,
    /// Credentials clients must present to the mirror itself (off when empty).
    pub access: AccessConfig,
}

/// The TLS listener (rustls; HTTP/1.1 and HTTP/2 via ALPN; SIGHUP reloads the certificate).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Address of the TLS listener.
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Mirror access control for clients that can send credentials. When any is set, every /v2/
/// request must carry one of them; they are consumed by the mirror, never forwarded upstream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// Accepted access tokens (as `Bearer <token>`, or as the password of Basic auth).
    #[serde(serialize_with = "redact_list")]
    pub tokens: Vec<String>,
    /// An htpasswd file of bcrypt users (`htpasswd -B`).
    pub htpasswd: Option<PathBuf>,
}

impl AccessConfig {
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty() || self.htpasswd.is_some()
    }
}

/// The default client allowlist: loopback and private ranges, the LAN a gateway serves.
fn private_networks() -> Vec<ipnet::IpNet> {
    [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ]
    .iter()
    .map(|n| n.parse().expect("valid CIDR"))
    .collect()
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:5000".parse().unwrap(),
            shutdown_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
            allow: private_networks(),
            public_url: None,
            tls: None,
            access: AccessConfig::default(),
        }
    }
}

/// Disk store and memory tier.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Directory of the content-addressed disk store (created if missing).
    pub dir: PathBuf,
    /// Memory tier budget: manifests, tag answers, auth decisions.
    #[serde(serialize_with = "binary_size")]
    pub memory: ByteSize,
    /// How long a tag -> digest answer is trusted before a revalidating HEAD upstream.
    #[serde(with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// How long an upstream "this requester may pull this repository" answer is trusted.
    /// Revoked access takes effect within this window.
    #[serde(with = "humantime_serde")]
    pub auth_ttl: Duration,
    /// Manifests above this size are refused (they are buffered in memory to verify).
    #[serde(serialize_with = "binary_size")]
    pub max_manifest_size: ByteSize,
    /// When every client of an in-flight blob download has gone: finish it into the cache
    /// (true) or cancel it (false).
    pub finish_abandoned_downloads: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: PathBuf::from("./cache"),
            memory: ByteSize::mib(256),
            tag_ttl: Duration::from_secs(300),
            auth_ttl: Duration::from_secs(60),
            max_manifest_size: ByteSize::mib(4),
            finish_abandoned_downloads: true,
        }
    }
}

/// One upstream registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL, e.g. `https://registry-1.docker.io`.
    pub url: String,
    /// Host names clients use for this registry: matched against containerd's `?ns=` and
    /// against a leading path segment (`/v2/<alias>/<name>/...`, podman/skopeo mirrors).
    pub aliases: Vec<String>,
    /// Requests with neither `ns` nor an alias prefix go here (dockerd `registry-mirrors`).
    pub default: bool,
    /// Prepend `library/` to one-component names (Docker Hub's official images).
    /// Unset: on when an alias is `docker.io`.
    pub library_prefix: Option<bool>,
    /// Upstream connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for upstream response headers (504 after it).
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Longest silence inside an upstream body before the transfer counts as cut.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Rewrite the realm of upstream auth challenges to the mirror's own token endpoint, so
    /// clients need a route to the mirror only.
    pub token_proxy: bool,
    /// Upstream account the mirror authenticates with (bearer-token or Basic flow).
    pub username: Option<String>,
    /// Its password (prefer `password_file` or `password_env`).
    #[serde(serialize_with = "redact")]
    pub password: Option<String>,
    /// File holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// Extra PEM CA certificates trusted for this upstream.
    pub ca_file: Option<PathBuf>,
    /// Skip upstream certificate verification (labs only; logs a warning at start).
    pub insecure_skip_verify: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: String::new(),
            aliases: Vec::new(),
            default: false,
            library_prefix: None,
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            token_proxy: true,
            username: None,
            password: None,
            password_file: None,
            password_env: None,
            ca_file: None,
            insecure_skip_verify: false,
        }
    }
}

impl UpstreamConfig {
    /// Docker Hub, the upstream used when no upstream is configured at all.
    pub fn docker_hub() -> Self {
        UpstreamConfig {
            url: "https://registry-1.docker.io".into(),
            aliases: vec![
                "docker.io".into(),
                "registry-1.docker.io".into(),
                "index.docker.io".into(),
            ],
            default: true,
            ..Default::default()
        }
    }

    /// The configured upstream password, resolved from `password`, `password_file` or
    /// `password_env`.
    pub fn resolve_password(&self) -> Result<Option<String>, String> {
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        if let Some(f) = &self.password_file {
            let s = std::fs::read_to_string(f)
                .map_err(|e| format!("password_file {}: {e}", f.display()))?;
            return Ok(Some(s.trim_end_matches(['\r', '\n']).to_owned()));
        }
        if let Some(v) = &self.password_env {
            return std::env::var(v)
                .map(Some)
                .map_err(|_| format!("password_env: ${v} is not set"));
        }
        Ok(None)
    }

    /// Whether one-component names get `library/`.
    pub fn wants_library_prefix(&self) -> bool {
        self.library_prefix
            .unwrap_or_else(|| self.aliases.iter().any(|a| a == "docker.io"))
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// tracing filter, e.g. `info` or `regmirror=debug`; `RUST_LOG` wins when set.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// Hides a secret in printed configs.
fn redact<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_some("<redacted>"),
        None => s.serialize_none(),
    }
}

/// Hides a list of secrets in printed configs.
fn redact_list<S: serde::Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|_| "<redacted>"))
}

/// Prints sizes in binary units ("256.0 MiB"), which parse back to the same value.
fn binary_size<S: serde::Serializer>(v: &ByteSize, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&v.to_string_as(true))
}
