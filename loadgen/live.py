"""The once-a-second progress line on stderr.

It goes to stderr so stdout stays the clean final summary (pipeable into a file or a PR comment).
req/s and errors are for the last interval, counted by completion (what the run is doing right
now). p50/p99 are those of the requests SENT during the previous whole second (the timeline's
attribution): a cheap read of an existing bucket, and close to final because at that point almost
all of them have completed.
"""

from __future__ import annotations

import sys
from time import perf_counter
from typing import TextIO

from loadgen.histogram import Timeline


def format_line(elapsed_s: int, rps: float, p50_ms: float | None, p99_ms: float | None, errors: int) -> str:
    """One fixed-width line, so successive lines read as a table."""

    def ms(v: float | None) -> str:
        return "      -" if v is None else f"{v:7.2f}"

    return (
        f"[{elapsed_s:4d}s] {rps:10,.0f} req/s  p50 {ms(p50_ms)} ms  p99 {ms(p99_ms)} ms  errors {errors:,}"
    )


class LiveLine:
    """Prints :func:`format_line` on every tick of the runner (its ``on_tick`` hook)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._last_completed = 0
        self._last_errors = 0
        self._last_time: float | None = None

    def __call__(self, second: int, timeline: Timeline) -> None:
        now = perf_counter()
        since = self._last_time if self._last_time is not None else timeline.start
        interval = max(now - since, 1e-9)
        rps = (timeline.completed - self._last_completed) / interval
        errors = timeline.errors - self._last_errors
        self._last_completed, self._last_errors, self._last_time = timeline.completed, timeline.errors, now
        p50 = p99 = None
        if second - 1 < len(timeline.buckets):
            p50, p99 = timeline.buckets[second - 1].percentiles_ms()
        print(format_line(second, rps, p50, p99, errors), file=self._stream, flush=True)
