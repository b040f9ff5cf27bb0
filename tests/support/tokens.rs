//! An in-process Docker-style token server (the `realm` of a distribution registry run with
//! `auth: token`), with users, per-repository grants, private repositories, run-time revocation
//! and a log of every request.
//!
//! It issues ES256 JWTs whose header carries `x5c` = [a self-signed P-256 certificate]; the same
//! certificate's PEM is written to `root_cert_path()`, which the registry trusts as its
//! `rootcertbundle`. It runs on its own thread with its own runtime, so a test that blocks its
//! tokio workers on `docker pull` never starves it. It must not decide anything the registry
//! decides: it only says which actions a requester gets.

mod http;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::Serialize;

/// The `service` the registry is configured with; tokens carry it as `aud`.
pub const SERVICE: &str = "regmirror-test-registry";
/// The `issuer` the registry is configured with; tokens carry it as `iss`.
pub const ISSUER: &str = "regmirror-test-token-issuer";
/// Token lifetime, also sent as `expires_in`.
const TTL_SECS: u64 = 300;

/// One entry of a token's `access` claim: what the registry checks a request against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Access {
    /// `repository:<name>:<actions>` access, the only kind the tests need.
    pub fn repository(name: &str, actions: &[&str]) -> Access {
        Access {
            kind: "repository".into(),
            name: name.into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }
    }
}

/// One request the server saw, so tests can assert who asked for what.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub method: String,
    pub path: String,
    /// The raw query string (empty when there was none).
    pub query: String,
    /// The authenticated user; `None` for anonymous requests and failed logins.
    pub user: Option<String>,
    /// The decoded `scope` parameters, in order.
    pub scopes: Vec<String>,
    pub status: u16,
    /// The `User-Agent` header: `regmirror/<version>` on requests the mirror's token proxy
    /// forwarded, something else on requests a client sent directly.
    pub user_agent: Option<String>,
    /// Where the request came from.
    pub peer: SocketAddr,
    /// The token issued (`None` on errors), so tests can check nobody logged it.
    pub issued: Option<String>,
}

impl TokenRequest {
    /// Whether the mirror sent this request (its forwarded token requests carry its User-Agent).
    pub fn sent_by_mirror(&self) -> bool {
        self.user_agent
            .as_deref()
            .is_some_and(|ua| ua.starts_with("regmirror/"))
    }

    /// One line for assertion messages: who asked for what, without the token.
    pub fn brief(&self) -> String {
        format!(
            "{} {} ua={:?} user={:?} scopes={:?} -> {}",
            self.method, self.path, self.user_agent, self.user, self.scopes, self.status
        )
    }
}

/// `brief()` of each request, one per line.
pub fn briefs(requests: &[TokenRequest]) -> String {
    requests
        .iter()
        .map(TokenRequest::brief)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Who may do what: anonymous pull on everything not private, plus explicit grants.
#[derive(Default)]
struct Policy {
    /// user -> password, checked on HTTP Basic (or OAuth password-grant) credentials.
    users: HashMap<String, String>,
    /// (user, repository pattern, actions); a pattern is `*`, an exact name, or a `prefix/`.
    grants: Vec<(String, String, Vec<String>)>,
    /// Repository patterns that anonymous requesters get nothing on.
    private: Vec<String>,
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    pattern == "*" || pattern == name || (pattern.ends_with('/') && name.starts_with(pattern))
}

impl Policy {
    fn allowed(&self, user: Option<&str>, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        if !self.private.iter().any(|p| pattern_matches(p, name)) {
            out.push("pull".to_string());
        }
        for (u, pattern, actions) in &self.grants {
            if Some(u.as_str()) == user && pattern_matches(pattern, name) {
                out.extend(actions.iter().cloned());
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The access granted for `scope` (`repository:NAME:a,b`): the requested actions we allow.
    fn grant(&self, user: Option<&str>, scope: &str) -> Option<Access> {
        let (kind, rest) = scope.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind != "repository" {
            return None;
        }
        let allowed = self.allowed(user, name);
        let actions: Vec<String> = actions
            .split(',')
            .filter(|a| allowed.iter().any(|x| x == a || x == "*"))
            .map(str::to_string)
            .collect();
        Some(Access {
            kind: kind.into(),
            name: name.into(),
            actions,
        })
    }
}

/// Builds a `TokenServer`: users, grants and private repositories, then `start()`.
#[derive(Default)]
pub struct TokenServerBuilder {
    policy: Policy,
}

impl TokenServerBuilder {
    /// Adds a user that authenticates with `password`.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.policy.users.insert(name.into(), password.into());
        self
    }

    /// Lets `user` do `actions` on repositories matching `pattern` (`*`, a name, or `prefix/`).
    pub fn grant(mut self, user: &str, pattern: &str, actions: &[&str]) -> Self {
        let actions = actions.iter().map(|a| a.to_string()).collect();
        self.policy
            .grants
            .push((user.into(), pattern.into(), actions));
        self
    }

    /// Marks repositories matching `pattern` private: only granted users may pull them.
    pub fn private(mut self, pattern: &str) -> Self {
        self.policy.private.push(pattern.into());
        self
    }

    pub fn start(self) -> TokenServer {
        TokenServer::start(self.policy)
    }
}

/// Signs tokens; the certificate goes in every token's `x5c` header.
struct Signer {
    key: EcdsaKeyPair,
    /// Standard base64 of the certificate's DER, as JWS `x5c` wants it.
    x5c: String,
    rng: SystemRandom,
}

struct State {
    signer: Signer,
    policy: Mutex<Policy>,
    requests: Mutex<Vec<TokenRequest>>,
}

/// A running token server; stops (and its thread ends) on drop.
pub struct TokenServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    /// Holds the root certificate file for as long as the registry may read it.
    _dir: tempfile::TempDir,
    cert_path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    pub fn builder() -> TokenServerBuilder {
        TokenServerBuilder::default()
    }

    fn start(policy: Policy) -> TokenServer {
        let rng = SystemRandom::new();
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["regmirror-test-token".into()]).unwrap();
        let cert = params.self_signed(&kp).unwrap();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &kp.serialize_der(), &rng)
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_path = dir.path().join("token-root.pem");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        let state = Arc::new(State {
            signer: Signer {
                key,
                x5c: STANDARD.encode(cert.der()),
                rng,
            },
            policy: Mutex::new(policy),
            requests: Mutex::new(Vec::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread_state = state.clone();
        let thread = std::thread::spawn(move || http::serve(listener, thread_state, stopped));
        TokenServer {
            addr,
            state,
            _dir: dir,
            cert_path,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The `realm` URL to configure the registry with.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The PEM file of the certificate that signs tokens (the registry's `rootcertbundle`).
    pub fn root_cert_path(&self) -> PathBuf {
        self.cert_path.clone()
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Withdraws every grant of `user` on `pattern`; tokens issued later no longer carry it
    /// (tokens already issued stay valid until they expire, as with a real token server).
    pub fn revoke(&self, user: &str, pattern: &str) {
        let mut policy = self.state.policy.lock().unwrap();
        policy
            .grants
            .retain(|(u, p, _)| !(u == user && p == pattern));
    }

    /// A token for `user` (`None`: anonymous) and `scopes`, after the policy, as `/token` would
    /// issue it.
    pub fn issue(&self, user: Option<&str>, scopes: &[&str]) -> String {
        let policy = self.state.policy.lock().unwrap();
        let access: Vec<Access> = scopes
            .iter()
            .filter_map(|s| policy.grant(user, s))
            .collect();
        self.state.signer.sign(user.unwrap_or(""), &access)
    }

    /// A token carrying exactly `access`, bypassing the policy.
    pub fn mint(&self, subject: &str, access: &[Access]) -> String {
        self.state.signer.sign(subject, access)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Signer {
    fn sign(&self, subject: &str, access: &[Access]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut jti = [0u8; 16];
        self.rng.fill(&mut jti).unwrap();
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + TTL_SECS,
            // A little slack: the registry rejects tokens "not yet valid" on clock skew.
            "nbf": now - 10,
            "iat": now,
            "jti": hex::encode(jti),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self.key.sign(&self.rng, input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}
