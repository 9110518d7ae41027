"""Proxy speed against nginx and aiohttp, measured in one run on the host (no containers).

    python -m benchmarks.proxy [--rounds 5] [--duration 3] [--quick] [--workers N] [--dashboards N]
    ./lab bench proxy            # installs the tools (scripts/bench-tools), then runs this

Layout (2 cores): the static upstream (nginx, one worker, ``return 200`` + 12 bytes) and the
load generator share core 0; the proxy under test has core 1 to itself. The paths are
measured in turn, in an order rotated every round, and each figure is the median over rounds:

- ``direct``: wrk straight to the upstream (the ceiling of the load generator + upstream);
- ``nginx proxy``: nginx, one worker, HTTP/1.1 upstream keep-alive;
- ``this proxy``: ``python -m proxy`` (uvloop), access log off, admin off;
- ``this proxy, access log on``: the same with the JSON access log written to a file;
- ``aiohttp proxy``: ``benchmarks/aiohttp_proxy.py`` (aiohttp server + ClientSession, uvloop).

With ``--dashboards N`` two more rows measure what watching costs (docs/live.md): ``this proxy,
admin on`` (the admin listener and its once-a-second live view running, nobody watching) and
``this proxy, N dashboards`` (the same with N ``/events`` viewers connected for the whole run,
``benchmarks/sse_viewers.py`` pinned with the load generator); a line after the table gives the
req/s and CPU-per-request ratios of the watched proxy to the unwatched one.

Capacity is closed-loop ``wrk -t1 -c50``. Added latency is open-loop (``benchmarks.fixedrate``,
wrk2-style, since Debian's wrk has no ``-R``): at half of this proxy's median capacity, the p99
through this proxy minus the p99 of the direct path, both at that rate and in the same rounds.

The last line is machine-readable::

    proxy/nginx=<ratio> proxy/aiohttp=<ratio> p99_added_ms=<ms>
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from benchmarks.fixedrate import run_fixed_rate
from benchmarks.host import (
    ToolMissing,
    WrkResult,
    cpu_seconds,
    free_port,
    listener_pids,
    nginx_proxy,
    pinned,
    python_server,
    require_tools,
    run_wrk,
    set_nice,
    static_upstream,
)

REPO = Path(__file__).resolve().parent.parent


def this_proxy(
    upstream_port: int,
    cpu: int | None,
    *,
    access_log: Path | None = None,
    workers: int = 1,
    admin_port: int | None = None,
) -> contextlib.AbstractContextManager[int]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "proxy",
        f"--upstream=127.0.0.1:{upstream_port}",
        f"--listen=127.0.0.1:{port}",
        f"--admin-listen=127.0.0.1:{admin_port}" if admin_port else "--admin-listen=off",
        "--log-level=WARNING",
        "--access-log" if access_log else "--no-access-log",
    ]
    if workers != 1:
        cmd.append(f"--workers={workers}")
    if access_log is None:
        return python_server(cmd, port, cpu)
    return _with_file(access_log, lambda f: python_server(cmd, port, cpu, stdout=f))


def live_view_tick_ms(viewers: int, endpoints: int = 3, n: int = 300) -> float:
    """CPU milliseconds of one live-view second (proxy/events.py) for ``endpoints`` replicas
    with traffic in every histogram bucket, the snapshot written to ``viewers`` fake viewers."""
    import asyncio

    from proxy.balancer import make_balancer
    from proxy.config import Config
    from proxy.events import LiveView, worker_sample
    from proxy.pool import UpstreamGroup
    from proxy.state import ProxyState

    class Sink:
        class transport:  # what LiveView reads of a StreamWriter
            @staticmethod
            def is_closing() -> bool:
                return False

            @staticmethod
            def get_write_buffer_size() -> int:
                return 0

        def write(self, data: bytes) -> None:
            pass

    loop = asyncio.new_event_loop()
    try:
        group = UpstreamGroup("backend:8001", loop)
        group.update([(f"10.0.0.{i + 1}", 8001) for i in range(endpoints)])
        cfg = Config()
        state = ProxyState(cfg, loop, group, make_balancer("round_robin", cfg), None)
        view = LiveView(lambda: worker_sample(state))
        view.viewers = {Sink() for _ in range(viewers)}  # type: ignore[misc]
        t0 = time.process_time()
        for i in range(n):
            for ep in group.live:
                ep.latency.counts = [i + k for k in range(len(ep.latency.counts))]
                ep.responses[2] += 1000
            view.tick([view.local()])
        return (time.process_time() - t0) / n * 1000
    finally:
        loop.close()


@contextlib.contextmanager
def sse_viewers(admin_port: int, n: int, cpu: int | None) -> Iterator[None]:
    """``n`` processes' worth of dashboard viewers on ``/events`` (one process, pinned to ``cpu``)."""
    cmd = [sys.executable, "-m", "benchmarks.sse_viewers", f"--port={admin_port}", f"-n={n}"]
    proc = subprocess.Popen(pinned(cmd, cpu), cwd=REPO, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        print(f"# {err.decode(errors='replace').strip()}", file=sys.stderr)


@contextlib.contextmanager
def _with_file(
    path: Path, make: Callable[[IO[bytes]], contextlib.AbstractContextManager[int]]
) -> Iterator[int]:
    with open(path, "wb") as f, make(f) as port:
        yield port


def aiohttp_proxy(upstream_port: int, cpu: int | None) -> contextlib.AbstractContextManager[int]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.aiohttp_proxy",
        f"--listen=127.0.0.1:{port}",
        f"--upstream=127.0.0.1:{upstream_port}",
    ]
    return python_server(cmd, port, cpu)


@dataclass
class PathFigures:
    name: str
    runs: list[WrkResult] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # server CPU per request, each run

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs)


def _fmt_rps(v: float) -> str:
    return f"{v:,.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.proxy", description=__doc__.splitlines()[0])
    p.add_argument(
        "--rounds", type=int, default=5, help="alternating rounds; medians are reported (default 5)"
    )
    p.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run (default 3)")
    p.add_argument(
        "--warmup", type=float, default=1.0, help="unmeasured seconds before each wrk run (default 1)"
    )
    p.add_argument("--rate-duration", type=float, default=4.0, help="seconds per fixed-rate run (default 4)")
    p.add_argument("--quick", action="store_true", help="1 round of 2 s: a smoke run, not a measurement")
    p.add_argument("--no-access-log-row", action="store_true", help="skip the 'access log on' row")
    p.add_argument("--workers", type=int, default=1, help="run this proxy with --workers N (default 1)")
    p.add_argument(
        "--upstream-cpu", type=int, default=0, help="core for upstream + load generator (default 0)"
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of every benchmarked process (e.g. -5 puts them ahead of other load on a "
        "shared machine; negative needs root; default 0)",
    )
    p.add_argument("--proxy-cpu", type=int, default=1, help="core for the proxy under test (default 1)")
    p.add_argument(
        "--dashboards",
        type=int,
        default=0,
        help="also measure this proxy with its admin on, with and without N /events viewers (default 0: off)",
    )
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.duration, a.warmup, a.rate_duration = 1, 2.0, 1.0, 2.0
    if a.rounds < 1 or a.duration <= 0 or a.workers < 1:
        p.error("--rounds and --workers must be >= 1 and --duration > 0")
    try:
        require_tools("nginx", "wrk", "taskset")
        import aiohttp  # noqa: F401
    except ToolMissing as exc:
        print(f"benchmarks.proxy: {exc}", file=sys.stderr)
        return 2
    except ImportError:
        print("benchmarks.proxy: aiohttp is not installed; run ./scripts/bench-tools", file=sys.stderr)
        return 2
    set_nice(a.nice)
    ncpu = len(os.sched_getaffinity(0))
    up_cpu, px_cpu = a.upstream_cpu, a.proxy_cpu
    proxy_cpus: int | None = px_cpu
    if a.workers > 1:
        proxy_cpus = None  # N workers: let the scheduler place them (the upstream core is then shared)
    if ncpu < 2:
        print("benchmarks.proxy: WARNING: fewer than 2 cores; everything shares one core", file=sys.stderr)
        up_cpu = px_cpu = 0

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="asgi-lab-bench-")))
        upstream = stack.enter_context(static_upstream(cpu=up_cpu))
        paths: dict[str, int] = {"direct": upstream}
        paths["nginx proxy"] = stack.enter_context(nginx_proxy(upstream, cpu=px_cpu))
        paths["this proxy"] = stack.enter_context(this_proxy(upstream, proxy_cpus, workers=a.workers))
        if not a.no_access_log_row:
            paths["this proxy, access log on"] = stack.enter_context(
                this_proxy(upstream, proxy_cpus, access_log=tmp / "access.log", workers=a.workers)
            )
        paths["aiohttp proxy"] = stack.enter_context(aiohttp_proxy(upstream, px_cpu))
        watched = f"this proxy, {a.dashboards} dashboards"
        if a.dashboards > 0:
            paths["this proxy, admin on"] = stack.enter_context(
                this_proxy(upstream, proxy_cpus, workers=a.workers, admin_port=free_port())
            )
            dash_admin = free_port()
            paths[watched] = stack.enter_context(
                this_proxy(upstream, proxy_cpus, workers=a.workers, admin_port=dash_admin)
            )
            stack.enter_context(sse_viewers(dash_admin, a.dashboards, up_cpu))

        figures = {name: PathFigures(name) for name in paths}
        pids = {name: listener_pids(port) for name, port in paths.items()}
        names = list(paths)
        print(
            f"# {a.rounds} round(s) x {a.duration:g}s per path, wrk -t1 -c50 on cpu {up_cpu} with the "
            f"upstream; proxies on cpu {px_cpu if proxy_cpus is not None else 'any'}",
            file=sys.stderr,
        )
        for rnd in range(a.rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for name in order:
                url = f"http://127.0.0.1:{paths[name]}/"
                if a.warmup > 0:
                    run_wrk(url, cpu=up_cpu, duration_s=a.warmup)
                cpu0 = cpu_seconds(pids[name])
                res = run_wrk(url, cpu=up_cpu, duration_s=a.duration)
                cpu_us = (cpu_seconds(pids[name]) - cpu0) / max(1, res.requests) * 1e6
                figures[name].runs.append(res)
                figures[name].cpu_us.append(cpu_us)
                print(
                    f"# round {rnd + 1} {name:<26} {res.rps:>9,.0f} req/s  p50 {res.p50_ms:.2f} ms  "
                    f"p99 {res.p99_ms:.2f} ms  errors {res.errors}  server CPU {cpu_us:.1f} us/req",
                    file=sys.stderr,
                )

        rate = max(100.0, round(figures["this proxy"].median("rps") / 2, -2))
        fixed: dict[str, list[float]] = {"direct": [], "this proxy": [], "nginx proxy": []}
        for rnd in range(a.rounds):
            order = list(fixed) if rnd % 2 == 0 else list(reversed(fixed))
            for name in order:
                fr = run_fixed_rate(
                    f"http://127.0.0.1:{paths[name]}/", rate=rate, duration_s=a.rate_duration, cpu=up_cpu
                )
                fixed[name].append(fr.p99_ms)
                print(
                    f"# round {rnd + 1} fixed {rate:,.0f}/s {name:<12} p50 {fr.p50_ms:.3f} ms  "
                    f"p99 {fr.p99_ms:.3f} ms  achieved {fr.achieved:,.0f}/s  errors {fr.errors}",
                    file=sys.stderr,
                )

    med = {name: f.median("rps") for name, f in figures.items()}
    p99_fixed = {name: statistics.median(v) for name, v in fixed.items()}
    added = p99_fixed["this proxy"] - p99_fixed["direct"]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(
        f"\nProxy benchmark, {stamp}: medians of {a.rounds} alternating round(s) of {a.duration:g}s, "
        f"wrk -t1 -c50; access logs off unless said; this proxy --workers {a.workers}"
        + (f"; all at nice {a.nice}" if a.nice else "")
    )
    print()
    print("| path | req/s | p50 ms | p99 ms | errors | server CPU us/req | this proxy / row (req/s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    cpu = {name: statistics.median(f.cpu_us) for name, f in figures.items()}
    for name, f in figures.items():
        ratio = med["this proxy"] / med[name] if med[name] else float("nan")
        print(
            f"| {name} | {_fmt_rps(med[name])} | {f.median('p50_ms'):.2f} | {f.median('p99_ms'):.2f} "
            f"| {f.errors} | {cpu[name]:.1f} | {ratio:.2f}x |"
        )
    print()
    print(
        "Server CPU per request (the proxy's, or for direct the upstream's; least disturbed by other "
        f"load on the machine): nginx/proxy={cpu['nginx proxy'] / cpu['this proxy']:.2f} "
        f"aiohttp/proxy={cpu['aiohttp proxy'] / cpu['this proxy']:.2f}"
    )
    if a.dashboards > 0:
        base = "this proxy, admin on"
        w, b = figures[watched], figures[base]
        paired = statistics.median(x.rps / y.rps for x, y in zip(w.runs, b.runs, strict=True) if y.rps)
        paired_cpu = statistics.median(x / y for x, y in zip(w.cpu_us, b.cpu_us, strict=True) if y)
        tick_ms = live_view_tick_ms(a.dashboards)
        print()
        print(
            f"Watching: {a.dashboards} /events viewers: req/s {watched} / {base} = "
            f"{med[watched] / med[base]:.3f} (medians), {paired:.3f} (median of the per-round ratios; "
            f"/ admin off = {med[watched] / med['this proxy']:.3f}); CPU us/req {cpu[watched]:.1f} vs "
            f"{cpu[base]:.1f} (admin off {cpu['this proxy']:.1f}), per-round ratio {paired_cpu:.3f}; "
            f"one live-view second (sample + tick + {a.dashboards} writes, in-process) costs "
            f"{tick_ms:.3f} ms = {tick_ms / 10:.3f} % of a core"
        )
    print()
    print(
        f"Open-loop at {rate:,.0f} req/s (half this proxy's capacity), p99 medians over {a.rounds} round(s):"
    )
    print()
    print("| path | p99 ms | added over direct ms |")
    print("|---|---:|---:|")
    for name, v in p99_fixed.items():
        print(f"| {name} | {v:.3f} | {v - p99_fixed['direct']:+.3f} |")
    print()
    print(
        f"proxy/nginx={med['this proxy'] / med['nginx proxy']:.2f} "
        f"proxy/aiohttp={med['this proxy'] / med['aiohttp proxy']:.2f} p99_added_ms={added:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
