"""Fuzz target: client bytes through the proxy's whole request path, in memory.

One input is ``client bytes [SEP upstream response bytes]`` plus a first byte that picks how
the client bytes are cut into reads. The real ``ProxyServer`` objects run on a plain asyncio
loop whose ``create_connection`` is replaced by an in-memory upstream, so every upstream
connection the proxy dials is a ``MemoryTransport`` read by a strict llhttp request parser.

Invariants (a violation raises ``Finding``; any other exception is a crash too):
* nothing raises out of the protocol callbacks, the loop's exception handler stays silent and
  nothing is logged with a traceback;
* every byte the proxy writes upstream parses as HTTP/1.1 requests (no parse error), each with
  the proxy's own framing: never Content-Length together with Transfer-Encoding, a
  Transfer-Encoding only of ``chunked``, no hop-by-hop header (Connection, Keep-Alive, TE,
  Trailer, Proxy-*), at most one Host;
* every byte written to the client parses as HTTP/1.1 responses (until a 101 tunnel);
* after the client and upstream connections close, nothing is left: no connection in the
  site's set, no request in flight on the endpoint, no task still pending (memory bounded).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import httptools

from fuzz.invariants import Finding, LogWatch, install_log_watch, watch_loop
from fuzz.wire import MemoryTransport, segments

SEP = b"\n--upstream--\n"
DEFAULT_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Backend-Id: b1\r\n\r\nok"
# Small limits, so inputs a fuzzer can reach exercise every refusal (413, 414, 431) too.
LIMITS = {
    "max_request_line": 256,
    "max_header_bytes": 1024,
    "max_headers": 16,
    "max_body_size": 2048,
}
UPSTREAM_FORBIDDEN = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"proxy-connection", b"proxy-authorization"}
)
MAX_UPSTREAM_CONNECTIONS = 8  # per input; more would mean the proxy dials in a loop


class UpstreamSide(asyncio.Protocol):
    """Reads what the proxy wrote to one upstream connection, checks it, answers each request."""

    def __init__(self, target: ProxyPath, transport: MemoryTransport) -> None:
        self.target = target
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.tunnel = False
        self.head_only = False

    # -- what the proxy writes ------------------------------------------------------------------
    def written(self, data: bytes) -> None:
        if self.tunnel:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.tunnel = True  # an Upgrade request: what follows is the tunnel's, not HTTP
        except httptools.HttpParserError as exc:
            inner = exc.__cause__ or exc.__context__
            if isinstance(inner, Finding):  # raised by one of the checks below, inside llhttp
                raise inner from None
            raise Finding(f"the proxy wrote an unparsable request upstream ({exc}): {data[:200]!r}") from None

    def on_message_begin(self) -> None:
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        names = [n for n, _ in self.headers]
        te = [v for n, v in self.headers if n == b"transfer-encoding"]
        if te and b"content-length" in names:
            raise Finding(f"upstream request with Content-Length and Transfer-Encoding: {self.headers!r}")
        if te and te != [b"chunked"]:
            raise Finding(f"upstream Transfer-Encoding other than chunked: {te!r}")
        if names.count(b"content-length") > 1 or names.count(b"host") > 1:
            raise Finding(f"upstream request with repeated framing or Host: {self.headers!r}")
        upgrade = self.parser.should_upgrade()
        for n in names:
            if n in UPSTREAM_FORBIDDEN and not (upgrade and n == b"connection"):
                raise Finding(f"hop-by-hop header {n!r} forwarded upstream")
        self.head_only = self.parser.get_method() == b"HEAD"

    def on_message_complete(self) -> None:
        self.target.upstream_requests += 1
        response = self.target.next_response()
        self.target.loop.call_soon(self.answer, response)

    def answer(self, response: bytes) -> None:
        if self.transport.closing:
            return
        for seg in segments(response, self.target.pattern):
            if self.transport.closing:
                return
            protocol = self.transport.protocol
            assert isinstance(protocol, asyncio.Protocol)
            protocol.data_received(seg)


class ProxyPath:
    """The fuzz target's state: one proxy (started once) and its in-memory upstream."""

    def __init__(self) -> None:
        from proxy.config import Config
        from proxy.server import ProxyServer

        self.watch: LogWatch = install_log_watch()
        self.loop = asyncio.new_event_loop()  # plain asyncio: its create_connection can be replaced
        asyncio.set_event_loop(self.loop)
        watch_loop(self.loop, self.watch)
        self.loop.create_connection = self._create_connection  # type: ignore[method-assign,assignment]
        cfg = Config(
            upstream_host="127.0.0.1",
            upstream_port=9,
            listen_host="127.0.0.1",
            listen_port=0,
            admin_host=None,
            access_log=True,
            log_level="WARNING",
            health_interval=0.0,  # no background dials: every upstream connection is a request's
            **LIMITS,  # type: ignore[arg-type]
        )
        # The access log runs (its code is on the path) into /dev/null: a StringIO would grow forever.
        self.sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
        self.server = ProxyServer(cfg, access_log_stream=self.sink, endpoints=[("127.0.0.1", 9)])
        self.loop.run_until_complete(self.server.start())
        logging.getLogger("proxy").setLevel(logging.WARNING)
        self.upstreams: list[UpstreamSide] = []
        self.responses: list[bytes] = []
        self.pattern = b""
        self.upstream_requests = 0

    def next_response(self) -> bytes:
        return self.responses.pop(0) if self.responses else DEFAULT_RESPONSE

    async def _create_connection(
        self,
        protocol_factory: Callable[[], asyncio.Protocol],
        host: str | None = None,
        port: int | None = None,
        **kw: Any,
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        if len(self.upstreams) >= MAX_UPSTREAM_CONNECTIONS:
            raise Finding(
                f"the proxy dialled more than {MAX_UPSTREAM_CONNECTIONS} upstream connections for one input"
            )
        protocol = protocol_factory()
        transport = MemoryTransport((host or "127.0.0.1", port or 9), self.loop)
        side = UpstreamSide(self, transport)
        transport.on_write = side.written
        transport.protocol = protocol
        self.upstreams.append(side)
        protocol.connection_made(transport)
        return transport, protocol

    def spin(self, rounds: int = 4) -> None:
        """Run the loop until callbacks scheduled so far (connects, answers) have run."""
        for _ in range(rounds):
            self.loop.run_until_complete(asyncio.sleep(0))

    def one(self, data: bytes) -> None:
        from proxy.downstream import DownstreamProtocol

        if not data:
            return
        self.pattern = data[:1] if data[0] & 0x80 else b""  # high bit: fuzz the read boundaries
        client, _, response = data[1:].partition(SEP)
        self.responses = [response] if response else []
        self.upstreams = []
        self.upstream_requests = 0
        state = self.server.state
        assert state is not None and self.server.site is not None
        down = DownstreamProtocol(self.server.site)
        transport = MemoryTransport(("127.0.0.1", 40000), self.loop)
        transport.protocol = down
        down.connection_made(transport)
        try:
            for seg in segments(client, self.pattern):
                if transport.closing:
                    break
                protocol = transport.protocol  # the engine's, or a tunnel's after a 101
                assert isinstance(protocol, asyncio.Protocol)
                protocol.data_received(seg)
                self.spin(2)
                self.watch.check()
            self.spin(6)
            self.watch.check()
            check_client_output(bytes(transport.out), client)
        finally:
            # Client gone, then every upstream connection: everything must unwind.
            transport.lose(None)
            self.spin(2)
            for side in self.upstreams:
                side.transport.lose(None)
            self.spin(4)
        self.watch.check()
        if state.connections:
            raise Finding(f"{len(state.connections)} client connection(s) still registered after close")
        for ep in state.group.live:
            if ep.in_flight:
                raise Finding(f"endpoint {ep.label} still has {ep.in_flight} request(s) in flight")
        pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        if len(pending) > 4:  # the server's own background tasks (health, discovery) are few
            raise Finding(f"{len(pending)} tasks still pending after the input: {pending[:3]!r}")


class _Responses:
    """Parser callbacks that note, per response, whether a keep-alive client could delimit it."""

    def __init__(self) -> None:
        self.parser: httptools.HttpResponseParser | None = None
        self.headers: list[tuple[bytes, bytes]] = []

    def on_message_begin(self) -> None:
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value.lower()))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        status = self.parser.get_status_code()
        names = {n for n, _ in self.headers}
        if not 100 <= status <= 599:
            raise Finding(f"status {status} written to the client")
        if b"content-length" in names and b"transfer-encoding" in names:
            raise Finding(f"a response with Content-Length and Transfer-Encoding: {self.headers!r}")
        if status in (204, 304) or status < 200 or names & {b"content-length", b"transfer-encoding"}:
            return
        close = any(n == b"connection" and b"close" in v for n, v in self.headers)
        if not close:
            raise Finding(f"a keep-alive {status} response without framing: {self.headers!r}")


def check_client_output(out: bytes, client: bytes) -> None:
    """What reached the client is a sequence of HTTP/1.1 responses (or starts a 101 tunnel), each
    one delimited (Content-Length, chunked, or a close announced)."""
    if not out or b"HEAD" in client:
        return  # llhttp cannot be told a response answered HEAD (no body): nothing to check
    cb = _Responses()
    parser = cb.parser = httptools.HttpResponseParser(cb)
    try:
        parser.feed_data(out)
    except httptools.HttpParserUpgrade:
        return
    except httptools.HttpParserError as exc:
        inner = exc.__cause__ or exc.__context__
        if isinstance(inner, Finding):
            raise inner from None
        raise Finding(f"unparsable response written to the client ({exc}): {out[:300]!r}") from None


_TARGET: ProxyPath | None = None


def test_one_input(data: bytes) -> None:
    """The libFuzzer entry point (one proxy for the whole run)."""
    global _TARGET
    if _TARGET is None:
        _TARGET = ProxyPath()
    _TARGET.one(data)
