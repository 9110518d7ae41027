"""The hand-off glue: a WebSocket upgrade leaves the engine for asgilab/websocket.py's session.

Over a real socket (AsgiServer in-process, the ``websockets`` client): the session gets the
request head and the bytes after it, the connection stays counted until the session releases
it, and a drain ends an open WebSocket with 1012 instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
import websockets

from asgilab.config import Config
from asgilab.server import AsgiServer
from tests.unit.asgi_checker import Checked

pytest.importorskip("asgilab.websocket")


async def echo(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"plain"})
        return
    assert (await receive())["type"] == "websocket.connect"
    await send(
        {"type": "websocket.accept", "subprotocol": "chat" if "chat" in scope["subprotocols"] else None}
    )
    while True:
        ev = await receive()
        if ev["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": "echo " + (ev.get("text") or "")})


def test_websocket_upgrade_is_handed_to_the_session_and_drained_with_1012() -> None:
    async def main() -> None:
        checked = Checked(echo)
        cfg = dataclasses.replace(Config(app="x:app", port=0, access_log=False), lifespan="off")
        srv = AsgiServer(cfg, checked)
        await srv.start()
        try:
            url = f"ws://127.0.0.1:{srv.port}/chat?room=1"
            async with websockets.connect(url, subprotocols=["chat"]) as ws:  # type: ignore[list-item]
                assert ws.subprotocol == "chat"
                await ws.send("hi")
                assert await ws.recv() == "echo hi"
                scope = checked.scopes[-1]
                assert scope["type"] == "websocket" and scope["path"] == "/chat"
                assert scope["query_string"] == b"room=1" and scope["scheme"] == "ws"
                assert srv.site is not None and len(srv.site.connections) == 1
                drained = asyncio.ensure_future(srv.drain(timeout=5))
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
                assert await drained, "the drain finished once the session released the connection"
        finally:
            await srv.close()
        assert checked.problems == []

    asyncio.run(main())
