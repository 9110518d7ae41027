"""The HTTP request cycle, bytes in and bytes out over a fake transport (Uvicorn's test style).

Every app is wrapped in the spec checker (``asgi_checker.Checked``): each test also asserts
that the scopes and events the server produced were valid ASGI.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from asgilab.config import Config
from asgilab.cycle import APP_NOT_RECEIVING, BODY_HIGH_WATER
from asgilab.errors import ClientDisconnected
from asgilab.site import AppSite
from tests.unit.asgi_checker import Checked, Client, parse_responses

GET = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())


def make_site(app: Any, **cfg: Any) -> tuple[AppSite, Checked]:
    checked = Checked(app)
    config = dataclasses.replace(Config(app="tests:app", access_log=False), **cfg)
    site = AppSite(checked, config, asyncio.get_running_loop())
    site.server = ("127.0.0.1", 8000)
    return site, checked


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


def test_hello_gets_one_write_a_computed_length_and_keeps_the_connection() -> None:
    async def main() -> None:
        site, checked = make_site(hello)
        c = Client(site)
        writes: list[bytes] = []
        real = c.transport.write
        c.transport.write = lambda d: (writes.append(bytes(d)), real(d))  # type: ignore[method-assign]
        c.send(GET)
        (r,) = await c.responses()
        assert (r.status, r.body, r.get("content-length")) == (200, b"hello", "5")
        assert r.get("server") == "asgilab" and r.get("date") and r.get("connection") is None
        assert len(writes) == 1, "head and body of a small response leave in one write"
        assert not c.transport.closed
        assert checked.problems == []

    run(main)


def test_scope_has_honest_types_order_and_duplicates() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)
        scope["state"]["mine"] = 1  # must not leak into the next request's state
        await hello(scope, receive, send)

    async def main() -> None:
        site, checked = make_site(app, root_path="/api")
        site.state = {"pool": "shared"}
        c = Client(site, peer=("10.0.0.7", 41000))
        c.send(b"GET /a%20b/c?x=1&y=%20 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\nAccept: */*\r\n\r\n")
        await c.responses()
        assert seen["type"] == "http" and seen["http_version"] == "1.1" and seen["method"] == "GET"
        assert seen["path"] == "/api/a b/c" and seen["raw_path"] == b"/api/a%20b/c"
        assert seen["query_string"] == b"x=1&y=%20" and seen["root_path"] == "/api"
        assert seen["headers"] == [(b"host", b"h"), (b"x-a", b"1"), (b"x-a", b"2"), (b"accept", b"*/*")]
        assert seen["client"] == ("10.0.0.7", 41000) and seen["server"] == ("127.0.0.1", 8000)
        assert seen["asgi"] == {"version": "3.0", "spec_version": "2.4"}
        assert set(seen["extensions"]) == {"http.response.pathsend", "http.response.trailers"}
        assert seen["state"] == {"pool": "shared", "mine": 1} and site.state == {"pool": "shared"}
        assert checked.problems == []

    run(main)


def test_request_body_streams_dechunked_with_more_body() -> None:
    got: list[tuple[bytes, bool]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            ev = await receive()
            got.append((ev["body"], ev["more_body"]))
            if not ev["more_body"]:
                break
        await hello(scope, receive, send)

    async def main() -> None:
        site, checked = make_site(app)
        c = Client(site)
        c.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await c.until(lambda: len(got) == 1)
        c.send(b"6\r\n world\r\n0\r\n\r\n")
        (r,) = await c.responses()
        assert r.status == 200
        assert b"".join(b for b, _ in got) == b"hello world"
        assert got[0] == (b"hello", True) and got[-1][1] is False
        assert checked.problems == []

    run(main)


async def streaming(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"one ", "more_body": True})
    await send({"type": "http.response.body", "body": b"two", "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def test_streamed_response_without_length_is_chunked_for_http11_and_close_delimited_for_10() -> None:
    async def main() -> None:
        site, _ = make_site(streaming)
        c = Client(site)
        c.send(GET)
        (r,) = await c.responses()
        assert r.get("transfer-encoding") == "chunked" and r.body == b"one two"
        assert not c.transport.closed
        c10 = Client(site)
        c10.send(b"GET / HTTP/1.0\r\n\r\n")
        await c10.until(lambda: c10.transport.closed)
        raw = c10.take()
        assert b"transfer-encoding" not in raw.lower() and raw.endswith(b"\r\n\r\none two")
        assert b"connection: close" in raw

    run(main)


def test_disconnect_after_the_response_and_when_the_client_leaves() -> None:
    events: list[str] = []
    raised: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/done":
            await hello(scope, receive, send)
            events.append((await receive())["type"])  # the response is complete: disconnect
            return
        await receive()  # the (empty) body
        events.append((await receive())["type"])  # waits until the client leaves
        try:
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": b"late"})
        except OSError as exc:
            raised.append(exc)
            raise

    async def main(caplog: Any = None) -> None:
        site, checked = make_site(app)
        c = Client(site)
        c.send(b"GET /done HTTP/1.1\r\nHost: x\r\n\r\n")
        await c.responses()
        await c.until(lambda: events == ["http.disconnect"])
        c2 = Client(site)
        c2.send(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.02)
        c2.transport.close()
        await c2.until(lambda: len(events) == 2 and site.running == 0)
        assert events == ["http.disconnect", "http.disconnect"]
        # send() after the disconnect raised the server's OSError subclass, which it swallowed.
        assert len(raised) == 1 and isinstance(raised[0], ClientDisconnected)
        assert isinstance(raised[0], OSError)
        assert checked.problems == []

    run(main)


def test_exception_before_the_response_is_a_500_with_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise ValueError("boom")

    async def main() -> None:
        site, _ = make_site(app)
        c = Client(site)
        c.send(GET)
        (r,) = await c.responses()
        assert r.status == 500 and r.body == b"500 Internal Server Error\n"
        assert not c.transport.closed, "the connection survives an app error before the response"

    with caplog.at_level(logging.ERROR, logger="asgilab.cycle"):
        run(main)
    rec = [r for r in caplog.records if "Exception in ASGI application" in r.getMessage()]
    assert rec and rec[0].exc_info is not None and "boom" in str(rec[0].exc_info[1])


def test_exception_after_the_response_started_closes_the_connection() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise ValueError("midway")

    async def main() -> None:
        site, _ = make_site(app)
        c = Client(site)
        c.send(GET)
        assert await c.until(lambda: c.transport.closed)
        raw = c.take()
        assert raw.startswith(b"HTTP/1.1 200 OK") and raw.endswith(b"part")

    run(main)


def test_app_returning_without_a_response_is_a_500() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    async def main() -> None:
        site, _ = make_site(app)
        c = Client(site)
        c.send(GET)
        (r,) = await c.responses()
        assert r.status == 500

    run(main)


def test_send_waits_while_the_transport_is_paused() -> None:
    progress: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200})
        for i in range(3):
            await send({"type": "http.response.body", "body": b"x" * 10, "more_body": True})
            progress.append(i)
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        site, _ = make_site(app)
        c = Client(site)
        c.conn.pause_writing()  # the client's socket buffer is full
        c.send(GET)
        await asyncio.sleep(0.05)
        assert progress == [], "send() returned although the transport is paused"
        c.conn.resume_writing()
        (r,) = await c.responses()
        assert progress == [0, 1, 2] and r.body == b"x" * 30

    run(main)


def test_reading_pauses_while_the_app_does_not_receive_and_resumes_when_it_does() -> None:
    gate = asyncio.Event()
    total = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal total
        await gate.wait()
        while True:
            ev = await receive()
            total += len(ev["body"])
            if not ev["more_body"]:
                break
        await hello(scope, receive, send)

    async def main() -> None:
        site, checked = make_site(app)
        c = Client(site)
        n = 4 * BODY_HIGH_WATER
        c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % n)
        chunk = b"y" * 16384
        sent = 0
        while c.transport.reading and sent < n:
            c.send(chunk)
            sent += len(chunk)
        assert not c.transport.reading and c.conn.gate.reasons & APP_NOT_RECEIVING
        assert sent <= BODY_HIGH_WATER + len(chunk), "the buffer for a non-receiving app is bounded"
        gate.set()
        await c.until(lambda: c.transport.reading)
        while sent < n:
            await c.until(lambda: c.transport.reading)
            c.send(chunk)
            sent += len(chunk)
        (r,) = await c.responses()
        assert r.status == 200 and total == n
        assert checked.problems == []

    run(main)


def test_head_and_204_have_no_body_bytes() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        status = 204 if scope["path"] == "/none" else 200
        await send({"type": "http.response.start", "status": status})
        await send({"type": "http.response.body", "body": b"" if status == 204 else b"hello"})

    async def main() -> None:
        site, _ = make_site(app)
        c = Client(site)
        c.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.05)
        raw = c.take()
        assert raw.endswith(b"\r\n\r\n") and b"content-length: 5" in raw
        c.send(b"GET /none HTTP/1.1\r\nHost: x\r\n\r\n")
        (r,) = await c.responses()
        assert r.status == 204 and r.get("content-length") is None and r.body == b""

    run(main)


def test_pipelined_requests_are_answered_in_order() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            await asyncio.sleep(0.05)
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    async def main() -> None:
        site, _ = make_site(app)
        c = Client(site)
        c.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        rs = await c.responses(2)
        assert [r.body for r in rs] == [b"/slow", b"/fast"]

    run(main)


def test_expect_100_continue_is_answered_when_the_app_reads_the_body() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": body})

    async def main() -> None:
        site, _ = make_site(app)
        c = Client(site)
        c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        await c.until(lambda: bytes(c.transport.buffer).startswith(b"HTTP/1.1 100 Continue\r\n\r\n"))
        c.take()
        c.send(b"ok")
        (r,) = await c.responses()
        assert r.body == b"ok"

    run(main)


def test_pathsend_and_trailers(tmp_path: Path) -> None:
    f = tmp_path / "file.txt"
    f.write_bytes(b"file body " * 1000)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/file":
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.pathsend", "path": str(f)})
            return
        await send({"type": "http.response.start", "status": 200, "trailers": True})
        await send({"type": "http.response.body", "body": b"data"})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc")]})

    async def main() -> None:
        site, _ = make_site(app)
        c = Client(site)
        c.send(b"GET /file HTTP/1.1\r\nHost: x\r\n\r\n")
        (r,) = await c.responses()
        assert r.body == f.read_bytes() and r.get("content-length") == str(len(f.read_bytes()))
        c.take()
        c.send(b"GET /t HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n")
        await c.responses()
        raw = c.take()
        assert b"transfer-encoding: chunked" in raw and raw.endswith(
            b"4\r\ndata\r\n0\r\nx-checksum: abc\r\n\r\n"
        )

    run(main)


def test_concurrency_cap_answers_503_with_retry_after() -> None:
    release = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await hello(scope, receive, send)

    async def main() -> None:
        site, _ = make_site(app, limit_concurrency=1)
        a, b = Client(site), Client(site)
        a.send(GET)
        await asyncio.sleep(0.01)
        b.send(GET)
        (r,) = await b.responses()
        assert r.status == 503 and r.get("retry-after") == "1"
        release.set()
        (ra,) = await a.responses()
        assert ra.status == 200

    run(main)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"b" * 70000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
    ],
)
def test_engine_limits_refuse_before_the_app_runs(request_bytes: bytes, status: int) -> None:
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await hello(scope, receive, send)

    async def main() -> None:
        site, _ = make_site(app)
        c = Client(site)
        c.send(request_bytes)
        (r,) = await c.responses()
        assert r.status == status and r.get("connection") == "close"
        assert c.transport.eof, "a refusal half-closes (lingering close)"
        assert calls == []

    run(main)


def test_slow_headers_get_408_and_an_idle_keep_alive_connection_is_closed() -> None:
    async def main() -> None:
        site, _ = make_site(hello, header_timeout=0.05, keep_alive=0.05)
        slow = Client(site)
        slow.send(b"GET / HTTP/1.1\r\nHost")
        (r,) = await slow.responses()
        assert r.status == 408
        idle = Client(site)
        idle.send(GET)
        await idle.responses()
        assert await idle.until(lambda: idle.transport.closed)
        assert not idle.transport.eof, "an idle keep-alive connection closes without a 408"

    run(main)


def test_chunked_body_over_the_limit_is_413_while_the_app_reads() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive())["type"] == "http.request":
            pass

    async def main() -> None:
        site, _ = make_site(app, max_body_size=10)
        c = Client(site)
        c.send(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n")
        await asyncio.sleep(0.01)
        c.send(b"8\r\n12345678\r\n")
        (r,) = await c.responses()
        assert r.status == 413
        await c.until(lambda: site.running == 0)

    run(main)


def test_proxy_headers_only_from_trusted_peers() -> None:
    seen: list[tuple[Any, str]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["client"], scope["scheme"]))
        await hello(scope, receive, send)

    async def main() -> None:
        site, _ = make_site(app, forwarded_allow_ips="10.0.0.0/8")
        req = (
            b"GET / HTTP/1.1\r\nHost: x\r\n"
            b"X-Forwarded-For: 1.2.3.4, 5.6.7.8\r\nX-Forwarded-Proto: https\r\n\r\n"
        )
        trusted = Client(site, peer=("10.1.2.3", 1000))
        trusted.send(req)
        await trusted.responses()
        other = Client(site, peer=("192.168.1.1", 2000))
        other.send(req)
        await other.responses()
        assert seen == [(("5.6.7.8", 0), "https"), (("192.168.1.1", 2000), "http")]

    run(main)


def test_access_log_line_per_request() -> None:
    import io

    from engine.accesslog import AccessLog

    async def main() -> None:
        site, _ = make_site(hello)
        stream = io.StringIO()
        site.access_log = AccessLog(stream, None)
        c = Client(site)
        c.send(GET)
        await c.responses()
        assert '"method": "GET", "path": "/hello", "status": 200, "bytes": 5' in stream.getvalue()

    run(main)


def test_parse_responses_helper_sanity() -> None:
    (r,) = parse_responses(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert r.complete and r.body == b"ok"


def test_eager_start_needs_no_task_unless_the_app_waits() -> None:
    async def waits(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/wait":
            await asyncio.sleep(0.01)
        await hello(scope, receive, send)

    async def main() -> None:
        site, checked = make_site(waits, eager=True)
        c = Client(site)
        c.send(GET)
        assert parse_responses(bytes(c.transport.buffer))[0].status == 200, "answered inside data_received"
        assert not site.tasks
        c.take()
        c.send(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        assert len(site.tasks) == 1
        (r,) = await c.responses()
        assert r.status == 200 and r.body == b"hello"
        assert checked.problems == []

    run(main)


def test_eager_start_passes_cancellation_into_the_app() -> None:
    cancelled: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main() -> None:
        site, _ = make_site(app, eager=True)
        c = Client(site)
        c.send(GET)
        (task,) = site.tasks
        task.cancel()
        await asyncio.wait([task])
        assert cancelled == [True] and site.running == 0

    run(main)


@pytest.mark.parametrize(
    "header",
    [(b"x-bad\r\ninjected", b"1"), (b"x-ok", b"a\r\nset-cookie: evil"), (b"bad name", b"1"), (b"", b"1")],
)
def test_response_header_injection_is_refused_with_a_500(header: tuple[bytes, bytes]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [header]})
        await send({"type": "http.response.body", "body": b"x"})

    async def main() -> None:
        site, _ = make_site(app)
        c = Client(site)
        c.send(GET)
        (r,) = await c.responses()
        assert r.status == 500 and b"injected" not in bytes(c.transport.buffer)
        assert b"evil" not in bytes(c.transport.buffer)

    run(main)


def test_absolute_form_target_gives_path_and_query() -> None:
    seen: list[tuple[str, bytes, bytes]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["path"], scope["raw_path"], scope["query_string"]))
        await hello(scope, receive, send)

    async def main() -> None:
        site, checked = make_site(app)
        c = Client(site)
        c.send(b"GET http://h:8000/p%C3%A9?q=1 HTTP/1.1\r\nHost: h\r\n\r\n")
        await c.responses()
        assert seen == [("/p\u00e9", b"/p%C3%A9", b"q=1")] and checked.problems == []

    run(main)
