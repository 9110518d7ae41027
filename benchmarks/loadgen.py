"""How fast is the load generator? Against wrk, in one run, on the same core.

``python -m benchmarks.loadgen [--rounds 3] [--duration 5] [--rate 10000] [--rate-duration 10]``
(``./lab bench loadgen``). Needs nginx and wrk (``scripts/bench-tools``).

A static nginx (one worker, ``benchmarks.host.static_upstream``) is pinned to core 0; wrk
(``-t1 -c50``) and ``python -m loadgen --concurrency 50`` take turns on core 1, ``--rounds``
times each, alternating so that both see the same noise of a shared machine. Closed-loop
throughput is the median of each; the ratio of the medians is the figure of merit (a ratio taken
in one run, never absolute numbers across runs).

Each round also runs the open loop: ``python -m loadgen --rate 10000`` for ``--rate-duration``
seconds on core 1. ``rate_error_pct = |achieved - intended| / intended x 100`` from the report's
``rate_check`` (achieved counts requests actually sent before the deadline, so a generator that
falls behind shows here instead of silently measuring less); the last line has the median.

``--dashboard``: each round also runs the same closed loop with its live page open
(``--dashboard``, a viewer reading the page's event stream for the whole run, as a browser tab
does) right after the one without; ``dashboard/none`` is the median of the per-round ratios of
the two req/s (the issue asks for >= 0.97: watching must not slow what is watched), and the CPU
column is the loadgen process's own user+sys CPU per response in microseconds, which a loaded
machine disturbs less than req/s.

The last line is machine-readable: ``loadgen/wrk=<ratio> rate_error_pct=<x>`` (plus
``dashboard/none=<ratio>`` with ``--dashboard``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.host import ToolMissing, free_port, require_tools, run_wrk, static_upstream
from benchmarks.host import run_loadgen as host_run_loadgen

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_CPU = 0
CLIENT_CPU = 1
CONNECTIONS = 50


def run_loadgen(
    url: str, args: list[str], cpu: int, timeout_s: float, dashboard: bool = False
) -> dict[str, Any]:
    """``benchmarks.host.run_loadgen``, optionally with the live page open and read.

    ``dashboard``: with ``--dashboard`` on a free port and one viewer reading its event stream
    from start to end (the report gets ``"viewer_events"``: how many events the viewer read).
    """
    if not dashboard:
        return host_run_loadgen(url, args, cpu, timeout_s)
    port = free_port()
    viewer = _Viewer(f"http://127.0.0.1:{port}/events", timeout_s)
    report = host_run_loadgen(
        url, [*args, "--dashboard", f"127.0.0.1:{port}"], cpu, timeout_s, on_start=viewer.start
    )
    viewer.join(5)
    report["viewer_events"] = viewer.events
    return report


class _Viewer(threading.Thread):
    """What an open browser tab does to the run: reads /events from the first second to the end."""

    def __init__(self, url: str, timeout_s: float) -> None:
        super().__init__(daemon=True)
        self.url, self.timeout_s, self.events = url, timeout_s, 0

    def run(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url, timeout=self.timeout_s) as resp:
                    for line in resp:
                        self.events += line.startswith(b"event: ")
                return
            except OSError:
                time.sleep(0.02)  # the run has not bound its page yet


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of wrk and loadgen (default 3)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per closed-loop run (default 5)")
    p.add_argument("--rate", type=float, default=10_000.0, help="open-loop rate to check (default 10000)")
    p.add_argument("--rate-duration", type=float, default=10.0, help="seconds of the open-loop run")
    p.add_argument(
        "--dashboard",
        action="store_true",
        help="also run the closed loop with its live page open and a viewer; print dashboard/none",
    )
    a = p.parse_args(argv)
    try:
        require_tools("nginx", "wrk", "taskset")
    except ToolMissing as exc:
        print(f"benchmarks.loadgen: {exc}", file=sys.stderr)
        return 2

    wrk_rps: list[float] = []
    lg_rps: list[float] = []
    rows: list[str] = []
    open_runs: list[dict[str, Any]] = []
    dash_rows: list[str] = []
    dash_ratios: list[float] = []
    closed_args = ["-c", str(CONNECTIONS), "-d", f"{a.duration:g}"]
    rate_args = ["--rate", f"{a.rate:g}", "-d", f"{a.rate_duration:g}"]
    with static_upstream(cpu=UPSTREAM_CPU) as port:
        url = f"http://127.0.0.1:{port}/"
        run_wrk(url, cpu=CLIENT_CPU, connections=CONNECTIONS, duration_s=1)  # warm-up
        for i in range(a.rounds):
            w = run_wrk(url, cpu=CLIENT_CPU, connections=CONNECTIONS, duration_s=a.duration)
            r = run_loadgen(url, closed_args, CLIENT_CPU, a.duration + 60)
            wrk_rps.append(w.rps)
            lg_rps.append(r["rps"])
            lat = r["latency_ms"]
            rows.append(
                f"| {i + 1} | {w.rps:,.0f} | {w.p50_ms:.2f} / {w.p99_ms:.2f} | {r['rps']:,.0f} "
                f"| {lat['p50']:.2f} / {lat['p99']:.2f} | {r['rps'] / w.rps:.3f} |"
            )
            print(rows[-1], file=sys.stderr, flush=True)
            if a.dashboard:
                d = run_loadgen(url, closed_args, CLIENT_CPU, a.duration + 60, dashboard=True)
                dash_ratios.append(d["rps"] / r["rps"])
                dash_rows.append(
                    f"| {i + 1} | {r['rps']:,.0f} | {d['rps']:,.0f} | {d['viewer_events']} "
                    f"| {r['cpu_us_per_response']:.1f} / {d['cpu_us_per_response']:.1f} "
                    f"| {dash_ratios[-1]:.3f} |"
                )
                print(dash_rows[-1], file=sys.stderr, flush=True)
            open_runs.append(run_loadgen(url, rate_args, CLIENT_CPU, a.rate_duration + 60))
            print(f"open loop: {open_runs[-1]['rate_check']}", file=sys.stderr, flush=True)

    ratio = statistics.median(lg_rps) / statistics.median(wrk_rps)
    rate_error = statistics.median(r["rate_check"]["error_pct"] for r in open_runs)
    print(f"# loadgen vs wrk: static nginx on core {UPSTREAM_CPU}, clients on core {CLIENT_CPU}")
    print()
    print(f"Closed loop, {CONNECTIONS} connections, {a.duration:g} s per run, {a.rounds} alternating rounds:")
    print()
    print("| round | wrk req/s | wrk p50 / p99 ms | loadgen req/s | loadgen p50 / p99 ms | loadgen/wrk |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(row)
    print(
        f"| median | {statistics.median(wrk_rps):,.0f} | | {statistics.median(lg_rps):,.0f} | | {ratio:.3f} |"
    )
    print()
    print(f"Open loop, --rate {a.rate:g} for {a.rate_duration:g} s, one run per round:")
    print()
    print(
        "| round | intended req/s | achieved req/s | error | kept up | p50 / p99 ms | uncorr. p50 / p99 ms |"
    )
    print("|---:|---:|---:|---:|---|---:|---:|")
    for i, r in enumerate(open_runs):
        rc, corr, unc = r["rate_check"], r["latency_ms"], r["latency_uncorrected_ms"]
        print(
            f"| {i + 1} | {rc['intended_rps']:,.1f} | {rc['achieved_rps']:,.1f} | {rc['error_pct']:.3f} % "
            f"| {rc['kept_up']} | {corr['p50']:.2f} / {corr['p99']:.2f} "
            f"| {unc['p50']:.2f} / {unc['p99']:.2f} |"
        )
    for r in open_runs:
        if r["rate_check"]["reason"]:
            print(f"\n{r['rate_check']['reason']}")
    last = f"loadgen/wrk={ratio:.3f} rate_error_pct={rate_error:.3f}"
    if a.dashboard:
        dash = statistics.median(dash_ratios)
        print()
        print(f"Closed loop with the live page open (--dashboard, one viewer on /events), {a.rounds} rounds:")
        print()
        print("| round | loadgen req/s | with page req/s | events read | CPU us/response without / with "
              "| with/without |")  # fmt: skip
        print("|---:|---:|---:|---:|---:|---:|")
        for row in dash_rows:
            print(row)
        print(f"| median | | | | | {dash:.3f} |")
        last += f" dashboard/none={dash:.3f}"
    print()
    print(last, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
