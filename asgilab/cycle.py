"""One HTTP request served to an ASGI app: the engine's second handler (the proxy's is Exchange).

The engine parses and delivers the body with ``on_body``; the app pulls it with ``receive()``
and answers with ``send()``. The rules, in the order a request meets them:

- **Request body.** ``http.request`` messages carry what arrived since the last ``receive``
  (de-chunked by httptools), ``more_body`` True until the end. While the app does not receive,
  at most ``BODY_HIGH_WATER`` bytes wait here; past that the socket's reading pauses, so a
  client faster than the app fills TCP windows, not the server's memory. ``Expect:
  100-continue`` is answered when the app first asks for the body.
- **Response.** ``http.response.start`` is held until the first body message so that head
  and body of a small response leave in one write. Framing: the app's Content-Length if it
  gave one (a body longer than it is an error, a shorter one closes the connection); else,
  when the whole body comes in one message, a Content-Length the server computes; else
  chunked (HTTP/1.1) or close-delimited (HTTP/1.0). HEAD, 204 and 304 get no body bytes.
- **Backpressure.** ``send()`` waits while the transport is paused (its buffer passed the
  high-water mark), so a slow client never makes the app's output pile up in memory.
- **Disconnect.** ``receive()`` returns ``http.disconnect`` once the response is complete or
  the client is gone (never a busy loop of empty bodies); ``send()`` after the client left
  raises ``ClientDisconnected`` (an ``OSError``), which the server swallows.
- **Extensions.** ``http.response.pathsend`` sends a file (``loop.sendfile`` where the loop
  has it, else read in chunks with backpressure); ``http.response.trailers`` after a start
  with ``trailers: True`` (the response is then chunked).
- **Errors.** An exception before any response byte was written is a 500 and a traceback in
  the log; after, the connection is closed (the only honest signal left). ``ClientDisconnected``
  is not an error. ``--limit-concurrency`` requests in the app at once; more get 503.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from asgilab.errors import ClientDisconnected
from engine.framing import LENGTH, NO_BODY, Framing
from engine.refusals import simple_response, with_retry_after
from engine.status import status_line

if TYPE_CHECKING:
    from asgilab.site import AppSite
    from engine.connection import HTTPConnection

log = logging.getLogger("asgilab.cycle")

APP_NOT_RECEIVING = 16  # engine.flow.ReadGate bit: the body buffer is full, the app is not receiving
BODY_HIGH_WATER = 64 * 1024  # request body bytes buffered for an app that is not receiving
FILE_CHUNK = 256 * 1024  # pathsend without sendfile: bytes read per write
LARGE_WRITE = 64 * 1024  # bodies above this are written with writelines (no join copy)

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
DISCONNECT: dict[str, Any] = {"type": "http.disconnect"}
NO_BODY_STATUSES = frozenset({204, 304})

Message = dict[str, Any]

_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_NAMES: dict[bytes, bytes] = {}  # response header names already validated -> lower-cased
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


# The app's response headers, scanned once per distinct list: (the non-framing header lines
# joined, the app's Content-Length or -1, chunked asked, Connection: close asked). Apps mostly
# send the same few header lists; the scan is Python work paid on every request otherwise.
Scanned = tuple[bytes, int, bool, bool]
_SCANNED: dict[tuple[Any, ...], Scanned] = {}
SCANNED_MAX = 512  # bounded: headers that vary per request (cookies, etags) are scanned each time


# Whole heads (after the date line) by everything they depend on; (head, length, chunked, close).
Head = tuple[bytes, int, bool, bool]
_HEADS: dict[tuple[Any, ...], Head] = {}
HEADS_MAX = 512  # bounded like _SCANNED (a body length that varies makes a key per length)


def _scan(headers: Any) -> Scanned:
    """Validate the app's headers (names are tokens, no CR/LF in values) and split out framing."""
    parts: list[bytes] = []
    length = -1
    app_chunked = False
    close = False
    names = _NAMES
    for name, value in headers:
        lname = names.get(name)
        if lname is None:
            lname = _check_name(name)
        if b"\n" in value or b"\r" in value:
            raise RuntimeError(f"invalid response header value {name!r}: {value!r}")
        if lname not in _FRAMING_HEADERS:
            parts += (name, b": ", value, b"\r\n")
        elif lname == b"content-length":
            v = value.strip()
            if not v.isdigit():
                raise RuntimeError(f"invalid Content-Length {value!r}")
            length = int(v)  # re-added by the framing unless the response is chunked
        elif lname == b"transfer-encoding":
            app_chunked = value.strip().lower() == b"chunked"  # framing is the server's
        elif value.strip().lower() == b"close":  # connection
            close = True
    return b"".join(parts), length, app_chunked, close


def _scanned(headers: tuple[Any, ...]) -> Scanned:
    try:
        found = _SCANNED.get(headers)
    except TypeError:  # pairs given as lists (the spec allows any iterable): not hashable
        return _scan(headers)
    if found is None:
        found = _scan(headers)
        if len(_SCANNED) < SCANNED_MAX:
            _SCANNED[headers] = found
    return found


def _check_name(name: bytes) -> bytes:
    """A response header name must be an RFC 9110 token (no CR/LF/colon: no header injection)."""
    if not name or not _TOKEN.issuperset(name):
        raise RuntimeError(f"invalid response header name {name!r}")
    lname = name.lower()
    if len(_NAMES) < 1024:  # bounded: an app inventing names must not grow it
        _NAMES[name] = lname
    return lname


class RequestCycle:
    """One request's ASGI side: ``receive``/``send`` for the app, the engine's callbacks for the rest."""

    __slots__ = (
        "app_done",
        "body",
        "body_done",
        "buffered",
        "chunked",
        "client_close",
        "conn",
        "continue_sent",
        "delivered",
        "disconnected",
        "expect_continue",
        "finished",
        "has_body",
        "head_only",
        "head_sent",
        "http11",
        "length",
        "method",
        "nbytes",
        "resp_headers",
        "response_complete",
        "response_started",
        "scope",
        "site",
        "status",
        "t0",
        "target",
        "task",
        "trailers",
        "waiter",
        "write_waiter",
        "written",
    )

    def __init__(
        self,
        site: AppSite,
        conn: HTTPConnection,
        scope: dict[str, Any],
        method: bytes,
        target: bytes,
        framing: Framing,
        http11: bool,
        keep_alive: bool,
        t0: float,
    ) -> None:
        self.site = site
        self.conn = conn
        self.scope = scope
        self.method = method
        self.target = target
        self.http11 = http11
        self.t0 = t0
        self.has_body = not (
            framing.framing == NO_BODY or (framing.framing == LENGTH and framing.content_length == 0)
        )
        self.body_done = not self.has_body
        self.expect_continue = framing.expect_continue and http11
        self.continue_sent = False
        self.head_sent = False
        self.client_close = not keep_alive
        self.body: list[bytes] = []
        self.buffered = 0
        self.delivered = False  # the app got the last http.request (more_body False)
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.finished = False
        self.app_done = False
        self.head_only = method == b"HEAD"
        self.status = 0
        self.resp_headers: tuple[Any, ...] = ()
        self.trailers = False
        self.chunked = False
        self.length = -1  # Content-Length of the response when known
        self.written = 0  # body bytes written
        self.nbytes = 0
        self.waiter: asyncio.Future[None] | None = None
        self.write_waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None  # the Task running ``run`` (set by the site)

    # -- the engine's side -----------------------------------------------------------------------
    def start(self) -> None:
        site = self.site
        cap = site.limit_concurrency
        if cap and site.running >= cap:
            reason = f"503 Service Unavailable: {cap} requests are already in the app\n"
            log.warning("refused request from %s: %s", self.conn.client_ip.decode("latin-1"), reason.strip())
            self.client_close = self.client_close or not self.body_done
            body = reason.encode()
            response = with_retry_after(simple_response(503, body, None, self.client_close), 503)
            self._refuse(503, response, body)
            return
        site.running += 1
        site.run(self)

    def on_body(self, chunk: bytes) -> None:
        if self.response_complete or self.disconnected or not chunk:
            return  # the response is out: what the client still sends is dropped
        self.body.append(chunk)
        self.buffered += len(chunk)
        if self.buffered > BODY_HIGH_WATER:
            self.conn.gate.pause(APP_NOT_RECEIVING)
        self._wake()

    def on_body_end(self) -> None:
        self.body_done = True
        self._wake()

    def fail(self, status: int, body: bytes) -> None:
        """The engine refused the request midway (413 for a chunked body, 408): answer and finish."""
        if self.finished or self.head_sent:
            return
        self.client_close = True
        self._refuse(status, simple_response(status, body, None, True), body)

    def abort(self) -> None:
        """The client is gone: the app's receive() returns http.disconnect, its send() raises."""
        self.disconnected = True
        self.finished = True
        if not self.response_complete:
            self.status = self.status if self.head_sent else 499
            self._log()
        self._wake()
        self._wake_writer()

    def client_write_paused(self) -> None:
        pass  # send() checks conn.write_paused after each write

    def client_write_resumed(self) -> None:
        self._wake_writer()

    # -- the app's side --------------------------------------------------------------------------
    async def run(self) -> None:
        """Call the app and turn whatever it does wrong into the right thing on the wire."""
        try:
            await self.site.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except Exception:
            log.exception("Exception in ASGI application (%s %s)", self.method.decode(), self.target.decode())
            self._app_failed()
        else:
            if not self.response_started and not self.finished:
                log.error("ASGI app returned without starting a response (%s)", self.target.decode())
                self._app_failed()
            elif not self.response_complete and not self.finished:
                log.error("ASGI app returned without completing the response (%s)", self.target.decode())
                self._app_failed()
        finally:
            self.app_done = True
            site = self.site
            site.running -= 1
            if self.task is not None:
                # Here rather than in a done callback: a Task's done callbacks each cost a
                # scheduled loop callback per request.
                site.tasks.discard(self.task)

    async def receive(self) -> Message:
        if self.disconnected or self.response_complete:
            return DISCONNECT
        if self.delivered:
            # The body is all read: the next event is the end of the response or the client leaving.
            while not (self.disconnected or self.response_complete):
                await self._wait()
            return DISCONNECT
        if not self.body and not self.body_done:
            if self.expect_continue and not self.continue_sent and not self.head_sent:
                self.continue_sent = True
                self.conn.write(CONTINUE_100)
            while not self.body and not self.body_done and not self.disconnected:
                await self._wait()
            if self.disconnected:
                return DISCONNECT
        chunks = self.body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if self.buffered > BODY_HIGH_WATER:
            self.conn.gate.resume(APP_NOT_RECEIVING)
        self.buffered = 0
        more = not self.body_done
        if not more:
            self.delivered = True
        return {"type": "http.request", "body": body, "more_body": more}

    async def send(self, message: Message) -> None:
        if self.disconnected:
            raise ClientDisconnected("the client disconnected")
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {kind!r}")
            status = message["status"]
            if not isinstance(status, int) or not 100 <= status <= 999:
                raise RuntimeError(f"http.response.start: status must be an int, got {status!r}")
            self.response_started = True
            self.status = status
            self.resp_headers = tuple(message.get("headers", ()))  # (a copy: scanned at the first body)
            self.trailers = bool(message.get("trailers", False))
            return
        if self.finished:
            raise RuntimeError(f"{kind!r} after the response was complete")
        if kind == "http.response.body":
            if self.head_sent and self.written < 0:
                raise RuntimeError("http.response.body after the last body message")
            body = message.get("body", b"")
            more = bool(message.get("more_body", False))
            self._body(body, more)
            if self.conn.write_paused and not self.finished:
                await self._drain()
        elif kind == "http.response.trailers" and self.trailers and self.written < 0:
            self._trailers(message.get("headers", ()), bool(message.get("more_trailers", False)))
        elif kind == "http.response.pathsend" and not self.head_sent:
            await self._pathsend(message["path"])
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} at this point of the response")

    # -- writing the response --------------------------------------------------------------------
    def _head(self, known_length: int) -> list[bytes]:
        """Status line and headers, framing decided (module docstring); sets head_sent.

        ``known_length`` is the whole body's size when the first body message is the last one.
        The head is a function of the key below; a repeated one is looked up, not rebuilt.
        """
        close = self.client_close or self.conn.draining
        key = (
            self.status,
            self.resp_headers,
            known_length,
            self.head_only,
            self.trailers,
            self.http11,
            self.body_done,
            close,
        )
        try:
            head = _HEADS.get(key)
        except TypeError:  # header pairs given as lists: not hashable
            head = self._build_head(known_length, close)
        else:
            if head is None:
                head = self._build_head(known_length, close)
                if len(_HEADS) < HEADS_MAX:
                    _HEADS[key] = head
        rest, self.length, self.chunked, self.client_close = head
        self.head_sent = True
        return [status_line(self.status), self.site.date_server(), rest]

    def _build_head(self, known_length: int, close: bool) -> Head:
        """The head after the date line, with (length, chunked, close) as the framing decided."""
        status = self.status
        block, length, app_chunked, app_close = _scanned(self.resp_headers)
        close = close or app_close
        parts = [block]
        out_length = -1
        chunked = False
        if self.head_only or status in NO_BODY_STATUSES or status < 200:
            # No body bytes follow. A HEAD (or 304) keeps the length a GET would have had.
            if status >= 200 and status != 204:
                if length < 0 and self.head_only and known_length > 0:
                    length = known_length
                if length >= 0:
                    parts += (b"content-length: ", b"%d" % length, b"\r\n")
            out_length = 0
        elif self.trailers and self.http11:
            chunked = True  # trailers need chunked framing (an app's length is dropped)
        elif length >= 0:
            parts += (b"content-length: ", b"%d" % length, b"\r\n")
            out_length = length
        elif known_length >= 0 and not app_chunked:
            parts += (b"content-length: ", b"%d" % known_length, b"\r\n")
            out_length = known_length
        elif self.http11:
            chunked = True
        else:
            close = True  # HTTP/1.0, length unknown: the connection's end ends the body
        if chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        if not self.body_done:
            close = True  # the unread rest of the request body would be parsed as HTTP
        if close:
            parts.append(b"connection: close\r\n\r\n")
        elif not self.http11:
            parts.append(b"connection: keep-alive\r\n\r\n")
        else:
            parts.append(b"\r\n")
        return b"".join(parts), out_length, chunked, close

    def _body(self, body: bytes, more: bool) -> None:
        out = self._head(-1 if more else len(body)) if not self.head_sent else []
        if body and self.length != 0:
            n = len(body)
            if self.chunked:
                out += (b"%x\r\n" % n, body, b"\r\n")
            else:
                if self.length >= 0 and self.written + n > self.length:
                    raise RuntimeError("response body longer than its Content-Length")
                out.append(body)
            self.written += n
            self.nbytes += n
        if not more:
            if self.chunked and not self.trailers:
                out.append(LAST_CHUNK)
            elif self.length > 0 and self.written < self.length:
                log.error("response body shorter than its Content-Length (%s)", self.target.decode())
                self.client_close = True
        if len(out) == 1:
            self.conn.write(out[0])
        else:
            self._write(out)
        if not more:
            self.written = -1  # no more body messages
            if not (self.trailers and self.chunked):
                self._complete()

    def _trailers(self, headers: Any, more: bool) -> None:
        parts = [b"0\r\n"] if self.written == -1 else []
        self.written = -2  # trailers started
        for name, value in headers:
            if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name:
                raise RuntimeError(f"invalid trailer {name!r}")
            parts += (name, b": ", value, b"\r\n")
        if not more:
            parts.append(b"\r\n")
        self._write(parts)
        if not more:
            self._complete()

    async def _pathsend(self, path: str) -> None:
        """``http.response.pathsend``: the file's bytes as the body (Content-Length from its size)."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self._write(self._head(size))
            if self.length != 0:
                sendfile: Callable[..., Any] | None = getattr(self.site.loop, "sendfile", None)
                sent = False
                if sendfile is not None:
                    try:
                        await sendfile(self.conn.transport, f, 0, size, fallback=True)
                        sent = True
                    except (NotImplementedError, RuntimeError):
                        f.seek(0)  # uvloop's transports: no sendfile; read and write instead
                if not sent:
                    await self._copy_file(f)
                self.nbytes = size
        self.written = -1
        self._complete()

    async def _copy_file(self, f: Any) -> None:
        while chunk := f.read(FILE_CHUNK):
            if self.disconnected:
                raise ClientDisconnected("the client disconnected")
            self.conn.write(chunk)
            if self.conn.write_paused:
                await self._drain()

    def _write(self, out: list[bytes]) -> None:
        if not out:
            return
        conn = self.conn
        if len(out) == 1:
            conn.write(out[0])
        elif self.nbytes > LARGE_WRITE:
            conn.writelines(out)
        else:
            conn.write(b"".join(out))

    def _complete(self) -> None:
        self.response_complete = True
        if self.waiter is not None:
            self._wake()
        if not self.finished:
            self.finished = True
            self._log()
            self.conn.request_finished(self)

    def _refuse(self, status: int, response: bytes, body: bytes) -> None:
        """Answer with a server-made response instead of the app's (limit, refusal, app error)."""
        self.status = status
        self.head_sent = True
        self.response_complete = True
        if self.head_only:
            response = response[: len(response) - len(body)]
        else:
            self.nbytes = len(body)
        self.conn.write(response)
        self._wake()
        if not self.finished:
            self.finished = True
            self._log()
            self.conn.request_finished(self)

    def _app_failed(self) -> None:
        if self.finished:
            return
        if not self.head_sent:
            self.client_close = self.client_close or not self.body_done
            body = b"500 Internal Server Error\n"
            self._refuse(500, simple_response(500, body, None, self.client_close), body)
            return
        # The status line is out: closing is the only way left to say the response is broken.
        self.client_close = True
        self.finished = True
        self._log()
        self.conn.close()

    def _log(self) -> None:
        site = self.site
        if site.observer is None and site.access_log is None:
            return  # (the common case: no clock read)
        elapsed = perf_counter() - self.t0
        if site.observer is not None:
            site.observer.response(self.status, elapsed)
        if site.access_log is not None:
            # The last field: why the engine cut the connection (a client send timeout), else None.
            site.access_log.log(
                b"",
                self.method,
                self.target,
                self.status,
                self.nbytes,
                None,
                None,
                elapsed,
                self.conn.abort_reason,
            )

    # -- waiting ---------------------------------------------------------------------------------
    def _wait(self) -> asyncio.Future[None]:
        fut = self.waiter
        if fut is None or fut.done():
            fut = self.waiter = self.site.loop.create_future()
        return fut

    def _wake(self) -> None:
        fut = self.waiter
        if fut is not None:
            self.waiter = None
            if not fut.done():
                fut.set_result(None)

    async def _drain(self) -> None:
        while self.conn.write_paused and not self.disconnected:
            fut = self.write_waiter = self.site.loop.create_future()
            await fut
        if self.disconnected:
            raise ClientDisconnected("the client disconnected")

    def _wake_writer(self) -> None:
        fut = self.write_waiter
        if fut is not None:
            self.write_waiter = None
            if not fut.done():
                fut.set_result(None)
