//! Runs the real `regmirror` binary with a generated config on a free loopback port (and, with
//! [`MirrorOptions::tls`], a TLS listener on a second one).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::net::free_port;

/// One upstream section of the mirror's config.
#[derive(Clone, Debug)]
pub struct UpstreamSpec {
    pub name: String,
    pub url: String,
    pub aliases: Vec<String>,
    pub default: bool,
    /// Extra TOML lines appended inside this upstream's table.
    pub extra: String,
}

impl UpstreamSpec {
    pub fn new(name: &str, url: &str, aliases: &[&str], default: bool) -> Self {
        UpstreamSpec {
            name: name.into(),
            url: url.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            default,
            extra: String::new(),
        }
    }
}

/// Everything beyond the upstreams that a test may add to the mirror's config.
#[derive(Clone, Debug, Default)]
pub struct MirrorOptions {
    /// TOML lines inside `[cache]`.
    pub cache: String,
    /// TOML lines inside `[server]` (`allow = [...]`, `header_read_timeout = "1s"`...).
    pub server: String,
    /// Whole tables appended after the upstreams (`[server.access]`...).
    pub tables: String,
    /// `(cert, key)` PEM files: adds `[server.tls]` on a free port, see [`Mirror::tls_addr`].
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Environment variables for the mirror process (e.g. for `password_env`).
    pub env: Vec<(String, String)>,
}

/// A running mirror process; SIGTERM then kill on drop.
pub struct Mirror {
    pub addr: SocketAddr,
    /// The TLS listener, when [`MirrorOptions::tls`] was given.
    pub tls_addr: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub cache_dir: PathBuf,
    pub log_path: PathBuf,
    child: Child,
}

impl Mirror {
    /// Starts a mirror in front of `upstreams`; `extra` is appended at the config's top level
    /// (e.g. "[cache]\ntag_ttl = \"1s\"" is NOT allowed there since [cache] is written already:
    /// use `cache_extra` for keys inside [cache]).
    pub fn start(upstreams: &[UpstreamSpec]) -> Mirror {
        Self::start_with(upstreams, "")
    }

    /// Like `start`, with extra TOML lines inside the `[cache]` table.
    pub fn start_with(upstreams: &[UpstreamSpec], cache_extra: &str) -> Mirror {
        let options = MirrorOptions {
            cache: cache_extra.into(),
            ..MirrorOptions::default()
        };
        Self::launch(upstreams, &options)
    }

    /// Like `start`, with everything in `options` added to the config.
    pub fn launch(upstreams: &[UpstreamSpec], options: &MirrorOptions) -> Mirror {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("cache");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cfg = format!(
            "[server]\nlisten = \"{addr}\"\nshutdown_timeout = \"5s\"\n{}\n\n[cache]\ndir = \"{}\"\n{}\n\n",
            options.server,
            cache_dir.display(),
            options.cache
        );
        for u in upstreams {
            let aliases: Vec<String> = u.aliases.iter().map(|a| format!("\"{a}\"")).collect();
            cfg.push_str(&format!(
                "[upstreams.{}]\nurl = \"{}\"\naliases = [{}]\ndefault = {}\n{}\n\n",
                u.name,
                u.url,
                aliases.join(", "),
                u.default,
                u.extra
            ));
        }
        let tls_addr = options.tls.as_ref().map(|(cert, key)| {
            let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            cfg.push_str(&format!(
                "[server.tls]\nlisten = \"{tls_addr}\"\ncert = \"{}\"\nkey = \"{}\"\n\n",
                cert.display(),
                key.display()
            ));
            tls_addr
        });
        cfg.push_str(&options.tables);
        let cfg_path = dir.path().join("mirror.toml");
        std::fs::File::create(&cfg_path)
            .unwrap()
            .write_all(cfg.as_bytes())
            .unwrap();
        let log_path = dir.path().join("mirror.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_regmirror"))
            .arg("serve")
            .arg("-c")
            .arg(&cfg_path)
            .env("RUST_LOG", "regmirror=debug,info")
            .env_remove("REGMIRROR_SERVER__LISTEN")
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn regmirror");
        let mut mirror = Mirror {
            addr,
            tls_addr,
            dir,
            cache_dir,
            log_path,
            child,
        };
        mirror.wait_listening();
        mirror
    }

    /// Waits for the listeners; fails fast (the log is printed on drop) if the process exits.
    fn wait_listening(&mut self) {
        let start = std::time::Instant::now();
        for addr in std::iter::once(self.addr).chain(self.tls_addr) {
            while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("regmirror exited with {status} before listening on {addr}");
                }
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "regmirror not listening on {addr} after 20 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://127.0.0.1:TLSPORT`; panics without a TLS listener.
    pub fn tls_url(&self) -> String {
        format!(
            "https://{}",
            self.tls_addr.expect("mirror started without TLS")
        )
    }

    /// The process id (to send it signals, e.g. SIGHUP to reload the TLS certificate).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (a `kill` name such as `HUP`) to the mirror process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Waits until the log holds `needle` at least `count` times; panics after `timeout`.
    pub fn wait_for_log(&self, needle: &str, count: usize, timeout: Duration) {
        let start = std::time::Instant::now();
        while self.log().matches(needle).count() < count {
            assert!(
                start.elapsed() < timeout,
                "`{needle}` not logged {count} time(s) within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The mirror's log so far (for assertions and for debugging failed tests).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Every regular file under the cache directory (to assert nothing was written).
    pub fn cached_files(&self) -> Vec<PathBuf> {
        fn walk(p: &std::path::Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    let path = e.path();
                    if path.is_dir() {
                        walk(&path, out);
                    } else {
                        out.push(path);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.cache_dir, &mut out);
        out
    }

    /// The `/stats` JSON.
    pub async fn stats(&self) -> serde_json::Value {
        reqwest::get(format!("{}/stats", self.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits (up to 10 s) until `/stats` counts at least `n` cached blobs: publishing a
    /// verified blob may lag a moment behind the last byte its clients received.
    pub async fn wait_cached_blobs(&self, n: u64) {
        let start = std::time::Instant::now();
        loop {
            let stats = self.stats().await;
            let cached = stats["cached_blobs"]
                .as_u64()
                .expect("cached_blobs in /stats");
            if cached >= n {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "stats: {stats}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops this mirror (it must exit cleanly) and starts a new one on the same cache
    /// directory; keep `self` alive meanwhile, it owns the directory.
    pub fn restart_on_same_cache(&mut self, upstreams: &[UpstreamSpec]) -> Mirror {
        assert!(self.terminate(Duration::from_secs(10)), "clean exit");
        let options = MirrorOptions {
            env: vec![(
                "REGMIRROR_CACHE__DIR".into(),
                self.cache_dir.display().to_string(),
            )],
            ..MirrorOptions::default()
        };
        Mirror::launch(upstreams, &options)
    }

    /// Sends SIGTERM and waits up to `timeout` for exit; returns whether it exited cleanly.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- regmirror log ----\n{}", self.log());
        }
    }
}
