"""The client send timeout (``Limits.send_timeout``, engine.flow.SendWatch): a client that stops
reading its response is cut and what served it is released; one that keeps reading is not.

No timing assertions: short timeouts, and the tests wait for what a user would notice (the app's
send raising, the socket closed, the access-log line) under a generous overall guard.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from asgilab.config import Config
from asgilab.site import AppSite
from engine.accesslog import AccessLog
from engine.connection import HTTPConnection
from engine.flow import SendWatch
from proxy.counters import Counters
from tests.unit.asgi_checker import FakeTransport
from tests.unit.harness import LOOPS


class ManualLoop:
    """Only what SendWatch uses: call_later, fired by hand."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, cb: Callable[[], None]) -> asyncio.TimerHandle:
        self.pending.append((delay, cb))
        loop = self

        class Handle:
            def cancel(self) -> None:
                loop.pending = [p for p in loop.pending if p[1] is not cb]

        return Handle()  # type: ignore[return-value]

    def fire(self) -> None:
        (_, cb), *self.pending = self.pending
        cb()


class Buffer(FakeTransport):
    def __init__(self) -> None:
        super().__init__()
        self.size = 0

    def get_write_buffer_size(self) -> int:
        return self.size

    def close(self) -> None:
        # As asyncio's: with bytes still buffered the socket stays open until they are sent.
        if self.size:
            self.closed = True
        else:
            super().close()

    def abort(self) -> None:
        self.size = 0
        self.closed = False
        super().close()


def test_the_watch_rearms_while_the_reader_takes_bytes_and_fires_once_it_takes_none() -> None:
    loop, transport, stalls = ManualLoop(), Buffer(), []
    watch = SendWatch(loop, transport, 5.0, lambda: stalls.append(1))  # type: ignore[arg-type]
    transport.size = 100_000
    watch.watch()
    watch.watch()  # one timer at a time
    assert [d for d, _ in loop.pending] == [5.0 / SendWatch.SAMPLES]
    for _ in range(SendWatch.SAMPLES - 1):  # three quarters of the timeout with nothing taken
        loop.fire()
    assert stalls == []
    transport.size = 90_000  # the client read 10 kB
    loop.fire()
    transport.size = 150_000  # the producer added bytes after the pause: not progress ...
    loop.fire()
    transport.size = 140_000  # ... but a read after it is, though the buffer is above where it began
    loop.fire()
    watch.resumed()  # drained below the low-water mark and refilled in between: progress too
    loop.fire()
    assert stalls == [] and len(loop.pending) == 1
    for _ in range(SendWatch.SAMPLES):  # a whole timeout with nothing taken
        loop.fire()
    assert stalls == [1] and loop.pending == []


def test_the_watch_stops_once_everything_was_sent() -> None:
    loop, transport, stalls = ManualLoop(), Buffer(), []
    watch = SendWatch(loop, transport, 5.0, lambda: stalls.append(1))  # type: ignore[arg-type]
    transport.size = 70_000
    watch.watch()
    transport.size = 0
    loop.fire()
    assert stalls == [] and loop.pending == []
    off = SendWatch(loop, transport, 0.0, lambda: stalls.append(1))  # type: ignore[arg-type]
    off.watch()
    assert loop.pending == [], "0 = off: nothing is armed"


def _site(app: Any, send_timeout: float) -> tuple[AppSite, io.StringIO, Counters]:
    stream, events = io.StringIO(), Counters()
    cfg = Config(app="x:app", access_log=True, client_send_timeout=send_timeout)
    site = AppSite(app, cfg, asyncio.get_running_loop(), access_log=AccessLog(stream, None), counters=events)
    return site, stream, events


async def stalled_client(port: int, request: bytes) -> socket.socket:
    """A client with a tiny receive buffer that sends ``request`` and then reads nothing."""
    loop = asyncio.get_running_loop()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setblocking(False)
    await loop.sock_connect(client, ("127.0.0.1", port))
    await loop.sock_sendall(client, request)
    return client


async def _until(cond: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), 30)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_that_stops_reading_is_cut_and_the_app_send_raises(loop: str) -> None:
    outcome: list[str] = []

    async def endless(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        chunk = b"x" * 65536
        try:
            while True:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception as exc:  # the ASGI spec's "send raises once the client is gone"
            outcome.append(type(exc).__name__)
            raise

    async def main() -> None:
        site, stream, events = _site(endless, 0.2)
        server = await asyncio.get_running_loop().create_server(lambda: HTTPConnection(site), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        client = await stalled_client(port, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            # ... and never read. The server's buffers fill, writing pauses, nothing drains.
            await _until(lambda: bool(outcome))
            await _until(lambda: not site.connections and not site.tasks)
            assert outcome == ["ClientDisconnected"]
            assert events.count("send_timeouts") == 1
            (line,) = (json.loads(x) for x in stream.getvalue().splitlines())
            assert line["status"] == 200 and line["error"] == "client send timeout"
            # The client finds the connection reset (or ended) once it reads again.
            got = b""
            try:
                while chunk := await asyncio.wait_for(loop.sock_recv(client, 1 << 20), 30):
                    got += chunk
            except ConnectionResetError:
                pass
            assert got.startswith(b"HTTP/1.1 200")
        finally:
            client.close()
            server.close()

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(main())


def test_a_client_that_keeps_reading_gets_the_whole_response() -> None:
    total = 8 * 1024 * 1024

    async def big(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % total)]}
        )
        chunk = b"y" * 65536
        for _ in range(total // len(chunk)):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        site, stream, events = _site(big, 2.0)  # generous: the client reads all the time
        server = await asyncio.get_running_loop().create_server(lambda: HTTPConnection(site), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=65536)
        try:
            writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = 0
            while chunk := await asyncio.wait_for(reader.read(65536), 30):
                got += len(chunk)
            assert got > total
            line = json.loads(stream.getvalue())
            assert line["status"] == 200 and "error" not in line and not events.events
        finally:
            writer.close()
            server.close()

    asyncio.run(main())


def test_bytes_left_unsent_behind_a_close_are_cut_after_the_timeout() -> None:
    async def main() -> None:
        site, _, events = _site(None, 0.05)
        conn = HTTPConnection(site)
        transport = Buffer()
        transport.protocol = conn
        conn.connection_made(transport)
        transport.size = 5000  # a response the client never reads, still in the transport's buffer
        conn.close()
        assert conn.send_watch is not None and conn.send_watch.timer is not None
        await _until(lambda: conn.abort_reason is not None)
        assert conn.abort_reason == "client send timeout" and events.count("send_timeouts") == 1

        quiet = HTTPConnection(_site(None, 0.0)[0])  # send timeout off: a close is just a close
        t2 = Buffer()
        t2.protocol = quiet
        quiet.connection_made(t2)
        t2.size = 5000
        quiet.pause_writing()
        quiet.close()
        assert quiet.send_watch is None

    asyncio.run(main())


def test_the_timeouts_are_flags_with_env_twins_validated_at_start(capsys: pytest.CaptureFixture[str]) -> None:
    from asgilab.config import load_config as asgilab_config
    from proxy.config import load_config as proxy_config

    assert proxy_config([], {}).client_send_timeout == 60.0
    assert proxy_config([], {"PROXY_CLIENT_SEND_TIMEOUT": "0"}).client_send_timeout == 0.0  # off
    assert proxy_config(["--websocket-idle-timeout", "5"], {}).websocket_idle_timeout == 5.0
    assert asgilab_config(["m:app"], {"ASGILAB_CLIENT_SEND_TIMEOUT": "2.5"}).client_send_timeout == 2.5
    for argv, env, needle in [
        ([], {"PROXY_CLIENT_SEND_TIMEOUT": "soon"}, "--client-send-timeout / PROXY_CLIENT_SEND_TIMEOUT"),
        (["--websocket-idle-timeout", "-1"], {}, "--websocket-idle-timeout / PROXY_WEBSOCKET_IDLE_TIMEOUT"),
    ]:
        with pytest.raises(SystemExit) as exc:
            proxy_config(argv, env)
        assert exc.value.code == 2 and needle in capsys.readouterr().err


@pytest.mark.parametrize("loop", LOOPS)
def test_through_the_proxy_a_client_that_stops_reading_releases_the_upstream(loop: str) -> None:
    from tests.unit.harness import access_lines, proxy

    upstream_released = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n")
        try:
            while not reader.at_eof():  # a body without end, as fast as the proxy takes it
                writer.write(b"u" * 65536)
                await writer.drain()
        except ConnectionError:
            pass
        upstream_released.set()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(endless, "127.0.0.1", 0)
        async with proxy(server.sockets[0].getsockname()[1], client_send_timeout=0.2) as srv:
            state = srv.state
            assert state is not None
            client = await stalled_client(srv.port, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                # ... never read: the proxy pauses the upstream, then cuts the client.
                await asyncio.wait_for(upstream_released.wait(), 30)
                await _until(lambda: not state.connections)
                assert state.counters.count("send_timeouts") == 1
                assert all(ep.in_flight == 0 for ep in state.group.live), "the endpoint slot is released"
                (line,) = access_lines(srv)
                assert line["status"] == 200 and line["error"] == "client send timeout"
            finally:
                client.close()
        server.close()

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(main())


def test_an_asgilab_websocket_client_that_stops_reading_is_cut() -> None:
    """The engine watches a taken-over connection too: the app's send raises, the session ends."""
    outcome: list[str] = []
    handshake = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )

    async def firehose(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        try:
            while True:
                await send({"type": "websocket.send", "bytes": b"w" * 65536})
        except Exception as exc:
            outcome.append(type(exc).__name__)

    async def main() -> None:
        site, _, _ = _site(firehose, 0.2)
        # Pings would also end it (no pong from a client that reads nothing): off here.
        site.config = dataclasses.replace(site.config, ws_ping_interval=0.0)
        server = await asyncio.get_running_loop().create_server(lambda: HTTPConnection(site), "127.0.0.1", 0)
        client = await stalled_client(server.sockets[0].getsockname()[1], handshake)
        try:
            await _until(lambda: bool(outcome))
            await _until(lambda: not site.connections)
            assert outcome == ["ClientDisconnected"]
        finally:
            client.close()
            server.close()

    asyncio.run(main())
