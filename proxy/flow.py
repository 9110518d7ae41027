"""The proxy's reasons to pause a transport's reading (``engine/flow.py`` has the gate itself).

Bits of ``engine.flow.ReadGate``; the engine owns ``PIPELINED`` (2).
"""

from __future__ import annotations

from engine.flow import PIPELINED, ReadGate

# Reasons a client connection's reading is paused.
UPSTREAM_BUSY = 1  # the upstream's write buffer is above its high-water mark
WAITING_UPSTREAM = 4  # request body is being buffered until an upstream is attached
# Reasons an upstream connection's reading is paused.
CLIENT_BUSY = 8  # the client's write buffer is above its high-water mark

__all__ = ["CLIENT_BUSY", "PIPELINED", "UPSTREAM_BUSY", "WAITING_UPSTREAM", "ReadGate"]
