"""asgilab's server wiring in-process: Unix sockets, the bounded graceful drain, lifespan state."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from asgilab.config import Config
from asgilab.server import AsgiServer
from tests.unit.asgi_checker import Checked, parse_responses


def config(**kw: Any) -> Config:
    return dataclasses.replace(Config(app="x:app", port=0, access_log=False), **kw)


async def fetch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: bytes) -> bytes:
    writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    data = b""
    while not parse_responses(data) or not parse_responses(data)[-1].complete:
        chunk = await reader.read(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_unix_socket_scope_and_lifespan_state(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()
            scope["state"]["greeting"] = "hi"
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": scope["state"]["greeting"].encode()})

    async def main() -> None:
        path = str(tmp_path / "asgilab.sock")
        checked = Checked(app)
        srv = AsgiServer(config(uds=path), checked)
        await srv.start()
        try:
            r, w = await asyncio.open_unix_connection(path)
            (resp,) = parse_responses(await fetch(r, w, b"/u"))
            assert resp.status == 200 and resp.body == b"hi"
            assert seen[0]["server"] == (path, None) and seen[0]["client"] is None
            w.close()
        finally:
            await srv.close()
        assert not Path(path).exists(), "the socket file is removed at exit"
        assert checked.problems == []

    asyncio.run(main())


def test_graceful_drain_is_bounded_and_lets_quick_requests_finish() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/forever":
            await asyncio.sleep(3600)
        await asyncio.sleep(0.1)
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"done"})

    async def main() -> None:
        srv = AsgiServer(config(lifespan="off"), app)
        await srv.start()
        r1, w1 = await asyncio.open_connection("127.0.0.1", srv.port)
        r2, w2 = await asyncio.open_connection("127.0.0.1", srv.port)
        quick = asyncio.ensure_future(fetch(r1, w1, b"/quick"))
        w2.write(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.05)
        clean = await srv.drain(timeout=0.5)
        assert clean is False, "the endless request was cut at the graceful timeout"
        (resp,) = parse_responses(await quick)
        assert resp.status == 200 and resp.get("connection") == "close", "in-flight requests finish"
        assert await r2.read() == b"", "the endless one's connection is closed"
        assert srv.site is not None and not srv.site.tasks, "its app task was cancelled"

    asyncio.run(main())


def test_pathsend_over_a_real_socket_on_uvloop(tmp_path: Path) -> None:
    import uvloop

    f = tmp_path / "big.bin"
    f.write_bytes(bytes(range(256)) * 8192)  # 2 MiB: more than one socket buffer

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.pathsend", "path": str(f)})

    async def main() -> None:
        srv = AsgiServer(config(lifespan="off"), app)
        await srv.start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", srv.port)
            (resp,) = parse_responses(await fetch(r, w, b"/f"))
            assert resp.status == 200 and resp.body == f.read_bytes()
            w.close()
        finally:
            await srv.close()

    uvloop.run(main())
