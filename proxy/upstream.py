"""Backend-side protocol: one persistent connection to one endpoint.

The connection outlives requests (it is pooled between them) so it knows
nothing about clients; while leased it forwards parser events to the current
``Exchange`` and otherwise only watches for the backend closing it, which is
what lets the pool refuse stale connections instead of failing a request.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

from proxy.flow import CLIENT_BUSY, ReadGate

if TYPE_CHECKING:
    from proxy.exchange import Exchange
    from proxy.pool import Endpoint


class UpstreamConnection(asyncio.Protocol):
    """Parses responses with httptools; callbacks do nothing but hand data to the exchange."""

    __slots__ = (
        "closed",
        "endpoint",
        "eof",
        "exchange",
        "gate",
        "head_deadline",
        "head_only",
        "head_timer",
        "headers",
        "idle_since",
        "interim",
        "parser",
        "received",
        "transport",
    )

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.gate: ReadGate = None  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.closed = False
        self.eof = False
        self.received = False  # any byte of the current response seen (decides retry safety)
        self.head_only = False
        self.interim = False
        self.idle_since = 0.0
        # Response-head deadline of the attached exchange (loop time; 0.0 = none pending). One timer
        # per connection, re-armed only when it fires: a request costs a clock read, not a
        # TimerHandle allocated, started and cancelled (which was ~5% of the proxy's CPU per request).
        self.head_deadline = 0.0
        self.head_timer: asyncio.TimerHandle | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.gate = ReadGate(self.transport)
        self.endpoint.connects += 1  # upstream_connections_opened_total in /metrics

    def reusable(self) -> bool:
        return not (self.closed or self.eof or self.transport.is_closing())

    def attach(self, exchange: Exchange, head_only: bool) -> None:
        self.exchange = exchange
        self.received = False
        self.head_only = head_only

    def expect_head(self, timeout: float) -> None:
        """The request is written: the exchange's ``upstream_timed_out`` runs if no head arrives in time."""
        loop = self.endpoint.group.loop
        self.head_deadline = deadline = loop.time() + timeout
        if self.head_timer is None:
            self.head_timer = loop.call_at(deadline, self._check_head)

    def _check_head(self) -> None:
        self.head_timer = None
        ex = self.exchange
        if ex is None or not self.head_deadline:
            return  # answered (or idle): the next expect_head arms a new timer
        loop = self.endpoint.group.loop
        if loop.time() < self.head_deadline:
            self.head_timer = loop.call_at(self.head_deadline, self._check_head)
            return
        self.head_deadline = 0.0
        ex.upstream_timed_out()

    def _stop_head_timer(self) -> None:
        self.head_deadline = 0.0
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def detach(self) -> None:
        self.exchange = None
        self.head_deadline = 0.0
        if self.gate.reasons:
            self.gate.resume(CLIENT_BUSY)  # an idle connection must keep reading to notice EOF

    def close(self) -> None:
        self.closed = True
        self._stop_head_timer()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self._stop_head_timer()
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool:
        self.eof = True
        return False  # let the transport close; connection_lost does the bookkeeping

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_head_timer()
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            ex.upstream_lost(self, exc)
        else:
            self.endpoint.forget(self)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_paused()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_resumed()

    # -- data ----------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.received = True
        if self.exchange is None:
            # Bytes while idle mean the backend broke framing: the connection cannot be trusted.
            self.abort()
            self.endpoint.forget(self)
            return
        ex = self.exchange
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # Only raised after a 101 the exchange accepted: what follows belongs to the tunnel.
            self.exchange = None
            ex.upgraded(self, data[exc.args[0] :])
            return
        except httptools.HttpParserError as exc:
            self.exchange = None
            self.abort()
            if not ex.finished:
                ex.upstream_failed(self, f"invalid response from {self.endpoint.label}: {exc}")
            return
        ex.flush()

    # -- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            # Interim responses (100/103) are swallowed: the proxy answers Expect itself.
            # 101 is only valid as the answer to an Upgrade request (WebSocket, see tunnel.py).
            if status == 101:
                ex = self.exchange
                if ex is None or not ex.accept_upgrade(self, self.headers):
                    raise httptools.HttpParserError("unexpected 101 Switching Protocols")
                self.head_deadline = 0.0
            self.interim = True
            return
        self.head_deadline = 0.0
        ex = self.exchange
        if ex is None:
            return
        ex.on_response_head(self, status, self.headers, self.parser.get_http_version() == "1.1")
        if self.head_only:
            # llhttp does not know the request was HEAD and would wait for a body that never
            # comes; finish the message here and give the connection a fresh parser.
            self.parser = httptools.HttpResponseParser(self)
            ex = self.exchange
            if ex is not None:
                self.exchange = None
                ex.on_response_end(self)

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None and not self.interim:
            ex.on_response_body(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            ex.on_response_end(self)
