//! From a request path (and containerd's `?ns=`) to an upstream, a repository and an
//! endpoint, validating every part before anything touches disk or the network.
//!
//! Upstream choice: `ns` must match a configured alias (never dial an arbitrary host); else a
//! leading path segment naming an alias (podman/skopeo path-prefix mirrors); else the default
//! upstream (dockerd `registry-mirrors`). Docker Hub's one-component names get `library/`.

use std::sync::Arc;

use super::ProxyError;
use crate::reference::{Digest, Reference, RepoName};
use crate::upstream::Upstream;

/// Which API endpoint a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Manifest(Reference),
    Blob(Digest),
    TagsList,
}

/// A request for one repository of one upstream.
#[derive(Clone)]
pub struct Target {
    pub upstream: Arc<Upstream>,
    pub repo: RepoName,
    pub endpoint: Endpoint,
}

/// A routed request.
pub enum Routed {
    /// `/v2/`: the API version check, answered by the chosen upstream.
    Base(Arc<Upstream>),
    Repo(Target),
}

/// The configured upstreams, in a shape fit for routing.
pub struct Router {
    upstreams: Vec<Arc<Upstream>>,
    default: Option<Arc<Upstream>>,
}

impl Router {
    pub fn new(upstreams: Vec<Arc<Upstream>>) -> Router {
        let default = upstreams.iter().find(|u| u.config.default).cloned();
        Router { upstreams, default }
    }

    /// The upstream with this config name.
    pub fn by_name(&self, name: &str) -> Option<Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.name == name).cloned()
    }

    fn by_alias(&self, host: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| {
            u.config
                .aliases
                .iter()
                .any(|a| a.eq_ignore_ascii_case(host))
        })
    }

    /// Routes `path` (which must start with `/v2/`), with the raw `ns` query value if any.
    pub fn route(&self, path: &str, ns: Option<&str>) -> Result<Routed, ProxyError> {
        let rest = path.strip_prefix("/v2/").ok_or(ProxyError::NotFound)?;
        let explicit = match ns {
            Some(ns) => Some(
                self.by_alias(ns)
                    .ok_or_else(|| ProxyError::UnknownNamespace(ns.chars().take(100).collect()))?
                    .clone(),
            ),
            None => None,
        };
        if rest.is_empty() {
            let up = explicit
                .or_else(|| self.default.clone())
                .ok_or(ProxyError::NoDefaultUpstream)?;
            return Ok(Routed::Base(up));
        }
        let (name, endpoint) = split_endpoint(rest)?;
        let (upstream, name) = match explicit {
            Some(up) => (up, name),
            None => self.by_prefix(name)?,
        };
        let mut repo: RepoName = name.parse()?;
        if repo.components() == 1 && upstream.config.wants_library_prefix() {
            repo = repo.prefixed("library");
        }
        Ok(Routed::Repo(Target {
            upstream,
            repo,
            endpoint,
        }))
    }

    fn by_prefix<'p>(&self, name: &'p str) -> Result<(Arc<Upstream>, &'p str), ProxyError> {
        if let Some((first, rest)) = name.split_once('/') {
            if let Some(up) = self.by_alias(first) {
                return Ok((up.clone(), rest));
            }
        }
        let up = self.default.clone().ok_or(ProxyError::NoDefaultUpstream)?;
        Ok((up, name))
    }
}

/// Splits `<name>/manifests/<ref>`, `<name>/blobs/<digest>`, `<name>/tags/list`.
fn split_endpoint(rest: &str) -> Result<(&str, Endpoint), ProxyError> {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok((name, Endpoint::TagsList));
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return Ok((name, Endpoint::Manifest(reference.parse()?)));
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        return Ok((name, Endpoint::Blob(digest.parse()?)));
    }
    Err(ProxyError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamConfig;

    fn router() -> Router {
        let hub = Arc::new(Upstream::new("docker", &UpstreamConfig::docker_hub()).unwrap());
        let ghcr = Arc::new(
            Upstream::new(
                "ghcr",
                &UpstreamConfig {
                    url: "https://ghcr.io".into(),
                    aliases: vec!["ghcr.io".into()],
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        Router::new(vec![hub, ghcr])
    }

    fn target(r: Routed) -> Target {
        match r {
            Routed::Repo(t) => t,
            Routed::Base(_) => panic!("expected a repository route"),
        }
    }

    #[test]
    fn routes_by_default_prefix_and_ns() {
        let r = router();
        let t = target(r.route("/v2/alpine/manifests/latest", None).unwrap());
        assert_eq!(
            (t.upstream.name.as_str(), t.repo.as_str()),
            ("docker", "library/alpine")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let t = target(
            r.route(&format!("/v2/ghcr.io/org/app/blobs/{d}"), None)
                .unwrap(),
        );
        assert_eq!(
            (t.upstream.name.as_str(), t.repo.as_str()),
            ("ghcr", "org/app")
        );
        let t = target(r.route("/v2/org/app/tags/list", Some("ghcr.io")).unwrap());
        assert_eq!(
            (t.upstream.name.as_str(), t.endpoint),
            ("ghcr", Endpoint::TagsList)
        );
        let t = target(
            r.route("/v2/docker.io/library/x/manifests/1", None)
                .unwrap(),
        );
        assert_eq!(t.repo.as_str(), "library/x");
    }

    #[test]
    fn refuses_unknown_ns_and_bad_parts() {
        let r = router();
        assert!(matches!(
            r.route("/v2/a/b/manifests/x", Some("evil.example")),
            Err(ProxyError::UnknownNamespace(_))
        ));
        assert!(matches!(
            r.route("/v2/a/blobs/sha256:../../etc", None),
            Err(ProxyError::Reference(_))
        ));
        assert!(matches!(
            r.route("/v2/A/manifests/x", None),
            Err(ProxyError::Reference(_))
        ));
        assert!(matches!(
            r.route("/v2/a/manifests/.x", None),
            Err(ProxyError::Reference(_))
        ));
        assert!(matches!(
            r.route("/v2/a/other", None),
            Err(ProxyError::NotFound)
        ));
        assert!(matches!(r.route("/v2/", None), Ok(Routed::Base(_))));
    }
}
