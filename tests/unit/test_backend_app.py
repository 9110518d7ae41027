"""The backend contract, exercised in-process through httpx's ASGI transport (no Docker)."""

from __future__ import annotations

import asyncio
import hashlib
import time
import tracemalloc

import httpx
import pytest

from backend.__main__ import parse_args
from backend.app import BACKEND_ID, REQUEST_COUNTS, SERVER, app
from backend.stats import MAX_PATHS, RequestCounts


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


def test_stats_file_unmatched_404s_under_one_key_not_their_paths() -> None:
    REQUEST_COUNTS.clear()
    for i in range(50):
        assert call("GET", f"/no/such/path/{i}").status_code == 404
    call("GET", "/status/404")  # a route that answers 404: its own path
    call("GET", "/delay/1")
    stats = call("GET", "/stats").json()
    assert stats["requests"] == 52
    assert stats["by_path"] == {"<unmatched>": 50, "/status/404": 1, "/delay/1": 1}


def test_stats_keep_at_most_max_paths_keys_and_still_add_up() -> None:
    counts = RequestCounts(max_paths=3)
    for path in ["/a", "/b", "/a", "/c", "/d", "/e", "/a", "/d"]:
        counts.add(path)
    counts.add("<unmatched>")
    assert counts.snapshot() == {"/a": 3, "/b": 1, "/c": 1, "<other>": 3, "<unmatched>": 1}
    assert counts.total == 9 == sum(counts.snapshot().values())


def test_stats_through_the_app_are_bounded_by_max_paths() -> None:
    REQUEST_COUNTS.clear()
    n = MAX_PATHS + 40

    async def go() -> dict[str, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://backend") as client:
            for i in range(n):
                await client.get(f"/delay/0?x={i}")  # one path, one key, whatever the query
                await client.get(f"/status/{200 + i}")  # n distinct paths of real routes
            return (await client.get("/stats")).json()["by_path"]

    by_path = asyncio.run(go())
    assert len(by_path) == MAX_PATHS + 1  # MAX_PATHS own keys (/delay/0 among them) + <other>
    assert by_path["/delay/0"] == n
    assert by_path["<other>"] == n - (MAX_PATHS - 1)
    assert sum(by_path.values()) == 2 * n


def _asgi_get(path: str) -> list[dict]:
    """Every message the app sends for one GET, fed a body-less request."""
    messages: list[dict] = []
    asked = False

    async def receive() -> dict:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays connected until the app is done
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "size": len(message.get("body", b""))}
            message.pop("body", None)  # keep no body: the point is what the app holds
        messages.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"host", b"backend")], "client": ("10.0.0.1", 1),
        "server": ("backend", 8001),
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    return messages


def test_bytes_is_streamed_in_slices_with_its_content_length() -> None:
    n = 8 * 1024 * 1024 + 5
    tracemalloc.start()
    try:
        messages = _asgi_get(f"/bytes/{n}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    start = messages[0]
    assert start["status"] == 200
    assert (b"content-length", str(n).encode()) in start["headers"]
    sizes = [m["size"] for m in messages[1:] if m["size"]]
    assert sum(sizes) == n
    assert max(sizes) <= 64 * 1024
    assert peak < n // 8  # never the whole body at once (it was n bytes and more before)


def test_bytes_zero_is_an_empty_body_with_length_zero() -> None:
    r = call("GET", "/bytes/0")
    assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == "0"


@pytest.mark.parametrize(
    ("env", "argv", "named"),
    [
        ({}, ["--host", "no such host"], "--host/BACKEND_HOST"),
        ({"BACKEND_HOST": "bad_name.invalid"}, [], "--host/BACKEND_HOST"),
        ({"BACKEND_ACCESS_LOG": "maybe"}, [], "BACKEND_ACCESS_LOG"),
        ({"FAIL_RATE": "2"}, [], "FAIL_RATE"),
    ],
)
def test_a_bad_value_is_one_line_and_exit_2_before_any_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: dict, argv: list, named: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("backend: error: ") and named in err


def test_access_log_env_reads_the_usual_spellings(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, want in (("on", True), ("TRUE", True), ("0", False), ("off", False)):
        monkeypatch.setenv("BACKEND_ACCESS_LOG", raw)
        assert parse_args([]).access_log is want
