"""Host-benchmark building blocks: a pinned static nginx, nginx as a reverse proxy, and wrk.

Everything runs on the host without containers (tools from ``scripts/bench-tools``), each
process pinned to a core so that two paths measured in one invocation compete for the same
CPU budget. Only ratios taken in one run mean anything on a shared machine.

API (import from ``benchmarks.host``)::

    with static_upstream(cpu=0) as port:          # nginx, 1 worker, `return 200` + 12-byte body
        res = run_wrk(f"http://127.0.0.1:{port}/", cpu=0, duration_s=5)
        res.rps, res.p50_ms, res.p99_ms, res.errors, res.requests

    with nginx_proxy(upstream_port=port, cpu=1) as pport:   # keep-alive reverse proxy
        ...

    free_port() -> int                             # an ephemeral 127.0.0.1 port (bind/close)
    listener_pids(port) -> set[int]                # processes listening on it (for cpu_seconds)
    cpu_seconds(pids) -> float                     # their user+sys CPU so far (CPU per request)
    wait_port(port, timeout=5.0)                   # until something accepts on 127.0.0.1:port
    python_server(cmd, port, cpu) as port          # a pinned Python server, stopped after the block
    stop_process(proc)                             # SIGTERM, SIGKILL after 15 s
    pinned(cmd, cpu) -> list[str]                  # ["taskset", "-c", cpu, *cmd]
    set_nice(n)                                    # later pinned() commands run at nice n
    require_tools("nginx", "wrk")                  # ToolMissing naming scripts/bench-tools
    BODY == b"hello world\\n"                       # the 12-byte static body

``run_wrk`` is closed-loop (wrk 4.1 from Debian has no ``-R``); fixed-rate latency is
measured by ``benchmarks.fixedrate`` (an open-loop, wrk2-style driver).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

BODY = b"hello world\n"
assert len(BODY) == 12

REPO = Path(__file__).resolve().parent.parent

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


class ToolMissing(RuntimeError):
    """A benchmark tool is not installed; the message says how to get it."""


def require_tools(*names: str) -> None:
    missing = [n for n in names if (NGINX if n == "nginx" else shutil.which(n)) is None]
    if missing:
        raise ToolMissing(
            f"missing benchmark tool(s): {', '.join(missing)}; run ./scripts/bench-tools "
            "(apt-get install nginx-light wrk util-linux)"
        )


_nice = 0


def set_nice(increment: int) -> None:
    """Run every later ``pinned`` command at this niceness (negative = ahead of other load; root)."""
    global _nice
    _nice = increment


def pinned(cmd: Sequence[str], cpu: int | None) -> list[str]:
    """Prefix ``cmd`` with taskset (and nice); children (nginx workers) inherit both."""
    out = list(cmd)
    if cpu is not None:
        out = ["taskset", "-c", str(cpu), *out]
    if _nice:
        out = ["nice", "-n", str(_nice), *out]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 5.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"process exited with {proc.returncode} before listening on {port}"
                ) from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s") from None
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``: a server gets its graceful drain, never a hang."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def python_server(
    cmd: list[str], port: int, cpu: int | None, stdout: int | IO[Any] | None = subprocess.DEVNULL
) -> Iterator[int]:
    """Run a Python server pinned to ``cpu`` (from the repo root) until the block ends."""
    proc = subprocess.Popen(
        pinned(cmd, cpu), cwd=REPO, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE
    )
    try:
        try:
            wait_port(port, timeout=15, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            err = b""
            if proc.poll() is not None and proc.stderr is not None:
                err = proc.stderr.read()
            raise RuntimeError(
                f"{' '.join(cmd)} did not start: {exc}\n{err.decode(errors='replace')}"
            ) from None
        yield port
    finally:
        stop_process(proc)


def _conf(prefix: Path, server_block: str, extra_http: str = "") -> str:
    # Every path nginx would otherwise take from its compiled-in defaults (/var/lib/nginx, /run)
    # is inside the temporary prefix, so the benchmark needs no writable system directories.
    return f"""
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    {extra_http}
    {server_block}
}}
"""


@contextlib.contextmanager
def _run_nginx(conf_for: object, port: int, cpu: int | None) -> Iterator[int]:
    require_tools("nginx")
    assert NGINX is not None
    with tempfile.TemporaryDirectory(prefix="asgi-lab-nginx-") as tmp:
        prefix = Path(tmp)
        conf = prefix / "nginx.conf"
        conf.write_text(conf_for(prefix))  # type: ignore[operator]
        cmd = pinned([NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")], cpu)
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            try:
                wait_port(port, proc=proc)
            except (RuntimeError, TimeoutError) as exc:
                err = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
                if proc.poll() is not None and proc.stderr is not None:
                    err += proc.stderr.read().decode(errors="replace")
                raise RuntimeError(f"nginx did not start: {exc}\n{err.strip()}") from None
            yield port
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then the master exits
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def static_upstream(cpu: int | None = 0, port: int | None = None) -> contextlib.AbstractContextManager[int]:
    """nginx with one worker answering every request ``200`` with a 12-byte body, keep-alive."""
    port = port or free_port()
    server = f"""
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{BODY.decode().rstrip()}\\n";
        }}
    }}"""
    return _run_nginx(lambda prefix: _conf(prefix, server), port, cpu)


def nginx_proxy(
    upstream_port: int, cpu: int | None = 1, port: int | None = None, keepalive: int = 64
) -> contextlib.AbstractContextManager[int]:
    """nginx as a reverse proxy keeping ``keepalive`` idle upstream connections (HTTP/1.1)."""
    port = port or free_port()
    upstream = f"""
    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive {keepalive};
        keepalive_requests 1000000;
    }}"""
    server = f"""
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_buffering on;
        }}
    }}"""
    return _run_nginx(lambda prefix: _conf(prefix, server, upstream), port, cpu)


def listener_pids(port: int) -> set[int]:
    """Pids holding a listening TCP socket on ``port`` (nginx master + worker, proxy workers)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[1].endswith(f":{port:04X}") and f[3] == "0A":  # 0A = LISTEN
                    inodes.add(f"socket:[{f[9]}]")
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                        pids.add(int(entry))
                        break
    return pids


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU time used so far by ``pids`` (those still alive).

    CPU per request is the figure least disturbed by other load on a shared machine: contention
    stretches wall time (req/s, latency) far more than it changes the work done per request.
    """
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / _TICK


@dataclass(frozen=True, slots=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors + non-2xx/3xx responses
    requests: int
    raw: str = ""


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unparsable wrk latency {text!r}")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    """Read wrk 4.x ``--latency`` output; raise ValueError if it is not there."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    reqs = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and reqs and p50 and p99):
        raise ValueError(f"unexpected wrk output:\n{out}")
    errors = 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    return WrkResult(
        float(rps.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), errors, int(reqs.group(1)), out
    )


def run_wrk(
    url: str,
    *,
    cpu: int | None = 0,
    connections: int = 50,
    threads: int = 1,
    duration_s: float = 5.0,
    timeout_s: float = 2.0,
) -> WrkResult:
    """Closed-loop capacity: ``wrk -t{threads} -c{connections} --latency``, pinned to ``cpu``."""
    require_tools("wrk")
    cmd = pinned(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",  # wrk takes whole seconds
            f"--timeout={timeout_s:g}s",
            "--latency",
            url,
        ],
        cpu,
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return parse_wrk(proc.stdout)
