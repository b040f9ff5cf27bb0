//! Runs a private `dockerd` (its own data root, exec root, socket and daemon.json) and drives it
//! with the `docker` CLI; drives the containerd that dockerd starts with `ctr`.
//!
//! Everything it starts dies with the `Dockerd` value. Client processes get `offline_env()`, so a
//! fallback to a registry's real host (dockerd falls back to Docker Hub when a mirror fails) goes
//! to a dead loopback proxy instead of leaving the machine. It must not talk to registries itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::net::require_program;

/// Proxy variables pointing at a closed loopback port: Go clients never proxy loopback, so
/// traffic to our servers is unaffected while anything else fails fast on 127.0.0.1.
pub fn offline_env() -> Vec<(&'static str, &'static str)> {
    let dead = "http://127.0.0.1:9";
    vec![
        ("HTTP_PROXY", dead),
        ("HTTPS_PROXY", dead),
        ("http_proxy", dead),
        ("https_proxy", dead),
        ("NO_PROXY", "127.0.0.1,localhost"),
        ("no_proxy", "127.0.0.1,localhost"),
    ]
}

/// A running dockerd and its managed containerd; both stopped on drop.
pub struct Dockerd {
    /// Short path under /tmp: unix socket paths below it must stay under 108 bytes.
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub exec_root: PathBuf,
    pub log_path: PathBuf,
    child: Child,
}

impl Dockerd {
    /// A dockerd whose only registry mirror is `mirror_url`.
    pub fn start(mirror_url: &str) -> Dockerd {
        Self::start_with(serde_json::json!({ "registry-mirrors": [mirror_url] }))
    }

    /// A dockerd with `extra` merged over a daemon.json that runs here (vfs storage, no
    /// bridge, no iptables).
    pub fn start_with(extra: serde_json::Value) -> Dockerd {
        let program = require_program("dockerd");
        let dir = tempfile::Builder::new()
            .prefix("dk")
            .tempdir_in("/tmp")
            .unwrap();
        let mut config = serde_json::json!({
            "storage-driver": "vfs",
            "iptables": false,
            "ip6tables": false,
            "ip-forward": false,
            "ip-masq": false,
            "bridge": "none",
        });
        for (k, v) in extra.as_object().unwrap() {
            config[k] = v.clone();
        }
        let p = dir.path();
        std::fs::write(p.join("daemon.json"), config.to_string()).unwrap();
        let log_path = p.join("dockerd.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(program)
            .arg("--data-root")
            .arg(p.join("data"))
            .arg("--exec-root")
            .arg(p.join("x"))
            .arg("--pidfile")
            .arg(p.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", p.join("d.sock").display()))
            .arg("--config-file")
            .arg(p.join("daemon.json"))
            .envs(offline_env())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        let mut d = Dockerd {
            sock: p.join("d.sock"),
            exec_root: p.join("x"),
            log_path,
            dir,
            child,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("dockerd exited with {status}:\n{}", self.log());
            }
            if self.sock.exists() && self.docker(&["version"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("dockerd not ready:\n{}", self.log());
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Runs `docker -H <our socket> args...`; the CLI gets an empty config dir so no host
    /// credential helper or context interferes.
    pub fn docker(&self, args: &[&str]) -> Output {
        let cli = Path::new("/usr/bin/docker");
        let cli = if cli.is_file() {
            cli.to_path_buf()
        } else {
            require_program("docker")
        };
        Command::new(cli)
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.path().join("cli"))
            .envs(offline_env())
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    /// Like `docker`, panicking with stderr and the daemon's log tail on failure; returns stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}\n---- dockerd log tail ----\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 40)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The socket of the containerd dockerd uses: the one it started under our exec root, or
    /// (dockerd's own rule) the system's when one was already running.
    pub fn containerd_sock(&self) -> PathBuf {
        let managed = self.exec_root.join("containerd/containerd.sock");
        if managed.exists() {
            managed
        } else {
            PathBuf::from("/run/containerd/containerd.sock")
        }
    }

    /// Runs `ctr -a <containerd socket> -n <namespace> args...`.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Output {
        Command::new(require_program("ctr"))
            .arg("-a")
            .arg(self.containerd_sock())
            .arg("-n")
            .arg(namespace)
            .args(args)
            .envs(offline_env())
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// `ctr images pull` of `reference` resolved through `hosts_dir` (see `write_hosts_dir`),
    /// with the options that work here: the `native` snapshotter (no overlay mounts needed)
    /// and linux/amd64 only.
    pub fn ctr_pull(&self, namespace: &str, hosts_dir: &Path, reference: &str) -> Output {
        let hosts_dir = hosts_dir.to_str().unwrap();
        let args = [
            "images",
            "pull",
            "--hosts-dir",
            hosts_dir,
            "--snapshotter",
            "native",
        ];
        let args: Vec<&str> = args
            .into_iter()
            .chain(["--platform", "linux/amd64", reference])
            .collect();
        self.ctr(namespace, &args)
    }

    /// Sends SIGTERM (dockerd then stops its containerd), waiting up to `timeout`.
    fn stop(&mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if !self.stop(Duration::from_secs(15)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // If dockerd died without stopping its containerd, stop that one by its pid file.
        let pidfile = self.exec_root.join("containerd/containerd.pid");
        if let Ok(pid) = std::fs::read_to_string(pidfile) {
            let _ = Command::new("kill").arg("-KILL").arg(pid.trim()).status();
        }
        if std::thread::panicking() {
            eprintln!("---- dockerd log tail ----\n{}", tail(&self.log(), 60));
        }
    }
}

/// Writes `<dir>/<host>/hosts.toml` sending pulls of `host` images to `mirror_url` (containerd
/// then adds `?ns=<host>`), with `server` as the fallback; returns `dir` for `--hosts-dir`.
pub fn write_hosts_dir(dir: &Path, host: &str, server: &str, mirror_url: &str) -> PathBuf {
    let host_dir = dir.join(host);
    std::fs::create_dir_all(&host_dir).unwrap();
    let toml = format!(
        "server = \"{server}\"\n\n[host.\"{mirror_url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    );
    std::fs::write(host_dir.join("hosts.toml"), toml).unwrap();
    dir.to_path_buf()
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
