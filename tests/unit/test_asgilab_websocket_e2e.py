"""``python -m asgilab`` end to end: WebSockets on the backend app's /ws, and lifespan at startup.

The server runs as a subprocess on an ephemeral port, as a user starts it; the client side is
the ``websockets`` library (what browsers' peers look like) or a raw socket with wsproto where
a test must see frames the library hides (the server's pings).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol
from wsproto import ConnectionType, WSConnection, events

from benchmarks.host import free_port, stop_process, wait_port

REPO = Path(__file__).resolve().parents[2]
HERE = "tests.unit.test_asgilab_websocket_e2e"


@contextlib.contextmanager
def asgilab(app: str, *args: str) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """``python -m asgilab APP`` on a free port; stopped (SIGTERM, then kill) at the end."""
    port = free_port()
    cmd = [sys.executable, "-m", "asgilab", app, "--host", "127.0.0.1", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, timeout=30, proc=proc)
        yield port, proc
    finally:
        stop_process(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


# -- WebSocket


def test_backend_ws_echo_and_http_on_the_same_port() -> None:
    with asgilab("backend.app:app") as (port, _):

        async def main() -> None:
            url = f"ws://127.0.0.1:{port}/ws"
            async with connect(url) as a, connect(url) as b:
                assert a.response is not None and a.response.headers["x-backend-id"]
                await a.send("from a")
                await b.send(b"\x00from b")
                assert await b.recv() == b"\x00from b"
                assert await a.recv() == "from a"
                await a.send("é" * 50_000)  # a large text message, many TCP segments
                assert await a.recv() == "é" * 50_000
            assert (a.close_code, b.close_code) == (1000, 1000)
            # The same listener still speaks plain HTTP after serving WebSockets.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            writer.close()

        run(main())


def test_proxy_app_serves_websockets_in_process() -> None:
    """``python -m proxy --app``: the same session behind the proxy's own listener."""
    listen, admin = free_port(), free_port()
    cmd = [sys.executable, "-m", "proxy", "--app", "backend.app:app"]
    cmd += ["--listen", f"127.0.0.1:{listen}", "--admin-listen", f"127.0.0.1:{admin}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(listen, timeout=30, proc=proc)

        async def main() -> None:
            async with connect(f"ws://127.0.0.1:{listen}/ws") as ws:
                await ws.send("in-process")
                assert await ws.recv() == "in-process"
            assert ws.close_code == 1000

        run(main())
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert '"WebSocket /ws" [accepted]' in err


def _raw_ws(port: int, path: str = "/ws") -> tuple[socket.socket, WSConnection]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    client = WSConnection(ConnectionType.CLIENT)
    sock.sendall(client.send(events.Request(host="127.0.0.1", target=path)))
    return sock, client


def _events_until(sock: socket.socket, client: WSConnection, kind: type) -> list[events.Event]:
    got: list[events.Event] = []
    while not any(isinstance(e, kind) for e in got):
        data = sock.recv(65536)
        assert data, f"connection closed before a {kind.__name__}; got {got}"
        client.receive_data(data)
        got.extend(client.events())
    return got


def test_server_pings_at_the_configured_interval() -> None:
    with asgilab("backend.app:app", "--ws-ping-interval", "0.2", "--ws-ping-timeout", "10") as (port, _):
        sock, client = _raw_ws(port)
        with sock:
            assert isinstance(
                _events_until(sock, client, events.AcceptConnection)[0], events.AcceptConnection
            )
            for _ in range(2):
                ping = next(e for e in _events_until(sock, client, events.Ping) if isinstance(e, events.Ping))
                sock.sendall(client.send(ping.response()))
            sock.sendall(client.send(events.TextMessage(data="still here")))
            echoed = _events_until(sock, client, events.TextMessage)
            assert events.TextMessage(data="still here") in echoed


def test_oversized_message_is_closed_with_1009() -> None:
    with asgilab("backend.app:app", "--ws-max-size", "1024") as (port, _):

        async def main() -> None:
            async with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
                await ws.send(b"x" * 1024)
                assert await ws.recv() == b"x" * 1024
                await ws.send(b"x" * 1025)
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
            assert ws.close_code == 1009

        run(main())


def test_sigterm_closes_open_websockets_with_1012_and_exits_zero() -> None:
    with asgilab("backend.app:app") as (port, proc):

        async def main() -> None:
            async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
                proc.send_signal(signal.SIGTERM)
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
            assert ws.close_code == 1012

        run(main())
        assert proc.wait(30) == 0


async def gatekeeper_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """/deny closes before accepting, /teapot answers with an HTTP response, the rest is echoed."""
    if scope["type"] != "websocket":
        raise RuntimeError("a WebSocket-only app")
    await receive()
    if scope["path"] == "/deny":
        await send({"type": "websocket.close"})
    elif scope["path"] == "/teapot":
        await send({"type": "websocket.http.response.start", "status": 418, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"short and stout"})
    else:
        await send({"type": "websocket.accept", "subprotocol": scope["subprotocols"][-1]})
        message = await receive()
        await send({"type": "websocket.close", "code": 4321, "reason": f"got {message['text']}"})


def test_403_denial_response_subprotocol_and_close_reason_through_the_server() -> None:
    with asgilab(f"{HERE}:gatekeeper_app", "--lifespan", "off") as (port, _):

        async def main() -> None:
            url = f"ws://127.0.0.1:{port}"
            with pytest.raises(InvalidStatus) as denied:
                await connect(f"{url}/deny")
            assert denied.value.response.status_code == 403
            with pytest.raises(InvalidStatus) as teapot:
                await connect(f"{url}/teapot")
            assert teapot.value.response.status_code == 418
            assert teapot.value.response.body == b"short and stout"
            offered = [Subprotocol("a.v1"), Subprotocol("a.v2")]
            async with connect(f"{url}/chat", subprotocols=offered) as ws:
                assert ws.subprotocol == "a.v2"
                await ws.send("ping?")
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
            assert (ws.close_code, ws.close_reason) == (4321, "got ping?")

        run(main())


# -- lifespan


async def state_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Puts a value in the lifespan state at startup and serves it back over HTTP."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["greeting"] = "hello from startup"
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = scope["state"]["greeting"].encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


async def failing_startup_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "lifespan"
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "cannot reach db:5432 (e2e)"})


async def no_lifespan_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        raise RuntimeError("this app speaks only HTTP")
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_lifespan_state_reaches_requests() -> None:
    with asgilab(f"{HERE}:state_app") as (port, _):
        response = _get(port)
    assert response.startswith(b"HTTP/1.1 200")
    assert response.endswith(b"hello from startup")


def test_startup_failed_exits_1_with_the_apps_message() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "asgilab", f"{HERE}:failing_startup_app", "--port", str(free_port())],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "cannot reach db:5432 (e2e)" in proc.stderr


@pytest.mark.parametrize(("mode", "serves"), [("auto", True), ("on", False)])
def test_app_without_lifespan_auto_serves_and_on_fails(mode: str, serves: bool) -> None:
    args = [sys.executable, "-m", "asgilab", f"{HERE}:no_lifespan_app", "--lifespan", mode]
    if serves:
        with asgilab(f"{HERE}:no_lifespan_app", "--lifespan", mode) as (port, _):
            assert _get(port).startswith(b"HTTP/1.1 204")
        return
    proc = subprocess.run(
        [*args, "--port", str(free_port())], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1, proc.stderr
    assert "this app speaks only HTTP" in proc.stderr
