"""WebSocket (Upgrade) tunnels through the proxy, against the real backend app served by Uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import pytest
import uvicorn
import websockets

from tests.unit.harness import (
    LOOPS,
    FakeUpstream,
    access_lines,
    connect,
    proxy,
    read_head,
    read_response,
    run,
)

HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


@contextlib.asynccontextmanager
async def backend() -> AsyncIterator[int]:
    """The backend app (backend/app.py) on an ephemeral port in this event loop."""
    server = uvicorn.Server(
        uvicorn.Config("backend.app:app", host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


def masked_text_frame(text: bytes) -> bytes:
    """A client->server WebSocket text frame (RFC 6455 5.2): clients must mask, short payload."""
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))


@pytest.mark.parametrize("loop", LOOPS)
def test_websocket_echo_through_the_proxy_is_counted_and_ends_cleanly(loop: str) -> None:
    async def main() -> None:
        async with backend() as port, proxy(port) as srv:
            state = srv.state
            assert state is not None
            async with websockets.connect(
                f"ws://127.0.0.1:{srv.port}/ws", compression=None, max_size=None
            ) as ws:
                await ws.send("hello")
                assert await ws.recv() == "hello"
                blob = os.urandom(4 * 1024 * 1024)  # far above every socket buffer: flow control
                await ws.send(blob)
                assert await ws.recv() == blob
                assert state.tunnels_open == 1
                assert state.counters.count("websocket_tunnels", "websocket") == 1
                assert state.group.live[0].in_flight == 0, "the tunnel does not hold a request slot"
            for _ in range(50):
                if state.tunnels_open == 0 and not state.connections:
                    break
                await asyncio.sleep(0.02)
            assert state.tunnels_open == 0 and not state.connections
            (line,) = access_lines(srv)
            assert line["status"] == 101 and line["path"] == "/ws"
            assert line["upstream"] == f"127.0.0.1:{port}"
            assert not state.group.live[0].idle, "a tunnel's upstream connection never goes to the pool"

    run(main, loop)


def test_bytes_sent_right_after_the_handshake_reach_the_backend() -> None:
    async def main() -> None:
        async with backend() as port, proxy(port) as srv:
            r, w = await connect(srv.port)
            w.write(HANDSHAKE + masked_text_frame(b"early"))  # one packet: head and first frame
            line, headers = await read_head(r)
            assert line.startswith("HTTP/1.1 101")
            assert (
                dict((k.lower(), v) for k, v in headers)["sec-websocket-accept"]
                == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
            )
            assert await r.readexactly(7) == b"\x81\x05early"
            w.close()

    run(main)


def test_a_refused_upgrade_is_an_ordinary_response_and_the_connection_closes() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port) as srv:
            r, w = await connect(srv.port)
            w.write(HANDSHAKE)
            resp = await read_response(r)
            assert resp.status == 200 and resp.body == b"ok GET /ws"
            assert resp.get("Connection") == "close"
            assert await asyncio.wait_for(r.read(), 3) == b""
            seen = up.requests[0]
            assert seen.get("Upgrade") == "websocket" and seen.get("Connection") == "Upgrade"
            assert seen.get("Sec-WebSocket-Key") == "dGhlIHNhbXBsZSBub25jZQ=="
            assert srv.state is not None and srv.state.counters.count("websocket_tunnels") == 0

    run(main)


@pytest.mark.parametrize("loop", LOOPS)
def test_backend_closing_the_tunnel_closes_the_client(loop: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nbye"
        )
        await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with proxy(port) as srv:
            r, w = await connect(srv.port)
            w.write(HANDSHAKE)
            line, _ = await read_head(r)
            assert line.startswith("HTTP/1.1 101")
            assert await asyncio.wait_for(r.read(), 3) == b"bye", "the bytes after the 101, then EOF"
            await asyncio.sleep(0.05)
            assert srv.state is not None and srv.state.tunnels_open == 0 and not srv.state.connections
            w.close()
        server.close()

    run(main, loop)


def test_drain_gives_open_tunnels_the_drain_timeout_then_cuts_them() -> None:
    async def main() -> None:
        async with (
            backend() as port,
            proxy(port) as srv,
            websockets.connect(f"ws://127.0.0.1:{srv.port}/ws") as ws,
        ):
            await ws.send("x")
            assert await ws.recv() == "x"
            clean = await srv.drain(timeout=0.3)
            assert clean is False
            assert srv.state is not None and srv.state.tunnels_open == 0

    run(main)


def test_backend_ws_endpoint_echoes_text_and_bytes_and_is_counted() -> None:
    from backend.app import REQUEST_COUNTS

    async def main() -> None:
        before = REQUEST_COUNTS.total  # (by path it may be under <other>: the table is bounded)
        async with backend() as port, websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send("ping")
            assert await ws.recv() == "ping"
            await ws.send(b"\x00\xff" * 1000)
            assert await ws.recv() == b"\x00\xff" * 1000
        assert REQUEST_COUNTS.total == before + 1

    run(main)


def test_an_idle_tunnel_is_closed_on_both_sides_and_an_active_one_is_not() -> None:
    backend_saw_eof = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        while data := await reader.read(65536):  # echo until the proxy closes its side
            writer.write(data)
        backend_saw_eof.set()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with proxy(port, websocket_idle_timeout=2.0) as srv:
            state = srv.state
            assert state is not None
            r, w = await connect(srv.port)
            w.write(HANDSHAKE)
            line, _ = await read_head(r)
            assert line.startswith("HTTP/1.1 101")
            for i in range(10):  # traffic well inside the idle timeout keeps the tunnel (3 s in all)
                w.write(b"%d" % i)
                assert await asyncio.wait_for(r.readexactly(1), 10) == b"%d" % i
                await asyncio.sleep(0.3)
            assert state.tunnels_open == 1
            # Now silence both ways: the proxy closes the client and the backend connection.
            assert await asyncio.wait_for(r.read(), 30) == b""
            await asyncio.wait_for(backend_saw_eof.wait(), 30)
            assert state.counters.count("websocket_idle_timeouts") == 1
            assert state.tunnels_open == 0
            w.close()
        server.close()

    run(main)


def test_a_client_that_stops_reading_a_tunnel_is_cut_and_the_backend_released() -> None:
    from tests.unit.test_engine_send_timeout import stalled_client

    backend_lost = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        try:
            while True:  # a backend that streams to the client without end
                writer.write(b"z" * 65536)
                await writer.drain()
                if reader.at_eof():
                    break
        except ConnectionError:
            pass
        backend_lost.set()
        writer.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with proxy(port, client_send_timeout=0.2, websocket_idle_timeout=0) as srv:
            state = srv.state
            assert state is not None
            client = await stalled_client(srv.port, HANDSHAKE)
            head = b""
            while b"\r\n\r\n" not in head:
                head += await loop.sock_recv(client, 1)
            assert head.startswith(b"HTTP/1.1 101")
            # ... and the client reads nothing more: the proxy's buffers to it fill and stay full.
            await asyncio.wait_for(backend_lost.wait(), 30)
            for _ in range(500):
                if state.tunnels_open == 0 and not state.connections:
                    break
                await asyncio.sleep(0.02)
            assert state.tunnels_open == 0 and not state.connections
            assert state.counters.count("send_timeouts") == 1
            client.close()
        server.close()

    run(main)
