"""Client-side protocol: one instance per accepted connection.

Modelled on Uvicorn's httptools protocol: parser callbacks only collect data;
``on_headers_complete`` validates and hands the request to an ``Exchange``.
Pipelined requests are parsed but queued (and reading paused) until the
active one finishes, so responses always leave in request order and at most
one socket read of a queued request is ever buffered.

Limits and hostile input are refused here, before anything reaches a backend:
a request target over ``--max-request-line`` (414), headers over
``--max-header-bytes``/``--max-headers`` (431), a body over ``--max-body-size``
(413: at once for a Content-Length, as soon as it is exceeded for chunked),
framing that could be read two ways (400, from llhttp or ``headers.rewrite_request``),
too many connections (503 + Retry-After), slow headers or a stalled body (408).
Every refusal closes the connection after a short *lingering close*: the proxy
half-closes and drains what the client is still sending, so the client reads the
error instead of a TCP reset (nginx's ``lingering_close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import deque
from collections.abc import Iterable
from time import perf_counter
from typing import TYPE_CHECKING

import httptools

from proxy.exchange import Exchange
from proxy.flow import PIPELINED, ReadGate
from proxy.headers import CHUNKED, LENGTH, NO_BODY, BadRequest, rewrite_request, simple_response
from proxy.limits import overload_response

if TYPE_CHECKING:
    from proxy.context import ProxyState
    from proxy.tunnel import Tunnel

log = logging.getLogger("proxy.downstream")

REQUEST_TIMEOUT_408 = simple_response(
    408, b"408 Request Timeout: request headers not received in time\n", None, True
)
LINGER_S = 2.0  # how long a refused connection's input is drained before the socket is closed
HEAD_SLACK = 8 * 1024  # request line/header framing bytes tolerated on top of the two limits


class DownstreamProtocol(asyncio.Protocol):
    """Request parsing, limits, timeouts and keep-alive for one client connection."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self.loop = state.loop
        cfg = state.config
        self.max_url = cfg.max_request_line or sys.maxsize
        self.max_head_bytes = cfg.max_header_bytes or sys.maxsize
        self.max_headers = cfg.max_headers or sys.maxsize
        self.max_body = cfg.max_body_size
        # Guard against one endless header line (httptools buffers a header until its end).
        self.max_head_fed = (
            cfg.max_request_line + cfg.max_header_bytes + HEAD_SLACK
            if cfg.max_request_line and cfg.max_header_bytes
            else sys.maxsize
        )
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.gate: ReadGate = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = b"unknown"
        self.closed = False
        self.lingering = False
        self.write_paused = False
        self.active: Exchange | None = None
        self.parsing: Exchange | None = None  # receives body callbacks; may be queued, not active
        self.queue: deque[Exchange] = deque()
        self.pending_error: bytes | None = None
        self.served = 0
        self.tunnel: Tunnel | None = None
        self.upgrade_rest = b""  # bytes after an Upgrade request's head (the new protocol's)
        # request being parsed
        self.in_message = False
        self.in_head = False
        self.head_fed = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.head_too_large = False
        self.url_too_long = False
        self.body_too_large = False
        self.reading_body = False
        self.count_body = False
        self.body_bytes = 0
        self.t0 = 0.0
        # One lazily re-armed timer covers idle keep-alive and slow headers without a
        # TimerHandle per request: it only fires (and re-checks) every client_header_timeout.
        self.idle_deadline = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        # Same idea for a request body: the deadline moves on every read, the timer rarely fires.
        self.body_deadline = 0.0
        self.body_timer: asyncio.TimerHandle | None = None
        self.linger_timer: asyncio.TimerHandle | None = None

    # -- connection lifecycle --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.gate = ReadGate(self.transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.client_ip = str(peer[0]).encode()
        state = self.state
        cap = state.config.max_connections
        if cap and len(state.connections) >= cap:
            # Accept and answer rather than refuse: a client (or load balancer) can tell "busy,
            # come back" from "down" only if it gets a response.
            reason = f"the proxy already serves its maximum of {cap} client connections"
            response, nbytes = overload_response(reason, None, True)
            self.pending_error = b""
            self.write(response)
            self._rejected(503, f"{reason} (--max-connections)", nbytes)
            self._linger()
            return
        state.connections.add(self)
        self._go_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.connections.discard(self)
        for timer in (self.idle_timer, self.body_timer, self.linger_timer):
            if timer is not None:
                timer.cancel()
        self.idle_timer = self.body_timer = self.linger_timer = None
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

    def _linger(self) -> None:
        """Half-close after an error response and drain the client's input for a while.

        Closing a socket with unread input makes the kernel send a reset, and a reset can
        destroy the response before the client read it; half-closing lets the client read the
        response and EOF while the rest of what it sends is read and dropped.
        """
        if self.closed or self.lingering:
            return
        transport = self.transport
        if not transport.can_write_eof():
            self.close()
            return
        self.lingering = True
        self.pending_error = b""  # whatever still arrives is dropped
        try:
            transport.write_eof()
        except (OSError, RuntimeError):
            self.close()
            return
        self.gate.reasons = 0
        with contextlib.suppress(RuntimeError, AttributeError):
            transport.resume_reading()
        self.linger_timer = self.loop.call_later(LINGER_S, self.close)

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
        if self.closed or self.active is not None or self.tunnel is not None or self.lingering:
            return
        if self.loop.time() < self.idle_deadline:
            self.idle_timer = self.loop.call_at(self.idle_deadline, self._idle_check)
            return
        if self.in_message or self.served == 0:
            self.write(REQUEST_TIMEOUT_408)
            self._rejected(408, "request headers not received in time", len(REQUEST_TIMEOUT_408))
            self._linger()
            return
        self.close()

    # -- request body timeout --------------------------------------------------------------------
    def _arm_body_timer(self) -> None:
        self.body_deadline = self.loop.time() + self.state.config.client_body_timeout
        if self.body_timer is None:
            self.body_timer = self.loop.call_at(self.body_deadline, self._body_check)

    def _body_check(self) -> None:
        self.body_timer = None
        if self.closed or not self.reading_body or self.pending_error is not None:
            return
        now = self.loop.time()
        if self.gate.reasons:
            # The proxy itself is not reading (back-pressure, waiting for an upstream, a queued
            # pipelined request): the client is not the one being slow.
            self.body_deadline = now + self.state.config.client_body_timeout
        if now < self.body_deadline:
            self.body_timer = self.loop.call_at(self.body_deadline, self._body_check)
            return
        limit = self.state.config.client_body_timeout
        self.bad_request(408, f"408 Request Timeout: no request body data for {limit:g}s\n")

    def shutdown(self) -> None:
        """Drain: idle connections close now; busy ones close after their current response.

        Open tunnels are busy connections: they get the drain timeout, then are cut.
        """
        if self.tunnel is not None:
            return
        if self.lingering or (self.active is None and not self.in_message):
            self.close()

    # -- data and parser callbacks ---------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed or self.pending_error is not None:
            return
        if self.reading_body:
            self.body_deadline = self.loop.time() + self.state.config.client_body_timeout
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # The request asks to switch protocols: what follows its head is the new protocol's,
            # kept for the tunnel if the backend agrees (101); otherwise the connection closes
            # after the response.
            self.upgrade_rest = data[exc.args[0] :]
            if self.pending_error is None:
                self.pending_error = b""
            self.gate.pause(PIPELINED)
            return
        except httptools.HttpParserError as exc:
            if self.url_too_long:
                self.bad_request(414, f"414 URI Too Long: the limit is {self.max_url} bytes\n")
            elif self.head_too_large:
                self.bad_request(431, "431 Request Header Fields Too Large\n")
            elif self.body_too_large:
                self.bad_request(413, f"413 Content Too Large: the body limit is {self.max_body} bytes\n")
            else:
                self.bad_request(400, f"400 Bad Request: {exc}\n")
            return
        if self.in_head:
            self.head_fed += len(data)
            if self.head_fed > self.max_head_fed:
                self.head_too_large = True
                self.bad_request(431, "431 Request Header Fields Too Large\n")

    def bad_request(self, status: int, message: str) -> None:
        """Malformed or refused input: answer after any earlier pipelined responses, then close."""
        if self.pending_error is not None:
            return
        self.pending_error = simple_response(status, message.encode(), None, True)
        ex = self.parsing
        # The active request gets its access-log line when its exchange fails; any other refused
        # request (no Exchange yet, or one queued behind the active one) gets it here.
        self._rejected(status, message.strip(), len(message), access=ex is None or ex is not self.active)
        self.gate.pause(PIPELINED)
        if ex is not None and not ex.body_done:
            # The broken message is the one whose body we were forwarding: it cannot complete.
            self.parsing = None
            self.reading_body = False
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

    def _rejected(self, status: int, reason: str, nbytes: int, access: bool = True) -> None:
        """Every refusal gets a log line, a count, and (without an Exchange) an access-log line."""
        log.info("rejected request from %s: %s", self.client_ip.decode("latin-1"), reason)
        self.state.counters.inc("rejected", str(status))  # requests the proxy refused, by status
        access_log = self.state.access_log
        if access and access_log is not None:
            elapsed = perf_counter() - self.t0 if self.t0 else 0.0
            access_log.log(b"", b"-", self.url[:1024] or b"-", status, nbytes, None, None, elapsed)

    def _send_pending_error(self) -> None:
        if self.pending_error:
            self.write(self.pending_error)
        self._linger()

    def on_message_begin(self) -> None:
        self.in_message = True
        self.in_head = True
        self.head_fed = 0
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        # Latency clock: uvloop's loop.time() has 1 ms steps and is cached per loop iteration.
        self.t0 = perf_counter()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if len(self.url) > self.max_url:
            self.url_too_long = True
            raise BadRequest("request target too long")  # aborts parsing of this connection

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        self.head_bytes += len(name) + len(value)
        if len(self.headers) > self.max_headers or self.head_bytes > self.max_head_bytes:
            self.head_too_large = True
            raise BadRequest("request headers too large")  # aborts parsing of this connection

    def on_headers_complete(self) -> None:
        self.in_head = False
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
        if req.framing == LENGTH and self.max_body and req.content_length > self.max_body:
            # Refused before a byte of the body is read (nginx's client_max_body_size).
            self.bad_request(
                413,
                f"413 Content Too Large: {req.content_length} bytes, the limit is {self.max_body}\n",
            )
            return
        upgrade = None
        wants_upgrade = parser.should_upgrade()
        if wants_upgrade and req.framing == NO_BODY:
            upgrade = next((v for n, v in self.headers if n.lower() == b"upgrade"), None)
            if upgrade:
                # Upgrade and Connection are hop-by-hop and were dropped; a tunnel needs them.
                req.head = req.head[:-2] + b"Connection: Upgrade\r\nUpgrade: " + upgrade + b"\r\n\r\n"
        keep_alive = parser.should_keep_alive() and not wants_upgrade
        ex = Exchange(self, self.state, method, self.url, req, http11, keep_alive, self.t0)
        ex.upgrade = upgrade
        balancer = self.state.balancer
        if balancer.needs_key:  # only hashing policies look for a key; the others pay nothing
            ex.hash_key = balancer.key_for(self.headers, self.client_ip)
        self.parsing = ex
        if ex.has_body:
            self.reading_body = True
            self.body_bytes = 0
            self.count_body = bool(self.max_body) and req.framing == CHUNKED
            self._arm_body_timer()
        if self.active is None:
            self.active = ex
            ex.start()
        else:
            self.queue.append(ex)
            self.gate.pause(PIPELINED)

    def on_body(self, body: bytes) -> None:
        if self.count_body:
            self.body_bytes += len(body)
            if self.body_bytes > self.max_body:
                self.body_too_large = True
                raise BadRequest("request body too large")  # aborts parsing of this connection
        ex = self.parsing
        if ex is not None:
            ex.on_body(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        self.reading_body = False
        self.count_body = False
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
            if self.in_message and not self.closed and not self.state.draining:
                self._linger()  # the client may still be sending the body we refused
            else:
                self.close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            self.active = nxt
            if not self.queue and self.pending_error is None:
                # (With an error or an Upgrade pending, nothing more is read as HTTP.)
                self.gate.resume(PIPELINED)
            nxt.start()
            return
        if self.pending_error is not None:
            self._send_pending_error()
            return
        self._go_idle()

    def tunnel_started(self, ex: Exchange, tunnel: Tunnel, from_upstream: bytes) -> None:
        """The backend switched protocols: from now on this connection is a byte tunnel."""
        if ex is self.active:
            self.active = None
        self.served += 1
        self.tunnel = tunnel
        for timer in (self.idle_timer, self.body_timer):
            if timer is not None:
                timer.cancel()
        self.idle_timer = self.body_timer = None
        rest, self.upgrade_rest = self.upgrade_rest, b""
        tunnel.start(rest, from_upstream)

    def tunnel_closed(self, exc: Exception | None) -> None:
        """The tunnel ended (either side closed); the transport no longer calls connection_lost here."""
        self.closed = True
        self.state.connections.discard(self)
