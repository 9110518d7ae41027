"""One WebSocket connection served to an ASGI app: the handshake, frames, and the app's messages.

The connection engine parses the HTTP head; when it is an ``Upgrade: websocket`` request,
asgilab's site (``site.py``) builds the scope and hands the connection over to a
:class:`WebSocketSession`, which from then on gets the transport's events (``data_received``,
``connection_lost``, ``pause_writing``...: ``engine.handler.Takeover``). All framing is
wsproto's (a sans-io library: it turns bytes into events and events into bytes, and never
touches a socket), so this module is only the ASGI side:

- **Handshake.** The request head is fed to wsproto; the app gets ``websocket.connect`` and
  answers ``websocket.accept`` (101, with its ``subprotocol`` and extra ``headers``),
  ``websocket.close`` (HTTP 403: the handshake is never completed), or the
  ``websocket.http.response`` denial extension (``.start`` + ``.body``: any HTTP response in
  place of the upgrade). An exception or a return before any of these is a 500.
- **Messages.** Fragmented messages are reassembled; the app gets whole ``websocket.receive``
  messages (``text`` or ``bytes``), at most ``ws_max_size`` bytes each (a bigger one is closed
  with 1009 while it is still arriving, so it is never held whole).
- **Control frames.** A client's ping is answered with a pong at once. Every
  ``ws_ping_interval`` the server pings; no pong within ``ws_ping_timeout`` and the peer is
  presumed gone: the connection is dropped (the app sees 1006). No data message either way for
  ``ws_idle_timeout`` closes with 1001 "idle timeout".
- **Close.** Codes and reasons go both ways: a client's close is echoed and the app gets
  ``websocket.disconnect`` with its code and reason (1005 when the frame carried none, 1006
  when the TCP connection ended without one); the app's ``websocket.close`` sends its code and
  reason (1000 by default) and waits :data:`CLOSE_TIMEOUT` at most for the client's answer. An
  exception in the app after the accept closes with 1011; a server drain closes with 1012.
- **Send after close** raises :class:`asgilab.errors.ClientDisconnected` (an ``OSError``), as
  spec 2.4 asks; the server swallows it when it comes back out of the app.
- **Backpressure, both ways.** ``send()`` waits while the transport's write buffer is over its
  high-water mark (``pause_writing``); received messages wait in a bounded queue, and reading
  from the socket pauses while it is full, so a client faster than the app fills TCP windows
  instead of the server's memory. While reading is paused for that reason the ping timeout does
  not count: the pong may be sitting unread behind the app's backlog.

No ``permessage-deflate``: a client's offer is declined by omission (compression costs CPU per
message and is a memory-amplification risk; nothing in the lab needs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Any, Protocol

from wsproto import ConnectionType, WSConnection, events
from wsproto.connection import ConnectionState
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from asgilab.asgi_types import ASGIApp, Message, Scope
from asgilab.errors import ClientDisconnected

Headers = list[tuple[bytes, bytes]]

#: The ASGI WebSocket spec version implemented: 2.4 (reason on disconnect, OSError on send).
WS_ASGI = {"version": "3.0", "spec_version": "2.4"}

#: Seconds to wait for the client's close frame after ours before dropping the connection.
CLOSE_TIMEOUT = 5.0
#: Received messages queued for an app that is not receiving, before reading pauses.
QUEUE_MESSAGES = 32
#: ... or bytes queued (whichever comes first); reading resumes below half of both.
QUEUE_BYTES = 1 << 20


class WebSocketConfig(Protocol):
    """What the session reads from the server's configuration (asgilab's config provides it).

    Read-only properties, so any object with these attributes fits (a dataclass, argparse's
    namespace). ``0`` or ``None`` switches a limit or timer off.
    """

    @property
    def ws_max_size(self) -> int | None:
        """Largest message accepted, in bytes (a larger one: close 1009)."""

    @property
    def ws_ping_interval(self) -> float | None:
        """Seconds between the server's pings."""

    @property
    def ws_ping_timeout(self) -> float | None:
        """Seconds a pong may take before the connection is dropped."""

    @property
    def ws_idle_timeout(self) -> float | None:
        """Seconds without a data message in either direction before a close 1001."""


class _State(Enum):
    HANDSHAKE = 0  # request received, waiting for the app's accept/close/denial
    DENYING = 1  # the app sends an HTTP response instead (websocket.http.response)
    OPEN = 2  # accepted: messages flow both ways
    CLOSING = 3  # our close frame is sent, the client's answer awaited
    CLOSED = 4  # the transport is closing or gone


class WebSocketSession:
    """The WebSocket half of one connection, from the upgrade request to the last frame.

    ``on_close`` is called exactly once, when the transport is gone *and* the app has
    returned (so a drain waiting for it never cuts an app short).
    """

    def __init__(
        self,
        app: ASGIApp,
        scope: Scope,
        transport: asyncio.Transport,
        *,
        loop: asyncio.AbstractEventLoop,
        config: WebSocketConfig,
        logger: logging.Logger,
        on_close: Callable[[], None],
    ) -> None:
        self.app = app
        self.scope = scope
        self.transport = transport
        self.loop = loop
        self.logger = logger
        self.on_close = on_close
        self.max_size = config.ws_max_size or 0
        self.ping_interval = config.ws_ping_interval or 0.0
        self.ping_timeout = config.ws_ping_timeout or 0.0
        self.idle_timeout = config.ws_idle_timeout or 0.0

        self.conn = WSConnection(ConnectionType.SERVER)
        self.state = _State.HANDSHAKE
        self.task: asyncio.Task[None] | None = None
        self._app_done = False
        self._lost = False
        self._closed_reported = False

        # The app's inbox and the read side's flow control.
        self._inbox: deque[Message] = deque()
        self._inbox_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._disconnect: Message | None = None  # delivered once the inbox is empty
        self._read_paused = False
        self._early = bytearray()  # frames sent before our 101 (wsproto drops them otherwise)
        # The message being reassembled from fragments.
        self._parts: list[Any] = []
        self._size = 0

        # The write side: send() waits on this while the transport is paused.
        self._writable = asyncio.Event()
        self._writable.set()

        # Timers (loop.call_later handles).
        self._ping_payload: bytes | None = None
        self._ping_handle: asyncio.TimerHandle | None = None
        self._pong_handle: asyncio.TimerHandle | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._close_handle: asyncio.TimerHandle | None = None
        self._last_activity = 0.0

    # -- the connection's events (forwarded by the engine after the hand-over)

    def start(self, request_head: bytes) -> None:
        """Parse the upgrade request (the raw head up to ``\\r\\n\\r\\n``) and call the app."""
        try:
            self.conn.receive_data(request_head)
            request = next((e for e in self.conn.events() if isinstance(e, events.Request)), None)
        except RemoteProtocolError as exc:
            self.logger.info('%s - "WebSocket %s" refused: %s', self._who(), self._path(), exc)
            self._write(self.conn.send(exc.event_hint or events.RejectConnection()))
            self._finish_transport()
            self._app_done = True
            self._maybe_closed()
            return
        if request is None:
            raise ValueError("start() needs a complete upgrade request head")
        self.scope["subprotocols"] = list(request.subprotocols)
        self.scope["asgi"] = dict(WS_ASGI)
        extensions = dict(self.scope.get("extensions") or {})
        extensions["websocket.http.response"] = {}
        self.scope["extensions"] = extensions
        self._inbox.append({"type": "websocket.connect"})
        self.task = self.loop.create_task(self._run_app())

    def data_received(self, data: bytes) -> None:
        if self.state is _State.HANDSHAKE:
            # A client may send frames right behind its request; they become readable after
            # our 101. Bounded like the inbox: past that, reading pauses until the app answers.
            self._early += data
            if len(self._early) >= QUEUE_BYTES:
                self._pause_reading()
            return
        if self.state in (_State.OPEN, _State.CLOSING):
            self.conn.receive_data(data)
            self._handle_events()
        # DENYING or CLOSED: the client has nothing more to say that we would read.

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.state = _State.CLOSED
        self._cancel_timers()
        self._writable.set()  # wake a send() waiting on backpressure: it raises now
        self._deliver_disconnect(1006, "")  # unless a close frame already said why
        self._maybe_closed()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def shutdown(self) -> None:
        """The server drains: refuse a pending handshake with 503, close an open one with 1012."""
        if self.state is _State.HANDSHAKE:
            self._reject(503, b"Service Unavailable")
            self._deliver_disconnect(1012, "server shutting down")
        elif self.state is _State.OPEN:
            self._close(1012, "server shutting down")

    # -- the app's side

    async def _run_app(self) -> None:
        try:
            await self.app(self.scope, self._receive, self._send)
        except ClientDisconnected:
            pass  # our own exception, raised into the app for a send after the close
        except asyncio.CancelledError:
            self._abort()
            raise
        except Exception:
            self.logger.exception("Exception in ASGI application (WebSocket %s)", self._path())
            self._after_app(1011)
        else:
            self._after_app(1000)
        finally:
            self._app_done = True
            self._maybe_closed()

    def _after_app(self, code: int) -> None:
        """The app ended (``code``: 1000 returned, 1011 raised): finish what it left open."""
        try:
            self._finish_for_app(code)
        except Exception:  # wsproto/h11 refusing what is left to send: nothing polite remains
            self.logger.exception("Cannot end WebSocket %s cleanly; dropping it", self._path())
            self._abort()

    def _finish_for_app(self, code: int) -> None:
        if self.state is _State.HANDSHAKE:
            if code == 1000:
                self.logger.error(
                    "ASGI app returned without accepting or closing (WebSocket %s)", self._path()
                )
            self._reject(500, b"Internal Server Error")
        elif self.state is _State.OPEN:
            self._close(code, "" if code == 1000 else "internal error")
        elif self.state is _State.DENYING:
            self._abort()  # an unfinished response: only closing tells the client it is cut

    async def _receive(self) -> Message:
        while not self._inbox:
            if self._disconnect is not None:
                return self._disconnect  # repeated: an app asking again gets the same answer
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._inbox.popleft()
        self._inbox_bytes -= _size(message)
        if (
            self._read_paused
            and len(self._inbox) <= QUEUE_MESSAGES // 2
            and (self._inbox_bytes <= QUEUE_BYTES // 2)
        ):
            self._resume_reading()
        return message

    async def _send(self, message: Message) -> None:
        if not self._writable.is_set():
            await self._writable.wait()
        kind = message.get("type")
        state = self.state
        if state is _State.HANDSHAKE:
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                self.logger.info('%s - "WebSocket %s" 403', self._who(), self._path())
                self._reject(403, b"")
                self._deliver_disconnect(1006, "")
            elif kind == "websocket.http.response.start":
                self._deny(message)
            else:
                raise RuntimeError(
                    "expected websocket.accept, websocket.close or websocket.http.response.start, "
                    f"got {kind!r}"
                )
        elif state is _State.OPEN:
            if kind == "websocket.send":
                data = _payload(message)
                frame: events.Event = (
                    events.TextMessage(data=data) if isinstance(data, str) else events.BytesMessage(data=data)
                )
                self._write(self.conn.send(frame))
                self._last_activity = self.loop.time()
            elif kind == "websocket.close":
                code = message.get("code") or 1000
                reason = message.get("reason") or ""
                self._close(int(code), str(reason))
            else:
                raise RuntimeError(f"expected websocket.send or websocket.close, got {kind!r}")
        elif state is _State.DENYING:
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"expected websocket.http.response.body, got {kind!r}")
            finished = not message.get("more_body", False)
            data = bytes(message.get("body", b""))
            self._write(self.conn.send(events.RejectData(data=data, body_finished=finished)))
            if finished:
                self._finish_transport()
                self._deliver_disconnect(1006, "")
        else:
            raise ClientDisconnected(f"WebSocket {self._path()} is closed")

    # -- handshake answers

    def _accept(self, message: Message) -> None:
        subprotocol = message.get("subprotocol")
        headers: Headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers") or ()]
        if any(k == b"sec-websocket-protocol" for k, _ in headers):
            raise RuntimeError("use websocket.accept's subprotocol key, not a Sec-WebSocket-Protocol header")
        if subprotocol is not None and subprotocol not in self.scope["subprotocols"]:
            raise RuntimeError(f"subprotocol {subprotocol!r} was not offered by the client")
        data = self.conn.send(events.AcceptConnection(subprotocol=subprotocol, extra_headers=headers))
        self.state = _State.OPEN
        self._write(data)
        self.logger.info('%s - "WebSocket %s" [accepted]', self._who(), self._path())
        self._last_activity = self.loop.time()
        if self.ping_interval > 0:
            self._ping_handle = self.loop.call_later(self.ping_interval, self._ping)
        if self.idle_timeout > 0:
            self._idle_handle = self.loop.call_later(self.idle_timeout, self._idle_check)
        # From the 101 on, frames must be read whatever paused reading before (the engine pauses
        # it while an upgrade is pending; the early buffer may have filled).
        self._read_paused = True
        self._resume_reading()
        if self._early:
            early, self._early = bytes(self._early), bytearray()
            self.data_received(early)

    def _deny(self, message: Message) -> None:
        status = int(message["status"])
        if not 100 <= status <= 599 or status == 101:
            raise RuntimeError(f"invalid status {status} in websocket.http.response.start")
        headers: Headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers") or ()]
        if not any(k == b"connection" for k, _ in headers):
            headers.append((b"connection", b"close"))
        self.logger.info('%s - "WebSocket %s" %d', self._who(), self._path(), status)
        reject = events.RejectConnection(status_code=status, headers=headers, has_body=True)
        self._write(self.conn.send(reject))
        self.state = _State.DENYING

    def _reject(self, status: int, body: bytes) -> None:
        """An HTTP answer instead of the upgrade (403, 500, 503), then close."""
        if self.state is not _State.HANDSHAKE or self._lost:
            return
        headers: Headers = [(b"connection", b"close")]
        if body:
            headers.append((b"content-type", b"text/plain; charset=utf-8"))
            headers.append((b"content-length", b"%d" % len(body)))
        reject = events.RejectConnection(status_code=status, headers=headers, has_body=bool(body))
        data = self.conn.send(reject)
        if body:
            data += self.conn.send(events.RejectData(data=body, body_finished=True))
        self._write(data)
        self._finish_transport()

    # -- frames from the client

    def _handle_events(self) -> None:
        for event in self.conn.events():
            if isinstance(event, events.TextMessage | events.BytesMessage):
                if self.state is _State.OPEN:
                    self._on_data(event)
            elif isinstance(event, events.Ping):
                if self.conn.state is ConnectionState.OPEN:
                    self._write(self.conn.send(event.response()))
            elif isinstance(event, events.Pong):
                if self._ping_payload is not None and event.payload == self._ping_payload:
                    self._ping_payload = None
                    if self._pong_handle is not None:
                        self._pong_handle.cancel()
                        self._pong_handle = None
            elif isinstance(event, events.CloseConnection):
                self._on_close_frame(event)
                return
            if self.state is not _State.OPEN and self.state is not _State.CLOSING:
                return

    def _on_data(self, event: events.TextMessage | events.BytesMessage) -> None:
        data = event.data
        if self.max_size:
            if isinstance(data, str):
                self._size += len(data) if data.isascii() else len(data.encode())
            else:
                self._size += len(data)
            if self._size > self.max_size:
                self._parts.clear()
                self._size = 0
                self._close(1009, f"message larger than {self.max_size} bytes")
                return
        if not event.message_finished:
            self._parts.append(data)
            return
        if self._parts:
            self._parts.append(data)
            data = "".join(self._parts) if isinstance(data, str) else b"".join(self._parts)
            self._parts.clear()
        self._size = 0
        self._last_activity = self.loop.time()
        message: Message = (
            {"type": "websocket.receive", "text": data}
            if isinstance(data, str)
            else {"type": "websocket.receive", "bytes": bytes(data)}
        )
        self._inbox.append(message)
        self._inbox_bytes += len(data)
        if len(self._inbox) >= QUEUE_MESSAGES or self._inbox_bytes >= QUEUE_BYTES:
            self._pause_reading()
        self._wake()

    def _on_close_frame(self, event: events.CloseConnection) -> None:
        code = int(event.code)
        reason = event.reason or ""
        if self.conn.state is ConnectionState.REMOTE_CLOSING:
            # The client closes: echo its close (RFC 6455 5.5.1), then the server ends the TCP
            # connection first, as the RFC prefers (the server's side then holds TIME_WAIT).
            self._write(self.conn.send(event.response()))
            self._deliver_disconnect(code, reason)
        elif self.conn.state is ConnectionState.OPEN:
            # Not a close frame but wsproto's report of a protocol error (bad UTF-8: 1007, a bad
            # frame: 1002): we close with that code.
            self.logger.info('%s - "WebSocket %s" protocol error: %s', self._who(), self._path(), reason)
            self._write(self.conn.send(events.CloseConnection(code=code, reason=reason)))
            self._deliver_disconnect(code, reason)
        # Otherwise it is the client's answer to our close: the handshake is complete.
        self._finish_transport()

    # -- closing

    def _close(self, code: int, reason: str) -> None:
        """Start the closing handshake from our side; the app sees its disconnect right away."""
        if self.state is not _State.OPEN:
            return
        self.state = _State.CLOSING
        with contextlib.suppress(LocalProtocolError):
            self._write(self.conn.send(events.CloseConnection(code=code, reason=reason)))
        self._deliver_disconnect(code, reason)
        self._cancel_timers()
        self._close_handle = self.loop.call_later(CLOSE_TIMEOUT, self._abort)
        # The client's answer must be read even if the app's inbox is full (it only drops data now).
        self._resume_reading()

    def _finish_transport(self) -> None:
        self.state = _State.CLOSED
        self._cancel_timers()
        if not self.transport.is_closing():
            self.transport.close()

    def _abort(self) -> None:
        self.state = _State.CLOSED
        self._cancel_timers()
        self.transport.abort()

    def _deliver_disconnect(self, code: int, reason: str) -> None:
        if self._disconnect is None:
            self._disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
            self._wake()

    def _maybe_closed(self) -> None:
        if self._lost and self._app_done and not self._closed_reported:
            self._closed_reported = True
            self.on_close()

    # -- timers

    def _ping(self) -> None:
        self._ping_handle = None
        if self.state is not _State.OPEN:
            return
        if self._ping_payload is None and not self._read_paused:
            self._ping_payload = os.urandom(4)
            self._write(self.conn.send(events.Ping(payload=self._ping_payload)))
            if self.ping_timeout > 0:
                self._pong_handle = self.loop.call_later(self.ping_timeout, self._pong_missing)
        self._ping_handle = self.loop.call_later(self.ping_interval, self._ping)

    def _pong_missing(self) -> None:
        self._pong_handle = None
        if self.state is not _State.OPEN:
            return
        if self._read_paused:
            # The pong may be unread behind the app's backlog: not the client's fault.
            self._pong_handle = self.loop.call_later(self.ping_timeout, self._pong_missing)
            return
        self.logger.info(
            '%s - "WebSocket %s" no pong within %g s: dropped', self._who(), self._path(), self.ping_timeout
        )
        self._deliver_disconnect(1006, "keepalive ping timeout")
        self._abort()

    def _idle_check(self) -> None:
        self._idle_handle = None
        if self.state is not _State.OPEN:
            return
        idle = self.loop.time() - self._last_activity
        if idle >= self.idle_timeout:
            self._close(1001, "idle timeout")
        else:
            self._idle_handle = self.loop.call_later(self.idle_timeout - idle, self._idle_check)

    def _cancel_timers(self) -> None:
        for handle in (self._ping_handle, self._pong_handle, self._idle_handle, self._close_handle):
            if handle is not None:
                handle.cancel()
        self._ping_handle = self._pong_handle = self._idle_handle = self._close_handle = None

    # -- small helpers

    def _write(self, data: bytes) -> None:
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _pause_reading(self) -> None:
        if not self._read_paused:
            self._read_paused = True
            with contextlib.suppress(AttributeError, RuntimeError):
                self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused:
            self._read_paused = False
            with contextlib.suppress(AttributeError, RuntimeError):
                self.transport.resume_reading()

    def _who(self) -> str:
        client = self.scope.get("client")
        return f"{client[0]}:{client[1]}" if client else "-"

    def _path(self) -> str:
        path = str(self.scope.get("path", ""))
        query = self.scope.get("query_string") or b""
        return f"{path}?{query.decode('latin-1')}" if query else path


def _payload(message: Message) -> bytes | str:
    data = message.get("bytes")
    if data is not None:
        return bytes(data)
    text = message.get("text")
    if text is None:
        raise RuntimeError("websocket.send needs bytes or text")
    return str(text)


def _size(message: Message) -> int:
    data = message.get("bytes") or message.get("text") or b""
    return len(data)
