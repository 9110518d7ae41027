"""An ASGI spec checker: wraps an app and validates what the *server* gives it.

``Checked(app)`` is itself an ASGI app. Every scope and every event ``receive()`` returns is
checked against the ASGI 3 spec (HTTP 2.4, WebSocket 2.4, lifespan 2.0): required keys, their
types, and the order of events (no ``http.request`` after ``more_body`` False, nothing but
``http.disconnect`` after a disconnect). ``send()`` after a disconnect must raise an
``OSError``. Violations are collected in ``problems`` (not raised into the app, which would
turn them into a 500 and hide them); tests assert ``checker.problems == []``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import httptools

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_HTTP_KEYS: dict[str, type | tuple[type, ...]] = {
    "type": str,
    "asgi": dict,
    "http_version": str,
    "method": str,
    "scheme": str,
    "path": str,
    "raw_path": bytes,
    "query_string": bytes,
    "root_path": str,
    "headers": list,
    "client": (tuple, list, type(None)),
    "server": (tuple, list, type(None)),
}
_WS_KEYS = {k: v for k, v in _HTTP_KEYS.items() if k != "method"}


class Checked:
    """The wrapper; ``scopes`` and ``events`` keep what the server produced, for assertions."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.problems: list[str] = []
        self.scopes: list[Scope] = []
        self.events: list[Message] = []

    def problem(self, text: str) -> None:
        self.problems.append(text)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        kind = scope.get("type")
        if kind == "http":
            self._check_scope(scope, _HTTP_KEYS)
            self._check_http_scope(scope)
        elif kind == "websocket":
            self._check_scope(scope, _WS_KEYS)
        elif kind == "lifespan":
            if not isinstance(scope.get("asgi"), dict) or scope["asgi"].get("version") != "3.0":
                self.problem(f"lifespan scope asgi: {scope.get('asgi')!r}")
        else:
            self.problem(f"unknown scope type {kind!r}")
        state = {"done": False, "disconnected": False}

        async def checked_receive() -> Message:
            event = await receive()
            self.events.append(event)
            self._check_event(kind, event, state)
            return event

        async def checked_send(message: Message) -> None:
            try:
                await send(message)
            except OSError:
                if not state["disconnected"] and kind == "http":
                    # Allowed: the server may know of the disconnect before receive() told the app.
                    state["disconnected"] = True
                raise
            else:
                if state["disconnected"] and kind == "http":
                    self.problem(f"send({message.get('type')!r}) after http.disconnect did not raise OSError")

        await self.app(scope, checked_receive, checked_send)

    def _check_scope(self, scope: Scope, keys: dict[str, type | tuple[type, ...]]) -> None:
        for key, kinds in keys.items():
            if key not in scope:
                self.problem(f"{scope['type']} scope lacks {key!r}")
            elif not isinstance(scope[key], kinds):
                self.problem(f"{scope['type']} scope {key!r} is {type(scope[key]).__name__}")
        asgi = scope.get("asgi") or {}
        if asgi.get("version") != "3.0" or not isinstance(asgi.get("spec_version"), str):
            self.problem(f"scope asgi {asgi!r}")
        for pair in scope.get("headers", []):
            if (
                not isinstance(pair, (tuple, list))
                or len(pair) != 2
                or not all(isinstance(x, bytes) for x in pair)
                or pair[0] != pair[0].lower()
            ):
                self.problem(f"header {pair!r} is not a (lower-case bytes, bytes) pair")
        for key in ("client", "server"):
            addr = scope.get(key)
            if addr is not None and (
                len(addr) != 2 or not isinstance(addr[0], str) or not isinstance(addr[1], (int, type(None)))
            ):
                self.problem(f"scope {key} {addr!r} is not (host, int port)")
        if "state" in scope and not isinstance(scope["state"], dict):
            self.problem("scope state is not a dict")

    def _check_http_scope(self, scope: Scope) -> None:
        if scope.get("http_version") not in ("1.0", "1.1", "2"):
            self.problem(f"http_version {scope.get('http_version')!r}")
        if scope.get("method") != str(scope.get("method")).upper():
            self.problem(f"method {scope.get('method')!r} not upper-case")
        if scope.get("scheme") not in ("http", "https"):
            self.problem(f"scheme {scope.get('scheme')!r}")
        if b"?" in scope.get("raw_path", b""):
            self.problem("raw_path contains the query string")
        root = scope.get("root_path", "")
        if root and not str(scope.get("path", "")).startswith(root):
            self.problem("path does not start with root_path")

    def _check_event(self, kind: str | None, event: Message, state: dict[str, bool]) -> None:
        etype = event.get("type")
        if kind == "http":
            if state["disconnected"]:
                if etype != "http.disconnect":
                    self.problem(f"{etype!r} after http.disconnect")
                return
            if etype == "http.request":
                if state["done"]:
                    self.problem("http.request after more_body False")
                if not isinstance(event.get("body", b""), bytes):
                    self.problem("http.request body is not bytes")
                if not isinstance(event.get("more_body", False), bool):
                    self.problem("http.request more_body is not a bool")
                if not event.get("more_body", False):
                    state["done"] = True
            elif etype == "http.disconnect":
                state["disconnected"] = True
            else:
                self.problem(f"unexpected http event {etype!r}")
        elif kind == "websocket":
            if etype not in ("websocket.connect", "websocket.receive", "websocket.disconnect"):
                self.problem(f"unexpected websocket event {etype!r}")
            if etype == "websocket.receive" and (event.get("bytes") is None) == (event.get("text") is None):
                self.problem("websocket.receive needs exactly one of bytes/text")
            if etype == "websocket.disconnect" and not isinstance(event.get("code"), int):
                self.problem("websocket.disconnect code is not an int")
        elif kind == "lifespan" and etype not in ("lifespan.startup", "lifespan.shutdown"):
            self.problem(f"unexpected lifespan event {etype!r}")


# -- the harness the engine and asgilab tests drive the server through (Uvicorn's style) ----------


class FakeTransport(asyncio.Transport):
    """An in-memory transport: what the server writes lands in ``buffer``; no sockets."""

    def __init__(self, peer: tuple[str, int] | None = ("127.0.0.1", 50000)) -> None:
        super().__init__()
        self.peer = peer
        self.buffer = bytearray()
        self.closed = False
        self.eof = False
        self.reading = True
        self.protocol: Any = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closed and not self.eof:
            self.buffer += data

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.peer
        if name == "sockname":
            return ("127.0.0.1", 8000)
        return default

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 65536)


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = False

    def get(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower().encode():
                return v.decode("latin-1")
        return None


class _ResponseParser:
    def __init__(self) -> None:
        self.responses: list[Response] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.responses.append(Response())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.responses[-1].headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.responses[-1].status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.responses[-1].body += body

    def on_message_complete(self) -> None:
        self.responses[-1].complete = True


def parse_responses(data: bytes, head: bool = False) -> list[Response]:
    """Every response in ``data`` (a HEAD response has no body: parse it with ``head=True``)."""
    p = _ResponseParser()
    if head and b"\r\n\r\n" in data:
        # httptools cannot be told the request was a HEAD: feed it the head alone.
        with contextlib.suppress(httptools.HttpParserError):
            p.parser.feed_data(data[: data.index(b"\r\n\r\n") + 4])
        if p.responses:
            p.responses[-1].complete = True
        return p.responses
    with contextlib.suppress(httptools.HttpParserUpgrade):
        p.parser.feed_data(data)
    return p.responses


class Client:
    """One fake client connection to ``site`` (an engine Site)."""

    def __init__(self, site: Any, peer: tuple[str, int] | None = ("127.0.0.1", 50000)) -> None:
        from engine.connection import HTTPConnection

        self.transport = FakeTransport(peer)
        self.conn = HTTPConnection(site)
        self.transport.protocol = self.conn
        self.conn.connection_made(self.transport)

    def send(self, data: bytes) -> None:
        self.conn.data_received(data)

    def take(self) -> bytes:
        out = bytes(self.transport.buffer)
        self.transport.buffer.clear()
        return out

    async def responses(self, n: int = 1, timeout: float = 5.0, head: bool = False) -> list[Response]:
        """Wait (on the loop, so the app runs) until ``n`` complete responses were written."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            got = parse_responses(bytes(self.transport.buffer), head=head)
            if len([r for r in got if r.complete]) >= n or loop.time() > end:
                return got
            await asyncio.sleep(0.002)

    async def until(self, cond: Callable[[], bool], timeout: float = 5.0) -> bool:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not cond():
            if loop.time() > end:
                return False
            await asyncio.sleep(0.002)
        return True
