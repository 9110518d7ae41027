"""The unit suite's proxy harness: a real ProxyServer in-process, a fake upstream, raw-socket clients.

Shared by every proxy test file; fixtures that wrap it live in tests/unit/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import uvloop

from benchmarks.host import free_port as free_port  # re-exported: every proxy test needs a port
from proxy.config import Config
from proxy.server import ProxyServer
from tests.unit.upstreams import LocalServer

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run(coro_fn: Callable[[], Awaitable[None]], loop: str = "uvloop") -> None:
    async def guarded() -> None:
        await asyncio.wait_for(coro_fn(), 8)

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(guarded())


# -- fake upstream --------------------------------------------------------------------------------
@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    conn_id: int
    chunk_sizes: list[int] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        vals = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(vals) if vals else None

    def has(self, name: str) -> bool:
        return any(k.lower() == name.lower() for k, _ in self.headers)


async def read_head(reader: asyncio.StreamReader) -> tuple[str, list[tuple[str, str]]]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            k, v = line.split(":", 1)
            headers.append((k.strip(), v.strip()))
    return lines[0], headers


async def read_chunked(reader: asyncio.StreamReader, sizes: list[int] | None = None) -> bytes:
    out = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return bytes(out)
        if sizes is not None:
            sizes.append(size)
        out += await reader.readexactly(size)
        await reader.readexactly(2)


def hget(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name.lower():
            return v
    return None


class FakeUpstream(LocalServer):
    """Tiny HTTP/1.1 server; behaviour chosen by request path."""

    def __init__(self) -> None:
        self.connections = 0
        self.closed = 0
        self.requests: list[Seen] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.readers: list[asyncio.StreamReader] = []
        self.drop_reused = False  # close (without answering) any 2nd request on a connection
        self.reset_all = False  # read every request, then close without answering (a crashing app)
        self.status_all: int | None = None  # answer every request with this status
        self.release = asyncio.Event()

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        for w in self.writers:
            w.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        cid = self.connections
        self.writers.append(writer)
        self.readers.append(reader)
        served = 0
        try:
            while True:
                line, headers = await read_head(reader)
                method, target, _ = line.split(" ")
                if target == "/stall":  # do not read the request body until released
                    await self.release.wait()
                sizes: list[int] = []
                if (hget(headers, "transfer-encoding") or "").lower() == "chunked":
                    body = await read_chunked(reader, sizes)
                elif hget(headers, "content-length"):
                    body = await reader.readexactly(int(hget(headers, "content-length") or 0))
                else:
                    body = b""
                if self.drop_reused and served:
                    writer.transport.abort()
                    return
                self.requests.append(Seen(method, target, headers, body, cid, sizes))
                served += 1
                if self.reset_all:
                    writer.transport.abort()
                    return
                if self.status_all is not None:
                    out = b"nope %d" % self.status_all
                    writer.write(
                        b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (self.status_all, len(out)) + out
                    )
                    await writer.drain()
                    continue
                if not await self.respond(method, target, body, writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # CancelledError: test loop teardown while a handler sleeps in /hang
        finally:
            self.closed += 1
            writer.close()

    async def respond(self, method: str, target: str, body: bytes, w: asyncio.StreamWriter) -> bool:
        path, _, query = target.partition("?")
        if path == "/slow":
            await asyncio.sleep(float(query or "0.3"))
        if path == "/hang":
            await asyncio.sleep(3600)
        if path == "/echo":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        elif path == "/big":
            n = int(query)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
            if method != "HEAD":
                w.write(pattern(n))
        elif path == "/chunked":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await w.drain()
            await self.release.wait()
            w.write(b"6\r\n world\r\n0\r\n\r\n")
        elif path == "/hop":
            w.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Secret, keep-alive\r\n"
                b"X-Secret: s\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nTrailer: X-T\r\n"
                b"Upgrade: h2c\r\nX-Kept: yes\r\nX-Request-ID: from-upstream\r\n\r\nok"
            )
        elif path == "/eof":
            w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-eof")
            await w.drain()
            return False
        elif path == "/die":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            await w.drain()
            w.transport.abort()
            return False
        else:
            out = f"ok {method} {target}".encode()
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(out) + out)
        await w.drain()
        return True


def pattern(n: int) -> bytes:
    block = bytes(range(256)) * 4096
    return (block * (n // len(block) + 1))[:n]


# -- client side ----------------------------------------------------------------------------------
@dataclass
class Resp:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def get(self, name: str) -> str | None:
        return hget(self.headers, name)


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> Resp:
    line, headers = await read_head(reader)
    status = int(line.split(" ")[1])
    if method == "HEAD" or status in (204, 304) or status < 200:
        body = b""
    elif (hget(headers, "transfer-encoding") or "").lower() == "chunked":
        body = await read_chunked(reader)
    elif hget(headers, "content-length") is not None:
        body = await reader.readexactly(int(hget(headers, "content-length") or 0))
    else:
        body = await reader.read()
    return Resp(status, headers, body)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)


async def fetch(port: int, raw: bytes, method: str = "GET") -> Resp:
    r, w = await connect(port)
    w.write(raw)
    resp = await read_response(r, method)
    w.close()
    return resp


def get(path: str, extra: str = "", host: str = "example.test") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


@contextlib.asynccontextmanager
async def proxy(
    port: int = 0, endpoints: Sequence[tuple[str, int]] | None = None, **cfg: object
) -> AsyncIterator[ProxyServer]:
    settings: dict[str, object] = {
        "upstream_host": "127.0.0.1",
        "upstream_port": port,
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "admin_host": "127.0.0.1",
        "admin_port": 0,
    }
    settings.update(cfg)
    srv = ProxyServer(Config(**settings), access_log_stream=io.StringIO(), endpoints=endpoints)  # type: ignore[arg-type]
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


def access_lines(srv: ProxyServer) -> list[dict]:
    assert srv.state is not None and srv.state.access_log is not None
    srv.state.access_log.flush()
    stream = srv.state.access_log.stream
    assert isinstance(stream, io.StringIO)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def addr(up: FakeUpstream) -> tuple[str, int]:
    return ("127.0.0.1", up.port)
