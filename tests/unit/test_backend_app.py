"""The backend contract, exercised in-process through httpx's ASGI transport (no Docker)."""

from __future__ import annotations

import asyncio
import hashlib
import time

import httpx
import pytest

from backend.__main__ import parse_args
from backend.app import BACKEND_ID, REQUEST_COUNTS, SERVER, app


def call(method: str, url: str, **kwargs: object) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("10.9.8.7", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://backend") as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(go())


def test_every_response_names_the_replica_even_errors() -> None:
    for path in ("/", "/health", "/nope", "/delay/oops"):
        assert call("GET", path).headers["x-backend-id"] == BACKEND_ID
    assert call("GET", "/").json() == {"backend": BACKEND_ID, "server": SERVER}


def test_echo_reports_method_query_headers_and_body_digest() -> None:
    body = bytes(range(256)) * 100
    r = call("PUT", "/echo?x=1&y=2", content=body, headers={"X-Request-ID": "abc"})
    data = r.json()
    assert data["method"] == "PUT"
    assert data["path"] == "/echo"
    assert data["query"] == "x=1&y=2"
    assert data["headers"]["x-request-id"] == "abc"
    assert data["body"] == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_echo_joins_repeated_headers() -> None:
    r = call("GET", "/echo", headers=[("X-Thing", "a"), ("X-Thing", "b")])
    assert r.json()["headers"]["x-thing"] == "a, b"


def test_bytes_and_stream_sizes() -> None:
    r = call("GET", "/bytes/1000")
    assert r.headers["content-length"] == "1000" and len(r.content) == 1000
    r = call("GET", "/stream/5?size=7")
    assert "content-length" not in r.headers
    assert len(r.content) == 35


def test_status_route_returns_the_asked_status() -> None:
    assert call("GET", "/status/503").status_code == 503
    r = call("GET", "/status/204")
    assert r.status_code == 204 and r.content == b""


@pytest.mark.parametrize(
    "path",
    [
        "/delay/-1",
        "/delay/abc",
        "/delay/600001",
        "/bytes/-5",
        "/stream/2?size=0",
        "/status/99",
        "/status/600",
    ],
)
def test_bad_parameters_are_422_with_a_message(path: str) -> None:
    r = call("GET", path)
    assert r.status_code == 422
    assert r.json()["detail"][0]["msg"]


def test_delay_waits_at_least_the_asked_time() -> None:
    start = time.monotonic()
    assert call("GET", "/delay/50").json()["delay_ms"] == 50
    assert time.monotonic() - start >= 0.05


def test_stats_count_client_requests_but_not_probes() -> None:
    REQUEST_COUNTS.clear()
    call("GET", "/")
    call("GET", "/")
    call("GET", "/health")
    call("GET", "/bytes/1")
    stats = call("GET", "/stats").json()
    assert stats["requests"] == 3
    assert stats["by_path"] == {"/": 2, "/bytes/1": 1}


def test_config_validation_names_the_variable(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("BACKEND_KEEP_ALIVE", "0")
    with pytest.raises(SystemExit) as exc:
        parse_args([])
    assert exc.value.code == 2
    assert "BACKEND_KEEP_ALIVE" in capsys.readouterr().err
    monkeypatch.setenv("BACKEND_PORT", "eighty")
    with pytest.raises(SystemExit) as exc:
        parse_args([])
    assert exc.value.code == 2
    assert "BACKEND_PORT" in capsys.readouterr().err
