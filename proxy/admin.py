"""Admin listener: /healthz for Docker's healthcheck and /upstreams for humans.

Deliberately built on asyncio streams rather than the hot-path protocols: it
serves a request every few seconds, and keeping it separate means nothing in
the request path imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from proxy.context import ProxyState
from proxy.headers import status_line


def _response(status: int, body: bytes, content_type: bytes) -> bytes:
    return b"".join(
        (
            status_line(status),
            b"Content-Type: ",
            content_type,
            b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body),
            body,
        )
    )


class AdminServer:
    """One request per connection, then close: simplest thing that health checkers handle."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self.server: asyncio.AbstractServer | None = None

    def render(self, method: bytes, path: bytes) -> bytes:
        path = path.split(b"?", 1)[0]
        if method in (b"GET", b"HEAD"):
            if path == b"/healthz":
                if self.state.draining:
                    return _response(503, b"draining\n", b"text/plain")
                return _response(200, b"ok\n", b"text/plain")
            if path == b"/upstreams":
                doc = {
                    "upstream": self.state.config.upstream,
                    "policy": self.state.balancer.name,
                    "endpoints": self.state.group.snapshot(),
                }
                return _response(200, json.dumps(doc).encode() + b"\n", b"application/json")
        return _response(404, b"not found\n", b"text/plain")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) != 3:
                writer.write(_response(400, b"bad request\n", b"text/plain"))
            else:
                resp = self.render(parts[0], parts[1])
                if parts[0] == b"HEAD":
                    resp = resp.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
                writer.write(resp)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._handle, host, port, reuse_address=True)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
