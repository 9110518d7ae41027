"""Read-side flow control: pause a transport's reading for several independent reasons.

A transport's reading can be paused for several reasons at once (a pipelined request is
queued, the handler's peer cannot take more, the app is not receiving). Counting reasons as
bits means one reason being cleared never resumes reading while another still holds it.

The engine owns ``PIPELINED``; handlers pick their own bits from the others (the proxy's are
in ``proxy/flow.py``, the ASGI cycle's in ``asgilab/cycle.py``) and must not reuse ``PIPELINED``.
"""

from __future__ import annotations

import asyncio
import contextlib

PIPELINED = 2  # a complete request is queued behind the active one (or an error/upgrade is pending)


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
