"""Process bookkeeping, ports, HTTP probes and /proc readings for the benchmark.

Every process the benchmark starts goes through `spawn`, in its own session, so `cleanup` can
end it (and its children, e.g. nginx workers) by process-group id on success, failure or Ctrl-C.
"""

import http.client
import os
import signal
import socket
import subprocess
import time

_live = []  # Popen objects started by spawn() and not yet reaped


class BenchError(Exception):
    """A set-up step failed; the message says which and why."""


def free_port():
    """A loopback port free right now: bind port 0, read it back, release it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv, log_path=None, env=None, stdin=subprocess.DEVNULL, stdout=None):
    """Starts argv in a new session; output goes to log_path (or stdout=PIPE when asked)."""
    out = stdout
    if out is None:
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        argv,
        stdin=stdin,
        stdout=out,
        stderr=subprocess.STDOUT if log_path else None,
        env=env,
        start_new_session=True,
    )
    if log_path and stdout is None:
        out.close()  # the child holds its own copy
    _live.append(proc)
    return proc


def stop(proc, grace=10.0):
    """SIGTERM the process group, SIGKILL it after `grace` seconds, reap it."""
    if proc in _live:
        _live.remove(proc)
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    # Children that outlived their session leader (rare) are still in the group.
    _signal_group(proc, signal.SIGKILL)


def reap(proc):
    """Forget a process that exited on its own."""
    if proc in _live:
        _live.remove(proc)


def _signal_group(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def cleanup():
    """Ends every process still running, newest first (clients before servers)."""
    for proc in reversed(list(_live)):
        stop(proc, grace=5.0)


def install_signal_handlers():
    """SIGTERM/SIGHUP/SIGINT unwind the stack, so the `finally` that calls cleanup() runs."""

    def raise_exit(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, raise_exit)
    signal.signal(signal.SIGHUP, raise_exit)
    # Also when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)


def http_get(port, path, headers=None, method="GET", timeout=30):
    """(status, headers dict with lower-case names, body bytes) of one request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def wait_http(port, path, proc, log_path, timeout=30.0, want=None):
    """Polls until port answers `path` (with status `want` if given); fails fast if proc dies."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process exited with {proc.returncode} at start-up\n{tail(log_path)}")
        try:
            status, _, _ = http_get(port, path, timeout=2)
            if want is None or status == want:
                return
            last = f"status {status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    raise BenchError(f"127.0.0.1:{port}{path} not ready after {timeout}s ({last})\n{tail(log_path)}")


def tail(path, lines=25):
    """The last lines of a log file, for error messages."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return f"--- tail of {path} ---\n" + "\n".join(text.splitlines()[-lines:])


def proc_status_kib(pid, field):
    """A `VmHWM`/`VmRSS`-style field of /proc/PID/status, in KiB (None if gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


_TICK = os.sysconf("SC_CLK_TCK")


def session_cpu_seconds(sid):
    """User+system CPU seconds of all live processes in session `sid` (master + workers)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is /proc field 3 (state): session is field 6, utime/stime fields 14/15.
        if int(fields[3]) == sid:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def run_checked(argv, what, env=None, cwd=None):
    """Runs a short command to completion; raises BenchError with its output on failure."""
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"{what} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout
