#!/usr/bin/env python3
"""regmirror benchmark: regmirror vs registry:2 (proxy mode) vs nginx, one table, same run.

    python3 bench/run.py [--quick] [--record] [--no-build] [--keep-tmp] [--layer-mib N] ...

See bench/README.md for what each row measures. Everything runs on 127.0.0.1 in a temp dir;
every process started is killed on exit, Ctrl-C included.
"""

import argparse
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import harness
import load
import report
import seed
from servers import NginxCache, NginxStatic, Origin, Regmirror, Registry2, Wan

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(REPO_ROOT, "target", "release", "regmirror")
MB = 1e6
MIB = 1 << 20


@dataclasses.dataclass
class Sizes:
    """Every knob; each is also a flag (--layer-mib) and an env var (BENCH_LAYER_MIB)."""

    layer_mib: int = 128      # size of each layer = each row-1 blob
    layers: int = 4           # layers in the image
    clients: int = 8          # row 2: clients pulling the cold image at once
    parallel: int = 3         # layer downloads at once per client (dockerd's default)
    reps: int = 3             # rows 2-3: cold pulls per contender and client count (median)
    warm_clients: int = 4     # row 1: concurrent curl clients
    loops: int = 2            # row 1: passes over all blobs per client per round
    rounds: int = 5           # row 1: interleaved rounds over the contenders (median)
    wrk_seconds: int = 10     # row 4: wrk duration
    rss_downloads: int = 8    # row 5: concurrent warm blob downloads
    wan_rate: str = "40m"     # nginx limit_rate of the WAN, per response


QUICK = {"layer_mib": 32, "reps": 1, "loops": 1, "rounds": 1, "wrk_seconds": 3}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, one repetition (< 2 min)")
    p.add_argument("--record", action="store_true", help="write the table to bench/RESULTS.md")
    p.add_argument("--no-build", action="store_true", help="use target/release/regmirror as is")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, configs)")
    for f in dataclasses.fields(Sizes):
        p.add_argument("--" + f.name.replace("_", "-"), type=f.type,
                       help=f"env BENCH_{f.name.upper()}; full {f.default}, "
                            f"quick {QUICK.get(f.name, f.default)}")
    return p.parse_args(argv)


def sizes_from(args):
    """Preset (full or quick) < BENCH_* environment < flags."""
    values = dataclasses.asdict(Sizes())
    if args.quick:
        values.update(QUICK)
    for name, default in list(values.items()):
        kind = type(default)
        env = os.environ.get(f"BENCH_{name.upper()}")
        if env is not None:
            values[name] = kind(env)
        flag = getattr(args, name)
        if flag is not None:
            values[name] = kind(flag)
    return Sizes(**values)


def log(msg, _start=time.monotonic()):
    print(f"[{time.monotonic() - _start:6.1f}s] {msg}", file=sys.stderr, flush=True)


def build():
    log("cargo build --release")
    proc = subprocess.run(["cargo", "build", "--release"], cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise harness.BenchError("cargo build --release failed (is src/ mid-edit? retry later)")


class Bench:
    """Sets the servers up once, then measures each row; `self.out` collects table rows."""

    def __init__(self, work, sizes, binary):
        self.work = work
        self.binary = binary
        self.s = sizes
        self.out = report.Table()

    # --- set-up ------------------------------------------------------------------------------

    def setup(self):
        s = self.s
        self.origin = Origin(self.work)
        self.origin.start()
        log(f"origin registry on :{self.origin.port}; writing {s.layers} x {s.layer_mib} MiB")
        layout = os.path.join(self.work, "oci")
        self.image = seed.make_layout(layout, "bench/img", "v1", s.layer_mib * MIB, s.layers)
        seed.push(self.image, layout, self.origin.port, self.work)
        log(f"seeded bench/img:v1 ({self.image.pull_bytes / MIB:.1f} MiB per pull)")
        self.wan = Wan(self.work, self.origin.port, s.wan_rate)
        self.wan.start()
        self.blobs = self.image.layers  # row 1 and 5 blobs: the image's layers
        self.rm = Regmirror(self.work, self.wan, self.binary)
        self.reg2 = Registry2(self.work, self.wan)
        self.ngx = NginxCache(self.work, self.wan)
        self.static = NginxStatic(self.work, self.image, self.blobs)
        self.static.start()
        self.proxies = [self.rm, self.reg2, self.ngx]

    # --- rows 2 and 3: cold pulls ---------------------------------------------------------------

    def cold_pull(self, server, n):
        """n clients pull the image at once from a fresh empty cache (server None: straight
        from the WAN)."""
        key = server.name if server else "direct"
        if server:
            server.fresh()
        port = server.port if server else self.wan.ports["direct"]
        mark = self.wan.mark()
        cpu0 = server.cpu_seconds() if server else 0
        run = load.run_clients([load.pull_argv(port, self.image, self.s.parallel)] * n)
        cpu = (server.cpu_seconds() - cpu0) / run.wall if server else 0
        if server:
            server.quiesce(self.image)
        self.errors(server.label if server else "direct WAN", [run])
        return Pull(run.wall, self.wan.settled_bytes_since(mark, key), cpu)

    def cold_rows(self):
        """Per repetition: a direct pull (the row-3 baseline, paired so machine drift cancels),
        then a 1-client and an n-client pull, each from a wiped cache."""
        reps, n = self.s.reps, self.s.clients
        for c in self.proxies:
            direct, singles, multis, coalesced = [], [], [], []
            for i in range(reps):
                log(f"rows 2-3: {c.label}: cold pull direct from the WAN, by 1 client via it,"
                    f" by {n} clients via it ({i + 1}/{reps})")
                direct.append(self.cold_pull(None, 1))
                singles.append(self.cold_pull(c, 1))
                multis.append(self.cold_pull(c, n))
                if c is self.rm:
                    coalesced.append(self.rm.stats()["coalesced"])
            self.add_cold(c, direct, singles, multis, coalesced)

    def add_cold(self, c, direct, singles, multis, coalesced):
        n, size = self.s.clients, self.image.pull_bytes
        t1 = statistics.median(p.wall for p in singles)
        tn = statistics.median(p.wall for p in multis)
        up = max(p.upstream for p in multis)  # worst run: "exactly once" must hold every time
        up_runs = "/".join(f"{p.upstream / size:.3f}" for p in multis)
        vs_direct = statistics.median(s.wall / d.wall for s, d in zip(singles, direct))
        extra = f"; coalesced joins {coalesced}" if coalesced else ""
        self.out.add(2, c.label, f"{n}-client cold pull, wall", tn, "{:.2f} s", tn / t1,
                     f"median; vs 1 client {t1:.2f} s; runs {_secs(multis)};"
                     f" server cpu {_cpu(multis)}")
        self.out.add(2, c.label, f"{n}-client upstream bytes", up / MIB, "{:.1f} MiB", up / size,
                     f"worst run; x image {size / MIB:.1f} MiB; runs {up_runs};"
                     f" 1 client {max(p.upstream for p in singles) / size:.3f}x{extra}")
        self.out.add(3, c.label, "1-client cold pull", t1, "{:.2f} s", vs_direct,
                     f"ratio: median of paired runs; direct {_secs(direct)};"
                     f" via {_secs(singles)}; server cpu {_cpu(singles)}")

    # --- row 1: warm throughput -----------------------------------------------------------------

    def warm_throughput(self):
        contenders = [self.static] + self.proxies
        for c in contenders:
            log(f"row 1: warm-up fetch of the blobs through {c.label} (hash-checked)")
            self.errors(c.label, [load.run_clients([load.blobs_argv(c.port, self.image,
                                                                    self.blobs)])])
        orders = load.rotated_orders(self.blobs, self.s.warm_clients, self.s.loops)
        rates = {c: [] for c in contenders}
        cpu = {c: [] for c in contenders}
        for r in range(self.s.rounds):
            for c in contenders:  # interleaved, so machine noise hits everyone alike
                log(f"row 1: {c.label}, round {r + 1}/{self.s.rounds}")
                cpu0 = c.cpu_seconds()
                wall, nbytes, errs = load.curl_clients(c.port, self.image.repo, orders)
                cpu[c].append((c.cpu_seconds() - cpu0) / wall)
                rates[c].append(nbytes / wall / MB)
                self.error_list(c.label, errs)
        ceiling = statistics.median(rates[self.static])
        for c in contenders:
            mbs = statistics.median(rates[c])
            rounds = "/".join(f"{x:.0f}" for x in rates[c])
            self.out.add(1, c.label, "warm blob MB/s", mbs, "{:.0f}", mbs / ceiling,
                         f"server cpu {100 * statistics.median(cpu[c]):.0f}%; rounds {rounds}")

    # --- row 4: warm manifest GETs --------------------------------------------------------------

    def manifest_rows(self):
        path = f"/v2/{self.image.repo}/manifests/{self.image.tag}"
        results = {}
        for c in self.proxies:
            self.check_manifest(c, path)
            log(f"row 4: wrk {self.s.wrk_seconds}s on {c.label} manifest by tag")
            results[c] = load.wrk(c.port, path, seed.ACCEPT, self.s.wrk_seconds)
            self.error_list(c.label, results[c].errors)
        base = results[self.reg2].rps
        for c, r in results.items():
            self.out.add(4, c.label, "manifest GET req/s", r.rps, "{:.0f}",
                         r.rps / base if base else float("nan"), "ratio to registry:2 proxy")
            self.out.add(4, c.label, "manifest GET p99", r.p99_ms, "{:.2f} ms", None)

    def check_manifest(self, c, path):
        """The warm-up GET, which must return the origin's manifest byte for byte."""
        status, _, body = harness.http_get(c.port, path, {"Accept": seed.ACCEPT})
        if status != 200 or body != self.image.manifest:
            self.error_list(c.label, [f"manifest GET: status {status}, {len(body)} bytes,"
                                      " not the origin's manifest"])

    # --- row 5: memory --------------------------------------------------------------------------

    def rss_rows(self):
        n = self.s.rss_downloads
        orders = [[self.blobs[i % len(self.blobs)]] for i in range(n)]
        whole_run = harness.proc_status_kib(self.rm.pid, "VmHWM")
        for c in (self.rm, self.reg2):
            log(f"row 5: {c.label} restarted (cache kept), {n} concurrent warm blob downloads")
            c.restart()
            with load.RssSampler(c.pid) as sampler:
                _, _, errs = load.curl_clients(c.port, self.image.repo, orders)
            self.error_list(c.label, errs)
            hwm = harness.proc_status_kib(c.pid, "VmHWM")
            note = f"sampled VmRSS peak {sampler.peak_kib / 1024:.1f} MiB"
            if c is self.rm:
                note += f"; VmHWM over rows 1-4 (before restart) {whole_run / 1024:.1f} MiB"
            self.out.add(5, c.label, f"VmHWM, {n} warm downloads", hwm / 1024, "{:.1f} MiB",
                         None, note)

    # --- errors ---------------------------------------------------------------------------------

    def errors(self, who, runs):
        for r in runs:
            self.error_list(who, r.errors)

    def error_list(self, who, errs):
        for e in errs:
            self.out.error(who, e)

    def regmirror_counters(self):
        """verify_failures / errors in /stats would mean regmirror saw something go wrong."""
        st = self.rm.stats()
        if st.get("verify_failures") or st.get("errors"):
            self.out.error("regmirror", f"/stats reports verify_failures={st['verify_failures']}"
                                        f" errors={st['errors']}")

    def run(self):
        self.setup()
        self.cold_rows()
        self.warm_throughput()
        self.manifest_rows()
        self.regmirror_counters()
        self.rss_rows()
        self.regmirror_counters()


@dataclasses.dataclass
class Pull:
    wall: float      # seconds, "go" to the last client's last byte
    upstream: int    # bytes the WAN sent to this contender
    cpu: float       # contender CPU seconds per wall second


def _secs(pulls):
    return "/".join(f"{p.wall:.2f}" for p in pulls)


def _cpu(pulls):
    return f"{100 * statistics.median(p.cpu for p in pulls):.0f}%"


def main(argv):
    args = parse_args(argv)
    sizes = sizes_from(args)
    harness.install_signal_handlers()
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="regmirror-bench-")
    try:
        if not args.no_build:
            build()
        if not os.access(BINARY, os.X_OK):
            raise harness.BenchError(f"{BINARY} missing: run without --no-build")
        # Run a private copy: a concurrent `cargo build` must not swap the binary mid-run.
        binary = shutil.copy2(BINARY, os.path.join(work, "regmirror-bin"))
        built = time.monotonic()
        log(f"work dir {work}; sizes {dataclasses.asdict(sizes)}")
        bench = Bench(work, sizes, binary)
        load_before = os.getloadavg()[0]
        bench.run()
        bench.out.meta.append(f"machine load average (1 min) at start {load_before:.2f},"
                              f" at end {os.getloadavg()[0]:.2f}; nproc {os.cpu_count()}")
    except harness.BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130
    finally:
        harness.cleanup()
        if args.keep_tmp:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    bench.out.meta.insert(0, f"wall time {elapsed / 60:.1f} min, of which cargo build"
                             f" {(built - started) / 60:.1f} min")
    text = bench.out.render(sizes, "quick" if args.quick else "full")
    print(text)
    if args.record:
        path = os.path.join(REPO_ROOT, "bench", "RESULTS.md")
        report.write_results(path, text, " ".join(["bench/run.py"] + argv), elapsed)
        print(f"wrote {path}", file=sys.stderr)
    return 1 if bench.out.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
