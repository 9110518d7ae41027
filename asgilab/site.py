"""asgilab's side of the connection engine: the ``Site`` whose handlers call an ASGI app.

Per request the engine asks ``prepare`` (framing checks, ``engine/framing.py``) and then
``handler``: a ``RequestCycle`` (``cycle.py``) for HTTP, or, for a valid WebSocket upgrade, a
``WebSocketUpgrade`` that hands the connection to ``asgilab/websocket.py``'s session. The
same Site serves ``python -m asgilab`` and ``python -m proxy --app``; only its limits, access
log and ``observer`` (the proxy's metrics) differ.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
import types
from collections.abc import Coroutine, Generator
from email.utils import formatdate
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from asgilab.cycle import RequestCycle
from asgilab.proxy_headers import TrustedProxies, forwarded
from asgilab.scope import Address, http_scope, websocket_scope
from engine.accesslog import AccessLog
from engine.framing import NO_BODY, Framing, request_framing
from engine.handler import EventCounter, Headers, Prepared
from engine.limits import Limits

if TYPE_CHECKING:
    from asgilab.config import Config
    from engine.connection import HTTPConnection

try:  # H8b's module; until it exists, upgrades are answered as plain HTTP.
    from asgilab.websocket import WebSocketSession
except ImportError:  # pragma: no cover
    WebSocketSession = None  # type: ignore[assignment, misc]

log = logging.getLogger("asgilab.site")
SERVER_HEADER = b"server: asgilab\r\n"


class ResponseObserver(Protocol):
    """Counts finished responses (the proxy's ``Counters`` in ``--app`` mode)."""

    def response(self, status: int, seconds: float) -> None: ...


def limits_from(cfg: Config) -> Limits:
    return Limits(
        max_request_line=cfg.max_request_line,
        max_header_bytes=cfg.max_header_bytes,
        max_headers=cfg.max_headers,
        max_body_size=cfg.max_body_size,
        max_connections=cfg.max_connections,
        header_timeout=cfg.header_timeout,
        body_timeout=cfg.body_timeout,
        keepalive_timeout=cfg.keep_alive,
        send_timeout=cfg.client_send_timeout,
    )


class AppSite:
    """The engine ``Site`` (``engine.handler.Site``) of one listener serving one ASGI app."""

    def __init__(
        self,
        app: Any,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        *,
        limits: Limits | None = None,
        access_log: AccessLog | None = None,
        state: dict[str, Any] | None = None,
        observer: ResponseObserver | None = None,
        counters: EventCounter | None = None,
        connections: set[HTTPConnection] | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.loop = loop
        self.limits = limits or limits_from(config)
        self.access_log = access_log
        self.state = state
        self.observer = observer
        self.counters = counters  # refusals and the engine's events (the proxy's, in --app mode)
        self.connections: set[HTTPConnection] = set() if connections is None else connections
        self.refused: set[HTTPConnection] = set()  # over --max-connections, their 503 lingering
        self.root_path = config.root_path
        self.trusted = TrustedProxies(config.forwarded_allow_ips) if config.proxy_headers else None
        self.limit_concurrency = config.limit_concurrency
        self.running = 0  # requests in the app now (for --limit-concurrency)
        self.tasks: set[asyncio.Task[None]] = set()
        # --eager: the app's coroutine runs at once in the parser callback and gets a Task only
        # if it has to wait, so an app that answers without waiting costs no Task (about 10% of
        # a raw hello's CPU). Opt-in: while it runs eagerly asyncio.current_task() is None, and
        # anyio (Starlette, FastAPI) keys its cancel scopes on the task, so a scope entered in
        # the first step and left in the Task fails ("exit cancel scope in a different task").
        self.eager = config.eager
        self.server: Address = None  # the bound address, set by the server once listening
        self._date_sec = -1
        self._date = b""

    # -- engine.handler.Site ---------------------------------------------------------------------
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
    ) -> RequestCycle | WebSocketUpgrade:
        framing: Framing = prepared  # type: ignore[assignment]  # what prepare returned
        headers = framing.lowered
        client: Address = conn.peer
        scheme = "http"
        trusted = self.trusted
        if trusted is not None and client is not None and trusted.trusts(client[0]):
            client, scheme = forwarded(headers, client, scheme, trusted)
        if (
            upgrade
            and WebSocketSession is not None
            and method == b"GET"
            and framing.framing == NO_BODY
            and (framing.upgrade or b"").strip().lower() == b"websocket"
        ):
            scope = websocket_scope(
                target,
                headers,
                "wss" if scheme == "https" else "ws",
                client,
                self.server,
                self.root_path,
                self.state,
            )
            return WebSocketUpgrade(self, conn, scope, target, headers)
        scope = http_scope(
            method,
            target,
            headers,
            "1.1" if http11 else "1.0",
            scheme,
            client,
            self.server,
            self.root_path,
            self.state,
        )
        return RequestCycle(self, conn, scope, method, target, framing, http11, keep_alive, t0)

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
        log.info("rejected request from %s: %s", client_ip.decode("latin-1"), reason)
        if self.counters is not None:
            self.counters.inc("rejected", str(status))
        if self.observer is not None and access:
            self.observer.response(status, elapsed)
        if access and self.access_log is not None:
            self.access_log.log(b"", b"-", target, status, nbytes, None, None, elapsed)

    # -- what cycles use -------------------------------------------------------------------------
    def run(self, cycle: RequestCycle) -> None:
        """Run the app for ``cycle``: eagerly until it first waits, then in a Task (see ``eager``)."""
        coro = cycle.run()
        if self.eager:
            ctx = contextvars.copy_context()
            try:
                first = ctx.run(coro.send, None)
            except StopIteration:
                return  # finished without waiting: no Task was needed
            task = self.loop.create_task(_resume(coro, first), context=ctx)
            task.add_done_callback(partial(_cancelled_early, coro))
        else:
            task = self.loop.create_task(coro)
        # The cycle removes its Task from ``tasks`` when its ``run`` ends (no done callback).
        cycle.task = task
        self.tasks.add(task)

    def date_server(self) -> bytes:
        """``date`` and ``server`` headers, formatted once a second."""
        now = int(time.time())
        if now != self._date_sec:
            self._date_sec = now
            self._date = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n" + SERVER_HEADER
        return self._date


def _cancelled_early(coro: Coroutine[Any, Any, None], task: asyncio.Task[None]) -> None:
    """A Task cancelled before its first step never ran ``_resume``: cancel the app's coroutine here."""
    if inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED:
        return  # it ran to its end
    try:
        coro.throw(asyncio.CancelledError())
    except (StopIteration, asyncio.CancelledError):
        return
    except BaseException:
        log.exception("ASGI app raised while being cancelled")
        return
    coro.close()  # it caught the cancellation and waited again: end it


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], yielded: Any) -> Generator[Any, Any, None]:
    """Go on driving a coroutine that was started outside a Task (what ``yield from`` does).

    The Task sees what the coroutine yields (the future it waits on) and sends or throws the
    outcome back, which is passed on: the coroutine cannot tell it was started eagerly.
    """
    while True:
        try:
            value = yield yielded
        except BaseException as exc:  # a cancellation or an error the Task throws in
            try:
                yielded = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                yielded = coro.send(value)
            except StopIteration:
                return


class WebSocketUpgrade:
    """The handler of a WebSocket upgrade request: hands the connection to a WebSocketSession."""

    __slots__ = (
        "body_done",
        "client_close",
        "conn",
        "has_body",
        "head_sent",
        "headers",
        "scope",
        "site",
        "target",
    )

    def __init__(
        self, site: AppSite, conn: HTTPConnection, scope: dict[str, Any], target: bytes, headers: Headers
    ) -> None:
        self.site = site
        self.conn = conn
        self.scope = scope
        self.target = target
        self.headers = headers
        self.has_body = False
        self.body_done = True
        self.head_sent = False
        self.client_close = True

    def start(self) -> None:
        site, conn = self.site, self.conn
        assert WebSocketSession is not None
        session = WebSocketSession(
            site.app,
            self.scope,
            conn.transport,
            loop=site.loop,
            config=site.config,
            logger=logging.getLogger("asgilab.websocket"),
            on_close=lambda: conn.released(None),
        )
        self.head_sent = True
        rest = conn.hand_over(self, session)
        # wsproto parses the handshake itself: give it the head as it arrived (rebuilt from the
        # parsed parts: same bytes modulo whitespace, which HTTP/1.1 lets a parser normalise).
        head = [b"GET ", self.target, b" HTTP/1.1\r\n"]
        for name, value in self.headers:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        session.start(b"".join(head))
        if rest:
            session.data_received(rest)

    def on_body(self, chunk: bytes) -> None:
        pass

    def on_body_end(self) -> None:
        pass

    def fail(self, status: int, body: bytes) -> None:
        pass

    def abort(self) -> None:
        pass

    def client_write_paused(self) -> None:
        pass

    def client_write_resumed(self) -> None:
        pass
