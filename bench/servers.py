"""The servers of the benchmark: origin registry, rate-limited WAN nginx, and the contenders.

Each server lives in its own directory under the run's temp dir, listens on a loopback port
picked at run time, and can be started, stopped and restarted with or without its cache.
"""

import json
import os
import shutil
import time

from harness import BenchError, free_port, http_get, session_cpu_seconds, spawn, stop, wait_http


class Server:
    """A process with a config file, a log, a port and (maybe) a cache directory."""

    name = "server"
    ready_path = "/v2/"

    def __init__(self, work):
        self.dir = os.path.join(work, self.name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.log_path = os.path.join(self.dir, "log")
        self.proc = None

    # Subclasses fill these in.
    def write_config(self):
        raise NotImplementedError

    def argv(self):
        raise NotImplementedError

    def env(self):
        return None

    def cache_dir(self):
        return None

    def start(self):
        self.write_config()
        self.proc = spawn(self.argv(), self.log_path, env=self.env())
        wait_http(self.port, self.ready_path, self.proc, self.log_path)

    def stop(self):
        if self.proc:
            stop(self.proc)
            self.proc = None

    def fresh(self):
        """Restart with an empty cache: the cold state of rows 2 and 3."""
        self.stop()
        if self.cache_dir():
            shutil.rmtree(self.cache_dir(), ignore_errors=True)
        self.start()

    def restart(self):
        """Restart keeping the cache (a fresh process for the RSS row)."""
        self.stop()
        self.start()

    def quiesce(self, image):
        """Waits until no upstream transfer the server started in the background is running."""

    @property
    def pid(self):
        return self.proc.pid

    def cpu_seconds(self):
        """CPU used so far by the server's whole session (nginx master and workers)."""
        return session_cpu_seconds(self.proc.pid)


# --- distribution registry (origin and registry:2 proxy) --------------------------------------

def registry_yaml(storage, port, remote=None):
    """The config of the registry:2 image (inmemory descriptor cache, storage health check),
    with access logs off like the other contenders, plus `proxy:` for the mirror."""
    proxy = f"proxy:\n  remoteurl: {remote}\n" if remote else ""
    return (
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
        "  cache:\n    blobdescriptor: inmemory\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: regmirror-bench\n"
        "health:\n  storagedriver:\n    enabled: true\n    interval: 10s\n    threshold: 3\n"
        f"{proxy}"
    )


class Origin(Server):
    name = "origin"

    def storage(self):
        return os.path.join(self.dir, "storage")

    def write_config(self):
        with open(os.path.join(self.dir, "config.yml"), "w") as f:
            f.write(registry_yaml(self.storage(), self.port))

    def argv(self):
        return ["docker-registry", "serve", os.path.join(self.dir, "config.yml")]


class Registry2(Origin):
    """registry:2 in proxy mode in front of the WAN."""

    name = "registry2"
    label = "registry:2 proxy"

    def __init__(self, work, wan):
        super().__init__(work)
        self.remote = f"http://127.0.0.1:{wan.ports[self.name]}"

    def write_config(self):
        with open(os.path.join(self.dir, "config.yml"), "w") as f:
            f.write(registry_yaml(self.storage(), self.port, self.remote))

    def cache_dir(self):
        return self.storage()

    def quiesce(self, image):
        """registry:2 stores a proxied blob with a second, background upstream GET; wait until
        every layer's data file has landed in storage."""
        root = os.path.join(self.storage(), "docker/registry/v2/blobs/sha256")
        files = [os.path.join(root, b.hex[:2], b.hex, "data") for b in image.layers]
        _wait_until(lambda: all(os.path.exists(f) for f in files), 300, "registry:2 storing")


# --- regmirror -------------------------------------------------------------------------------

class Regmirror(Server):
    name = "regmirror"
    label = "regmirror"

    def __init__(self, work, wan, binary):
        super().__init__(work)
        self.binary = binary
        self.upstream = f"http://127.0.0.1:{wan.ports[self.name]}"

    def cache_dir(self):
        return os.path.join(self.dir, "rm-cache")

    def write_config(self):
        with open(os.path.join(self.dir, "regmirror.toml"), "w") as f:
            f.write(
                f'[server]\nlisten = "127.0.0.1:{self.port}"\n\n'
                f'[cache]\ndir = "{self.cache_dir()}"\nmemory = "64 MiB"\n\n'
                f'[upstreams.origin]\nurl = "{self.upstream}"\n'
                'aliases = ["origin.test"]\ndefault = true\n\n'
                '[log]\nlevel = "warn"\n'
            )

    def argv(self):
        return [self.binary, "serve", "-c", os.path.join(self.dir, "regmirror.toml")]

    def env(self):
        # Logging at warn keeps per-request log lines out of the measurement.
        return dict(os.environ, RUST_LOG="warn")

    def stats(self):
        status, _, body = http_get(self.port, "/stats")
        if status != 200:
            raise BenchError(f"regmirror /stats answered {status}")
        return json.loads(body)

    def quiesce(self, image):
        _wait_until(lambda: self.stats()["inflight_downloads"] == 0, 300, "regmirror downloads")


# --- nginx -----------------------------------------------------------------------------------

def nginx_conf(prefix, http_body):
    """nginx.conf with everything (pid, logs, temp files) inside `prefix`; runs as root."""
    return f"""user root;
worker_processes 2;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    send_timeout 600s;
    client_max_body_size 0;
    client_body_temp_path {prefix}/client_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
{http_body}
}}
"""


# Shared by every nginx that proxies: keep-alive upstream connections, the client's Host.
PROXY_COMMON = """
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_read_timeout 600s;
        proxy_send_timeout 600s;
        proxy_buffering on;"""


class Nginx(Server):
    def write_config(self):
        with open(os.path.join(self.dir, "nginx.conf"), "w") as f:
            f.write(nginx_conf(self.dir, self.http_body()))

    def argv(self):
        return ["nginx", "-p", self.dir + "/", "-c", os.path.join(self.dir, "nginx.conf"),
                "-e", os.path.join(self.dir, "error.log")]

    def http_body(self):
        raise NotImplementedError


class Wan(Nginx):
    """The WAN link: one rate-limited server block per client of the upstream, so the access
    log ($server_port) attributes upstream bytes to the contender that pulled them."""

    name = "wan"
    clients = ("regmirror", "registry2", "nginx-cache", "direct")

    def __init__(self, work, origin_port, rate):
        super().__init__(work)
        self.origin_port = origin_port
        self.rate = rate
        self.ports = {c: free_port() for c in self.clients}
        self.port = self.ports["direct"]
        self.access_log = os.path.join(self.dir, "access.log")

    def http_body(self):
        # proxy_buffering on: with it off, limit_rate does not hold for proxied responses.
        # Big blobs spill into temp files (proxy_max_temp_file_size) rather than stall.
        servers = "".join(f"""
    server {{
        listen 127.0.0.1:{p};
        access_log {self.access_log} wan;
        limit_rate {self.rate};
        location / {{
            proxy_pass http://origin;{PROXY_COMMON}
            proxy_buffer_size 64k;
            proxy_buffers 32 256k;
            proxy_busy_buffers_size 1m;
            proxy_max_temp_file_size 8192m;
            proxy_temp_file_write_size 1m;
        }}
    }}""" for p in self.ports.values())
        return f"""
    log_format wan '$server_port $status $body_bytes_sent $request_method $request_uri';
    upstream origin {{ server 127.0.0.1:{self.origin_port}; keepalive 64; }}
{servers}"""

    def mark(self):
        """A position in the access log; bytes_since() counts what was logged after it."""
        try:
            return os.path.getsize(self.access_log)
        except OSError:
            return 0

    def bytes_since(self, mark, client):
        port = str(self.ports[client])
        total = 0
        with open(self.access_log, "rb") as f:
            f.seek(mark)
            for line in f.read().decode(errors="replace").splitlines():
                fields = line.split()
                if len(fields) >= 3 and fields[0] == port:
                    total += int(fields[2])
        return total

    def settled_bytes_since(self, mark, client):
        """bytes_since() once it has stopped changing for a second (log lines are written when
        a response ends, a moment after the contender has its last byte)."""
        last = -1
        while True:
            now = self.bytes_since(mark, client)
            if now == last:
                return now
            last = now
            time.sleep(1.0)


class NginxCache(Nginx):
    """nginx proxy_cache as nginx-based registry mirrors use it: key = URI, cache 200s for a
    year, one upstream fetch per key (cache lock; lock age/timeout long so waiters never
    give up and fetch on their own)."""

    name = "nginx-cache"
    label = "nginx proxy_cache"

    def __init__(self, work, wan):
        super().__init__(work)
        self.wan_port = wan.ports[self.name]

    def cache_dir(self):
        return os.path.join(self.dir, "cache")

    def http_body(self):
        return f"""
    proxy_cache_path {self.cache_dir()} levels=1:2 keys_zone=blobs:16m max_size=64g
                     inactive=1y use_temp_path=off;
    upstream wan {{ server 127.0.0.1:{self.wan_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://wan;{PROXY_COMMON}
            proxy_cache blobs;
            proxy_cache_key $uri;
            proxy_cache_valid 200 1y;
            proxy_ignore_headers Cache-Control Expires Set-Cookie;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 1h;
            proxy_cache_lock_age 1h;
        }}
    }}"""


class NginxStatic(Nginx):
    """nginx sending the blob files straight from disk with sendfile: the throughput ceiling."""

    name = "nginx-static"
    label = "nginx sendfile"

    def __init__(self, work, image, blobs):
        super().__init__(work)
        root = os.path.join(self.dir, "root")
        self.root = root
        blob_dir = os.path.join(root, "v2", image.repo, "blobs")
        os.makedirs(blob_dir)
        for b in blobs:
            os.link(b.path, os.path.join(blob_dir, b.digest))  # same bytes, no copy

    def http_body(self):
        return f"""
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
    }}"""


def _wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.2)
