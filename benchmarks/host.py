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
    run_open_loop(url, rate=R, duration_s=S, cpu=0) -> OpenLoopResult   # python -m loadgen --rate R
    run_loadgen(url, args, cpu, timeout_s) -> dict # python -m loadgen ARGS --json: its report
    stop_process(proc)                             # SIGTERM, SIGKILL after 15 s
    pinned(cmd, cpu) -> list[str]                  # ["taskset", "-c", cpu, *cmd]
    set_nice(n)                                    # later pinned() commands run at nice n
    require_tools("nginx", "wrk")                  # ToolMissing naming scripts/bench-tools
    BODY == b"hello world\\n"                       # the 12-byte static body

``run_wrk`` is closed-loop (wrk 4.1 from Debian has no ``-R``); latency at a fixed rate is
measured by the lab's own load generator in open loop (``python -m loadgen --rate``, wrk2's
model: latency counted from each request's intended send time, docs/loadgen.md), the one
open-loop driver of the project.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
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
    cmd: list[str],
    port: int,
    cpu: int | None,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    cwd: Path = REPO,
) -> Iterator[int]:
    """Run a Python server pinned to ``cpu`` (from ``cwd``, the repo root) until the block ends."""
    proc = subprocess.Popen(
        pinned(cmd, cpu), cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE
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


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_loadgen(
    url: str,
    args: Sequence[str],
    cpu: int | None,
    timeout_s: float,
    *,
    on_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """``python -m loadgen URL ARGS --quiet --json FILE`` pinned to ``cpu``; returns the report.

    ``LOADGEN_*`` variables of the caller's environment are dropped (the flags say everything);
    ``on_start`` runs once the process is started (a viewer of its live page, say). The report
    gets ``cpu_us_per_response``: the generator's own user+sys CPU per response.
    """
    with tempfile.TemporaryDirectory(prefix="asgi-lab-loadgen-") as tmp:
        out = Path(tmp) / "report.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOADGEN_")}
        cmd = pinned([sys.executable, "-m", "loadgen", url, *args, "--quiet", "--json", str(out)], cpu)
        before = _children_cpu_s()
        with subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as p:
            if on_start is not None:
                on_start()
            _, stderr = p.communicate(timeout=timeout_s)
        cpu_s = _children_cpu_s() - before
        # Exit 1 means no request succeeded: the report is there and says so (a path of errors).
        if p.returncode not in (0, 1) or not out.exists():
            raise RuntimeError(f"loadgen failed ({p.returncode}):\n{stderr}")
        report: dict[str, Any] = json.loads(out.read_text())
        report["cpu_us_per_response"] = 1e6 * cpu_s / max(1, report["responses"])
        return report


@dataclass(frozen=True, slots=True)
class OpenLoopResult:
    """One open-loop run, as the benchmarks compare it (from loadgen's report)."""

    rate: float  # intended requests per second
    achieved: float  # requests actually sent per second before the deadline
    responses: int
    errors: int  # transport errors + non-2xx answers + requests due but never sent
    p50_ms: float  # corrected: from each request's intended send time
    p99_ms: float
    kept_up: bool  # the generator sent within 1 % of the intended rate
    reason: str | None  # why not, in loadgen's words


def parse_loadgen_report(report: dict[str, Any]) -> OpenLoopResult:
    """The figures of an open-loop ``loadgen`` report; ValueError if it is not one."""
    if report.get("mode") != "open":
        raise ValueError(f"not an open-loop loadgen report (mode {report.get('mode')!r})")
    rc, lat = report["rate_check"], report["latency_ms"]
    non_2xx = sum(n for status, n in report["status"].items() if not 200 <= int(status) < 300)
    errors = sum(report["errors"].values()) + non_2xx + rc["unsent"]

    def ms(v: float | None) -> float:
        return float("nan") if v is None else float(v)

    return OpenLoopResult(
        rate=float(rc["intended_rps"]),
        achieved=float(rc["achieved_rps"]),
        responses=int(report["responses"]),
        errors=int(errors),
        p50_ms=ms(lat["p50"]),
        p99_ms=ms(lat["p99"]),
        kept_up=bool(rc["kept_up"]),
        reason=rc["reason"],
    )


def run_open_loop(
    url: str, *, rate: float, duration_s: float, cpu: int | None = 0, connections: int = 50
) -> OpenLoopResult:
    """``python -m loadgen --rate`` on at most ``connections`` keep-alive connections, pinned."""
    args = ["--rate", f"{rate:g}", "--duration", f"{duration_s:g}", "--connections", str(connections)]
    return parse_loadgen_report(run_loadgen(url, args, cpu, duration_s + 60))
