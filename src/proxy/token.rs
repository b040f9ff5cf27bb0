//! The token proxy: clients on a LAN often cannot reach an upstream's token realm
//! (`auth.docker.io`), so the realm of every relayed challenge is rewritten to
//! `<mirror>/_regmirror/token/<upstream>`, and requests there are forwarded (with the client's
//! Basic credentials, if any) to the realm the upstream itself announced. Clients never
//! choose where the mirror connects: realms are only ever learned from the upstream.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use http::{header, request::Parts, HeaderMap, HeaderValue, Method, Response, Uri};

use super::{ConnInfo, Proxy, ProxyError};
use crate::body::{self, Body};
use crate::upstream::challenge::Challenge;
use crate::upstream::{read_small, Upstream, UpstreamStatus};

/// Path prefix of the token endpoint.
pub const TOKEN_PATH: &str = "/_regmirror/token/";

/// Realms announced by each upstream (by upstream name).
#[derive(Default)]
pub struct Realms(Mutex<HashMap<String, String>>);

impl Realms {
    fn get(&self, upstream: &str) -> Option<String> {
        self.0.lock().unwrap().get(upstream).cloned()
    }

    fn learn(&self, upstream: &str, realm: &str) {
        let mut map = self.0.lock().unwrap();
        if map.get(upstream).map(String::as_str) != Some(realm) {
            map.insert(upstream.to_owned(), realm.to_owned());
        }
    }
}

impl Proxy {
    /// Points a relayed challenge's realm at our token endpoint (if enabled for `up`).
    pub(super) fn rewrite_challenge(
        &self,
        up: &Upstream,
        parts: &Parts,
        status: &mut UpstreamStatus,
    ) {
        if !up.config.token_proxy {
            return;
        }
        let Some(ch) = status
            .www_authenticate
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(Challenge::parse)
            .filter(Challenge::is_bearer)
        else {
            return;
        };
        let Some(realm) = ch
            .param("realm")
            .filter(|r| r.starts_with("http://") || r.starts_with("https://"))
        else {
            return;
        };
        self.realms.learn(&up.name, realm);
        let ours = format!("{}{TOKEN_PATH}{}", self.public_base(parts), up.name);
        if let Ok(v) = HeaderValue::from_str(&ch.with_realm(&ours).to_string()) {
            status.www_authenticate = Some(v);
        }
    }

    /// `scheme://host[:port]` clients use to reach us.
    fn public_base(&self, parts: &Parts) -> String {
        if let Some(url) = &self.config.server.public_url {
            return url.trim_end_matches('/').to_owned();
        }
        let tls = parts.extensions.get::<ConnInfo>().is_some_and(|c| c.tls);
        let scheme = if tls { "https" } else { "http" };
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .filter(|h| h.parse::<http::uri::Authority>().is_ok())
            .unwrap_or_else(|| self.config.server.listen.to_string());
        format!("{scheme}://{host}")
    }

    /// `GET|POST /_regmirror/token/<upstream>?...`: forwards to the upstream's realm.
    pub async fn token(&self, parts: &Parts, body: Bytes) -> Result<Response<Body>, ProxyError> {
        let name = parts.uri.path().strip_prefix(TOKEN_PATH).unwrap_or("");
        let up = self
            .router
            .by_name(name)
            .ok_or_else(|| ProxyError::UnknownNamespace(name.chars().take(64).collect()))?;
        if parts.method != Method::GET && parts.method != Method::POST {
            return Err(ProxyError::MethodNotAllowed);
        }
        let realm = match self.realms.get(&up.name) {
            Some(r) => r,
            None => self.discover_realm(&up).await?,
        };
        let query = parts.uri.query().map(|q| self.upstream_scopes(&up, q));
        let uri = match query {
            Some(q) => format!("{realm}{}{q}", if realm.contains('?') { '&' } else { '?' }),
            None => realm,
        };
        let uri: Uri = uri.parse().map_err(|_| ProxyError::NotFound)?;
        let mut headers = HeaderMap::new();
        for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
            if let Some(v) = parts.headers.get(&name) {
                headers.insert(name, v.clone());
            }
        }
        let resp = up.raw(parts.method.clone(), uri, headers, body).await?;
        let status = resp.status();
        let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
        let data = read_small(resp).await?;
        tracing::debug!(upstream = %up.name, %status, "token request forwarded");
        let mut r = Response::new(body::full(data));
        *r.status_mut() = status;
        if let Some(ct) = content_type {
            r.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(r)
    }

    /// Rewrites `scope=repository:<name>:<actions>` parameters from the names clients use
    /// (`docker.io/team/app` behind a path-prefix mirror, `alpine` for Docker Hub) to the
    /// upstream's own (`team/app`, `library/alpine`), so the first token already fits.
    fn upstream_scopes(&self, up: &Upstream, query: &str) -> String {
        query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some(("scope", v)) => format!("scope={}", rewrite_scope(up, &percent_decode(v))),
                _ => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    /// Learns an upstream's realm from its `/v2/` challenge.
    async fn discover_realm(&self, up: &Upstream) -> Result<String, ProxyError> {
        let resp = up.ping_unauthenticated().await?;
        let realm = resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(Challenge::parse)
            .filter(Challenge::is_bearer)
            .and_then(|c| c.param("realm").map(str::to_owned))
            .filter(|r| r.starts_with("http://") || r.starts_with("https://"))
            .ok_or(ProxyError::NotFound)?;
        self.realms.learn(&up.name, &realm);
        Ok(realm)
    }
}

/// One scope, with the repository name as the upstream knows it (percent-encoded again).
fn rewrite_scope(up: &Upstream, scope: &str) -> String {
    let mapped = scope
        .split(' ')
        .map(|one| {
            let mut it = one.splitn(3, ':');
            match (it.next(), it.next(), it.next()) {
                (Some("repository"), Some(name), Some(actions)) => {
                    format!("repository:{}:{actions}", upstream_name(up, name))
                }
                _ => one.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    mapped
        .bytes()
        .map(|b| match b {
            b'a'..=b'z'
            | b'A'..=b'Z'
            | b'0'..=b'9'
            | b'-'
            | b'.'
            | b'_'
            | b'~'
            | b':'
            | b'/'
            | b',' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A client-side repository name as the upstream names it.
fn upstream_name(up: &Upstream, name: &str) -> String {
    let name = match name.split_once('/') {
        Some((first, rest))
            if up
                .config
                .aliases
                .iter()
                .any(|a| a.eq_ignore_ascii_case(first)) =>
        {
            rest
        }
        _ => name,
    };
    if !name.contains('/') && up.config.wants_library_prefix() {
        format!("library/{name}")
    } else {
        name.to_owned()
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let decoded = match b[i] {
            b'%' if i + 2 < b.len() => hex(b[i + 1]).zip(hex(b[i + 2])).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match (decoded, b[i]) {
            (Some(v), _) => {
                out.push(v);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, c) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamConfig;

    #[test]
    fn scopes_use_upstream_names() {
        let up = Upstream::new("docker", &UpstreamConfig::docker_hub()).unwrap();
        assert_eq!(
            rewrite_scope(&up, "repository:docker.io/team/app:pull"),
            "repository:team/app:pull"
        );
        assert_eq!(
            rewrite_scope(&up, "repository:alpine:pull,push"),
            "repository:library/alpine:pull,push"
        );
        assert_eq!(
            rewrite_scope(&up, "repository:a/b:pull repository:c/d:pull"),
            "repository:a/b:pull%20repository:c/d:pull"
        );
        assert_eq!(
            percent_decode("repository%3Aa%2Fb%3Apull"),
            "repository:a/b:pull"
        );
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz+é"), "%zz é");
    }
}
