"""Rows of a host benchmark measured over rounds, and the rules for comparing two of them.

One row is one path (a server, a proxy, a proxy in its image) measured by ``wrk`` once per
round; its figure is the median over the rounds. Two rows are compared only by a ratio taken in
the same invocation, and only when both are clean: a row with any wrk socket error or non-2xx
answer gets no ratio but a message naming the rounds, because a server answering fast 502s or
dropping connections must not look fast. ``benchmarks.proxy`` and ``benchmarks.asgi`` share
these rules.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.host import WrkResult, cpu_seconds, run_wrk


@dataclass
class Figures:
    """Every run of one row, the server's CPU per request in each, and their medians."""

    name: str
    runs: list[WrkResult] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # server CPU per request, each run
    failed: str | None = None  # why the row has no runs (it did not start, wrk failed)

    def median(self, attr: str) -> float:
        return float(statistics.median(float(getattr(r, attr)) for r in self.runs))

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs)

    def problem(self) -> str | None:
        """Why this row's req/s may not be compared with another's; None if it may."""
        if self.failed:
            return f"{self.name} {self.failed}"
        if not self.runs:
            return f"{self.name} was not measured"
        if self.errors:
            bad = [i + 1 for i, r in enumerate(self.runs) if r.errors]
            rounds = ", ".join(str(i) for i in bad)
            return (
                f"{self.name} had {self.errors} errors (socket errors or non-2xx responses) "
                f"in round(s) {rounds}"
            )
        return None


def ratio(num: Figures | None, den: Figures | None) -> tuple[float | None, str | None]:
    """``num``'s median req/s over ``den``'s, or None and the reason no ratio may be given."""
    for side in (num, den):
        if side is None:
            return None, "not measured (not selected)"
        if problem := side.problem():
            return None, problem
    assert num is not None and den is not None
    base = den.median("rps")
    if base <= 0:
        return None, f"{den.name} served nothing"
    return num.median("rps") / base, None


def cpu_ratio(num: Figures | None, den: Figures | None) -> float | None:
    """``den``'s median CPU per request over ``num``'s (> 1: ``num`` spends less), or None."""
    if num is None or den is None or num.problem() or den.problem():
        return None
    mine = statistics.median(num.cpu_us)
    return statistics.median(den.cpu_us) / mine if mine > 0 else None


def format_value(value: float | None, digits: int = 2) -> str:
    """A figure of the machine-readable last line: ``n/a`` where none could be taken."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_ratios(values: Sequence[tuple[str, float | None]]) -> str:
    """The machine-readable last line: ``label=<ratio>`` pairs, ``n/a`` for a missing ratio."""
    return " ".join(f"{label}={format_value(v)}" for label, v in values)


@dataclass(frozen=True)
class Target:
    """Where one row is measured: a listening port, the processes whose CPU it costs, wrk's -c."""

    port: int
    pids: set[int]
    connections: int = 50


def measure(
    url: str, pids: set[int], *, cpu: int, duration: float, warmup: float, connections: int = 50
) -> tuple[WrkResult, float]:
    """One wrk run after a warm-up: the result and the server's CPU microseconds per request."""
    if warmup > 0:
        run_wrk(url, cpu=cpu, duration_s=warmup, connections=connections)
    cpu0 = cpu_seconds(pids)
    res = run_wrk(url, cpu=cpu, duration_s=duration, connections=connections)
    return res, (cpu_seconds(pids) - cpu0) / max(1, res.requests) * 1e6


def run_rounds(
    paths: dict[str, Target],
    figures: dict[str, Figures],
    *,
    rounds: int,
    cpu: int,
    duration: float,
    warmup: float,
) -> None:
    """Measure every path once per round, the order rotated each round; progress on stderr."""
    names = list(paths)
    for rnd in range(rounds):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        for name in order:
            t = paths[name]
            try:
                res, cpu_us = measure(
                    f"http://127.0.0.1:{t.port}/",
                    t.pids,
                    cpu=cpu,
                    duration=duration,
                    warmup=warmup,
                    connections=t.connections,
                )
            except (RuntimeError, ValueError) as exc:  # wrk failed or printed no latency table
                figures[name].failed = f"failed in round {rnd + 1}: {str(exc).splitlines()[0]}"
                continue
            figures[name].runs.append(res)
            figures[name].cpu_us.append(cpu_us)
            print(
                f"# round {rnd + 1} {name:<34} {res.rps:>9,.0f} req/s  p50 {res.p50_ms:.2f} ms  "
                f"p99 {res.p99_ms:.2f} ms  errors {res.errors}  server CPU {cpu_us:.1f} us/req",
                file=sys.stderr,
            )
