//! Runs the real distribution registry (Debian's `docker-registry`, 2.8) on a free loopback port,
//! with filesystem storage in a temp dir and token auth (against a `TokenServer`), Basic auth
//! (an htpasswd file of bcrypt users, re-read by the registry whenever it changes) or none.
//!
//! It also reads the registry's access log (Apache combined lines, written to the same file as its
//! structured log), so tests can count which blobs the mirror fetched upstream. It must not
//! interpret what a request meant beyond method, path and status.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::net::{free_port, require_program, wait_for_port};
use super::tokens::{TokenServer, ISSUER, SERVICE};

/// How the registry authenticates clients.
pub enum RegistryAuth<'a> {
    /// Anyone may pull and push.
    None,
    /// `auth: token` with the given server as realm and its certificate as root bundle.
    Token(&'a TokenServer),
    /// `auth: htpasswd` with realm [`BASIC_REALM`] over `file` (see [`write_htpasswd`]): every
    /// user in the file may pull and push everything; nobody else may do anything.
    Htpasswd(&'a std::path::Path),
}

/// The realm of the registry's Basic challenge with [`RegistryAuth::Htpasswd`].
pub const BASIC_REALM: &str = "regmirror-basic-realm";

/// Writes an htpasswd file of bcrypt entries for `users` (user, password), replacing any
/// previous content; the registry notices the new modification time on its next request.
pub fn write_htpasswd(file: &std::path::Path, users: &[(&str, &str)]) {
    let lines: String = users
        .iter()
        .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).unwrap()))
        .collect();
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, lines).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// One access-log line: `"METHOD PATH HTTP/1.1" STATUS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLine {
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// A running registry; killed on drop (its log is printed if the test is failing).
pub struct Registry {
    pub addr: SocketAddr,
    /// Storage, config and log; removed on drop.
    pub dir: tempfile::TempDir,
    pub log_path: PathBuf,
    child: Child,
}

impl Registry {
    pub fn start(auth: RegistryAuth) -> Registry {
        let program = require_program("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = config_yaml(&dir.path().join("storage"), addr, &auth);
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(program)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let registry = Registry {
            addr,
            dir,
            log_path,
            child,
        };
        registry.wait_ready();
        registry
    }

    /// Waits until `/v2/` answers 200 (no auth) or 401 (token auth).
    fn wait_ready(&self) {
        wait_for_port(self.addr, Duration::from_secs(20));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if matches!(v2_status(self.addr).as_deref(), Some("200" | "401")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("registry not ready:\n{}", self.log());
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, the host part of image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A position in the log; lines after it are what `*_since(mark)` look at.
    pub fn mark(&self) -> usize {
        // The access line is written just after the response; let it land before marking.
        std::thread::sleep(Duration::from_millis(200));
        self.log().len()
    }

    /// Access-log lines written after `mark`.
    pub fn access_since(&self, mark: usize) -> Vec<AccessLine> {
        std::thread::sleep(Duration::from_millis(200));
        let log = self.log();
        log.get(mark..)
            .unwrap_or("")
            .lines()
            .filter_map(parse_access_line)
            .collect()
    }

    /// Every access-log line so far.
    pub fn access(&self) -> Vec<AccessLine> {
        self.access_since(0)
    }

    /// `GET /v2/<name>/blobs/sha256:...` lines after `mark`, whatever their status: a mirror
    /// that serves from its cache sends none.
    pub fn blob_gets_since(&self, mark: usize) -> Vec<AccessLine> {
        self.access_since(mark)
            .into_iter()
            .filter(|l| l.method == "GET" && l.path.contains("/blobs/sha256:"))
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(150)..].join("\n");
            eprintln!("---- docker-registry log tail ({}) ----\n{tail}", self.addr);
        }
    }
}

/// The status code of `GET /v2/`, over a bare HTTP/1.0 exchange.
fn v2_status(addr: SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    tcp.write_all(b"GET /v2/ HTTP/1.0\r\nHost: registry\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).ok()?;
    Some(String::from_utf8_lossy(&head[9..12]).into_owned())
}

fn config_yaml(storage: &std::path::Path, addr: SocketAddr, auth: &RegistryAuth) -> String {
    let auth = match auth {
        RegistryAuth::None => String::new(),
        RegistryAuth::Token(tokens) => format!(
            "auth:\n  token:\n    realm: \"{}\"\n    service: \"{SERVICE}\"\n    issuer: \"{ISSUER}\"\n    rootcertbundle: \"{}\"\n",
            tokens.realm(),
            tokens.root_cert_path().display()
        ),
        RegistryAuth::Htpasswd(file) => format!(
            "auth:\n  htpasswd:\n    realm: \"{BASIC_REALM}\"\n    path: \"{}\"\n",
            file.display()
        ),
    };
    // A fixed secret silences the multi-instance upload warning; delete lets tests remove tags.
    format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: \"{}\"\n  delete:\n    enabled: true\nhttp:\n  addr: \"{addr}\"\n  secret: regmirror-test-secret\n{auth}",
        storage.display()
    )
}

/// Parses `127.0.0.1 - - [date] "GET /v2/x HTTP/1.1" 200 2 "" "ua"`; `None` for other lines.
fn parse_access_line(line: &str) -> Option<AccessLine> {
    if line.starts_with("time=") {
        return None;
    }
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once("\" ")?;
    let mut parts = request.split(' ');
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let status = rest.split(' ').next()?.parse().ok()?;
    Some(AccessLine {
        method,
        path,
        status,
    })
}
