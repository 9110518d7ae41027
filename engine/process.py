"""What one serving process does around its server, the same for the proxy and the ASGI server.

Its log setup (stderr: stdout is the access log), the event loop it runs on (uvloop when
installed: both servers are measured on it, and it is a hard dependency of their images; the
asyncio loop otherwise, so tests run without it) and the wait for SIGTERM/SIGINT that starts
the drain. Each process (one per ``--workers``) calls these itself; the supervisor in
``engine.workers`` serves nothing and installs no loop.

The wait for a signal is also where start-up ends (both servers await it right after their
listeners are bound and the app or the upstream side is built), so it first settles the heap
for the garbage collector (:func:`freeze_startup_heap`).
"""

from __future__ import annotations

import asyncio
import gc
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


def freeze_startup_heap() -> int:
    """Collect what start-up left behind, then move every object alive now into the permanent
    generation (``gc.freeze()``); returns how many objects were frozen.

    Why: what exists at the end of start-up (modules, the config, the app, the pools, the
    handlers) lives as long as the process, yet every full collection would traverse it again
    (tens of thousands of objects, a pause paid by whichever request is in flight). Frozen,
    they are never traversed again; later collections only see objects made while serving.
    With ``--workers`` each process freezes its own heap after its own start (the processes
    are spawned, not forked, so there is no copy-on-write to protect). The thresholds stay
    CPython's: the request path allocates no reference cycles, so young collections are rare
    and short (docs/proxy.md, "Speed").
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def until_signalled() -> None:
    """Return once SIGTERM or SIGINT arrives (a container stop, Ctrl-C), to begin the drain."""
    freeze_startup_heap()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
