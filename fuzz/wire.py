"""In-memory transports for the fuzz targets: what a protocol writes is collected, never sent.

A target drives the real protocol objects (the proxy's client connection, its upstream
connections, the load generator's connection) with these instead of sockets, so one input
costs microseconds, nothing waits on the kernel, and every byte written can be checked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any


class MemoryTransport(asyncio.Transport):
    """Collects writes in ``out``; ``on_write`` (if set) sees each write as it happens."""

    def __init__(
        self,
        peer: tuple[str, int],
        loop: asyncio.AbstractEventLoop,
        on_write: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__()
        self.peer = peer
        self.loop = loop
        self.lost = False
        self.out = bytearray()
        self.on_write = on_write
        self.closing = False
        self.eof_written = False
        self.reading = True
        self.protocol: asyncio.BaseProtocol | None = None

    # -- writing --------------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.eof_written:
            raise RuntimeError("write after write_eof")  # what a real transport refuses too
        if self.closing:
            return  # a real transport drops writes after close(); not an error
        chunk = bytes(data)
        self.out += chunk
        if self.on_write is not None and chunk:
            self.on_write(chunk)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(bytes(d) for d in list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (16 * 1024, 64 * 1024)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    # -- the rest of the API a protocol may call ---------------------------------------------------
    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        # Like a socket transport: connection_lost follows on the next loop iteration.
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.lose, None)

    def abort(self) -> None:
        self.close()

    def lose(self, exc: Exception | None) -> None:
        """The connection is gone (closed by either side): the protocol hears it exactly once."""
        self.closing = True
        if not self.lost and self.protocol is not None:
            self.lost = True
            self.protocol.connection_lost(exc)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.peer
        if name == "sockname":
            return ("127.0.0.1", 8000)
        return default


def segments(data: bytes, pattern: bytes) -> list[bytes]:
    """Cut ``data`` at sizes taken in turn from ``pattern`` (1..256 bytes each): the same request
    arriving in different reads must parse the same, so the split is part of the input."""
    if not pattern:
        return [data] if data else []
    out = []
    i = k = 0
    while i < len(data):
        n = pattern[k % len(pattern)] + 1
        out.append(data[i : i + n])
        i += n
        k += 1
    return out
