"""One experiment end to end: the runners (in-process or ``--workers``), timed actions, merging.

``__main__`` parses and reports; this module only runs. Second 0 is a wall-clock instant chosen
here and handed to every process, and the scenario's actions are timed against the same instant,
so "stop backend-1 at 10 s" lands in second 10 of the timeline whatever the number of workers.

Actions run in threads of this (parent) process because ``ActionRunner.run`` blocks (a ``stop``
waits for its grace period) and must never stall the event loop that sends the load. Each result
is recorded as ``{"at_s": <actual elapsed>, "kind", "target", "ok", "detail"}``: the actual time,
not the planned one, since a thread may start a few ms late and the report should say what
happened when.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from loadgen.config import Config
from loadgen.histogram import MergedRun, merge_exports
from loadgen.plan import Plan
from loadgen.scenario import Action
from loadgen.shapes import ActionResult, Fleet, Performer, RunStats, Snapshot
from loadgen.workers import START_LEAD_S, run_one, run_workers

Say = Callable[[str], None]
TicksHook = Callable[[int, Sequence[Snapshot]], None]
ActionHook = Callable[[ActionResult], None]

#: How long the end of a run waits for actions still running (e.g. a ``stop`` with a long grace).
ACTION_JOIN_S = 60.0


@dataclass
class Outcome:
    plan: Plan
    merged: MergedRun
    started_at: datetime
    elapsed_s: float
    stopped_early: bool
    stats: list[RunStats]  # one per worker
    actions: list[ActionResult] = field(default_factory=list)
    #: A distributed run (loadgen/coordinator.py): the per-worker section of the report.
    distributed: Fleet | None = None


class TimedActions:
    """Runs each action in its own thread at ``start_wall + action.at_s``."""

    def __init__(
        self,
        actions: Sequence[Action],
        performer: Performer,
        start_wall: float,
        say: Say | None,
        on_result: ActionHook | None = None,
    ) -> None:
        self._actions = list(actions)
        self._on_result = on_result
        self._performer = performer
        self._start_wall = start_wall
        self._say = say
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.results: list[ActionResult] = []

    def start(self) -> None:
        for action in self._actions:
            t = threading.Thread(target=self._run, args=(action,), daemon=True, name=f"action-{action.kind}")
            t.start()
            self._threads.append(t)

    def _run(self, action: Action) -> None:
        delay = self._start_wall + action.at_s - time.time()
        if delay > 0 and self._cancel.wait(delay):
            result: Mapping[str, object] = {
                "kind": action.kind,
                "target": action.target,
                "ok": False,
                "detail": "not run: the run ended first",
            }
            self._record(None, action, result)
            return
        at = time.time() - self._start_wall
        try:
            result = self._performer.run(action)
        except Exception as exc:  # the contract says run() never raises; be safe anyway
            result = {"kind": action.kind, "target": action.target, "ok": False, "detail": f"{exc!r}"}
        self._record(at, action, result)

    def _record(self, at: float | None, action: Action, result: Mapping[str, object]) -> None:
        entry: ActionResult = {
            "at_s": None if at is None else round(at, 3),
            "planned_at_s": action.at_s,
            "kind": str(result.get("kind", action.kind)),
            "target": str(result.get("target", action.target)),
            "ok": bool(result.get("ok")),
            "detail": str(result.get("detail", "")),
        }
        with self._lock:
            self.results.append(entry)
        if self._on_result is not None:
            self._on_result(entry)
        if self._say is not None:
            when = "   -  " if at is None else f"{at:6.2f}s"
            verdict = "ok" if result.get("ok") else "FAILED"
            what = f"{result.get('kind')} {result.get('target')}"
            self._say(f"[{when}] action {what}: {verdict} {result.get('detail', '')}")

    def finish(self) -> list[ActionResult]:
        """Cancel actions not yet due, wait for running ones; results in planned order."""
        self._cancel.set()
        deadline = time.monotonic() + ACTION_JOIN_S
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            return sorted(self.results, key=lambda r: r["planned_at_s"])


def execute(
    config: Config,
    plan: Plan,
    *,
    on_tick: TicksHook | None = None,
    say: Say | None = None,
    performer: Performer | None = None,
    on_action: ActionHook | None = None,
) -> Outcome:
    """Run the plan (``config.workers`` processes) with its actions; returns the merged outcome.

    ``on_action`` gets each action's result entry as it happens (the live page marks it)."""
    workers = config.workers
    start_wall = time.time() + (START_LEAD_S if workers > 1 else 0.05)
    actions = None
    if plan.actions:
        assert performer is not None, "a plan with actions needs a performer (loadgen.actions.ActionRunner)"
        actions = TimedActions(plan.actions, performer, start_wall, say, on_action)
    if actions is not None:
        actions.start()
    try:
        if workers == 1:
            hook = None if on_tick is None else (lambda second, snap: on_tick(second, [snap]))
            result = run_one(config, 0, 1, start_wall, hook, plan=plan)
            exports = [result.timeline.export()]
            elapsed, stopped, stats = result.elapsed_s, result.stopped_early, [result.stats]
        else:
            stop = threading.Event()
            previous = {}
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError):  # not the main thread
                    previous[sig] = signal.signal(sig, lambda *_: stop.set())
            try:
                parts = run_workers(config, workers, start_wall, on_tick, stop.is_set)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            exports = [p["export"] for p in parts]
            elapsed = max(p["elapsed_s"] for p in parts)
            stopped = any(p["stopped_early"] for p in parts)
            stats = [p["stats"] for p in parts]
    finally:
        action_results = actions.finish() if actions is not None else []
    merged = merge_exports(exports)
    started_at = datetime.fromtimestamp(start_wall, UTC)
    return Outcome(plan, merged, started_at, elapsed, stopped, stats, action_results)
