"""The two apps of the ASGI server benchmark (``benchmarks.asgi``), served by every server alike.

- ``raw``: a plain ASGI 3 callable answering ``hello world\\n`` (12 bytes, the static nginx
  body of the proxy benchmark): what the server itself costs per request, with no framework;
- ``fastapi``: the same answer from a FastAPI route (routing, a Request object, a response
  class): what a typical app adds on top, and how much of a request's time is the server's.

Both speak lifespan (startup and shutdown complete at once), so no server logs a lifespan
failure or turns lifespan off differently from another.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BODY = b"hello world\n"
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"12")],
}
_BODY = {"type": "http.response.body", "body": BODY}


async def raw(scope: Scope, receive: Receive, send: Send) -> None:
    """The smallest honest ASGI app: one start, one body, lifespan acknowledged."""
    if scope["type"] == "http":
        await send(dict(_START))
        await send(dict(_BODY))
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


fastapi = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@fastapi.get("/", response_class=PlainTextResponse)
async def hello() -> str:
    return BODY.decode()
