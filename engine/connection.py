"""One asyncio Protocol per accepted client connection: parsing, limits, timeouts, keep-alive.

Modelled on Uvicorn's httptools protocol: parser callbacks only collect data;
``on_headers_complete`` validates and hands the request to a handler from the listener's
``Site`` (``engine/handler.py``). Pipelined requests are parsed but queued (and reading
paused) until the active one finishes, so responses always leave in request order and at
most one socket read of a queued request is ever buffered.

Limits and hostile input are refused here, before any handler runs: a request target over
``max_request_line`` (414), headers over ``max_header_bytes``/``max_headers`` (431), a body
over ``max_body_size`` (413: at once for a Content-Length, as soon as it is exceeded for
chunked), framing that could be read two ways (400, from llhttp or ``Site.prepare``),
``CONNECT`` (405), too many connections (503 + Retry-After), slow headers or a stalled body
(408). Every refusal closes the connection after a short *lingering close*: the server
half-closes and drains what the client is still sending, so the client reads the error
instead of a TCP reset (nginx's ``lingering_close``). Connections over ``max_connections``
linger only while fewer than ``REFUSED_LINGERING`` others do; past that they get their 503 and
are closed at once, so the number of open sockets stays bounded whatever the connect rate.

The write path is bounded too: a client that stops reading its response (its socket buffer full,
``pause_writing``) or leaves unsent bytes behind a close is cut once nothing more went out for
``send_timeout`` (``engine.flow.SendWatch``, nginx's ``send_timeout``); the handler's ``abort``
then releases what it holds (the proxy's upstream connection, the ASGI app's ``send``) and logs
``"error": "client send timeout"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import deque
from collections.abc import Iterable
from time import perf_counter

import httptools

from engine.flow import PIPELINED, ReadGate, SendWatch
from engine.framing import CHUNKED, LENGTH, BadRequest
from engine.handler import RequestHandler, Site, Takeover
from engine.limits import REFUSED_LINGERING
from engine.refusals import overload_response, request_timeout_408, simple_response

log = logging.getLogger("engine.connection")


_OWS = (0x20, 0x09)  # SP, HTAB


def _other_form_ok(method: bytes, target: bytes) -> bool:
    """A target not in origin-form (RFC 9112 3.2): absolute-form, or ``*`` for OPTIONS only."""
    if target == b"*":
        return method == b"OPTIONS"
    return target[:8].lower().startswith((b"http://", b"https://"))


class HTTPConnection(asyncio.Protocol):
    """Request parsing, limits, timeouts and keep-alive for one client connection."""

    # Slots: less memory per idle keep-alive connection, and faster attribute access.
    __slots__ = (
        "abort_reason", "active", "body_bytes", "body_deadline", "body_timer", "body_too_large", "client_ip",
        "closed", "count_body", "draining", "gate", "head_bytes", "head_fed", "head_too_large",
        "header_timeout", "headers", "idle_deadline", "idle_timer", "idle_timer_at", "in_head", "in_message",
        "keepalive_timeout", "limits", "linger_timer", "lingering", "loop", "max_body", "max_head_bytes",
        "max_head_fed", "max_headers", "max_url", "new_handler", "parser", "parsing", "peer",
        "pending_error", "prepare", "queue", "reading_body", "send_watch", "served", "site", "split_idle",
        "t0", "takeover", "transport", "upgrade_rest", "upgraded", "url", "url_too_long", "write_paused",
    )  # fmt: skip

    def __init__(self, site: Site) -> None:
        self.site = site
        self.loop = site.loop
        # Bound once per connection rather than looked up per request.
        self.prepare = site.prepare
        self.new_handler = site.handler
        lim = self.limits = site.limits
        self.max_url = lim.max_request_line or sys.maxsize
        self.max_head_bytes = lim.max_header_bytes or sys.maxsize
        self.max_headers = lim.max_headers or sys.maxsize
        self.max_body = lim.max_body_size
        self.max_head_fed = lim.max_head_fed or sys.maxsize
        self.header_timeout = lim.header_timeout
        self.keepalive_timeout = (
            lim.header_timeout if lim.keepalive_timeout is None else lim.keepalive_timeout
        )
        # With one deadline for idle time and headers (the proxy's rule) a new request re-arms nothing.
        self.split_idle = self.keepalive_timeout != self.header_timeout
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.gate: ReadGate = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = b"unknown"
        self.peer: tuple[str, int] | None = None  # (host, port) of the client; None on a Unix socket
        self.closed = False
        self.lingering = False
        self.write_paused = False
        self.send_watch: SendWatch | None = None  # created when writing first pauses (send_timeout)
        self.abort_reason: str | None = None  # why the engine cut the connection (RequestHandler.abort)
        self.draining = False  # shutdown() was called: keep-alive ends after the current response
        self.active: RequestHandler | None = None
        self.parsing: RequestHandler | None = None  # receives body callbacks; may be queued, not active
        self.queue: deque[RequestHandler] = deque()
        self.pending_error: bytes | None = None
        self.served = 0
        self.upgraded = False  # the connection was handed over (tunnel, WebSocket): no more HTTP
        self.takeover: Takeover | None = None  # gets the transport's events after a hand-over
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
        # TimerHandle per request: it only fires (and re-checks) every header timeout.
        self.idle_deadline = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.idle_timer_at = 0.0
        # Same idea for a request body: the deadline moves on every read, the timer rarely fires.
        self.body_deadline = 0.0
        self.body_timer: asyncio.TimerHandle | None = None
        self.linger_timer: asyncio.TimerHandle | None = None

    # -- connection lifecycle --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.gate = ReadGate(self.transport)
        peer = transport.get_extra_info("peername")
        if peer and isinstance(peer, tuple):
            self.peer = (str(peer[0]), int(peer[1]))
            self.client_ip = self.peer[0].encode()
        site = self.site
        cap = self.limits.max_connections
        if cap and len(site.connections) >= cap:
            self._refuse_over_cap(cap)
            return
        site.connections.add(self)
        self._go_idle()

    def _refuse_over_cap(self, cap: int) -> None:
        """Over ``max_connections``: a 503, then a bounded lingering close or an immediate one.

        Accept and answer rather than refuse: a client (or load balancer) can tell "busy, come
        back" from "down" only if it gets a response. Lingering lets it read that response
        instead of a reset, but each lingering socket is held for ``linger`` seconds, so only
        ``REFUSED_LINGERING`` of them at once; the rest are closed right after the 503 (it is
        already in the kernel's send buffer), which bounds the sockets a flood can hold.
        """
        reason = f"the server already serves its maximum of {cap} client connections"
        response, nbytes = overload_response(reason, None, True)
        self.pending_error = b""
        self.write(response)
        self._rejected(503, f"{reason} (max connections)", nbytes)
        refused = self.site.refused
        linger = len(refused) < REFUSED_LINGERING
        self._count("connections_refused", "lingered" if linger else "closed")
        if linger:
            refused.add(self)
            self._linger()
        else:
            self.close()

    def _count(self, name: str, label: str = "") -> None:
        counters = self.site.counters
        if counters is not None:
            counters.inc(name, label)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for timer in (self.idle_timer, self.body_timer, self.linger_timer):
            if timer is not None:
                timer.cancel()
        self.idle_timer = self.body_timer = self.linger_timer = None
        if self.send_watch is not None:
            self.send_watch.cancel()
        if self.lingering:  # (a refused connection lingers; most others never do)
            self.site.refused.discard(self)
        if self.takeover is not None:
            # Still counted as served until the takeover calls released() (its app may still run).
            self.takeover.connection_lost(exc)
            return
        self.site.connections.discard(self)
        if self.active is not None:
            self.active.abort()
            self.active = None
        for h in self.queue:
            h.abort()
        self.queue.clear()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            transport = self.transport
            transport.close()
            # close() waits for the buffer to be sent: a client that never reads would keep the
            # socket (and the bytes) forever.
            if self.limits.send_timeout and transport.get_write_buffer_size():
                self._watch_send()

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
        self.linger_timer = self.loop.call_later(self.limits.linger, self.close)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.limits.send_timeout:
            self._watch_send()
        if self.takeover is not None:
            self.takeover.pause_writing()
        elif self.active is not None:
            self.active.client_write_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.send_watch is not None:
            self.send_watch.resumed()
        if self.takeover is not None:
            self.takeover.resume_writing()
        elif self.active is not None:
            self.active.client_write_resumed()

    def _watch_send(self) -> None:
        watch = self.send_watch
        if watch is None:
            watch = self.send_watch = SendWatch(
                self.loop, self.transport, self.limits.send_timeout, self._send_stalled
            )
        watch.watch()

    def _send_stalled(self) -> None:
        """Nothing reached the client for ``send_timeout``: cut it; its handler's ``abort`` follows."""
        transport = self.transport
        unsent = transport.get_write_buffer_size()
        self.abort_reason = "client send timeout"
        log.info(
            "client %s read nothing for %gs: connection cut with %d bytes unsent (send timeout)",
            self.client_ip.decode("latin-1"),
            self.limits.send_timeout,
            unsent,
        )
        self._count("send_timeouts")
        self.closed = True
        transport.abort()  # connection_lost follows: the handler (or takeover) is told there

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def writelines(self, data: Iterable[bytes]) -> None:
        if not self.closed:
            self.transport.writelines(data)

    # -- idle / header timeout -------------------------------------------------------------------
    def _go_idle(self) -> None:
        if not self.split_idle:
            self.idle_deadline = self.loop.time() + self.header_timeout
            if self.idle_timer is None:
                self.idle_timer = self.loop.call_at(self.idle_deadline, self._idle_check)
            return
        # Separate keep-alive and header deadlines: a later timer is moved earlier when needed.
        timeout = self.header_timeout if self.served == 0 or self.in_message else self.keepalive_timeout
        self.idle_deadline = deadline = self.loop.time() + timeout
        timer = self.idle_timer
        if timer is None or deadline < self.idle_timer_at:
            if timer is not None:
                timer.cancel()
            self.idle_timer = self.loop.call_at(deadline, self._idle_check)
            self.idle_timer_at = deadline

    def _idle_check(self) -> None:
        self.idle_timer = None
        if self.closed or self.active is not None or self.upgraded or self.lingering:
            return
        if self.loop.time() < self.idle_deadline:
            self.idle_timer = self.loop.call_at(self.idle_deadline, self._idle_check)
            self.idle_timer_at = self.idle_deadline
            return
        if self.in_message or self.served == 0:
            timeout_408 = request_timeout_408()
            self.write(timeout_408)
            self._rejected(408, "request headers not received in time", len(timeout_408))
            self._linger()
            return
        self.close()

    # -- request body timeout --------------------------------------------------------------------
    def _arm_body_timer(self) -> None:
        self.body_deadline = self.loop.time() + self.limits.body_timeout
        if self.body_timer is None:
            self.body_timer = self.loop.call_at(self.body_deadline, self._body_check)

    def _body_check(self) -> None:
        self.body_timer = None
        if self.closed or not self.reading_body or self.pending_error is not None:
            return
        now = self.loop.time()
        limit = self.limits.body_timeout
        if self.gate.reasons:
            # The server itself is not reading (back-pressure, waiting for an upstream, an app
            # that does not receive, a queued pipelined request): the client is not the one being slow.
            self.body_deadline = now + limit
        if now < self.body_deadline:
            self.body_timer = self.loop.call_at(self.body_deadline, self._body_check)
            return
        self.bad_request(408, f"408 Request Timeout: no request body data for {limit:g}s\n")

    def shutdown(self) -> None:
        """Drain: idle connections close now; busy ones close after their current response.

        A connection handed over to a ``Takeover`` is told to end; a bare tunnel is a busy
        connection: it gets the drain timeout, then is cut.
        """
        self.draining = True
        if self.upgraded:
            if self.takeover is not None:
                self.takeover.shutdown()
            return
        if self.lingering or (self.active is None and not self.in_message):
            self.close()

    # -- data and parser callbacks ---------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed or self.pending_error is not None:
            if self.takeover is not None:  # (hand_over set pending_error: no more HTTP here)
                self.takeover.data_received(data)
            return
        if self.reading_body:
            self.body_deadline = self.loop.time() + self.limits.body_timeout
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # The request asks to switch protocols: what follows its head is the new protocol's,
            # kept for the handler if it agrees (101); otherwise the connection closes after the
            # response.
            rest = data[exc.args[0] :]
            if self.takeover is not None:
                # The handler took the connection over while its head was being parsed (the
                # ASGI WebSocket hand-off): the bytes after the head are the session's already.
                if rest:
                    self.takeover.data_received(rest)
                return
            self.upgrade_rest = rest
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
        h = self.parsing
        # The active request gets its access-log line when its handler fails; any other refused
        # request (no handler yet, or one queued behind the active one) gets it here.
        self._rejected(status, message.strip(), len(message), access=h is None or h is not self.active)
        self.gate.pause(PIPELINED)
        if h is not None and not h.body_done:
            # The broken message is the one whose body was being read: it cannot complete.
            self.parsing = None
            self.reading_body = False
            if h is self.active:
                if h.head_sent:
                    h.abort()
                    self.close()
                else:
                    h.fail(status, message.encode())
                return
            if h in self.queue:
                self.queue.remove(h)
            # (else it answered before its body ended and is done: the refusal follows its response)
        if self.active is None and not self.queue:
            self._send_pending_error()

    def _rejected(self, status: int, reason: str, nbytes: int, access: bool = True) -> None:
        elapsed = perf_counter() - self.t0 if self.t0 else 0.0
        self.site.rejected(self.client_ip, status, reason, nbytes, self.url[:1024] or b"-", elapsed, access)

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
        if self.split_idle and self.active is None:
            self._go_idle()  # the idle deadline becomes the header deadline

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if len(self.url) > self.max_url:
            self.url_too_long = True
            raise BadRequest("request target too long")  # aborts parsing of this connection

    def on_header(self, name: bytes, value: bytes) -> None:
        if value and value[-1] in _OWS:
            value = value.rstrip(b" \t")  # RFC 9112 5.1: OWS is not part of the value (llhttp keeps it)
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
        version = parser.get_http_version()
        http11 = version == "1.1"
        if not http11 and version != "1.0":
            # llhttp reads HTTP/0.9 (no version at all) and any major version: neither is served.
            if version.startswith("0"):
                self.bad_request(400, "400 Bad Request: HTTP/0.9 requests are not supported\n")
            else:
                self.bad_request(505, f"505 HTTP Version Not Supported: HTTP/{version}\n")
            return
        if method == b"CONNECT":
            self.bad_request(405, "405 Method Not Allowed: CONNECT is not supported\n")
            return
        url = self.url
        if url[:1] != b"/" and not _other_form_ok(method, url):
            self.bad_request(400, "400 Bad Request: invalid request-target form\n")
            return
        if b"#" in url:  # RFC 9112 3.2: a fragment is never sent; llhttp accepts one
            self.bad_request(400, "400 Bad Request: a fragment is not part of a request-target\n")
            return
        try:
            prepared = self.prepare(method, self.url, self.headers, self.client_ip, http11)
        except BadRequest as exc:
            self.bad_request(400, f"400 Bad Request: {exc}\n")
            return
        if prepared.framing == LENGTH and self.max_body and prepared.content_length > self.max_body:
            # Refused before a byte of the body is read (nginx's client_max_body_size).
            self.bad_request(
                413,
                f"413 Content Too Large: {prepared.content_length} bytes, the limit is {self.max_body}\n",
            )
            return
        upgrade = parser.should_upgrade()
        keep_alive = parser.should_keep_alive() and not upgrade
        h = self.new_handler(
            self, method, self.url, self.headers, prepared, http11, keep_alive, upgrade, self.t0
        )
        self.parsing = h
        if h.has_body:
            self.reading_body = True
            self.body_bytes = 0
            self.count_body = bool(self.max_body) and prepared.framing == CHUNKED
            self._arm_body_timer()
        if self.active is None:
            self.active = h
            h.start()
        else:
            self.queue.append(h)
            self.gate.pause(PIPELINED)

    def on_body(self, body: bytes) -> None:
        if self.count_body:
            self.body_bytes += len(body)
            if self.body_bytes > self.max_body:
                self.body_too_large = True
                raise BadRequest("request body too large")  # aborts parsing of this connection
        h = self.parsing
        if h is not None:
            h.on_body(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        self.reading_body = False
        self.count_body = False
        if self.split_idle and self.active is None and not self.closed:
            self._go_idle()  # answered before its message ended: the keep-alive deadline starts now
        h = self.parsing
        if h is not None:
            self.parsing = None
            h.on_body_end()

    # -- called by handlers ----------------------------------------------------------------------
    def request_finished(self, h: RequestHandler) -> None:
        """``h``'s response is complete: start the next pipelined request, go idle, or close."""
        if h is not self.active:
            return
        self.active = None
        self.served += 1
        draining = self.draining
        if h.client_close or draining or self.closed:
            if self.in_message and not self.closed and not draining:
                self._linger()  # the client may still be sending the body that was refused
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

    def hand_over(self, h: RequestHandler, takeover: Takeover | None = None) -> bytes:
        """The request switched protocols: HTTP is over here; returns the bytes read past its head.

        With a ``takeover`` the connection keeps its transport and forwards every event to it
        (reading resumes); without one, the caller moves the transport elsewhere itself (the
        proxy's tunnel calls ``transport.set_protocol``) and calls ``released`` at the end.
        """
        if h is self.active:
            self.active = None
        self.served += 1
        self.upgraded = True
        for timer in (self.idle_timer, self.body_timer):
            if timer is not None:
                timer.cancel()
        self.idle_timer = self.body_timer = None
        if takeover is None and self.send_watch is not None:
            self.send_watch.cancel()  # the proxy's tunnel moves the transport away and watches it itself
        rest, self.upgrade_rest = self.upgrade_rest, b""
        if self.pending_error is None:
            self.pending_error = b""  # nothing more is parsed as HTTP
        if takeover is not None:
            self.takeover = takeover
            self.gate.reasons = 0
            with contextlib.suppress(RuntimeError, AttributeError):
                self.transport.resume_reading()
        return rest

    def released(self, exc: Exception | None) -> None:
        """What took the connection over is done with it (a drain stops waiting for it now)."""
        self.closed = True
        self.site.connections.discard(self)
