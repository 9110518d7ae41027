"""Client-side protocol: one instance per accepted connection.

Modelled on Uvicorn's httptools protocol: parser callbacks only collect data;
``on_headers_complete`` validates and hands the request to an ``Exchange``.
Pipelined requests are parsed but queued (and reading paused) until the
active one finishes, so responses always leave in request order and at most
one socket read of a queued request is ever buffered.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

import httptools

from proxy.exchange import Exchange
from proxy.flow import PIPELINED, ReadGate
from proxy.headers import BadRequest, rewrite_request, simple_response

if TYPE_CHECKING:
    from proxy.context import ProxyState

log = logging.getLogger("proxy.downstream")

MAX_HEADERS = 100
MAX_HEAD_BYTES = 64 * 1024
REQUEST_TIMEOUT_408 = simple_response(
    408, b"408 Request Timeout: request headers not received in time\n", None, True
)


class DownstreamProtocol(asyncio.Protocol):
    """Request parsing, limits, timeouts and keep-alive for one client connection."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self.loop = state.loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.gate: ReadGate = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = b"unknown"
        self.closed = False
        self.write_paused = False
        self.active: Exchange | None = None
        self.parsing: Exchange | None = None  # receives body callbacks; may be queued, not active
        self.queue: deque[Exchange] = deque()
        self.pending_error: bytes | None = None
        self.served = 0
        # request being parsed
        self.in_message = False
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.head_too_large = False
        self.t0 = 0.0
        # One lazily re-armed timer covers idle keep-alive and slow headers without a
        # TimerHandle per request: it only fires (and re-checks) every client_header_timeout.
        self.idle_deadline = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None

    # -- connection lifecycle --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.gate = ReadGate(self.transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = str(peer[0]).encode()
        self.state.connections.add(self)
        self._go_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.connections.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.active is not None:
            self.active.abort()
            self.active = None
        for ex in self.queue:
            ex.abort()
        self.queue.clear()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.active is not None:
            self.active.client_write_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.active is not None:
            self.active.client_write_resumed()

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def writelines(self, data: Iterable[bytes]) -> None:
        if not self.closed:
            self.transport.writelines(data)

    # -- idle / header timeout -------------------------------------------------------------------
    def _go_idle(self) -> None:
        self.idle_deadline = self.loop.time() + self.state.config.client_header_timeout
        if self.idle_timer is None:
            self.idle_timer = self.loop.call_at(self.idle_deadline, self._idle_check)

    def _idle_check(self) -> None:
        self.idle_timer = None
        if self.closed or self.active is not None:
            return
        if self.loop.time() < self.idle_deadline:
            self.idle_timer = self.loop.call_at(self.idle_deadline, self._idle_check)
            return
        if self.in_message or self.served == 0:
            self.write(REQUEST_TIMEOUT_408)
            self._log_rejection(408, "request headers not received in time", len(REQUEST_TIMEOUT_408))
        self.close()

    def shutdown(self) -> None:
        """Drain: idle connections close now; busy ones close after their current response."""
        if self.active is None and not self.in_message:
            self.close()

    # -- data and parser callbacks ---------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed or self.pending_error is not None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade is hop-by-hop and stripped, so the request was proxied as plain HTTP;
            # bytes after it belong to a protocol we do not speak: stop reading them.
            self.pending_error = b""
            self.gate.pause(PIPELINED)
        except httptools.HttpParserError as exc:
            if self.head_too_large:
                self.bad_request(431, "431 Request Header Fields Too Large\n")
            else:
                self.bad_request(400, f"400 Bad Request: {exc}\n")

    def bad_request(self, status: int, message: str) -> None:
        """Malformed input: answer after any earlier pipelined responses, then close."""
        if self.pending_error is not None:
            return
        self.pending_error = simple_response(status, message.encode(), None, True)
        if self.parsing is None:  # a request with an Exchange is logged when that exchange fails
            self._log_rejection(status, message.strip(), len(message))
        self.gate.pause(PIPELINED)
        ex = self.parsing
        if ex is not None and not ex.body_done:
            # The broken message is the one whose body we were forwarding: it cannot complete.
            self.parsing = None
            if ex is self.active:
                if ex.head_sent:
                    ex.abort()
                    self.close()
                else:
                    ex.fail(status, message.encode())
                return
            self.queue.remove(ex)
        if self.active is None and not self.queue:
            self._send_pending_error()

    def _log_rejection(self, status: int, reason: str, nbytes: int) -> None:
        """Requests refused before they had an Exchange still get a log line and an access-log line."""
        log.info("rejected request from %s: %s", self.client_ip.decode("latin-1"), reason)
        access_log = self.state.access_log
        if access_log is not None:
            elapsed = self.loop.time() - self.t0 if self.t0 else 0.0
            access_log.log(b"", b"-", self.url or b"-", status, nbytes, None, None, elapsed)

    def _send_pending_error(self) -> None:
        if self.pending_error:
            self.write(self.pending_error)
        self.close()

    def on_message_begin(self) -> None:
        self.in_message = True
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        self.t0 = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.head_bytes += len(name) + len(value)
        if len(self.headers) > MAX_HEADERS or self.head_bytes > MAX_HEAD_BYTES:
            self.head_too_large = True
            raise BadRequest("request headers too large")  # aborts parsing of this connection

    def on_headers_complete(self) -> None:
        if self.closed or self.pending_error is not None:
            return
        parser = self.parser
        method = parser.get_method()
        http11 = parser.get_http_version() == "1.1"
        if method == b"CONNECT":
            self.bad_request(405, "405 Method Not Allowed: CONNECT is not supported\n")
            return
        try:
            req = rewrite_request(method, self.url, self.headers, self.client_ip, http11)
        except BadRequest as exc:
            self.bad_request(400, f"400 Bad Request: {exc}\n")
            return
        keep_alive = parser.should_keep_alive() and not parser.should_upgrade()
        ex = Exchange(self, self.state, method, self.url, req, http11, keep_alive, self.t0)
        self.parsing = ex
        if self.active is None:
            self.active = ex
            ex.start()
        else:
            self.queue.append(ex)
            self.gate.pause(PIPELINED)

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is not None:
            ex.on_body(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        ex = self.parsing
        if ex is not None:
            self.parsing = None
            ex.on_body_end()

    # -- called by Exchange ----------------------------------------------------------------------
    def exchange_finished(self, ex: Exchange) -> None:
        if ex is not self.active:
            return
        self.active = None
        self.served += 1
        if ex.client_close or self.state.draining or self.closed:
            self.close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            self.active = nxt
            if not self.queue:
                self.gate.resume(PIPELINED)
            nxt.start()
            return
        if self.pending_error is not None:
            self._send_pending_error()
            return
        self._go_idle()
