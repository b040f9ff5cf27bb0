"""The results table: targets from the issue, PASS/FAIL for regmirror, and RESULTS.md."""

import dataclasses
import datetime
import math
import os
import platform
import subprocess

ROW_NAMES = {
    1: "1 warm blob throughput",
    2: "2 cold pull, many clients",
    3: "3 cold pull vs direct",
    4: "4 warm manifest by tag",
    5: "5 peak RSS",
}


def _t(text, check=None):
    return (text, check)


# (row, contender label, metric substring) -> (target text, check(value, ratio) or None).
# Only regmirror has targets; the others carry the reference figures.
TARGETS = {
    (1, "regmirror", "MB/s"): _t(">= 1.00x", lambda v, r: r >= 1.0),
    (1, "nginx proxy_cache", "MB/s"): _t("ref ~0.96x"),
    (1, "registry:2 proxy", "MB/s"): _t("ref 0.80-0.90x"),
    (1, "nginx sendfile", "MB/s"): _t("ceiling"),
    (2, "regmirror", "wall"): _t("<= 1.15x", lambda v, r: r <= 1.15),
    (2, "registry:2 proxy", "wall"): _t("ref ~2.4x"),
    (2, "nginx proxy_cache", "wall"): _t("ref ~1.35x"),
    (2, "regmirror", "upstream"): _t("= 1.00x", lambda v, r: abs(r - 1.0) < 0.005),
    (2, "registry:2 proxy", "upstream"): _t("ref ~9x"),
    (2, "nginx proxy_cache", "upstream"): _t("ref 1.00x"),
    (3, "regmirror", "pull"): _t("<= 1.02x", lambda v, r: r <= 1.02),
    (3, "registry:2 proxy", "pull"): _t("ref ~1.13x"),
    (3, "nginx proxy_cache", "pull"): _t("ref ~0.97x"),
    (4, "regmirror", "req/s"): _t(">= 100x", lambda v, r: r >= 100),
    (4, "regmirror", "p99"): _t("< 5 ms", lambda v, r: v < 5),
    (5, "regmirror", "VmHWM"): _t("<= 48 MiB", lambda v, r: v <= 48),
}

NOISE = ("Machine is shared and noisy (2 cores, other builds and tests may run at the same "
         "time); treat differences of a few percent as noise.")


@dataclasses.dataclass
class Line:
    row: int
    contender: str
    metric: str
    value: float
    fmt: str
    ratio: float  # None where no ratio applies
    notes: str


class Table:
    def __init__(self):
        self.lines = []
        self.errors = []  # (contender, message)
        self.meta = []  # extra header lines

    def add(self, row, contender, metric, value, fmt, ratio, notes=""):
        self.lines.append(Line(row, contender, metric, value, fmt, ratio, notes))

    def error(self, contender, message):
        self.errors.append((contender, message))

    def _cells(self, line):
        target, check = _target(line)
        failed = {c for c, _ in self.errors}
        verdict = ""
        if line.contender in failed:
            verdict = "ERROR"
        elif check is not None:
            ok = not math.isnan(line.ratio or 0) and check(line.value, line.ratio)
            verdict = "PASS" if ok else "FAIL"
        ratio = "" if line.ratio is None else f"{line.ratio:.2f}x"
        return [ROW_NAMES[line.row], line.contender, line.metric, line.fmt.format(line.value),
                ratio, target, verdict, line.notes]

    def render(self, sizes, mode):
        head = ["row", "contender", "metric", "value", "ratio", "target", "result", "notes"]
        rows = [self._cells(l) for l in sorted(self.lines, key=lambda l: l.row)]
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
        fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
        out = [f"regmirror benchmark, {mode} run",
               "sizes: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(sizes).items()),
               *self.meta, "", fmt(head), fmt(["-" * w for w in widths])]
        prev = None
        for line, cells in zip(sorted(self.lines, key=lambda l: l.row), rows):
            if prev is not None and line.row != prev:
                out.append("")
            prev = line.row
            out.append(fmt(cells))
        out += self._error_lines() + self._summary(rows)
        return "\n".join(out)

    def _error_lines(self):
        if not self.errors:
            return ["", "errors: none (every body hashed to its digest, every status 200)"]
        out = ["", "ERRORS (results of these contenders are not trustworthy):"]
        for contender, msg in self.errors[:40]:
            out.append(f"  {contender}: {msg}")
        if len(self.errors) > 40:
            out.append(f"  ... and {len(self.errors) - 40} more")
        return out

    @staticmethod
    def _summary(rows):
        missed = [f"{r[0]} / {r[2]}" for r in rows if r[1] == "regmirror" and r[6] == "FAIL"]
        return ["regmirror targets missed: " + ("; ".join(missed) if missed else "none")]


def _target(line):
    for (row, contender, metric), t in TARGETS.items():
        if row == line.row and contender == line.contender and metric in line.metric:
            return t
    return ("", None)


def _cmd(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.rstrip()
    except OSError:
        return "?"


def machine():
    """nproc, CPU model, kernel, free -h, tool versions: the facts RESULTS.md records."""
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    curl = " ".join(_cmd(["curl", "--version"]).split()[:2])
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    wrk = " ".join((wrk.stdout + wrk.stderr).split()[:2])
    registry = _cmd(["docker-registry", "--version"]).split()[-1]
    return [
        f"- nproc: {_cmd(['nproc'])}",
        f"- CPU: {cpu}",
        f"- kernel: {platform.release()}",
        f"- tools: {nginx}; docker-registry {registry}; {curl}; {wrk}",
        "- free -h:",
        "",
        "```",
        _cmd(["free", "-h"]),
        "```",
    ]


def write_results(path, table, command, elapsed):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    # --dirty: the build includes whatever uncommitted src/ changes the tree had.
    rev = _cmd(["git", "-C", repo, "describe", "--always", "--dirty"])
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join([
        "# Benchmark results",
        "",
        f"Recorded by `{command}` on {now}, regmirror at commit {rev}; "
        f"the run took {elapsed / 60:.1f} min.",
        "",
        "## Machine",
        "",
        *machine(),
        "",
        "## Table",
        "",
        NOISE + " What each row measures: see README.md.",
        "",
        "```",
        table,
        "```",
        "",
    ])
    with open(path, "w") as f:
        f.write(text)
