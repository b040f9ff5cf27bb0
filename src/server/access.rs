//! Who may use the mirror: client networks (CIDR allowlist) and, optionally, mirror access
//! credentials (tokens, htpasswd bcrypt users). Mirror credentials are consumed here and never
//! forwarded upstream; verified ones are remembered briefly by hash, since bcrypt is slow.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::HeaderValue;
use sha2::Digest as _;

use crate::config::ServerConfig;

/// How long a verified credential is trusted without re-running bcrypt.
const VERIFIED_TTL: Duration = Duration::from_secs(300);

/// The access policy.
pub struct Access {
    allow: Vec<ipnet::IpNet>,
    tokens: Vec<String>,
    /// user -> bcrypt hash.
    users: HashMap<String, String>,
    /// sha256(Authorization) -> when it was verified.
    verified: Mutex<HashMap<[u8; 32], Instant>>,
}

impl Access {
    pub fn new(cfg: &ServerConfig) -> Result<Access, String> {
        let mut users = HashMap::new();
        if let Some(path) = &cfg.access.htpasswd {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("htpasswd {}: {e}", path.display()))?;
            for (n, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let (user, hash) = line.trim().split_once(':').ok_or_else(|| {
                    format!(
                        "htpasswd {} line {}: expected user:hash",
                        path.display(),
                        n + 1
                    )
                })?;
                if !hash.starts_with("$2") {
                    return Err(format!(
                        "htpasswd {} line {}: only bcrypt hashes (htpasswd -B) are supported",
                        path.display(),
                        n + 1
                    ));
                }
                users.insert(user.to_owned(), hash.to_owned());
            }
        }
        Ok(Access {
            allow: cfg.allow.clone(),
            tokens: cfg.access.tokens.clone(),
            users,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the client's address is in the allowlist.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.iter().any(|n| n.contains(&ip))
    }

    /// Whether mirror credentials are required.
    pub fn requires_credentials(&self) -> bool {
        !self.tokens.is_empty() || !self.users.is_empty()
    }

    /// Whether `authorization` carries valid mirror credentials.
    pub fn check(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(value) = authorization.and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let key: [u8; 32] = sha2::Sha256::digest(value.as_bytes()).into();
        if let Some(at) = self.verified.lock().unwrap().get(&key) {
            if at.elapsed() < VERIFIED_TTL {
                return true;
            }
        }
        let ok = self.verify(value);
        if ok {
            let mut v = self.verified.lock().unwrap();
            if v.len() > 10_000 {
                v.retain(|_, at| at.elapsed() < VERIFIED_TTL);
            }
            v.insert(key, Instant::now());
        }
        ok
    }

    fn verify(&self, value: &str) -> bool {
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return self.token_ok(rest.trim());
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let Some(decoded) = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
        else {
            return false;
        };
        let Some((user, password)) = decoded.split_once(':') else {
            return false;
        };
        if self.token_ok(password) {
            return true;
        }
        self.users
            .get(user)
            .is_some_and(|hash| bcrypt::verify(password, hash).unwrap_or(false))
    }

    fn token_ok(&self, candidate: &str) -> bool {
        // Compare every token fully, so timing says nothing about which prefix matched.
        self.tokens.iter().fold(false, |acc, t| {
            acc | constant_time_eq(t.as_bytes(), candidate.as_bytes())
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, pw: &str) -> HeaderValue {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        HeaderValue::from_str(&format!("Basic {b}")).unwrap()
    }

    #[test]
    fn cidrs_tokens_and_htpasswd() {
        let dir = tempfile::tempdir().unwrap();
        let ht = dir.path().join("htpasswd");
        std::fs::write(
            &ht,
            format!("alice:{}\n", bcrypt::hash("wonderland", 4).unwrap()),
        )
        .unwrap();
        let cfg = ServerConfig {
            allow: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            access: crate::config::AccessConfig {
                tokens: vec!["s3cret-token".into()],
                htpasswd: Some(ht),
            },
            ..ServerConfig::default()
        };
        let a = Access::new(&cfg).unwrap();
        assert!(a.allows_ip("10.1.2.3".parse().unwrap()));
        assert!(a.allows_ip("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!a.allows_ip("192.168.1.1".parse().unwrap()));
        assert!(a.requires_credentials());
        assert!(a.check(Some(&HeaderValue::from_static("Bearer s3cret-token"))));
        assert!(!a.check(Some(&HeaderValue::from_static("Bearer s3cret-tokeN"))));
        assert!(a.check(Some(&basic("anyone", "s3cret-token"))));
        assert!(a.check(Some(&basic("alice", "wonderland"))));
        assert!(a.check(Some(&basic("alice", "wonderland"))));
        assert!(!a.check(Some(&basic("alice", "wrong"))));
        assert!(!a.check(Some(&basic("bob", "wonderland"))));
        assert!(!a.check(None));
    }
}
