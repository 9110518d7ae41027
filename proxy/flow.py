"""Read-side flow control shared by both directions.

A transport's reading can be paused for several independent reasons at once
(peer's write buffer is full, a pipelined request is queued, the body must wait
for an upstream connection). Counting reasons as bits means one reason being
cleared never resumes reading while another still holds it.
"""

from __future__ import annotations

import asyncio
import contextlib

# Reasons a client connection's reading is paused.
UPSTREAM_BUSY = 1  # the upstream's write buffer is above its high-water mark
PIPELINED = 2  # a complete request is queued behind the active one
WAITING_UPSTREAM = 4  # request body is being buffered until an upstream is attached
# Reasons an upstream connection's reading is paused.
CLIENT_BUSY = 8  # the client's write buffer is above its high-water mark


class ReadGate:
    """Pause/resume a transport's reading by reason bits; transitions only touch the transport once."""

    __slots__ = ("reasons", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.reasons = 0

    def pause(self, reason: int) -> None:
        if not self.reasons:
            with contextlib.suppress(RuntimeError, AttributeError):  # transport already closing
                self.transport.pause_reading()
        self.reasons |= reason

    def resume(self, reason: int) -> None:
        if not self.reasons & reason:
            return
        self.reasons &= ~reason
        if not self.reasons:
            with contextlib.suppress(RuntimeError, AttributeError):
                self.transport.resume_reading()
