"""A tiny keep-alive HTTP/1.1 upstream for the proxy's unit tests, on a real local socket."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Self


class LocalServer:
    """An asyncio server on an ephemeral 127.0.0.1 port for the life of an ``async with``.

    Subclasses define ``handle(reader, writer)``, called once per accepted connection.
    """

    server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> Self:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class StatusServer(LocalServer):
    """Answers ``/status/NNN`` with NNN and any other path with ``status`` (an int or a function of
    the path), with ``body`` (a name tells servers apart); ``hang`` stalls every answer. Request
    bodies are not read (GETs only).
    """

    def __init__(self, status: int | Callable[[str], int] = 200, body: bytes = b"ok") -> None:
        self.status = status
        self.body = body
        self.hang = False
        self.paths: Counter[str] = Counter()  # requests received, by path (health probes included)
        self.connections = 0

    @property
    def requests(self) -> int:
        return sum(self.paths.values())

    def _status_for(self, path: str) -> int:
        if path.startswith("/status/"):
            return int(path.rsplit("/", 1)[1])
        return self.status if isinstance(self.status, int) else self.status(path)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                self.paths[path] += 1
                if self.hang:
                    await asyncio.sleep(3600)
                status, body = self._status_for(path), self.body
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
