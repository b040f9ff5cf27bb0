//! `WWW-Authenticate` challenges (parsed with the http-auth crate): reading a registry's
//! Bearer challenge, and rebuilding it with another realm for the token proxy.

/// One challenge: scheme and parameters (values unescaped), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// The first challenge of a header value, if it parses.
    pub fn parse(value: &str) -> Option<Challenge> {
        let all = http_auth::parse_challenges(value).ok()?;
        let c = all.into_iter().next()?;
        Some(Challenge {
            scheme: c.scheme.to_owned(),
            params: c
                .params
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_unescaped()))
                .collect(),
        })
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_bearer(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("bearer")
    }

    pub fn is_basic(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("basic")
    }

    /// The same challenge with `realm` replaced.
    pub fn with_realm(&self, realm: &str) -> Challenge {
        let mut c = self.clone();
        match c.params.iter_mut().find(|(k, _)| k == "realm") {
            Some(p) => p.1 = realm.to_owned(),
            None => c.params.insert(0, ("realm".into(), realm.to_owned())),
        }
        c
    }
}

impl std::fmt::Display for Challenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.scheme)?;
        for (i, (k, v)) in self.params.iter().enumerate() {
            let sep = if i == 0 { " " } else { "," };
            let escaped = v.replace('\\', "\\\\").replace('"', "\\\"");
            write!(f, "{sep}{k}=\"{escaped}\"")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rewrites_a_registry_challenge() {
        let v = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull",error="insufficient_scope""#;
        let c = Challenge::parse(v).unwrap();
        assert!(c.is_bearer());
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("scope"), Some("repository:library/alpine:pull"));
        let r = c
            .with_realm("http://mirror.lan:5000/_regmirror/token/docker")
            .to_string();
        assert_eq!(
            r,
            r#"Bearer realm="http://mirror.lan:5000/_regmirror/token/docker",service="registry.docker.io",scope="repository:library/alpine:pull",error="insufficient_scope""#
        );
        assert_eq!(
            Challenge::parse(&r).unwrap().param("service"),
            Some("registry.docker.io")
        );
        assert!(Challenge::parse(r#"Basic realm="Registry Realm""#)
            .unwrap()
            .is_basic());
    }
}
