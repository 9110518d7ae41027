"""The response-head caches (``asgilab.cycle._scanned`` and ``_HEADS``): a repeated header list is
scanned once, and what was decided (framing, ``Connection: close``, refusal) holds on every request."""

from __future__ import annotations

import asyncio
from typing import Any

from asgilab import cycle
from tests.unit.asgi_checker import Client
from tests.unit.test_asgilab_cycle import GET, make_site


def test_a_repeated_header_list_keeps_its_framing_and_close_on_every_request() -> None:
    headers = [(b"content-type", b"text/plain"), (b"Content-Length", b"5"), (b"x-n", b"1")]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        close = scope["path"] == "/close"
        hs = [*headers, (b"connection", b"close")] if close else headers
        await send({"type": "http.response.start", "status": 200, "headers": hs})
        await send({"type": "http.response.body", "body": b"hello"})

    async def main() -> None:
        site, checked = make_site(app)
        for _ in range(3):  # the first request fills the cache, the next ones read it
            c = Client(site)
            c.send(GET + GET)
            r1, r2 = await c.responses(2)
            for r in (r1, r2):
                assert (r.status, r.body, r.get("content-length"), r.get("x-n")) == (200, b"hello", "5", "1")
                assert r.get("transfer-encoding") is None
            assert not c.transport.closed
        for _ in range(2):
            c = Client(site)
            c.send(b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n")
            (r,) = await c.responses()
            assert r.get("connection") == "close" and c.transport.closed
        assert checked.problems == []

    asyncio.run(main())


def test_pairs_given_as_lists_and_a_refused_list_is_refused_again() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/bad":
            hs: Any = [(b"x-ok", b"a\r\nset-cookie: evil")]
        else:
            hs = [[b"x-list", b"yes"]]  # not hashable: scanned without the cache
        await send({"type": "http.response.start", "status": 200, "headers": hs})
        await send({"type": "http.response.body", "body": b"x"})

    async def main() -> None:
        site, _ = make_site(app)
        for _ in range(2):
            c = Client(site)
            c.send(GET)
            (r,) = await c.responses()
            assert (r.status, r.get("x-list")) == (200, "yes")
            c = Client(site)
            c.send(b"GET /bad HTTP/1.1\r\nHost: x\r\n\r\n")
            (r,) = await c.responses()
            assert r.status == 500 and b"evil" not in bytes(c.transport.buffer)

    asyncio.run(main())


def test_the_cache_is_bounded() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        etag = scope["query_string"]  # a header that differs on every request
        await send({"type": "http.response.start", "status": 200, "headers": [(b"etag", etag)]})
        await send({"type": "http.response.body", "body": b"x"})

    async def main() -> None:
        site, _ = make_site(app)
        for i in range(cycle.SCANNED_MAX + 50):
            c = Client(site)
            c.send(b"GET /?%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
            (r,) = await c.responses()
            assert r.get("etag") == str(i)
        assert len(cycle._SCANNED) <= cycle.SCANNED_MAX and len(cycle._HEADS) <= cycle.HEADS_MAX

    asyncio.run(main())


def test_a_cached_head_still_follows_the_request_http10_head_and_an_unread_body() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-same", b"1")]})
        await send({"type": "http.response.body", "body": b"hello"})

    async def main() -> None:
        site, checked = make_site(app)
        for _ in range(2):
            c = Client(site)
            c.send(GET)
            (r,) = await c.responses()
            assert (r.get("content-length"), r.get("connection"), c.transport.closed) == ("5", None, False)
            c = Client(site)
            c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            (r,) = await c.responses()
            assert r.get("connection") == "keep-alive" and r.body == b"hello"
            c = Client(site)
            c.send(b"GET / HTTP/1.0\r\n\r\n")
            (r,) = await c.responses()
            assert r.get("connection") == "close" and c.transport.closed
            c = Client(site)
            c.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
            (r,) = await c.responses(head=True)
            assert r.get("content-length") == "5" and bytes(c.transport.buffer).endswith(b"\r\n\r\n")
            c = Client(site)
            c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")  # body not all read
            (r,) = await c.responses()
            assert r.get("connection") == "close"
        assert checked.problems == []

    asyncio.run(main())
