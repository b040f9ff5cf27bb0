"""Load generators: gated pull clients (pullclient.py), curl loops, wrk, an RSS sampler."""

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from harness import proc_status_kib, reap, spawn, stop

PULLCLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pullclient.py")


@dataclass
class ClientRun:
    wall: float  # seconds from "go" to the last client's end
    bytes: int
    errors: list = field(default_factory=list)


def run_clients(argvs, timeout=900):
    """Starts one pullclient per argv, releases them together, returns the combined result."""
    procs = [spawn([sys.executable, PULLCLIENT] + a, stdin=subprocess.PIPE,
                   stdout=subprocess.PIPE) for a in argvs]
    try:
        for p in procs:
            if p.stdout.readline().strip() != b"ready":
                raise RuntimeError("pull client failed to start")
        go = time.monotonic()
        for p in procs:
            p.stdin.write(b"go\n")
            p.stdin.flush()
        results = [_result(p, timeout) for p in procs]
    finally:
        for p in procs:
            stop(p, grace=1)
    errors = [f"client {i}: {e}" for i, r in enumerate(results) for e in r["errors"]]
    return ClientRun(max(r["end"] for r in results) - go, sum(r["bytes"] for r in results), errors)


def _result(proc, timeout):
    out, _ = proc.communicate(timeout=timeout)
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"end": time.monotonic(), "bytes": 0,
                "errors": [f"client exited {proc.returncode}"]}
    return json.loads(lines[-1])


def pull_argv(port, image, parallel):
    return ["pull", str(port), image.repo, image.tag, image.manifest_digest, str(parallel)]


def blobs_argv(port, image, blobs):
    return ["blobs", str(port), image.repo] + [f"{b.digest}:{b.size}" for b in blobs]


def rotated_orders(blobs, clients, loops):
    """Row 1's work: client i fetches every blob `loops` times, starting at blob i so the
    clients spread over the files."""
    return [[blobs[(i + k) % len(blobs)] for k in range(len(blobs))] * loops
            for i in range(clients)]


def curl_clients(port, repo, orders):
    """One curl process per list in `orders`, fetching its blobs in turn over one keep-alive
    connection into /dev/null. Returns (wall seconds, bytes, errors)."""
    procs = []
    start = time.monotonic()
    for order in orders:
        argv = ["curl", "-s", "-S", "-w", "%{http_code} %{size_download}\\n"]
        for b in order:
            argv += ["-o", "/dev/null", f"http://127.0.0.1:{port}/v2/{repo}/blobs/{b.digest}"]
        procs.append((spawn(argv, stdout=subprocess.PIPE), order))
    total, errors = 0, []
    for p, order in procs:
        out, _ = p.communicate()
        reap(p)
        total += _check_curl(p.returncode, out.decode().splitlines(), order, errors)
    return time.monotonic() - start, total, errors


def _check_curl(returncode, lines, order, errors):
    """Bytes curl reported; every transfer must be a 200 of the blob's full size."""
    total = 0
    if returncode != 0 or len(lines) != len(order):
        errors.append(f"curl exited {returncode} after {len(lines)} of {len(order)} transfers")
    for b, line in zip(order, lines):
        code, size = (line.split() + ["?", "0"])[:2]
        total += int(size)
        if code != "200" or int(size) != b.size:
            errors.append(f"curl {b.digest[:19]}: status {code}, {size} bytes (want {b.size})")
    return total


@dataclass
class WrkResult:
    rps: float
    p99_ms: float
    errors: list


def wrk(port, path, accept, seconds):
    """wrk -t2 -c32 --latency with an Accept header: requests/s, p99, and any failures."""
    argv = ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", "-H", f"Accept: {accept}",
            f"http://127.0.0.1:{port}{path}"]
    p = spawn(argv, stdout=subprocess.PIPE)
    out, _ = p.communicate()
    reap(p)
    text = out.decode()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    errors = [m.group(0).strip() for m in
              re.finditer(r"^\s*(Non-2xx or 3xx responses: \d+|Socket errors: .*)$", text, re.M)]
    if not rps or not p99:
        return WrkResult(0.0, float("nan"), [f"unparsable wrk output: {text!r}"])
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[p99.group(2)]
    return WrkResult(float(rps.group(1)), float(p99.group(1)) * scale, errors)


class RssSampler:
    """Samples VmRSS of a pid every 10 ms in a thread; `peak_kib` is the highest seen."""

    def __init__(self, pid):
        self.pid = pid
        self.peak_kib = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()

    def _run(self):
        while not self._done.is_set():
            rss = proc_status_kib(self.pid, "VmRSS") or 0
            self.peak_kib = max(self.peak_kib, rss)
            time.sleep(0.01)
