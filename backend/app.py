"""FastAPI routes of the backend contract.

Every response names the replica that served it (`X-Backend-Id`), so a client can watch the
proxy's balancing without any access to the containers. The routes are the knobs experiments
need: latency (`/delay`), CPU load (`/cpu`), payload size (`/bytes`, `/stream`), chosen statuses
(`/status`), `/echo` to see exactly what the proxy forwarded, and `/ws`, a WebSocket echo, to
see the proxy's Upgrade tunnel at work.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import FastAPI, Path, Query, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.faults import Faults, fault_config_from_env
from backend.metrics import MetricsMiddleware
from backend.servers import DEFAULT_SERVER
from backend.stats import UNMATCHED, RequestCounts

BACKEND_ID = os.environ.get("BACKEND_ID") or socket.gethostname()
# Which ASGI server runs this replica (`python -m backend` sets it from --server).
SERVER = os.environ.get("BACKEND_SERVER") or DEFAULT_SERVER
MAX_DELAY_MS = 60_000
MAX_BYTES = 64 * 1024 * 1024
MAX_CHUNKS = 10_000
MAX_CHUNK_SIZE = 1024 * 1024
# /bytes is sent in slices of this constant block: memory per request is one slice, whatever n.
BYTES_BLOCK = b"x" * (64 * 1024)
# Paths probes use; left out of the request counts so that /stats reflects client traffic only.
UNCOUNTED = frozenset({"/health", "/stats"})
REQUEST_COUNTS = RequestCounts()


class BackendIdentity:
    """Pure ASGI middleware: tags responses and counts requests (``backend/stats.py``).

    Written against ASGI directly rather than as a BaseHTTPMiddleware because it runs on every
    request and must not cost a task and a body copy each time. A request is counted when its
    response starts, before any byte of it leaves (so a client that has its answer finds it
    in ``/stats``), because only then does the router's verdict exist: a 404 that matched no
    route is counted as ``<unmatched>``, not under the path a client made up.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._header = (b"x-backend-id", BACKEND_ID.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        counted = path in UNCOUNTED
        header = self._header

        async def send_tagged(message: Message) -> None:
            nonlocal counted
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
                if not counted:
                    counted = True
                    unmatched = message["status"] == 404 and "route" not in scope
                    REQUEST_COUNTS.add(UNMATCHED if unmatched else path)
            await send(message)

        try:
            await self.app(scope, receive, send_tagged)
        finally:
            if not counted:  # the app raised before answering: the server sends a 500
                REQUEST_COUNTS.add(path if "route" in scope else UNMATCHED)


api = FastAPI(title="asgi-lab backend", docs_url=None, redoc_url=None)


@api.get("/")
async def root() -> dict[str, str]:
    return {"backend": BACKEND_ID, "server": SERVER}


@api.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok", "backend": BACKEND_ID}


@api.get("/stats")
async def stats() -> dict[str, object]:
    """Requests this replica served, by path (bounded: ``backend/stats.py``); tests compare them
    with what their clients counted."""
    return {"backend": BACKEND_ID, "requests": REQUEST_COUNTS.total, "by_path": REQUEST_COUNTS.snapshot()}


@api.api_route("/echo", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def echo(request: Request) -> dict[str, object]:
    """What arrived, as the backend saw it; the body is hashed as it streams, never held whole."""
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.stream():
        digest.update(chunk)
        length += len(chunk)
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return {
        "backend": BACKEND_ID,
        "method": request.method,
        "path": request.url.path,
        "query": request.url.query,
        "client": request.client.host if request.client else None,
        "headers": headers,
        "body": {"length": length, "sha256": digest.hexdigest()},
    }


@api.get("/delay/{ms}")
async def delay(ms: Annotated[int, Path(ge=0, le=MAX_DELAY_MS)]) -> dict[str, object]:
    await asyncio.sleep(ms / 1000)
    return {"backend": BACKEND_ID, "delay_ms": ms}


@api.get("/cpu/{ms}")
async def cpu(ms: Annotated[int, Path(ge=0, le=MAX_DELAY_MS)]) -> dict[str, object]:
    """Busy-loops on the event loop on purpose: one slow request stalls the whole replica."""
    deadline = time.perf_counter() + ms / 1000
    spins = 0
    while time.perf_counter() < deadline:
        spins += 1
    return {"backend": BACKEND_ID, "cpu_ms": ms, "spins": spins}


@api.get("/bytes/{n}")
async def some_bytes(n: Annotated[int, Path(ge=0, le=MAX_BYTES)]) -> Response:
    """``n`` bytes with Content-Length, streamed in slices of one constant block (never built
    whole: 64 MiB per request would let a few clients exhaust the replica's memory)."""

    async def body() -> AsyncIterator[bytes]:
        block, size = BYTES_BLOCK, len(BYTES_BLOCK)
        left = n
        while left >= size:
            yield block  # the constant itself, no copy
            left -= size
        if left:
            yield block[:left]

    headers = {"content-length": str(n)}
    return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)


@api.get("/stream/{chunks}")
async def stream(
    chunks: Annotated[int, Path(ge=0, le=MAX_CHUNKS)],
    size: Annotated[int, Query(ge=1, le=MAX_CHUNK_SIZE)] = 1024,
) -> StreamingResponse:
    """A chunked response (no Content-Length), yielding to the loop between chunks."""

    async def body() -> AsyncIterator[bytes]:
        block = b"y" * size
        for _ in range(chunks):
            yield block
            await asyncio.sleep(0)

    return StreamingResponse(body(), media_type="application/octet-stream")


@api.api_route("/status/{code}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
async def status(code: Annotated[int, Path(ge=200, le=599)]) -> Response:
    if code in (204, 304):
        return Response(status_code=code)
    return JSONResponse({"backend": BACKEND_ID, "status": code}, status_code=code)


@api.websocket("/ws")
async def ws_echo(websocket: WebSocket) -> None:
    """Echo every text or binary message until the client closes; counted once per connection."""
    REQUEST_COUNTS.add("/ws")
    await websocket.accept(headers=[(b"x-backend-id", BACKEND_ID.encode())])
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            elif message.get("bytes") is not None:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        return


# The ASGI entry point: the middleware wraps the whole FastAPI app (its exception handlers
# included), so that 404s and 422s are tagged with the replica too; injected faults (env
# EXTRA_DELAY_MS, FAIL_RATE, FAIL_STATUS; see faults.py) sit inside it so they are tagged as well.
# Outermost, MetricsMiddleware (metrics.py) serves GET /metrics and counts every request by route.
app = MetricsMiddleware(BackendIdentity(Faults(api, fault_config_from_env(os.environ))))
