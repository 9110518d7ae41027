"""``--workers N``: N processes, each running its share of the plan, merged exactly by the parent.

One Python process tops out at one core; ``--workers`` is how the load generator uses more. Each
worker is a ``spawn``-ed process (a clean interpreter: forking a process that may already hold an
event loop or threads is asking for trouble) that rebuilds the plan from the same config, runs
:class:`~loadgen.schedule.ClosedLoop` or :class:`~loadgen.schedule.OpenLoop` with its index, and
sends back over a queue:

* once a second, a small snapshot (counters, the previous second's encoded histogram and backend
  counts) that the parent merges into the live line;
* at the end, :meth:`~loadgen.histogram.Timeline.export`: per-second counters and HDR encodings.

The parent merges the exports with :func:`~loadgen.histogram.merge_exports` (HDR ``add``), so the
report's percentiles are those of all requests, exactly as if one process had sent them all. All
workers start at the same wall-clock instant (chosen by the parent a moment ahead, so every
interpreter has finished importing), which lines their seconds up.

Signals: SIGINT/SIGTERM to the parent (Ctrl-C, ``docker stop``) are forwarded as SIGTERM to the
workers, which stop issuing, drain and still send their results.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import traceback
from collections.abc import Callable

from loadgen.config import Config
from loadgen.plan import Plan, make_plan
from loadgen.schedule import ClosedLoop, OpenLoop, RunResult
from loadgen.shapes import Snapshot, WorkerDone

#: Seconds between starting the processes and second 0 of the run (imports take ~0.3 s each).
START_LEAD_S = 1.5


def run_one(
    config: Config,
    index: int,
    count: int,
    start_wall: float | None,
    on_tick: Callable[[int, Snapshot], None] | None,
    install_signals: bool = True,
    plan: Plan | None = None,
    on_runner: Callable[[ClosedLoop | OpenLoop], None] | None = None,
) -> RunResult:
    """Run this process's share of the plan on a fresh (uv)loop; the unit of work of a worker.

    A worker process rebuilds the plan from the config (a scenario's rate function need not be
    picklable); in-process runs pass the plan they already have. ``on_runner`` gets the runner
    before it starts (a distributed worker reads its timeline at each tick: loadgen/worker.py).
    """

    if plan is None:
        scenario = None
        if config.scenario_path:
            from loadgen.scenario import load_scenario

            scenario = load_scenario(config.scenario_path)
        plan = make_plan(config, scenario)
    cls = OpenLoop if plan.mode == "open" else ClosedLoop
    runner = cls(plan, index=index, count=count, on_tick=on_tick, start_wall=start_wall)
    if on_runner is not None:
        on_runner(runner)

    async def main() -> RunResult:
        loop = asyncio.get_running_loop()
        installed = []
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, runner.stop)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                    pass
        try:
            return await runner.run()
        finally:
            for sig in installed:
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)

    with asyncio.Runner(loop_factory=loop_factory()) as r:
        return r.run(main())


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when importable: against nginx on this 2-core box it gave ~85k req/s vs ~25k on asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency
        return None
    return uvloop.new_event_loop


#: (kind, worker index, payload): ("tick", i, Snapshot), ("done", i, WorkerDone), ("error", i, traceback)
WorkerMessage = tuple[str, int, Snapshot | WorkerDone | str]


def _worker_main(
    config: Config, index: int, count: int, start_wall: float, q: mp.Queue[WorkerMessage]
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent forwards Ctrl-C as SIGTERM
    try:
        result = run_one(config, index, count, start_wall, lambda second, snap: q.put(("tick", index, snap)))
        done: WorkerDone = {
            "export": result.timeline.export(),
            "elapsed_s": result.elapsed_s,
            "stopped_early": result.stopped_early,
            "stats": result.stats,
        }
        q.put(("done", index, done))
    except BaseException:
        q.put(("error", index, traceback.format_exc()))


class WorkerError(RuntimeError):
    """A worker process failed; the message holds its traceback."""


def run_workers(
    config: Config,
    count: int,
    start_wall: float,
    on_tick: Callable[[int, list[Snapshot]], None] | None,
    stop_requested: Callable[[], bool],
) -> list[WorkerDone]:
    """Run ``count`` workers and return their results (ordered by index); raises WorkerError."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [
        ctx.Process(target=_worker_main, args=(config, i, count, start_wall, q), daemon=True)
        for i in range(count)
    ]
    for p in procs:
        p.start()
    results: dict[int, WorkerDone] = {}
    ticks: dict[int, dict[int, Snapshot]] = {}
    forwarded = False
    try:
        while len(results) < count:
            if stop_requested() and not forwarded:
                forwarded = True
                for p in procs:
                    if p.is_alive() and p.pid is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p.pid, signal.SIGTERM)
            try:
                kind, index, payload = q.get(timeout=0.2)
            except queue_mod.Empty:
                dead = [p for i, p in enumerate(procs) if i not in results and not p.is_alive()]
                if dead and q.empty():
                    raise WorkerError(f"worker process exited with status {dead[0].exitcode}") from None
                continue
            if kind == "tick":
                second = payload["second"]
                ticks.setdefault(second, {})[index] = payload
                if len(ticks[second]) == count:
                    by_index = ticks.pop(second)
                    snaps = [by_index[i] for i in range(count)]
                    if on_tick is not None:
                        on_tick(second, snaps)
            elif kind == "done":
                results[index] = payload
            else:
                raise WorkerError(f"worker {index} failed:\n{payload}")
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    return [results[i] for i in range(count)]
