"""``--workers N``: N processes share one port (SO_REUSEPORT); a parent supervises, serves nothing.

Used by the proxy and the ASGI server alike. Like nginx's master without the respawning:
SIGTERM/SIGINT are forwarded so every worker drains its own connections, and the parent exits
0 once all workers exited 0. A worker that dies unexpectedly (crash, OOM kill, failed bind)
stops the others and the parent exits 1, so the container restarts as a whole instead of
silently serving at reduced capacity. Workers are spawned (not forked) so each starts with a
clean interpreter and its own event loop; ``target`` must therefore be picklable (a module-level
function, or a ``functools.partial`` of one with picklable arguments).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from multiprocessing import connection as mp_connection

from engine import accesslog

log = logging.getLogger("engine.workers")

PR_SET_PDEATHSIG = 1  # prctl(2): signal this process gets when its parent dies

WorkerMain = Callable[[int], int]  # worker index -> exit code


def _worker_entry(
    target: WorkerMain, worker: int, supervisor: int, log_lock: accesslog.SharedLock | None = None
) -> None:  # pragma: no cover - child
    # If the supervisor is killed outright (SIGKILL, OOM), its workers get SIGTERM and drain instead
    # of living on as orphans that hold the port (Linux only; elsewhere they outlive it).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        # The supervisor already died between spawn and prctl. Compare with its pid, not with 1:
        # in a container the supervisor itself is pid 1.
        if os.getppid() != supervisor:
            sys.exit(1)
    # Workers share stdout: each access-log batch is written under one lock, so a line longer
    # than PIPE_BUF is never cut by another worker's write (engine/accesslog.py).
    accesslog.share_lock(log_lock)
    sys.exit(target(worker))


def supervise(count: int, target: WorkerMain, name: str) -> int:
    """Run ``target(i)`` in ``count`` spawned processes named ``{name}-worker-{i}``; see module doc."""
    ctx = multiprocessing.get_context("spawn")
    try:
        log_lock: accesslog.SharedLock | None = ctx.Lock()
    except OSError as exc:  # no usable /dev/shm (POSIX semaphores): serve anyway, say what is lost
        log_lock = None
        log.warning("no lock shared by the workers (%s): access-log lines over 4 KiB may interleave", exc)
    workers = [
        ctx.Process(
            target=_worker_entry,
            args=(target, i, os.getpid(), log_lock),
            name=f"{name}-worker-{i}",
            daemon=False,
        )
        for i in range(count)
    ]
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping:
            log.info("signal %d received: forwarding SIGTERM to %d worker(s)", signum, len(workers))
        stopping = True
        for w in workers:
            if w.pid is not None and w.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for w in workers:
            if stopping:  # a signal arrived while starting: do not start more
                break
            w.start()
        running = [w for w in workers if w.pid is not None]
        log.info("supervising %d workers: pids %s", len(running), " ".join(str(w.pid) for w in running))
        if stopping:
            on_signal(signal.SIGTERM, None)  # the ones started after the signal have not seen it
        failed = False
        while running:
            mp_connection.wait([w.sentinel for w in running], timeout=0.5)
            for w in [w for w in running if w.exitcode is not None]:
                running.remove(w)
                # Killed by the forwarded SIGTERM before it installed its handler (still starting):
                # it was asked to stop and had nothing to drain, so that is a clean exit too.
                told = stopping and w.exitcode == -signal.SIGTERM
                if (w.exitcode != 0 and not told) or not stopping:
                    failed = True
                    log.error("%s (pid %s) exited with code %s", w.name, w.pid, w.exitcode)
                    if not stopping:
                        on_signal(signal.SIGTERM, None)  # stop the rest; the orchestrator restarts us
        for w in workers:
            if w.pid is not None:
                w.join()
        return 1 if failed else 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
