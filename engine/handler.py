"""The contracts between the connection engine and what answers a request.

The engine (``engine/connection.py``) parses, enforces limits and timeouts, orders pipelined
requests and owns the socket; per request it asks its ``Site`` to ``prepare`` (framing checks)
and then for a ``RequestHandler``, which answers. The proxy's ``Exchange`` and the ASGI
``RequestCycle`` are the two handlers; each server has one Site per listener. A handler may
take the connection over after its response (WebSocket, or the proxy's byte tunnel) through
``HTTPConnection.hand_over``; a ``Takeover`` then gets the transport's events.

When the engine itself cuts a connection for one of its bounds (today: a client that stops
reading its response, ``Limits.send_timeout``), it sets ``conn.abort_reason`` first; the
handler's ``abort`` follows and puts that text in its access-log line (``error``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from engine.limits import Limits

if TYPE_CHECKING:
    from engine.connection import HTTPConnection

Headers = list[tuple[bytes, bytes]]


class EventCounter(Protocol):
    """Counts rare events by name and label (the proxy's ``proxy.counters.Counters``).

    The engine counts ``send_timeouts`` and ``connections_refused`` (label ``answered`` or
    ``closed``); the proxy exports each as ``asgilab_proxy_<name>_total``.
    """

    def inc(self, name: str, label: str = ..., n: int = ...) -> None: ...


class Prepared(Protocol):
    """What ``Site.prepare`` learned from a request's headers (``engine.framing.Framing`` is one)."""

    framing: int  # engine.framing.NO_BODY, LENGTH or CHUNKED
    content_length: int  # 0 unless framing is LENGTH


class RequestHandler(Protocol):
    """One request, from its parsed head to its last response byte.

    The engine calls ``start`` when the request becomes the active one (pipelined requests wait
    their turn), feeds the body with ``on_body``/``on_body_end`` (possibly before ``start``),
    and calls ``abort`` when the client is gone. The handler writes through the connection and
    calls ``conn.request_finished(self)`` once its response is complete; it sets
    ``client_close`` when the connection must close after it.
    """

    has_body: bool  # the request announces a body (so the body timer runs)
    body_done: bool  # the whole request body was received
    head_sent: bool  # the response's status line was written (a refusal can no longer replace it)
    client_close: bool  # close the connection after this response

    def start(self) -> None: ...

    def on_body(self, chunk: bytes) -> None: ...

    def on_body_end(self) -> None: ...

    def fail(self, status: int, body: bytes) -> None:
        """Answer with a refusal instead (only before ``head_sent``); then finish."""

    def abort(self) -> None:
        """The client connection is gone: stop, and do not call ``request_finished``.

        ``conn.abort_reason`` is set when the engine cut it (e.g. ``"client send timeout"``):
        the access-log line's ``error`` field; None when the client went away by itself.
        """

    def client_write_paused(self) -> None:
        """The client's socket buffer passed its high-water mark: stop producing."""

    def client_write_resumed(self) -> None: ...


class Site(Protocol):
    """One listener's side of the engine: its limits, its connections, its handlers."""

    limits: Limits
    loop: asyncio.AbstractEventLoop
    # The connections served now: a drain calls ``shutdown()`` on each and waits for them.
    connections: set[HTTPConnection]
    # Connections refused over ``Limits.max_connections`` whose 503 is still lingering (bounded:
    # engine.limits.REFUSED_LINGERING; past it a refused connection is closed at once).
    refused: set[HTTPConnection]
    counters: EventCounter | None  # the engine's events (None: not counted, e.g. asgilab alone)

    def prepare(
        self, method: bytes, target: bytes, headers: Headers, client_ip: bytes, http11: bool
    ) -> Prepared:
        """Check framing (raise ``engine.framing.BadRequest`` for a 400) before any limit on the body."""

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
    ) -> RequestHandler:
        """The handler for an accepted request (``upgrade``: it asks to switch protocols)."""

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
        """The engine refused a request: log, count and (``access``) write its access-log line."""


class Takeover(Protocol):
    """What owns a connection after a protocol switch (a WebSocket session); gets its events.

    The connection stays in ``Site.connections`` until the takeover calls ``conn.released()``
    (once the transport is gone and its app returned), so a drain never cuts the app short.
    """

    def data_received(self, data: bytes) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...

    def shutdown(self) -> None:
        """The server drains: end the session politely (a WebSocket sends close 1012)."""
