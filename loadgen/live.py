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
The line is one view of the per-second record (``loadgen.record.SecondRecord``) that the live page
(``--dashboard``) shows too.

In open loop, when the generator cannot keep the rate (requests due but not sent: every
connection busy, or the process too slow to send on time) the line ends with
``BEHIND: intended X req/s, achieved Y req/s`` and the likely cause, so a run that measures less
than asked never looks like a healthy one.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from loadgen.record import BEHIND_BACKLOG_AGE_S, BEHIND_RATIO, SecondRecord, TickMerger, behind_note
from loadgen.shapes import Snapshot

__all__ = ["BEHIND_BACKLOG_AGE_S", "BEHIND_RATIO", "LiveLine", "behind_note", "format_line"]


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


class LiveLine:
    """Prints :func:`format_line` for each tick, given the snapshots of every worker.

    ``line(tick, snaps)`` merges them itself; :meth:`show` takes a record already merged (what
    ``__main__`` does, so that the line and the live page share one merge).
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._merge = TickMerger()

    def __call__(self, second: int, snaps: Sequence[Snapshot]) -> None:
        self.show(second, self._merge(second, snaps))

    def show(self, tick: int, r: SecondRecord) -> None:
        lat = r.latency_ms
        self.print(format_line(tick, r.rps, lat.get("p50"), lat.get("p99"), r.errors, r.backends, r.note))

    def print(self, text: str) -> None:
        print(text, file=self._stream, flush=True)
