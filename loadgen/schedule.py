"""When to send: the closed-loop runner (C connections, each sending back to back until a deadline).

Closed loop means each connection sends its next request as soon as the previous one finished,
so the offered load adapts to the server (C requests are always in flight). This is the simple,
wrk-like mode. A later open-loop mode (requests at intended send times, latency measured from the
intended time to avoid coordinated omission) will be another runner here that reuses the same
``client.Connection`` and ``histogram.Timeline``; the client only knows how to send one request
and report its outcome, never when.

Ending: at the deadline no new request is issued, and the run waits for the requests in flight to
finish. They are bounded by the request timeout, so the drain is too; every request that was sent
is therefore either a response or a classified error in the report, and the report's totals equal
what the servers saw. (If the drain somehow overruns timeout + a grace period, the stragglers are
counted as ``timeout`` rather than lost.)

Results go to a ``histogram.Timeline``, which files each request under the second it was SENT
(see that module for why). Once a second, a tick seals the timeline seconds that can no longer
change and calls an optional ``on_tick`` hook (the live line); ticks are the only periodic work
besides the clients' timers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from time import perf_counter

from loadgen.client import Connection, DoneCallback, build_request, close_all
from loadgen.config import Config
from loadgen.histogram import Timeline

# Extra drain time on top of the request timeout before stragglers are forced to "timeout".
DRAIN_GRACE_S = 2.0

TickHook = Callable[[int, Timeline], None]


@dataclass
class RunResult:
    """What the report needs besides the timeline itself."""

    timeline: Timeline
    started_at: datetime  # wall clock (UTC) of second 0
    elapsed_s: float  # second 0 until the last request finished (includes the drain)
    stopped_early: bool


class ClosedLoop:
    """Run ``config.concurrency`` connections back to back for ``config.duration_s`` seconds."""

    def __init__(self, config: Config, on_tick: TickHook | None = None) -> None:
        self._config = config
        self._on_tick = on_tick
        self._deadline = float("inf")
        self._in_flight = 0
        self._drained: asyncio.Future[None] | None = None
        self._stop: asyncio.Event | None = None
        self._stopped_early = False

    def stop(self) -> None:
        """End the run now (e.g. on SIGINT): stop issuing, drain, and still produce the report."""
        self._stopped_early = True
        self._deadline = perf_counter()
        if self._stop is not None:
            self._stop.set()

    async def run(self) -> RunResult:
        cfg = self._config
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._drained = loop.create_future()
        request = build_request(cfg.method, cfg.target, cfg.headers)
        head = cfg.method == "HEAD"
        conns = [
            Connection(cfg.target, request, cfg.timeout_s, head=head, loop=loop)
            for _ in range(cfg.concurrency)
        ]

        started_at = datetime.now(UTC)
        start = perf_counter()
        timeline = Timeline(start)
        if not self._stopped_early:
            self._deadline = start + cfg.duration_s
        self._in_flight = len(conns)
        try:
            for conn in conns:
                conn.send(self._worker(conn, timeline))
            await self._tick_until_deadline(start, timeline)
            try:
                await asyncio.wait_for(asyncio.shield(self._drained), cfg.timeout_s + DRAIN_GRACE_S)
            except TimeoutError:
                for conn in conns:
                    conn.fail_inflight("timeout")
            end = perf_counter()
        finally:
            close_all(conns)
        timeline.finish()
        return RunResult(timeline, started_at, end - start, self._stopped_early)

    def _worker(self, conn: Connection, timeline: Timeline) -> DoneCallback:
        """The per-connection loop, as a callback: record, then send again unless past the deadline."""
        record = timeline.record

        def on_done(
            sent_at: float, done_at: float, status: int, backend: bytes | None, error: str | None
        ) -> None:
            record(sent_at, done_at, status, backend, error)
            if done_at < self._deadline:
                conn.send(on_done)
                return
            self._in_flight -= 1
            if self._in_flight == 0 and self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

        return on_done

    async def _tick_until_deadline(self, start: float, timeline: Timeline) -> None:
        second = 1
        while True:
            tick_at = start + second
            if tick_at > self._deadline:
                await self._sleep_until(self._deadline)
                return
            if await self._sleep_until(tick_at):
                return
            timeline.seal_settled(second, self._config.timeout_s)
            if self._on_tick is not None:
                self._on_tick(second, timeline)
            second += 1

    async def _sleep_until(self, when: float) -> bool:
        """Sleep until perf_counter() reaches ``when``; True if stop() cut it short."""
        assert self._stop is not None
        delay = when - perf_counter()
        if self._stop.is_set():
            return True
        if delay <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)
        return self._stop.is_set()
