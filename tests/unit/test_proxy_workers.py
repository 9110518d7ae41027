"""``python -m proxy --workers N``: N processes share the port, each serves, SIGTERM drains them all.

Runs the real CLI in a subprocess against a small threaded HTTP/1.1 upstream on the host (no
Docker): which process owns which admin port is read from /proc, and each worker's /upstreams
shows the requests it proxied itself.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks.host import wait_port

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            time.sleep(0.8)
        body = b"hello world\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def upstream() -> Iterator[int]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def _free_ports(n: int) -> int:
    """A base port with ``n`` consecutive free ports (admin port + worker index)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports")


def _children(pid: int) -> set[int]:
    """Worker processes of the supervisor ``pid`` (multiprocessing's resource tracker left out)."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                if b"spawn_main" in cmdline:
                    out.add(int(child))
    return out


def _listener_pid(port: int, pids: set[int]) -> int:
    """The pid (among ``pids``) holding the listening socket on 127.0.0.1:``port``."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1].endswith(f":{port:04X}") and f[3] == "0A":  # 0A = LISTEN
            inodes.add(f[9])
    owners = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        owners.add(pid)
    assert len(owners) == 1, f"port {port} listened on by {owners}"
    return owners.pop()


def _get(port: int, path: str = "/", timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@contextlib.contextmanager
def workers(n: int, up: int) -> Iterator[tuple[subprocess.Popen, int, int]]:
    listen = _free_ports(1)
    admin = _free_ports(n)
    cmd = [
        sys.executable,
        "-m",
        "proxy",
        f"--workers={n}",
        f"--upstream=127.0.0.1:{up}",
        f"--listen=127.0.0.1:{listen}",
        f"--admin-listen=127.0.0.1:{admin}",
        "--no-access-log",
        "--health-interval=0",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for i in range(n):
            wait_port(admin + i, 20.0, proc)
        wait_port(listen, 20.0, proc)
        yield proc, listen, admin
    finally:
        if proc.poll() is None:
            for pid in _children(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()


def test_two_workers_share_the_port_and_each_serves_requests() -> None:
    with upstream() as up, workers(2, up) as (proc, listen, admin):
        pids = _children(proc.pid)
        assert len(pids) == 2
        owner0, owner1 = _listener_pid(admin, pids), _listener_pid(admin + 1, pids)
        assert owner0 != owner1 and {owner0, owner1} == pids
        # A new connection per request: the kernel's SO_REUSEPORT hash spreads them over both.
        statuses = [_get(listen)[0] for _ in range(60)]
        assert statuses == [200] * 60
        served = []
        for a in (admin, admin + 1):
            status, body = _get(a, "/upstreams")
            assert status == 200
            served.append(sum(ep["requests"] for ep in json.loads(body)["endpoints"]))
        assert sum(served) == 60
        assert all(n > 0 for n in served), f"requests per worker (pids {owner0}, {owner1}): {served}"


def test_sigterm_drains_every_worker_and_exits_zero() -> None:
    with upstream() as up, workers(2, up) as (proc, listen, _admin):
        results: list[tuple[int, bytes]] = []
        slow = [threading.Thread(target=lambda: results.append(_get(listen, "/slow"))) for _ in range(4)]
        for t in slow:
            t.start()
        time.sleep(0.3)  # the slow requests are in flight on one worker or both
        proc.send_signal(signal.SIGTERM)
        for t in slow:
            t.join(10)
        assert proc.wait(15) == 0
        assert [s for s, _ in results] == [200] * 4
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", listen), timeout=0.5).close()


def test_a_worker_that_dies_stops_the_rest_and_the_parent_fails() -> None:
    with upstream() as up, workers(2, up) as (proc, _listen, _admin):
        victim, other = sorted(_children(proc.pid))
        os.kill(victim, signal.SIGKILL)
        assert proc.wait(15) == 1
        assert (
            not Path(f"/proc/{other}").exists() or "Z" in Path(f"/proc/{other}/stat").read_text().split()[2]
        )
        assert "exited with code -9" in proc.stderr.read()  # type: ignore[union-attr]


def test_workers_validation() -> None:
    for args, msg in (
        (["--workers=0"], "must be >= 1"),
        (["--workers=2", "--listen=127.0.0.1:0"], "needs a fixed"),
        (["--workers=two"], "expected a number"),
    ):
        p = subprocess.run([sys.executable, "-m", "proxy", *args], cwd=REPO, capture_output=True, text=True)
        assert p.returncode == 2 and msg in p.stderr and "PROXY_WORKERS" in p.stderr


def test_workers_do_not_outlive_a_killed_supervisor() -> None:
    with upstream() as up, workers(2, up) as (proc, listen, _admin):
        pids = _children(proc.pid)
        proc.kill()  # SIGKILL: no chance to forward anything
        proc.wait()
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        for pid in alive:
            os.kill(pid, signal.SIGKILL)
        assert not alive, "orphaned workers kept running"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", listen), timeout=0.5).close()
