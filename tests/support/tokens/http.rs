//! The token server's HTTP side: accept loop, `/token` handler, request parsing. It checks
//! credentials against the user table, then leaves access to the policy and signing to the
//! signer in `super`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};

use super::{Access, State, TokenRequest, TTL_SECS};

/// The accept loop, on its own current-thread runtime until `stopped` fires.
pub(super) fn serve(
    listener: std::net::TcpListener,
    state: Arc<State>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        tokio::pin!(stopped);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                },
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(state.clone(), peer, req));
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
}

type Reply = Response<Full<Bytes>>;

async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<hyper::body::Incoming>,
) -> Result<Reply, Infallible> {
    let method = req.method().to_string();
    let user_agent = req
        .headers()
        .get(hyper::header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let basic = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_basic);
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    // GET carries everything in the query; an OAuth POST carries a form body instead.
    let mut params = parse_query(&query);
    if method == "POST" {
        params.extend(parse_query(&String::from_utf8_lossy(
            &body.unwrap_or_default(),
        )));
    }
    let creds = basic.or_else(|| Some((param(&params, "username")?, param(&params, "password")?)));
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let (status, user, issued, reply) = answer(&state, &path, creds, &scopes);
    state.requests.lock().unwrap().push(TokenRequest {
        method,
        path,
        query,
        user,
        scopes,
        status,
        user_agent,
        peer,
        issued,
    });
    Ok(reply)
}

/// Authenticates and issues; returns (status, authenticated user, issued token, response).
fn answer(
    state: &State,
    path: &str,
    creds: Option<(String, String)>,
    scopes: &[String],
) -> (u16, Option<String>, Option<String>, Reply) {
    if path != "/token" {
        let body = serde_json::json!({"details": "not found"});
        return (404, None, None, json_reply(404, body));
    }
    let policy = state.policy.lock().unwrap();
    let user = match creds {
        None => None,
        Some((u, p)) if policy.users.get(&u) == Some(&p) => Some(u),
        Some(_) => {
            let body = serde_json::json!({"details": "incorrect username or password"});
            return (401, None, None, json_reply(401, body));
        }
    };
    let access: Vec<Access> = scopes
        .iter()
        .filter_map(|s| policy.grant(user.as_deref(), s))
        .collect();
    drop(policy);
    let token = state.signer.sign(user.as_deref().unwrap_or(""), &access);
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": TTL_SECS,
        "issued_at": rfc3339_now(),
    });
    (200, user, Some(token), json_reply(200, body))
}

fn json_reply(status: u16, body: serde_json::Value) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn param(params: &[(String, String)], key: &str) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

fn parse_basic(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.into(), p.into()))
}

/// `a=b&c=d` with percent-decoding and `+` as space (form encoding).
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The current UTC time as RFC 3339, for `issued_at` (no date crate in the dev-deps).
fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), valid for any date after 1970.
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
