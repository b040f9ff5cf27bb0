//! The mirror's own identity at an upstream (configured `username` + password): answers
//! Bearer challenges by fetching tokens from the realm with Basic credentials, caching them
//! per scope until they expire, or sends Basic credentials when that is what the upstream asks.
//!
//! Secrets stay in memory only and are never logged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::HeaderValue;

/// Tokens are dropped this long before their stated expiry.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
/// Lifetime assumed when the token server states none (the distribution spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// Configured upstream credentials and the tokens obtained with them.
pub struct MirrorAuth {
    /// `Basic <base64(user:password)>`, marked sensitive.
    basic: HeaderValue,
    /// Bearer tokens per scope, with their expiry.
    tokens: Mutex<HashMap<String, (HeaderValue, Instant)>>,
    /// The upstream asked for Basic: send it up front from then on.
    uses_basic: AtomicBool,
}

impl std::fmt::Debug for MirrorAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MirrorAuth(<redacted>)")
    }
}

/// A token endpoint's answer.
#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl MirrorAuth {
    pub fn new(username: &str, password: &str) -> MirrorAuth {
        let raw =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        let mut basic =
            HeaderValue::from_str(&format!("Basic {raw}")).expect("base64 is a valid header value");
        basic.set_sensitive(true);
        MirrorAuth {
            basic,
            tokens: Mutex::new(HashMap::new()),
            uses_basic: AtomicBool::new(false),
        }
    }

    /// The header to send up front for `scope`, if we have one.
    pub fn cached(&self, scope: &str) -> Option<HeaderValue> {
        if self.uses_basic.load(Ordering::Relaxed) {
            return Some(self.basic.clone());
        }
        let mut tokens = self.tokens.lock().unwrap();
        match tokens.get(scope) {
            Some((h, exp)) if Instant::now() < *exp => Some(h.clone()),
            Some(_) => {
                tokens.remove(scope);
                None
            }
            None => None,
        }
    }

    /// The Basic header (for token requests, and for Basic upstreams).
    pub fn basic(&self) -> HeaderValue {
        self.basic.clone()
    }

    /// Remembers that the upstream wants Basic auth.
    pub fn use_basic(&self) {
        self.uses_basic.store(true, Ordering::Relaxed);
    }

    /// Parses a token response body and caches the token for `scope`.
    pub fn store_token(&self, scope: &str, body: &[u8]) -> Result<HeaderValue, String> {
        let t: TokenResponse =
            serde_json::from_slice(body).map_err(|e| format!("token response: {e}"))?;
        let token = t
            .token
            .or(t.access_token)
            .ok_or("token response without a token")?;
        let mut h = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "token is not a valid header value")?;
        h.set_sensitive(true);
        let life = t
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        let expiry = Instant::now() + life.saturating_sub(EXPIRY_MARGIN);
        let mut tokens = self.tokens.lock().unwrap();
        if tokens.len() > 10_000 {
            tokens.retain(|_, (_, exp)| Instant::now() < *exp);
        }
        tokens.insert(scope.to_owned(), (h.clone(), expiry));
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_tokens_per_scope_and_never_prints_secrets() {
        let a = MirrorAuth::new("bob", "hunter2");
        assert!(a.cached("repository:x:pull").is_none());
        let h = a
            .store_token("repository:x:pull", br#"{"token":"abc","expires_in":300}"#)
            .unwrap();
        assert_eq!(h, "Bearer abc");
        assert_eq!(a.cached("repository:x:pull").unwrap(), "Bearer abc");
        assert!(a.cached("repository:y:pull").is_none());
        assert!(!format!("{a:?}").contains("hunter2"));
        a.use_basic();
        assert_eq!(a.cached("repository:y:pull").unwrap(), a.basic());
        // Expired tokens are not used.
        let b = MirrorAuth::new("bob", "x");
        b.store_token("s", br#"{"access_token":"t","expires_in":1}"#)
            .unwrap();
        assert!(b.cached("s").is_none());
    }
}
