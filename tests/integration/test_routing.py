"""What a client of the lab sees through the proxy with three healthy backends."""

from __future__ import annotations

import json
import socket
import time

import httpx

from . import checks
from .conftest import Lab


def test_sixty_gets_spread_evenly_over_three_replicas(lab3: Lab) -> None:
    checks.even_split(lab3, 60)


def test_echo_shows_forwarded_headers_and_request_id(lab3: Lab) -> None:
    with httpx.Client(base_url=lab3.base_url, timeout=10) as client:
        r = client.get("/echo?probe=1", headers={"Connection": "keep-alive, X-Secret", "X-Secret": "hop"})
        mine = client.get("/echo", headers={"X-Request-ID": "lab-test-123"})
    assert r.status_code == 200
    seen = r.json()
    headers = seen["headers"]
    # The proxy saw the test's connection arrive from Docker's gateway; that address must be forwarded.
    assert headers["x-forwarded-for"], headers
    assert seen["client"] == headers["x-forwarded-for"].split(",")[-1].strip()
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == lab3.base_url.removeprefix("http://")
    assert headers["x-request-id"] and r.headers["x-request-id"] == headers["x-request-id"]
    assert seen["query"] == "probe=1"
    assert "x-secret" not in headers, "a header named in Connection is hop-by-hop and must be dropped"
    assert mine.headers["x-request-id"] == "lab-test-123"
    assert mine.json()["headers"]["x-request-id"] == "lab-test-123"


def test_access_log_has_one_json_line_per_request(lab3: Lab) -> None:
    request_id = f"log-probe-{time.monotonic_ns()}"
    r = httpx.get(f"{lab3.base_url}/bytes/123?x=1", headers={"X-Request-ID": request_id}, timeout=10)
    assert r.status_code == 200
    deadline = time.monotonic() + 5
    lines: list[dict] = []
    while not lines and time.monotonic() < deadline:
        logs = lab3.run("logs", "--no-color", "--no-log-prefix", "proxy").stdout
        lines = [json.loads(line) for line in logs.splitlines() if request_id in line]
        time.sleep(0.2)
    assert len(lines) == 1, f"expected one access-log line for {request_id}, got {lines}"
    (line,) = lines
    assert line["method"] == "GET" and line["path"] == "/bytes/123?x=1"
    assert line["status"] == 200 and line["bytes"] == 123
    assert line["upstream"].endswith(":8001")
    assert 0 <= line["upstream_time"] <= line["total_time"]
    assert line["time"].endswith("Z")


def test_one_mebibyte_post_arrives_intact(lab3: Lab) -> None:
    checks.fixed_length_upload(lab3.base_url)


def test_chunked_upload_arrives_intact(lab3: Lab) -> None:
    checks.chunked_upload(lab3.base_url)


def test_chunked_stream_arrives_whole(lab3: Lab) -> None:
    checks.chunked_stream(lab3.base_url)


def test_large_fixed_length_download(lab3: Lab) -> None:
    checks.large_download(lab3.base_url)


def test_backend_status_and_validation_pass_through(lab3: Lab) -> None:
    checks.statuses_pass_through(lab3.base_url)


def test_malformed_request_gets_400_and_close(lab3: Lab) -> None:
    port = int(lab3.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400"), data[:200]


def test_all_backends_stopped_gives_502(lab3: Lab) -> None:
    lab3.run("stop", "--timeout", "3", "backend")
    r = httpx.get(f"{lab3.base_url}/", timeout=30)
    assert r.status_code == 502
    assert r.headers["content-type"].startswith("text/plain")
    assert len(r.text.strip()) > 10, "a 502 names its reason"
    # The proxy itself keeps serving: its own health endpoint still answers.
    assert httpx.get(f"{lab3.admin_url}/healthz", timeout=5).status_code == 200
