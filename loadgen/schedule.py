"""When to send: the closed loop (C connections back to back) and the open loop (a rate).

**Closed loop** (``--concurrency C``, wrk's model): each connection sends its next request as soon
as the previous one finished, so the offered load adapts to the server. Simple, but a server that
stalls also stalls the generator, and the requests that *would* have been sent during the stall
never exist: the report under-states what users would have seen (coordinated omission).

**Open loop** (``--rate R``, wrk2's and k6's arrival-rate model): request ``i`` has an *intended*
send time ``t_i`` fixed in advance (``start + i/R``, or the inverse of the integrated rate for a
scenario whose rate changes; :class:`ArrivalSchedule`). A request whose time has come is written
on a free keep-alive connection; if none is free (all busy with slow responses) and the pool is at
``--connections``, it waits in a FIFO backlog for the next connection to free up. Its *corrected*
latency runs from ``t_i``, so the wait counts (that is the correction); the *uncorrected* one runs
from the actual write. The backlog is bounded (``--max-backlog``, this worker's share of it): a
request due while it is full is **dropped** at once, as k6 drops an iteration no VU is free for
(``dropped_iterations``), so memory stays bounded through a long stall at a high rate. Nothing is
dropped silently: dropped requests are counted as ``dropped`` and requests still in the backlog at
the end as ``unsent``, each under the second they were due in, and the rate check compares what
was intended with what was sent by the deadline.

Timing: one timer per due batch, never a spin. The pump wakes at the next intended time (uvloop's
timers have 1 ms resolution, so at 10,000 req/s each wake-up sends ~10 requests), sends everything
due, and re-arms. How late a request went out compared with its intended time is tracked per
second (``lag_max``), as is how many had to wait for a connection, so the report can say *why* the
generator fell behind: too few connections, or too little CPU.

Ending: at the deadline no new request is issued and the run waits for the requests in flight.
They are bounded by the request timeout, so the drain is too (after timeout + a grace period the
stragglers are counted as ``timeout``). Every request issued is a response, a classified error or
``unsent`` in the report.

Once a second a tick seals the timeline seconds that can no longer change and hands a snapshot to
``on_tick`` (the live line, or the pipe to the parent process with ``--workers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import perf_counter

from loadgen.client import Connection, close_all
from loadgen.histogram import Timeline
from loadgen.mix import MixCycle
from loadgen.plan import Plan
from loadgen.record import bucket_snapshot, recent_snapshots
from loadgen.shapes import RunStats, Snapshot

# Extra drain time on top of the request timeout before stragglers are forced to "timeout".
DRAIN_GRACE_S = 2.0
# Integration step for a changing rate: intended times are exact to well under a millisecond.
RATE_STEP_S = 0.001
# Sends this much after the deadline (a timer that fired late) still count as achieved.
DEADLINE_SLACK_S = 0.005
# Closed loop with a changing number of connections: how often the target is re-read.
ADJUST_EVERY_S = 0.1

TickHook = Callable[[int, Snapshot], None]


class ArrivalSchedule:
    """Intended send times (seconds from start) of worker ``index`` of ``count``.

    The global schedule puts request ``k`` where the integrated rate reaches ``k`` (``k/R`` for a
    constant rate); this worker takes ``k = index, index + count, ...``. Times are generated
    lazily, so a long run at a high rate costs no memory.
    """

    def __init__(
        self,
        rate_at: Callable[[float], float],
        duration_s: float,
        *,
        constant: float | None = None,
        index: int = 0,
        count: int = 1,
    ) -> None:
        self.rate_at = rate_at
        self.duration_s = duration_s
        self.constant = constant
        self.index = index
        self.count = count

    def __iter__(self) -> Iterator[float]:
        if self.constant is not None:
            return self._constant(self.constant)
        return self._integrated()

    def _constant(self, rate: float) -> Iterator[float]:
        if rate <= 0:
            return
        k, step, end = self.index, self.count, self.duration_s
        while True:
            t = k / rate
            if t >= end:
                return
            yield t
            k += step

    def _integrated(self) -> Iterator[float]:
        rate_at, end = self.rate_at, self.duration_s
        k, step = self.index, self.count
        t, cum, r0 = 0.0, 0.0, max(0.0, rate_at(0.0))
        while t < end:
            t1 = min(t + RATE_STEP_S, end)
            r1 = max(0.0, rate_at(t1))
            area = (r0 + r1) * 0.5 * (t1 - t)
            while area > 0 and k < cum + area - 1e-9:  # float sums must not add one at the end
                yield t + (k - cum) / area * (t1 - t)
                k += step
            cum += area
            t, r0 = t1, r1


@dataclass
class RunResult:
    """What the report needs besides the timeline itself."""

    timeline: Timeline
    started_at: datetime  # wall clock (UTC) of second 0
    elapsed_s: float  # second 0 until the last request finished (includes the drain)
    stopped_early: bool
    stats: RunStats = field(default_factory=lambda: RunStats())


class _Runner:
    """What both loops share: start, ticks, stop, drain."""

    open_loop = False

    def __init__(
        self,
        plan: Plan,
        *,
        index: int = 0,
        count: int = 1,
        on_tick: TickHook | None = None,
        start_wall: float | None = None,
    ) -> None:
        self.plan = plan
        self.index = index
        self.count = count
        self._on_tick = on_tick
        self._start_wall = start_wall
        self._deadline = float("inf")
        self._in_flight = 0
        self._drained: asyncio.Future[None] | None = None
        self._stop: asyncio.Event | None = None
        self._stopped_early = False
        self._conns: list[Connection] = []
        self._seen: dict[int, int] = {}  # second -> its requests when last in a tick snapshot
        self.timeline = Timeline(0.0, open_loop=self.open_loop)
        self.mix = MixCycle(plan.mix, plan.target, phase=index * 7919)
        #: A mix of several requests: each entry's own timeline (indexed like the mix), so the
        #: report can say which kind of request failed. None for one request (the totals are its).
        self.entry_timelines: list[Timeline] | None = None
        if self.mix.single is None:
            self.entry_timelines = self.timeline.split_by_request([r.label for r in self.mix.requests])

    def stop(self) -> None:
        """End the run now (e.g. on SIGINT): stop issuing, drain, and still produce the report."""
        self._stopped_early = True
        self._deadline = perf_counter()
        if self._stop is not None:
            self._stop.set()

    def _new_connection(self) -> Connection:
        req = self.mix.single or self.mix.requests[0]
        conn = Connection(self.plan.target, req.wire, self.plan.timeout_s, head=req.head, loop=self._loop)
        self._conns.append(conn)
        return conn

    async def run(self) -> RunResult:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._drained = self._loop.create_future()
        if self._start_wall is not None:
            await self._sleep_until(perf_counter() + (self._start_wall - time.time()))
        started_at = datetime.now(UTC)
        start = perf_counter()
        self.timeline.begin(start)
        if not self._stopped_early:
            self._deadline = start + self.plan.duration_s
        try:
            self._begin(start)
            await self._tick_until_deadline(start)
            await self._issuing_finished()
            if self._in_flight == 0 and not self._drained.done():
                self._drained.set_result(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._drained), self.plan.timeout_s + DRAIN_GRACE_S)
            except TimeoutError:
                for conn in self._conns:
                    conn.fail_inflight("timeout")
            end = perf_counter()
        finally:
            self._cancel_timers()
            close_all(self._conns)
        self.timeline.finish()
        stats = self._stats()
        stats["connections_used"] = len(self._conns)
        stats["connects"] = sum(c.connects for c in self._conns)
        return RunResult(self.timeline, started_at, end - start, self._stopped_early, stats)

    # -- hooks for the two loops ---------------------------------------------------------------

    def _begin(self, start: float) -> None:
        raise NotImplementedError

    async def _issuing_finished(self) -> None:
        """Return once nothing more will be issued (the deadline has passed, or stop())."""
        self._end_issuing()

    def _end_issuing(self) -> None:
        raise NotImplementedError

    def _cancel_timers(self) -> None:
        pass

    def _stats(self) -> RunStats:
        return RunStats()

    def _snapshot_extra(self, now: float) -> Snapshot:
        return Snapshot()

    def _request_done(self) -> None:
        self._in_flight -= 1
        drained = self._drained
        if self._in_flight == 0 and self._issuing_over() and drained is not None and not drained.done():
            drained.set_result(None)

    def _issuing_over(self) -> bool:
        return perf_counter() >= self._deadline

    # -- ticks ---------------------------------------------------------------------------------

    def snapshot(self, second: int) -> Snapshot:
        """What the live line and page need about this process at a tick (small, picklable).

        Cumulative counters plus the second that just ended (``loadgen.record.bucket_snapshot``)
        and, under ``recent``, earlier seconds that changed since (late responses); the
        ``loadgen.record.TickMerger`` merges the snapshots of all workers into records.
        """
        tl = self.timeline
        snap: Snapshot = {
            "second": second,
            "index": self.index,
            "completed": tl.completed,
            "errors": tl.errors,
            "failed": tl.failed,
        }
        bucket_snapshot(tl, second - 1, into=snap)
        snap["recent"] = recent_snapshots(tl, second - 1, self._seen, int(self.plan.timeout_s) + 3)
        snap.update(self._snapshot_extra(perf_counter()))
        return snap

    async def _tick_until_deadline(self, start: float) -> None:
        second = 1
        while True:
            tick_at = start + second
            if tick_at > self._deadline:
                await self._sleep_until(self._deadline)
                return
            if await self._sleep_until(tick_at):
                return
            self.timeline.seal_settled(second, self.plan.timeout_s)
            if self._on_tick is not None:
                self._on_tick(second, self.snapshot(second))
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


class ClosedLoop(_Runner):
    """This worker's share of the plan's connections, each sending back to back until the deadline.

    With a scenario whose number of connections changes, the target is re-read every
    :data:`ADJUST_EVERY_S`: new connections start at once, surplus ones retire after their current
    request (never cut mid-request) and are closed then, so the server sees its connection count
    fall after a spike as well as rise (``connections_retired`` in the stats).
    """

    def _target_connections(self, elapsed: float) -> int:
        return self.plan.share(round(self.plan.load_at(elapsed)), self.index, self.count)

    def _begin(self, start: float) -> None:
        self.timeline.begin(start, last_second=max(0, math.ceil(self.plan.duration_s) - 1))
        self._active = 0
        self._retire = 0
        self.retired = 0  # connections closed because the target fell
        self._adjust_timer: asyncio.TimerHandle | None = None
        self._adjust(start)

    def _adjust(self, start: float) -> None:
        now = perf_counter()
        if now >= self._deadline:
            return
        want = self._target_connections(now - start)
        if want > self._active:
            self._retire = max(0, self._retire - (want - self._active))
            for _ in range(want - self._active):
                self._start_connection()
        elif want < self._active:
            self._retire = self._active - want
        if self.plan.constant is None:
            self._adjust_timer = self._loop.call_later(ADJUST_EVERY_S, self._adjust, start)

    def _cancel_timers(self) -> None:
        timer = getattr(self, "_adjust_timer", None)
        if timer is not None:
            timer.cancel()

    def _start_connection(self) -> None:
        conn = self._new_connection()
        self._active += 1
        self._in_flight += 1
        self._worker(conn)

    def _end_issuing(self) -> None:
        pass

    def _stats(self) -> RunStats:
        return RunStats(connections_retired=self.retired)

    def _worker(self, conn: Connection) -> None:
        """The per-connection loop, as a callback: record, then send again unless past the deadline.

        Sends the connection's first request; ``entry`` is the mix entry of the one in flight.
        """
        record = self.timeline.record
        mix = self.mix
        single = mix.single is not None
        by_entry = None if self.entry_timelines is None else [t.record for t in self.entry_timelines]
        entry = 0

        def send_mix() -> None:
            nonlocal entry
            req = mix.next()
            entry = req.index
            conn.send(on_done, req.wire, req.head)

        def on_done(
            sent_at: float, done_at: float, status: int, backend: bytes | None, error: str | None
        ) -> None:
            record(sent_at, done_at, status, backend, error)
            if by_entry is not None:
                by_entry[entry](sent_at, done_at, status, backend, error)
            if done_at < self._deadline:
                if self._retire == 0:
                    if single:
                        conn.send(on_done)
                    else:
                        send_mix()
                    return
                self._retire -= 1
                self._active -= 1
                self.retired += 1
                conn.close()  # idle now: a FIN, not a socket held until the end of the run
            self._request_done()

        if single:
            conn.send(on_done)
        else:
            send_mix()


class _Slot:
    """One open-loop connection and the intended time of the request it carries."""

    __slots__ = ("conn", "entry", "intended", "runner")

    def __init__(self, runner: OpenLoop, conn: Connection) -> None:
        self.runner = runner
        self.conn = conn
        self.intended = 0.0
        self.entry = 0  # the mix entry of the request in flight

    def on_done(
        self, sent_at: float, done_at: float, status: int, backend: bytes | None, error: str | None
    ) -> None:
        r = self.runner
        r.timeline.record_open(self.intended, sent_at, done_at, status, backend, error)
        by_entry = r._by_entry
        if by_entry is not None:
            by_entry[self.entry](self.intended, sent_at, done_at, status, backend, error)
        r._in_flight -= 1
        backlog = r._backlog
        if backlog and not r._closed:
            r._send(self, backlog.popleft())
            return
        r._free.append(self)
        if r._closed and r._in_flight == 0 and r._drained is not None and not r._drained.done():
            r._drained.set_result(None)


class OpenLoop(_Runner):
    """This worker's share of the plan's rate, sent at intended times over a lazily grown pool."""

    open_loop = True

    def _begin(self, start: float) -> None:
        plan = self.plan
        self._start = start
        self._max_conns = max(1, plan.share(plan.connections, self.index, self.count))
        self._max_backlog = plan.share(plan.max_backlog, self.index, self.count)
        self._free: list[_Slot] = []
        self._slots: list[_Slot] = []
        self._backlog: deque[float] = deque()
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self.due = 0  # intended times that have come
        self.sent = 0
        self.sent_late = 0  # sent after the deadline (+ slack): not counted as achieved
        self.unsent = 0
        self.dropped = 0  # due while the backlog was full: shed, counted
        self.pump_late_max = 0.0  # worst delay of the scheduler itself behind a due request
        entries = self.entry_timelines
        self._by_entry = None if entries is None else [t.record_open for t in entries]
        schedule = ArrivalSchedule(
            plan.load_at, plan.duration_s, constant=plan.constant, index=self.index, count=self.count
        )
        self._times = iter(schedule)
        self._next = start + next(self._times, float("inf"))
        self._issued: asyncio.Future[None] = self._loop.create_future()
        self._pump()

    async def _issuing_finished(self) -> None:
        # The tick loop's sleep may end a little before the deadline (1 ms timer resolution): the
        # pump itself ends issuing once perf_counter() has passed it, after sending what was due.
        if self._stopped_early:
            self._end_issuing()
        await self._issued

    def _send(self, slot: _Slot, intended: float) -> None:
        slot.intended = intended
        self._in_flight += 1
        self.sent += 1
        mix = self.mix
        if mix.single is not None:
            slot.conn.send(slot.on_done)
        else:
            req = mix.next()
            slot.entry = req.index
            slot.conn.send(slot.on_done, req.wire, req.head)

    def _pump(self) -> None:
        """Issue every request that is due, then sleep until the next intended time."""
        self._timer = None
        if self._closed:
            return
        now = perf_counter()
        deadline = self._deadline
        nxt = self._next
        if nxt <= now and nxt < deadline:
            if now - nxt > self.pump_late_max:  # the loop was busy (or descheduled) past a due time
                self.pump_late_max = now - nxt
            times, start, free, backlog = self._times, self._start, self._free, self._backlog
            max_backlog = self._max_backlog
            timeline = self.timeline
            buckets = timeline.buckets
            late = now > deadline + DEADLINE_SLACK_S
            while nxt <= now and nxt < deadline:
                second = int(nxt - start)
                try:
                    b = buckets[second]
                except IndexError:
                    b = timeline.bucket(second)
                b.intended += 1
                self.due += 1
                if backlog:
                    if len(backlog) < max_backlog:
                        backlog.append(nxt)
                        b.waited += 1
                    else:
                        b.dropped += 1
                        self.dropped += 1
                elif free:
                    self._send(free.pop(), nxt)
                    if late:
                        self.sent_late += 1
                elif len(self._slots) < self._max_conns:
                    slot = _Slot(self, self._new_connection())
                    self._slots.append(slot)
                    self._send(slot, nxt)
                    if late:
                        self.sent_late += 1
                elif max_backlog:
                    backlog.append(nxt)
                    b.waited += 1
                else:
                    b.dropped += 1
                    self.dropped += 1
                nxt = start + next(times, float("inf"))
            self._next = nxt
        if nxt >= deadline:
            if now >= deadline:
                self._end_issuing()
            else:
                self._timer = self._loop.call_later(deadline - now, self._pump)
            return
        self._timer = self._loop.call_later(max(0.0, nxt - perf_counter()), self._pump)

    def _end_issuing(self) -> None:
        """Deadline (or stop): whatever is still in the backlog is counted as unsent, not dropped."""
        if self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._closed = True
        if not self._issued.done():
            self._issued.set_result(None)
        timeline = self.timeline
        while self._backlog:
            t = self._backlog.popleft()
            timeline.bucket(int(t - self._start)).unsent += 1
            self.unsent += 1
        if self._in_flight == 0 and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _cancel_timers(self) -> None:
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.cancel()

    def _stats(self) -> RunStats:
        sent_in_time = self.sent - self.sent_late
        return {
            "due": self.due,
            "sent": self.sent,
            "sent_in_time": sent_in_time,
            "unsent": self.unsent,
            "dropped": self.dropped,
            "max_backlog": self._max_backlog,
            "max_connections": self._max_conns,
            "scheduler_late_max_s": self.pump_late_max,
        }

    def _snapshot_extra(self, now: float) -> Snapshot:
        backlog = self._backlog
        return {
            "due": self.due,
            "sent": self.sent,
            "backlog": len(backlog),
            "dropped": self.dropped,
            "backlog_age_s": (now - backlog[0]) if backlog else 0.0,
            "busy": len(self._slots) - len(self._free),
            "max_connections": self._max_conns,
        }
