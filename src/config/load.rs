//! Loading and checking a [`Config`]: figment merges built-in defaults < `mirror.toml` (or
//! `-c FILE`) < `REGMIRROR_*` environment (`__` for nesting); errors name the key and where
//! it came from; cross-field rules are checked once, here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

use super::{Config, UpstreamConfig};

/// A configuration that could not be loaded or makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}", describe(.0))]
    Load(Box<figment::Error>),
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Every error figment found, each naming the key (without figment's profile) and its source.
fn describe(e: &figment::Error) -> String {
    let lines: Vec<String> = e
        .clone()
        .into_iter()
        .map(|err| {
            let key = err
                .path
                .iter()
                .skip_while(|p| *p == "default")
                .cloned()
                .collect::<Vec<_>>()
                .join(".");
            let source = err
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(src) => format!("{src}"),
                    None => m.name.to_string(),
                })
                .unwrap_or_else(|| "built-in defaults".into());
            format!(
                "config key `{}`: {} (from {source})",
                key.to_ascii_lowercase(),
                err.kind
            )
        })
        .collect();
    lines.join("\n")
}

impl Config {
    /// Loads defaults < `file` (if given, it must exist; else `mirror.toml` if present) < env.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(p) if !p.exists() => return Err(ConfigError::Missing(p.to_owned())),
            Some(p) => fig = fig.merge(Toml::file_exact(p)),
            None if Path::new("mirror.toml").exists() => {
                fig = fig.merge(Toml::file_exact("mirror.toml"))
            }
            None => {}
        }
        fig = fig.merge(Env::prefixed("REGMIRROR_").split("__"));
        let mut cfg: Config = fig.extract().map_err(|e| ConfigError::Load(Box::new(e)))?;
        if cfg.upstreams.is_empty() {
            cfg.upstreams
                .insert("docker".into(), UpstreamConfig::docker_hub());
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.upstreams.is_empty() {
            return bad("no upstream configured".into());
        }
        let defaults: Vec<_> = self.upstreams.iter().filter(|(_, u)| u.default).collect();
        if defaults.len() > 1 {
            return bad(format!(
                "more than one upstream has default = true: {}",
                defaults
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let mut seen = BTreeMap::new();
        for (name, u) in &self.upstreams {
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return bad(format!("upstreams.{name}: name must be [A-Za-z0-9_-]"));
            }
            match u.url.parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http") | Some("https"))
                        && uri.host().is_some() => {}
                _ => {
                    return bad(format!(
                        "upstreams.{name}.url: `{}` is not an http(s) URL",
                        u.url
                    ))
                }
            }
            let secrets = [
                u.password.is_some(),
                u.password_file.is_some(),
                u.password_env.is_some(),
            ];
            if secrets.iter().filter(|s| **s).count() > 1 {
                return bad(format!(
                    "upstreams.{name}: set only one of password, password_file, password_env"
                ));
            }
            if u.username.is_some() != secrets.iter().any(|s| *s) {
                return bad(format!(
                    "upstreams.{name}: username and a password go together"
                ));
            }
            if let Err(e) = u.resolve_password() {
                return bad(format!("upstreams.{name}.{e}"));
            }
            for a in &u.aliases {
                if a.is_empty() || a.contains('/') || a.chars().any(char::is_whitespace) {
                    return bad(format!(
                        "upstreams.{name}.aliases: `{a}` is not a host name"
                    ));
                }
                if let Some(other) = seen.insert(a.to_ascii_lowercase(), name.clone()) {
                    return bad(format!(
                        "alias `{a}` is used by upstreams {other} and {name}"
                    ));
                }
            }
        }
        if self.cache.memory.as_u64() < 1024 * 1024 {
            return bad("cache.memory must be at least 1 MiB".into());
        }
        if self.cache.max_manifest_size.as_u64() == 0 {
            return bad("cache.max_manifest_size must be positive".into());
        }
        if let Some(url) = &self.server.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.parse::<http::Uri>().is_err()
            {
                return bad(format!("server.public_url: `{url}` is not an http(s) URL"));
            }
        }
        if let Some(h) = &self.server.access.htpasswd {
            if !h.is_file() {
                return bad(format!(
                    "server.access.htpasswd: {} does not exist",
                    h.display()
                ));
            }
        }
        if let Some(tls) = &self.server.tls {
            for (k, p) in [("cert", &tls.cert), ("key", &tls.key)] {
                if !p.is_file() {
                    return bad(format!("server.tls.{k}: {} does not exist", p.display()));
                }
            }
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad(format!(
                "log.format must be text or json, not `{}`",
                self.log.format
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML, with secrets replaced (for `check-config`).
    pub fn redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_include_docker_hub() {
        let cfg = Config::load(Some(Path::new("mirror.toml"))).unwrap();
        assert!(cfg.upstreams["docker"].default);
        assert!(cfg.upstreams["docker"].wants_library_prefix());
    }

    #[test]
    fn two_defaults_are_refused() {
        let mut cfg = Config::default();
        cfg.upstreams
            .insert("a".into(), UpstreamConfig::docker_hub());
        let mut b = UpstreamConfig::docker_hub();
        b.aliases.clear();
        cfg.upstreams.insert("b".into(), b);
        assert!(cfg.validate().unwrap_err().to_string().contains("default"));
    }
}
