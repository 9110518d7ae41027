"""What one serving process does around its server, the same for the proxy and the ASGI server.

Its log setup (stderr: stdout is the access log), the event loop it runs on (uvloop when
installed: both servers are measured on it, and it is a hard dependency of their images; the
asyncio loop otherwise, so tests run without it) and the wait for SIGTERM/SIGINT that starts
the drain. Each process (one per ``--workers``) calls these itself; the supervisor in
``engine.workers`` serves nothing and installs no loop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys


def setup_logging(level: str) -> None:
    """Operational logs on stderr, so stdout stays the pure JSON access log."""
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A loop for ``asyncio.Runner(loop_factory=...)``: uvloop's if importable."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dep in the images, optional elsewhere
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


async def until_signalled() -> None:
    """Return once SIGTERM or SIGINT arrives (a container stop, Ctrl-C), to begin the drain."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
