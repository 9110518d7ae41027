"""The two servers under test, in-process on a background event loop, and a raw-socket client.

``asgilab``: the lab's ASGI server running ``echo_app`` directly. ``proxy``: the lab's proxy in
front of a second asgilab (its limits raised, so what the proxy adds never trips them) running
the same app. Both are started once per test session on one loop in a thread; the client side
uses blocking sockets, so a case costs one connection and no event loop of its own.

``echo_app`` answers with what it received as JSON (method, target, headers, body), or, on a
few paths, with a response whose framing the server must get right (``/status/NNN``, ``/hop``,
``/stream``, ``/len``). Every request it sees is recorded in ``SEEN`` (targets), so a case can
check that a smuggled request never reached the application.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from asgilab.asgi_types import Receive, Scope, Send

SEEN: list[str] = []  # raw targets of every request the apps got, in order


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            return
        body += event.get("body", b"")
        if not event.get("more_body"):
            break
    raw = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
    SEEN.append(raw.decode("latin-1"))
    path: str = scope["path"]
    if path.startswith("/status/"):
        await send({"type": "http.response.start", "status": int(path[8:]), "headers": []})
        await send({"type": "http.response.body", "body": b"body!"})
        return
    if path == "/hop":
        headers = [
            (b"connection", b"x-secret"),
            (b"x-secret", b"s"),
            (b"keep-alive", b"timeout=5"),
            (b"x-kept", b"yes"),
            (b"content-length", b"2"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    if path == "/stream":  # no length: chunked to HTTP/1.1, close-delimited to HTTP/1.0
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part1,", "more_body": True})
        await send({"type": "http.response.body", "body": b"part2"})
        return
    if path == "/len":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})
        return
    out = {
        "method": scope["method"],
        "target": raw.decode("latin-1"),
        "path": path,
        "http_version": scope["http_version"],
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "body": body.decode("latin-1"),
    }
    data = json.dumps(out).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})


RAW: dict[str, bytes] = {}  # path -> the raw upstream's whole answer (it closes after it)


async def _raw_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads one request head, answers RAW[its path] byte for byte, closes: a misbehaving backend."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ", 2)[1].decode("latin-1")
        SEEN.append(target)
        writer.write(RAW.get(target.split("?")[0], b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


class Servers:
    """Both servers on one loop in a daemon thread; ``ports`` by target name."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ports: dict[str, int] = {}
        self._closers: list[Any] = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="conformance-servers", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> None:
        from asgilab.config import Config as AsgiConfig
        from asgilab.server import AsgiServer
        from proxy.config import Config as ProxyConfig
        from proxy.server import ProxyServer

        base = AsgiConfig(app="x:app", port=0, access_log=False, lifespan="off")
        direct = AsgiServer(base, echo_app)
        await direct.start()
        behind = AsgiServer(dataclasses.replace(base, max_headers=400, max_header_bytes=256 * 1024), echo_app)
        await behind.start()
        assert direct.port and behind.port
        proxy = ProxyServer(
            ProxyConfig(
                upstream_host="127.0.0.1",
                upstream_port=behind.port,
                listen_host="127.0.0.1",
                listen_port=0,
                admin_host=None,
                health_interval=0.0,
            ),
            access_log_stream=io.StringIO(),
            endpoints=[("127.0.0.1", behind.port)],
        )
        await proxy.start()
        # A second proxy in front of a raw upstream that answers canned bytes (RAW, by path): the
        # responses an ASGI server would never send, for the proxy's response-side rules.
        raw = await asyncio.start_server(_raw_upstream, "127.0.0.1", 0)
        raw_port = raw.sockets[0].getsockname()[1]
        proxy_raw = ProxyServer(
            ProxyConfig(
                upstream_host="127.0.0.1",
                upstream_port=raw_port,
                listen_host="127.0.0.1",
                listen_port=0,
                admin_host=None,
                health_interval=0.0,
                retry_on=frozenset(),  # a broken answer is reported, not retried
            ),
            access_log_stream=io.StringIO(),
            endpoints=[("127.0.0.1", raw_port)],
        )
        await proxy_raw.start()

        async def close_raw() -> None:
            raw.close()
            await raw.wait_closed()

        self.ports = {"asgilab": direct.port, "proxy": proxy.port, "proxy-raw": proxy_raw.port}
        self._closers = [proxy.close, proxy_raw.close, direct.close, behind.close, close_raw]

    def close(self) -> None:
        async def stop() -> None:
            for close in self._closers:
                result = close()
                if asyncio.iscoroutine(result):
                    await result

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


# -- the client side ------------------------------------------------------------------------------
@dataclass
class Response:
    status: int
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def get(self, name: str) -> bytes | None:
        n = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == n:
                return v
        return None

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


@dataclass
class Result:
    """What one case's connection gave back: final responses, interim ones, and how it ended."""

    responses: list[Response] = field(default_factory=list)
    interim: list[Response] = field(default_factory=list)
    closed: bool = False  # the server closed (EOF) after the last response
    extra: bytes = b""  # bytes left over that did not parse as a response
    error: str | None = None

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


class _Incomplete(Exception):
    pass


def _parse_one(buf: bytes, method: str, eof: bool) -> tuple[Response, int]:
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        raise _Incomplete
    lines = buf[:end].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    status = int(rest[:3])
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers.append((k, v.strip(b" \t")))
    resp = Response(status, version, headers, b"")
    pos = end + 4
    if method == "HEAD" or status < 200 or status in (204, 304):
        return resp, pos
    te = resp.get("transfer-encoding")
    if te is not None and te.lower().endswith(b"chunked"):
        body = b""
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                raise _Incomplete
            size = int(buf[pos:eol].split(b";")[0], 16)
            pos = eol + 2
            if size == 0:
                tend = buf.find(b"\r\n\r\n", pos - 2)
                if tend < 0:
                    raise _Incomplete
                resp.body = body
                return resp, tend + 4
            if len(buf) < pos + size + 2:
                raise _Incomplete
            body += buf[pos : pos + size]
            pos += size + 2
    cl = resp.get("content-length")
    if cl is not None:
        n = int(cl)
        if len(buf) < pos + n:
            raise _Incomplete
        resp.body = buf[pos : pos + n]
        return resp, pos + n
    if not eof:
        raise _Incomplete
    resp.body = buf[pos:]
    return resp, len(buf)


def parse(buf: bytes, methods: list[str], eof: bool) -> tuple[list[Response], list[Response], bytes]:
    finals: list[Response] = []
    interim: list[Response] = []
    while buf:
        method = methods[len(finals)] if len(finals) < len(methods) else "GET"
        try:
            resp, used = _parse_one(buf, method, eof)
        except _Incomplete:
            break
        except ValueError:
            break
        buf = buf[used:]
        (interim if resp.status < 200 else finals).append(resp)
    return finals, interim, buf


def exchange(
    port: int,
    parts: list[bytes],
    methods: list[str],
    expected: int,
    *,
    half_close: bool = False,
    pause: float = 0.05,
    wait_close: float = 3.0,
) -> Result:
    """Send ``parts`` (a short pause between them), then read until ``expected`` final responses
    arrived and the connection's fate is known (EOF within ``wait_close`` when closed, else open)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    result = Result()
    buf = b""
    eof = False
    try:
        for i, part in enumerate(parts):
            if i:
                time.sleep(pause)
            try:
                sock.sendall(part)
            except OSError as exc:  # the server may refuse and close before everything is sent
                result.error = f"send: {exc}"
                break
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            finals, _, _ = parse(buf, methods, eof)
            if len(finals) >= expected:
                break
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError as exc:  # a reset: whatever was read before it counts
                result.error = f"recv: {exc}"
                eof = True
                break
            if not chunk:
                eof = True
                break
            buf += chunk
        # After the expected responses: does the server close (EOF), or keep the connection open?
        # Waited for long only when the last response announced a close (or none came at all).
        if not eof:
            finals, _, _ = parse(buf, methods, eof)
            last = finals[-1] if finals else None
            announced = last is None or b"close" in (last.get("connection") or b"").lower()
            end = time.monotonic() + (wait_close if announced or half_close else 0.25)
            while time.monotonic() < end:
                sock.settimeout(max(0.05, end - time.monotonic()))
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    break
                except OSError:
                    eof = True
                    break
                if not chunk:
                    eof = True
                    break
                buf += chunk
    finally:
        sock.close()
    result.responses, result.interim, result.extra = parse(buf, methods, eof)
    result.closed = eof
    return result


def seen_since(mark: int) -> Iterator[str]:
    return iter(SEEN[mark:])
