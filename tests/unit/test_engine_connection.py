"""The connection engine alone, behind a minimal Site and handler (neither the proxy nor ASGI).

What a handler may rely on from ``engine/handler.py``'s contract: pipelined requests start
one at a time in order, the body reaches the handler being parsed, refusals never reach a
handler, ``request_finished`` decides keep-alive, ``hand_over`` forwards events to a Takeover,
``shutdown`` closes idle connections, and the connection cap answers 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from engine.connection import HTTPConnection
from engine.framing import Framing, request_framing
from engine.handler import Headers, Prepared, RequestHandler, Site, Takeover
from engine.limits import Limits
from tests.unit.asgi_checker import Client


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())


class EchoHandler:
    """Answers with the target and the body it got, once the body is complete."""

    def __init__(
        self, site: EchoSite, conn: HTTPConnection, target: bytes, framing: Framing, keep: bool
    ) -> None:
        self.site, self.conn, self.target = site, conn, target
        self.has_body = framing.framing != 0
        self.body_done = not self.has_body
        self.head_sent = False
        self.client_close = not keep
        self.started = False
        self.body = b""
        self.aborted = False

    def start(self) -> None:
        self.started = True
        self.site.started.append(self.target)
        if self.body_done and not self.site.hold:
            self.respond()

    def respond(self) -> None:
        body = self.target + b" " + self.body
        self.head_sent = True
        self.conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.conn.request_finished(self)

    def on_body(self, chunk: bytes) -> None:
        self.body += chunk

    def on_body_end(self) -> None:
        self.body_done = True
        if self.started and not self.head_sent and not self.site.hold:
            self.respond()

    def fail(self, status: int, body: bytes) -> None:
        self.head_sent = True
        self.conn.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
        self.client_close = True
        self.conn.request_finished(self)

    def abort(self) -> None:
        self.aborted = True

    def client_write_paused(self) -> None:
        pass

    def client_write_resumed(self) -> None:
        pass


class EchoSite:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.loop = asyncio.get_running_loop()
        self.connections: set[HTTPConnection] = set()
        self.refused: set[HTTPConnection] = set()
        self.counters = None
        self.started: list[bytes] = []
        self.rejected_log: list[int] = []
        self.handlers: list[EchoHandler] = []
        self.hold = False

    def prepare(
        self, method: bytes, target: bytes, headers: Headers, client_ip: bytes, http11: bool
    ) -> Framing:
        return request_framing(headers, http11)

    def handler(
        self,
        conn: HTTPConnection,
        method: bytes,
        target: bytes,
        headers: Headers,
        prepared: Prepared,
        http11: bool,
        keep_alive: bool,
        upgrade: bool,
        t0: float,
    ) -> EchoHandler:
        assert isinstance(prepared, Framing)
        h = EchoHandler(self, conn, target, prepared, keep_alive)
        self.handlers.append(h)
        return h

    def rejected(
        self,
        client_ip: bytes,
        status: int,
        reason: str,
        nbytes: int,
        target: bytes,
        elapsed: float,
        access: bool,
    ) -> None:
        self.rejected_log.append(status)


def test_the_echo_site_and_handler_satisfy_the_contracts() -> None:
    async def main() -> None:
        site: Site = EchoSite()
        conn = HTTPConnection(site)
        h: RequestHandler = EchoHandler(site, conn, b"/", Framing(0, 0, False, None), True)  # type: ignore[arg-type]
        assert h.body_done

    run(main)


def test_pipelined_requests_start_one_at_a_time_in_order() -> None:
    async def main() -> None:
        site = EchoSite()
        site.hold = True
        c = Client(site)
        c.send(
            b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert site.started == [b"/1"], "a queued request does not start before the active one ends"
        assert not c.transport.reading, "reading pauses while a complete request is queued"
        assert site.handlers[1].body == b"abc", "the body goes to the handler being parsed, queued or not"
        site.hold = False
        for h in list(site.handlers):
            if h.started and not h.head_sent:
                h.respond()
        rs = await c.responses(3)
        assert [r.body for r in rs] == [b"/1 ", b"/2 abc", b"/3 "]
        assert c.transport.reading and not c.transport.closed

    run(main)


def test_refusals_never_reach_a_handler_and_answer_after_earlier_responses() -> None:
    async def main() -> None:
        site = EchoSite()
        c = Client(site)
        c.send(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\nCONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n")
        rs = await c.responses(2)
        assert [r.status for r in rs] == [200, 405]
        assert [h.target for h in site.handlers] == [b"/ok"]
        assert site.rejected_log == [405] and c.transport.eof

    run(main)


def test_request_finished_closes_when_the_handler_says_so_or_http10() -> None:
    async def main() -> None:
        site = EchoSite()
        c = Client(site)
        c.send(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await c.responses()
        assert await c.until(lambda: c.transport.closed)
        c10 = Client(site)
        c10.send(b"GET /b HTTP/1.0\r\n\r\n")
        await c10.responses()
        assert await c10.until(lambda: c10.transport.closed)

    run(main)


def test_client_gone_aborts_the_active_and_queued_handlers() -> None:
    async def main() -> None:
        site = EchoSite()
        site.hold = True
        c = Client(site)
        c.send(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        c.transport.close()
        await c.until(lambda: not site.connections)
        assert [h.aborted for h in site.handlers] == [True, True]

    run(main)


class Recorder:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.lost = False
        self.paused = False
        self.shut = False

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def shutdown(self) -> None:
        self.shut = True


def test_hand_over_forwards_every_event_to_the_takeover_until_released() -> None:
    async def main() -> None:
        site = EchoSite()
        site.hold = True
        c = Client(site)
        c.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nEARLY")
        rec = Recorder()
        t: Takeover = rec
        rest = c.conn.hand_over(site.handlers[0], t)
        assert rest == b"EARLY" and c.transport.reading
        c.send(b"frame")
        c.conn.pause_writing()
        c.conn.shutdown()
        assert rec.data == [b"frame"] and rec.paused and rec.shut
        c.transport.close()
        await c.until(lambda: rec.lost)
        assert c.conn in site.connections, "still served until the takeover releases it"
        c.conn.released(None)
        assert c.conn not in site.connections

    run(main)


def test_shutdown_closes_idle_connections_and_ends_keep_alive_of_busy_ones() -> None:
    async def main() -> None:
        site = EchoSite()
        idle, busy = Client(site), Client(site)
        site.hold = True
        busy.send(b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n")
        for conn in list(site.connections):
            conn.shutdown()
        assert await idle.until(lambda: idle.transport.closed)
        assert not busy.transport.closed
        site.handlers[0].respond()
        (r,) = await busy.responses()
        assert r.status == 200 and await busy.until(lambda: busy.transport.closed)

    run(main)


def test_connections_over_the_cap_get_503_with_retry_after() -> None:
    async def main() -> None:
        site = EchoSite(Limits(max_connections=1))
        Client(site)
        extra = Client(site)
        (r,) = await extra.responses()
        assert r.status == 503 and r.get("Retry-After") == "1" and extra.transport.eof
        assert site.rejected_log == [503]

    run(main)


def test_keep_alive_idle_and_header_deadlines_are_separate() -> None:
    async def main() -> None:
        site = EchoSite(Limits(header_timeout=5.0, keepalive_timeout=0.05))
        c = Client(site)
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await c.responses()
        assert await c.until(lambda: c.transport.closed, timeout=3.0), "idle keep-alive closed"
        site2 = EchoSite(Limits(header_timeout=0.05, keepalive_timeout=5.0))
        slow = Client(site2)
        slow.send(b"GET / HTTP/1.1\r\nHo")
        (r,) = await slow.responses()
        assert r.status == 408 and site2.rejected_log == [408]

    run(main)


def test_a_stalled_body_is_408_but_not_while_the_server_itself_holds_reading() -> None:
    async def main() -> None:
        site = EchoSite(Limits(body_timeout=0.05))
        c = Client(site)
        c.conn.gate.pause(64)  # a handler's own reason: the server is not reading, not the client
        c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12")
        await asyncio.sleep(0.2)
        assert site.rejected_log == []
        c.conn.gate.resume(64)
        (r,) = await c.responses()
        assert r.status == 408 and site.rejected_log == [408]

    run(main)


def test_framing_checks() -> None:
    import pytest

    from engine.framing import CHUNKED, LENGTH, NO_BODY, BadRequest

    assert request_framing([(b"Host", b"x")], True).framing == NO_BODY
    f = request_framing([(b"Host", b"x"), (b"Content-Length", b"5"), (b"content-length", b"5")], True)
    assert (f.framing, f.content_length) == (LENGTH, 5)
    assert request_framing([(b"Host", b"x"), (b"Transfer-Encoding", b"chunked")], True).framing == CHUNKED
    for bad in (
        [(b"Host", b"x"), (b"Content-Length", b"5"), (b"Content-Length", b"6")],
        [(b"Host", b"x"), (b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")],
        [(b"Host", b"x"), (b"Transfer-Encoding", b"gzip, chunked")],
        [(b"Host", b"x"), (b"Content-Length", b"-1")],
        [(b"Host", b"x"), (b"Host", b"y")],
        [],
    ):
        with pytest.raises(BadRequest):
            request_framing(bad, True)
    assert request_framing([], False).framing == NO_BODY, "HTTP/1.0 needs no Host"


def test_a_parse_error_after_an_early_response_is_answered_not_raised() -> None:
    """Found by the proxy fuzzer: a handler that answered before its request body ended (an
    upstream replying early) was neither active nor queued when the rest of that body broke the
    framing, and ``bad_request`` raised ValueError out of ``data_received``."""

    async def main() -> None:
        site = EchoSite()
        site.hold = True
        c = Client(site)
        c.send(b"POST /early HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        (h,) = site.handlers
        h.respond()  # the response is complete while the body is still coming (keep-alive)
        c.send(b"zz\r\n")  # not a chunk size: the rest of that body cannot be read
        first, second = await c.responses(2)
        assert first.status == 200 and second.status == 400
        assert site.rejected_log == [400]

    run(main)
