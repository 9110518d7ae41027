"""``python -m asgilab`` as a user runs it: a subprocess serving backend.app:app on the host.

Also ``python -m proxy --app``: the same app inside the proxy process. Bad flags and a bad app
import are one line on stderr and exit status 2; SIGTERM drains and exits 0.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.host import free_port, wait_port

REPO = Path(__file__).resolve().parents[2]


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out.decode(), err.decode()


def test_serves_the_backend_app_and_drains_on_sigterm() -> None:
    port = free_port()
    proc = start("-m", "asgilab", "backend.app:app", "--port", str(port))
    try:
        wait_port(port, timeout=20, proc=proc)
        status, headers, body = get(port, "/")
        assert status == 200 and "backend" in json.loads(body)
        assert headers["server"] == "asgilab" and headers["content-length"] == str(len(body))
        status, _, body = get(port, "/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert get(port, "/nope")[0] == 404
    finally:
        code, out, err = stop(proc)
    assert code == 0, err
    assert "Application startup complete" in err and "drained cleanly" in err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(x["path"], x["status"]) for x in lines] == [
        ("/", 200),
        ("/health", 200),
        ("/nope", 404),
    ]


def test_proxy_app_serves_the_app_in_process_with_metrics() -> None:
    port, admin = free_port(), free_port()
    proc = start(
        "-m", "proxy", "--app", "backend.app:app", "--listen", f"127.0.0.1:{port}",
        "--admin-listen", f"127.0.0.1:{admin}", "--health-interval", "0",
    )  # fmt: skip
    try:
        wait_port(port, timeout=20, proc=proc)
        status, headers, body = get(port, "/")
        assert status == 200 and "backend" in json.loads(body) and headers["server"] == "asgilab"
        assert get(port, "/" + "a" * 9000)[0] == 414, "the proxy's limits apply to the in-process app"
        _, _, metrics = get(admin, "/metrics")
        text = metrics.decode()
        assert 'requests_total{code_class="2xx"} 1.0' in text
        assert 'rejected_total{status="414"} 1.0' in text
    finally:
        code, out, err = stop(proc)
    assert code == 0, err
    assert any(json.loads(line)["status"] == 200 for line in out.splitlines())


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-m", "asgilab", "backend.app:app", "--port", "nope"], "--port / ASGILAB_PORT"),
        (["-m", "asgilab", "backend.app:app", "--bogus"], "unrecognized arguments"),
        (["-m", "asgilab", "backend.nosuch:app"], "no module named 'backend.nosuch'"),
        (["-m", "asgilab", "backend.app:nosuch"], "has no attribute 'nosuch'"),
        (["-m", "proxy", "--app", "backend.nosuch:app"], "--app / PROXY_APP"),
        (["-m", "proxy", "--app", "nocolon"], "--app / PROXY_APP: expected module:attribute"),
    ],
)
def test_bad_flags_and_bad_apps_exit_2_with_one_line(args: list[str], needle: str) -> None:
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr


async def failing_startup(scope: dict[str, object], receive: object, send: object) -> None:
    """An app whose lifespan startup fails (imported by the subprocess below)."""
    assert scope["type"] == "lifespan"
    await receive()  # type: ignore[operator]
    await send({"type": "lifespan.startup.failed", "message": "no database"})  # type: ignore[operator]


def test_lifespan_startup_failed_exits_1_with_the_apps_message_before_listening() -> None:
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "asgilab", "tests.unit.test_asgilab_cli:failing_startup", "--port", str(port)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1, proc.stderr
    assert "no database" in proc.stderr and "serving" not in proc.stderr


def _listeners(port: int) -> set[str]:
    """Inodes of the sockets listening on ``port`` (one per worker with SO_REUSEPORT)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    found.add(cols[9])
    return found


def test_workers_share_the_port_and_drain_on_sigterm() -> None:
    port = free_port()
    proc = start("-m", "asgilab", "backend.app:app", "--port", str(port), "--workers", "2", "--no-access-log")
    try:
        wait_port(port, timeout=30, proc=proc)
        for _ in range(10):
            assert get(port, "/health")[0] == 200
        deadline = time.monotonic() + 20
        while len(_listeners(port)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # the second worker may still be importing the app
        assert len(_listeners(port)) == 2, "two processes listen on the port (SO_REUSEPORT)"
    finally:
        code, _, err = stop(proc)
    assert code == 0, err
    assert "supervising 2 workers" in err
    assert "exited with code" not in err
