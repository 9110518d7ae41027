"""The once-a-second progress line on stderr (``docker compose logs`` shows it as is).

It goes to stderr so stdout stays the clean final summary (pipeable into a file or a PR comment),
and it is flushed every time so a container's log shows it live. Fields, fixed width so successive
lines read as a table::

    [   3s]     12,346 req/s  p50    1.23 ms  p99    4.56 ms  errors 0  backends a 50% b 50%

``req/s`` and ``errors`` are for the last interval, counted by completion (what the run is doing
right now). p50/p99 and the backend shares are those of the requests issued during the previous
whole second (the timeline's attribution; corrected latencies in open loop): close to final
because by then almost all of them have completed. With ``--workers N`` the line is printed by the
parent once every worker's snapshot for that second has arrived, with exactly merged histograms.

In open loop, when the generator cannot keep the rate (requests due but not sent: every
connection busy, or the process too slow to send on time) the line ends with
``BEHIND: intended X req/s, achieved Y req/s`` and the likely cause, so a run that measures less
than asked never looks like a healthy one.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from time import perf_counter
from typing import Any, TextIO

from loadgen.histogram import LatencyHistogram

#: Below this share of the intended sends in an interval, or with requests waiting this long, the
#: line says the generator is behind.
BEHIND_RATIO = 0.99
BEHIND_BACKLOG_AGE_S = 0.1


def format_line(
    elapsed_s: int,
    rps: float,
    p50_ms: float | None,
    p99_ms: float | None,
    errors: int,
    backends: dict[str, int] | None = None,
    note: str = "",
) -> str:
    """One fixed-width line, so successive lines read as a table."""

    def ms(v: float | None) -> str:
        return "      -" if v is None else f"{v:7.2f}"

    line = (
        f"[{elapsed_s:4d}s] {rps:10,.0f} req/s  p50 {ms(p50_ms)} ms  p99 {ms(p99_ms)} ms  errors {errors:,}"
    )
    if backends:
        total = sum(backends.values())
        shares = " ".join(f"{name} {100.0 * n / total:.0f}%" for name, n in sorted(backends.items()))
        line += f"  backends {shares}"
    if note:
        line += f"  {note}"
    return line


def behind_note(intended: float, achieved: float, snaps: Sequence[dict[str, Any]]) -> str:
    """The BEHIND note for an open-loop interval, or "" when the generator kept up."""
    backlog = sum(s.get("backlog", 0) for s in snaps)
    age = max((s.get("backlog_age_s", 0.0) for s in snaps), default=0.0)
    if intended <= 0 or (achieved >= intended * BEHIND_RATIO and age < BEHIND_BACKLOG_AGE_S):
        return ""
    note = f"BEHIND: intended {intended:,.0f} req/s, achieved {achieved:,.0f} req/s"
    if backlog:
        busy = sum(s.get("busy", 0) for s in snaps)
        cap = sum(s.get("max_connections", 0) for s in snaps)
        note += f" ({backlog:,} waiting {age * 1000:.0f} ms for a connection, {busy}/{cap} busy)"
    else:
        note += " (sending late: generator CPU-bound?)"
    return note


class LiveLine:
    """Prints :func:`format_line` for each tick, given the snapshots of every worker."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._last_completed = 0
        self._last_errors = 0
        self._last_due = 0
        self._last_sent = 0
        self._last_time: float | None = None
        self._start = perf_counter()

    def __call__(self, second: int, snaps: Sequence[dict[str, Any]]) -> None:
        now = perf_counter()
        since = self._last_time if self._last_time is not None else now - 1.0
        interval = max(now - since, 1e-9)
        completed = sum(s["completed"] for s in snaps)
        errors = sum(s["errors"] for s in snaps)
        rps = (completed - self._last_completed) / interval
        new_errors = errors - self._last_errors
        hist = LatencyHistogram()
        backends: dict[str, int] = {}
        for s in snaps:
            if s["prev_hist"]:
                hist.merge(LatencyHistogram.decode(s["prev_hist"]))
            for name, n in s["prev_backends"].items():
                backends[name] = backends.get(name, 0) + n
        note = ""
        if any("due" in s for s in snaps):
            due = sum(s.get("due", 0) for s in snaps)
            sent = sum(s.get("sent", 0) for s in snaps)
            note = behind_note((due - self._last_due) / interval, (sent - self._last_sent) / interval, snaps)
            self._last_due, self._last_sent = due, sent
        self._last_completed, self._last_errors, self._last_time = completed, errors, now
        p50, p99 = hist.percentile_ms(50.0), hist.percentile_ms(99.0)
        self.print(format_line(second, rps, p50, p99, new_errors, backends, note))

    def print(self, text: str) -> None:
        print(text, file=self._stream, flush=True)
