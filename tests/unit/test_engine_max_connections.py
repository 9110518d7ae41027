"""``--max-connections`` bounds sockets, not only served connections: a connection over the cap
gets its 503 and lingers only while few others do (engine.limits.REFUSED_LINGERING); the rest are
closed at once, so a flood of connects leaves cap + that bound open, and every refusal is counted.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from typing import Any

import pytest

from asgilab.config import Config
from asgilab.site import AppSite
from engine import connection
from engine.accesslog import AccessLog
from engine.connection import HTTPConnection
from engine.limits import Limits
from proxy.counters import Counters

CAP, LINGERING, FLOOD = 2, 3, 40


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _until(cond: Callable[[], bool], guard: float = 20.0) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), guard)


async def _status_then_eof(port: int, keep: list[asyncio.StreamWriter]) -> str:
    """What one more client gets: its response's status line, then the end of the connection.

    The client keeps its side open (``keep``): a lingering server socket stays open until then.
    """
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        keep.append(writer)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 20)
    except ConnectionResetError:  # closed at once with the request unread: the kernel resets
        return "reset"
    return data.split(b"\r\n", 1)[0].decode()


def test_a_flood_of_connections_over_the_cap_leaves_only_a_bounded_number_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connection, "REFUSED_LINGERING", LINGERING)
    open_now = [0]

    class Counted(HTTPConnection):
        """Counts the server's sockets: made when accepted, lost once the socket is closed."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            open_now[0] += 1
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            open_now[0] -= 1
            super().connection_lost(exc)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        events, stream = Counters(), io.StringIO()
        # A long linger: a refused socket that lingers is still open when the test looks.
        limits = Limits(max_connections=CAP, linger=60.0)
        site = AppSite(
            hello, Config(app="x:app"), loop, limits=limits, counters=events, access_log=AccessLog(stream)
        )
        server = await loop.create_server(lambda: Counted(site), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        served = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CAP)]
        flood: list[asyncio.StreamWriter] = []
        try:
            for reader, writer in served:  # two keep-alive connections being served
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200")
            outcomes = await asyncio.gather(*(_status_then_eof(port, flood) for _ in range(FLOOD)))
            assert all(o in ("HTTP/1.1 503 Service Unavailable", "reset") for o in outcomes), outcomes
            assert outcomes.count("HTTP/1.1 503 Service Unavailable") >= LINGERING
            # Long before the linger ends, only the served ones and the bounded lingering ones are open.
            await _until(lambda: open_now[0] == CAP + LINGERING)
            assert len(site.connections) == CAP and len(site.refused) == LINGERING
            assert events.count("connections_refused", "lingered") == LINGERING
            assert events.count("connections_refused", "closed") == FLOOD - LINGERING
            assert events.count("rejected", "503") == FLOOD
            lines = [json.loads(x) for x in stream.getvalue().splitlines()]
            assert sum(1 for x in lines if x["status"] == 503) == FLOOD
            # A served connection leaving frees a slot at once (lingering refusals do not hold it).
            served[0][1].close()
            await _until(lambda: len(site.connections) == CAP - 1)
            assert await _status_then_eof_keepalive(port) == "HTTP/1.1 200 OK"
        finally:
            for writer in [w for _, w in served] + flood:
                writer.close()
            server.close()

    asyncio.run(main())


async def _status_then_eof_keepalive(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 20)
    writer.close()
    return data.split(b"\r\n", 1)[0].decode()


def test_the_proxy_counts_its_refusals_on_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.harness import FakeUpstream, proxy
    from tests.unit.test_proxy_metrics import scrape, value

    monkeypatch.setattr(connection, "REFUSED_LINGERING", 2)

    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port, max_connections=1) as srv:
            state = srv.state
            assert state is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)  # the one served
            flood: list[asyncio.StreamWriter] = []
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
                outcomes = await asyncio.gather(*(_status_then_eof(srv.port, flood) for _ in range(8)))
                assert set(outcomes) <= {"HTTP/1.1 503 Service Unavailable", "reset"}, outcomes
                site = srv.site
                assert site is not None and len(site.refused) == 2  # the other 6 are already closed
                samples = await scrape(srv)
                assert value(samples, "connections_refused_total", reason="lingered") == 2
                assert value(samples, "connections_refused_total", reason="closed") == 6
                assert value(samples, "rejected_total", status="503") == 8
            finally:
                for w in [writer, *flood]:
                    w.close()

    with asyncio.Runner() as runner:
        runner.run(main())
