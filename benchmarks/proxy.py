"""Proxy speed against nginx and aiohttp, measured in one run on the host.

    python -m benchmarks.proxy [--rounds 5] [--duration 3] [--quick] [--no-image] [--mypyc]
    ./lab bench proxy            # installs the tools (scripts/bench-tools), then runs this

Measurement model (docs/proxy.md, "Speed"). Two cores: the static upstream (nginx, one worker,
``return 200`` + 12 bytes) and the load generators share core 0; the server under test has core 1
to itself. Every path is measured in turn, in an order rotated every round, and each figure is
the median over rounds, so that all paths see the same noise of a shared machine:

- ``direct``: wrk straight to the upstream (the ceiling of the load generator + upstream);
- ``nginx proxy``: nginx, one worker, HTTP/1.1 upstream keep-alive;
- ``this proxy``: ``python -m proxy`` on the host's Python (uvloop), access log off, admin off;
- ``this proxy, access log on``: the same with the JSON access log written to a file;
- ``aiohttp proxy``: ``benchmarks/aiohttp_proxy.py`` (aiohttp server + ClientSession, uvloop);
- ``this proxy, image``: the proxy inside its own image (Debian's Python 3.11, built with PGO
  and LTO), ``docker run --network host --cpuset-cpus 1``: pinned the same way, no NAT;
- with ``--mypyc``: ``this proxy, mypyc`` (the hot modules compiled by ``scripts/mypyc`` into a
  copy of the tree, host Python) and ``this proxy, image + mypyc`` (built with ``MYPYC=1``);
- ``..., 200 connections``: nginx and this proxy again under ``wrk -c200`` (the goal: 200
  connections keep >= 0.9x the 50-connection req/s).

Capacity is closed-loop ``wrk -t1 -c50``; its server CPU column is the user+sys CPU of the
processes listening on the path's port per request completed. Added latency is open-loop: the
lab's load generator (``python -m loadgen --rate``, latency from each request's intended send
time, wrk2's model) at half of this proxy's capacity (its slowest round) on 50 connections, against the
direct path, this proxy and nginx in the same rounds; p99 added = p99 of the path minus p99 of
the direct path.

A path with any wrk socket error or non-2xx answer (or, open loop, any failed or unsent request,
or a rate not kept) gets no ratio but a message. The last line is machine-readable::

    proxy/nginx=<req/s ratio> cpu_nginx/proxy=<CPU per request ratio> proxy/aiohttp=<ratio> \
p99_added_ms=<ms> nginx_p99_added_ms=<ms>

(``n/a`` where a figure could not be taken, the reason printed above it).
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

from benchmarks.figures import Figures, Target, cpu_ratio, format_value, ratio, run_rounds
from benchmarks.host import (
    OpenLoopResult,
    ToolMissing,
    free_port,
    listener_pids,
    nginx_proxy,
    pinned,
    python_server,
    require_tools,
    run_open_loop,
    set_nice,
    static_upstream,
    wait_port,
)

REPO = Path(__file__).resolve().parent.parent

DIRECT = "direct"
NGINX = "nginx proxy"
PROXY = "this proxy"
LOGGED = "this proxy, access log on"
AIOHTTP = "aiohttp proxy"
IMAGE = "this proxy, image"
MYPYC = "this proxy, mypyc"
IMAGE_MYPYC = "this proxy, image + mypyc"
WIDE = 200  # connections of the second capacity figure


def wide(name: str) -> str:
    """The row name of ``name`` measured with ``WIDE`` connections."""
    return f"{name}, {WIDE} connections"


def proxy_args(
    upstream_port: int, port: int, *, access_log: bool = False, admin_port: int | None = None
) -> list[str]:
    """The flags every run of this proxy gets (host or image): loopback, logs quiet."""
    return [
        f"--upstream=127.0.0.1:{upstream_port}",
        f"--listen=127.0.0.1:{port}",
        f"--admin-listen=127.0.0.1:{admin_port}" if admin_port else "--admin-listen=off",
        "--log-level=WARNING",
        "--access-log" if access_log else "--no-access-log",
    ]


def this_proxy(
    upstream_port: int,
    cpu: int | None,
    *,
    access_log: Path | None = None,
    workers: int = 1,
    admin_port: int | None = None,
    tree: Path = REPO,
) -> contextlib.AbstractContextManager[int]:
    """``python -m proxy`` from ``tree`` (the repo, or a copy with compiled modules) on the host."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "proxy",
        *proxy_args(upstream_port, port, access_log=access_log is not None, admin_port=admin_port),
    ]
    if workers != 1:
        cmd.append(f"--workers={workers}")
    if access_log is None:
        return python_server(cmd, port, cpu, cwd=tree)
    return _with_file(access_log, lambda f: python_server(cmd, port, cpu, stdout=f, cwd=tree))


# --- the proxy in its image --------------------------------------------------------------------
IMAGE_TAG = "asgi-lab/proxy:bench"
IMAGE_MYPYC_TAG = "asgi-lab/proxy:bench-mypyc"


def docker_usable() -> str | None:
    """None when a Docker engine answers (after ``scripts/provision``), else why not."""
    try:
        subprocess.run(
            [str(REPO / "scripts" / "provision")], check=True, capture_output=True, text=True, timeout=600
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"Docker is not usable (scripts/provision: {exc})"
    return None


def python_image() -> str:
    """The base image the lab builds on: PYTHON_IMAGE from the environment or .env (provision)."""
    if value := os.environ.get("PYTHON_IMAGE"):
        return value
    with contextlib.suppress(OSError):
        for line in (REPO / ".env").read_text().splitlines():
            if line.startswith("PYTHON_IMAGE="):
                return line.split("=", 1)[1].strip()
    return "python:3.12-slim"


def build_image(tag: str, *, mypyc: bool) -> str | None:
    """``docker build`` of proxy/Dockerfile from this tree as ``tag``; None, or why it failed."""
    cmd = ["docker", "build", "-q", "-f", "proxy/Dockerfile", "-t", tag]
    cmd += ["--build-arg", f"PYTHON_IMAGE={python_image()}"]
    if mypyc:
        cmd += ["--build-arg", "MYPYC=1"]
    print(f"# {' '.join(cmd)} .", file=sys.stderr)
    proc = subprocess.run([*cmd, "."], cwd=REPO, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        return f"docker build failed ({proc.returncode}): {tail}"
    return None


@contextlib.contextmanager
def image_proxy(tag: str, upstream_port: int, cpu: int | None) -> Iterator[int]:
    """The proxy's image on the host network (no NAT, the same loopback), pinned to ``cpu``."""
    port = free_port()
    name = f"asgi-lab-bench-{os.getpid()}-{port}"
    cmd = ["docker", "run", "-d", "--rm", "--name", name, "--network", "host", "--label", "asgi-lab.bench=1"]
    if cpu is not None:
        cmd.append(f"--cpuset-cpus={cpu}")
    cmd += [tag, *proxy_args(upstream_port, port)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
    try:
        try:
            wait_port(port, timeout=30)
        except TimeoutError as exc:
            logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=30)
            raise RuntimeError(f"{tag} did not start: {exc}\n{logs.stderr.strip()}") from None
        yield port
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


# --- the open loop -----------------------------------------------------------------------------
@dataclass
class OpenLoopRow:
    """Every open-loop run of one path at one rate."""

    name: str
    runs: list[OpenLoopResult] = field(default_factory=list)
    failed: str | None = None

    def problem(self) -> str | None:
        """Why this path's p99 may not be compared with another's; None if it may."""
        if self.failed:
            return f"{self.name} (open loop) {self.failed}"
        if not self.runs:
            return f"{self.name} (open loop) was not measured"
        if errors := sum(r.errors for r in self.runs):
            return f"{self.name} had {errors} failed, non-2xx or unsent requests in the open loop"
        if slow := [r.reason or "rate not kept" for r in self.runs if not r.kept_up]:
            return f"{self.name}: the load generator did not keep the rate ({slow[0]})"
        return None

    def p99(self) -> float:
        return float(statistics.median(r.p99_ms for r in self.runs))


def open_loop_rate(proxy: Figures) -> float:
    """Half of this proxy's capacity: of its slowest closed-loop round, rounded to 100 req/s.

    On a quiet machine the rounds agree and this is half the median; on a loaded one capacity
    swings 2-3x between rounds, and half of the median can be more than the proxy takes in a bad
    minute, so the open loop would measure an overload (and be voided by its unsent requests).
    """
    if not proxy.runs:
        return 1000.0
    return max(100.0, round(min(r.rps for r in proxy.runs) / 2, -2))


def p99_added(path: OpenLoopRow, direct: OpenLoopRow) -> tuple[float | None, str | None]:
    """The median p99 through ``path`` minus the direct path's, or None and why not."""
    for row in (path, direct):
        if problem := row.problem():
            return None, problem
    return path.p99() - direct.p99(), None


def summary(
    figures: dict[str, Figures], open_loop: dict[str, OpenLoopRow]
) -> tuple[list[tuple[str, float | None]], list[str]]:
    """The last line's figures (in its order) and, for each one missing, the message why."""
    values: list[tuple[str, float | None]] = []
    messages: list[str] = []

    def add(label: str, value: float | None, why: str | None) -> None:
        values.append((label, value))
        if why is not None:
            messages.append(f"no figure for {label}: {why}")

    add("proxy/nginx", *ratio(figures.get(PROXY), figures.get(NGINX)))
    cpu = cpu_ratio(figures.get(PROXY), figures.get(NGINX))
    add("cpu_nginx/proxy", cpu, None if cpu is not None else ratio(figures.get(PROXY), figures.get(NGINX))[1])
    add("proxy/aiohttp", *ratio(figures.get(PROXY), figures.get(AIOHTTP)))
    missing = OpenLoopRow("direct", failed="was not measured")
    direct = open_loop.get(DIRECT, missing)
    add("p99_added_ms", *p99_added(open_loop.get(PROXY, OpenLoopRow(PROXY)), direct))
    add("nginx_p99_added_ms", *p99_added(open_loop.get(NGINX, OpenLoopRow(NGINX)), direct))
    return values, messages


def last_line(values: list[tuple[str, float | None]]) -> str:
    return " ".join(f"{label}={format_value(v)}" for label, v in values)


# --- watching costs (--dashboards) -------------------------------------------------------------
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
        group = UpstreamGroup.from_config(Config(), loop)
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


def mypyc_tree() -> tuple[Path | None, str]:
    """``scripts/mypyc``'s compiled copy of the tree: (its path, what it compiled) or (None, why)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "mypyc")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        return None, (proc.stderr.strip().splitlines() or ["failed"])[-1]
    lines = proc.stdout.strip().splitlines()
    return Path(lines[-1]), "; ".join(lines[:-1])


# --- the tables --------------------------------------------------------------------------------
def _fmt_rps(v: float) -> str:
    return f"{v:,.0f}"


def print_capacity(figures: dict[str, Figures]) -> None:
    print("| path | req/s | p50 ms | p99 ms | errors | server CPU us/req | this proxy / row (req/s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, f in figures.items():
        if not f.runs:
            print(f"| {name} | {f.failed or 'not measured'} | | | | | |")
            continue
        value, _ = ratio(figures.get(PROXY), f)
        print(
            f"| {name} | {_fmt_rps(f.median('rps'))} | {f.median('p50_ms'):.2f} | {f.median('p99_ms'):.2f} "
            f"| {f.errors} | {statistics.median(f.cpu_us):.1f} | "
            f"{'n/a' if value is None else f'{value:.2f}x'} |"
        )


def print_wide(figures: dict[str, Figures]) -> None:
    """The 200-connection figure beside the 50-connection one, for each path that has both."""
    print(f"| path | req/s, 50 connections | req/s, {WIDE} connections | {WIDE} / 50 |")
    print("|---|---:|---:|---:|")
    for name in (NGINX, PROXY, IMAGE):
        if wide(name) not in figures or name not in figures:
            continue
        value, why = ratio(figures[wide(name)], figures[name])
        f50, f200 = figures[name], figures[wide(name)]
        print(
            f"| {name} | {_fmt_rps(f50.median('rps')) if f50.runs else '-'} "
            f"| {_fmt_rps(f200.median('rps')) if f200.runs else '-'} "
            f"| {'n/a: ' + str(why) if value is None else f'{value:.2f}x'} |"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.proxy", description=__doc__.splitlines()[0])
    p.add_argument(
        "--rounds", type=int, default=5, help="alternating rounds; medians are reported (default 5)"
    )
    p.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run (default 3)")
    p.add_argument(
        "--warmup", type=float, default=1.0, help="unmeasured seconds before each wrk run (default 1)"
    )
    p.add_argument("--rate-duration", type=float, default=4.0, help="seconds per open-loop run (default 4)")
    p.add_argument("--quick", action="store_true", help="1 round of 2 s: a smoke run, not a measurement")
    p.add_argument("--no-access-log-row", action="store_true", help="skip the 'access log on' row")
    p.add_argument(
        "--no-image", action="store_true", help="skip the rows of the proxy in its image (no Docker)"
    )
    p.add_argument(
        "--mypyc",
        action="store_true",
        help="also the proxy with its hot modules compiled by mypyc (scripts/mypyc), host and image",
    )
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
    if a.rounds < 1 or a.duration <= 0 or a.workers < 1 or a.rate_duration <= 0:
        p.error("--rounds and --workers must be >= 1, --duration and --rate-duration > 0")
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

    figures: dict[str, Figures] = {}
    notes: list[str] = []
    images: list[tuple[str, str]] = []
    if not a.no_image:
        if why := docker_usable():
            notes.append(f"image rows skipped: {why}")
        else:
            images.append((IMAGE, IMAGE_TAG))
            if a.mypyc:
                images.append((IMAGE_MYPYC, IMAGE_MYPYC_TAG))
    tree: Path | None = None
    if a.mypyc:
        tree, what = mypyc_tree()
        notes.append(f"mypyc (host): {what}" if tree else f"mypyc (host) not built: {what}")
        if tree is None:
            figures[MYPYC] = Figures(MYPYC, failed=f"not built: {what}")
    for name, tag in list(images):
        if why := build_image(tag, mypyc=tag == IMAGE_MYPYC_TAG):
            figures[name] = Figures(name, failed="not built")
            notes.append(f"{name}: {why}")
            images.remove((name, tag))

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="asgi-lab-bench-")))
        upstream = stack.enter_context(static_upstream(cpu=up_cpu))
        ports: dict[str, int] = {DIRECT: upstream}
        ports[NGINX] = stack.enter_context(nginx_proxy(upstream, cpu=px_cpu))
        ports[PROXY] = stack.enter_context(this_proxy(upstream, proxy_cpus, workers=a.workers))
        if not a.no_access_log_row:
            ports[LOGGED] = stack.enter_context(
                this_proxy(upstream, proxy_cpus, access_log=tmp / "access.log", workers=a.workers)
            )
        ports[AIOHTTP] = stack.enter_context(aiohttp_proxy(upstream, px_cpu))
        for name, tag in images:
            try:
                ports[name] = stack.enter_context(image_proxy(tag, upstream, proxy_cpus))
            except (RuntimeError, subprocess.SubprocessError) as exc:
                figures[name] = Figures(name, failed="did not start")
                notes.append(f"{name}: {str(exc).strip()}")
        if tree is not None:
            try:
                ports[MYPYC] = stack.enter_context(
                    this_proxy(upstream, proxy_cpus, workers=a.workers, tree=tree)
                )
            except RuntimeError as exc:
                figures[MYPYC] = Figures(MYPYC, failed="did not start")
                notes.append(f"{MYPYC}: {str(exc).strip()}")
        watched = f"this proxy, {a.dashboards} dashboards"
        if a.dashboards > 0:
            ports["this proxy, admin on"] = stack.enter_context(
                this_proxy(upstream, proxy_cpus, workers=a.workers, admin_port=free_port())
            )
            dash_admin = free_port()
            ports[watched] = stack.enter_context(
                this_proxy(upstream, proxy_cpus, workers=a.workers, admin_port=dash_admin)
            )
            stack.enter_context(sse_viewers(dash_admin, a.dashboards, up_cpu))

        paths = {name: Target(port, listener_pids(port)) for name, port in ports.items()}
        for name in (NGINX, PROXY, IMAGE):
            if name in paths:
                paths[wide(name)] = Target(paths[name].port, paths[name].pids, WIDE)
        for name in paths:
            figures.setdefault(name, Figures(name))
        print(
            f"# {a.rounds} round(s) x {a.duration:g}s per path, wrk -t1 -c50 (and -c{WIDE}) on cpu "
            f"{up_cpu} with the upstream; proxies on cpu {px_cpu if proxy_cpus is not None else 'any'}",
            file=sys.stderr,
        )
        run_rounds(paths, figures, rounds=a.rounds, cpu=up_cpu, duration=a.duration, warmup=a.warmup)

        rate = open_loop_rate(figures[PROXY])
        open_loop = {name: OpenLoopRow(name) for name in (DIRECT, PROXY, NGINX)}
        for rnd in range(a.rounds):
            order = list(open_loop) if rnd % 2 == 0 else list(reversed(open_loop))
            for name in order:
                try:
                    res = run_open_loop(
                        f"http://127.0.0.1:{ports[name]}/", rate=rate, duration_s=a.rate_duration, cpu=up_cpu
                    )
                except (RuntimeError, ValueError, subprocess.SubprocessError) as exc:
                    open_loop[name].failed = f"failed in round {rnd + 1}: {str(exc).splitlines()[0]}"
                    continue
                open_loop[name].runs.append(res)
                print(
                    f"# round {rnd + 1} open loop {rate:,.0f}/s {name:<12} p50 {res.p50_ms:.3f} ms  "
                    f"p99 {res.p99_ms:.3f} ms  achieved {res.achieved:,.0f}/s  errors {res.errors}"
                    + ("" if res.kept_up else f"  NOT KEPT: {res.reason}"),
                    file=sys.stderr,
                )

    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(
        f"\nProxy benchmark, {stamp}: medians of {a.rounds} alternating round(s) of {a.duration:g}s, "
        f"wrk -t1 -c50; access logs off unless said; this proxy --workers {a.workers}; "
        f"host Python {sys.version.split()[0]}" + (f"; all at nice {a.nice}" if a.nice else "")
    )
    for note in notes:
        print(f"# {note}")
    print()
    print_capacity({n: f for n, f in figures.items() if not n.endswith(f", {WIDE} connections")})
    print()
    print_wide(figures)
    print()
    by_cpu = [
        (label, cpu_ratio(figures.get(num), figures.get(den)))
        for label, num, den in (("nginx/proxy", PROXY, NGINX), ("aiohttp/proxy", PROXY, AIOHTTP))
    ]
    print(
        "Server CPU per request, the other's over this proxy's (the figure least disturbed by other "
        "load on the machine): " + " ".join(f"{label}={format_value(v)}" for label, v in by_cpu)
    )
    if a.dashboards > 0:
        base_name = "this proxy, admin on"
        w, b = figures[watched], figures[base_name]
        if w.runs and b.runs:
            paired = statistics.median(x.rps / y.rps for x, y in zip(w.runs, b.runs, strict=False) if y.rps)
            paired_cpu = statistics.median(x / y for x, y in zip(w.cpu_us, b.cpu_us, strict=False) if y)
            tick_ms = live_view_tick_ms(a.dashboards)
            mw, mb = w.median("rps"), b.median("rps")
            print()
            print(
                f"Watching: {a.dashboards} /events viewers: req/s {watched} / {base_name} = "
                f"{mw / mb:.3f} (medians), {paired:.3f} (median of the per-round ratios; "
                f"/ admin off = {mw / figures[PROXY].median('rps'):.3f}); CPU us/req "
                f"{statistics.median(w.cpu_us):.1f} vs {statistics.median(b.cpu_us):.1f}, per-round ratio "
                f"{paired_cpu:.3f}; one live-view second (sample + tick + {a.dashboards} writes, "
                f"in-process) costs {tick_ms:.3f} ms = {tick_ms / 10:.3f} % of a core"
            )
    print()
    print(
        f"Open loop (python -m loadgen --rate, 50 connections) at {rate:,.0f} req/s (half this proxy's "
        f"slowest round), p99 medians over {a.rounds} round(s):"
    )
    print()
    print("| path | p99 ms | added over direct ms | errors |")
    print("|---|---:|---:|---:|")
    for name, row in open_loop.items():
        added, _ = p99_added(row, open_loop[DIRECT])
        p99 = f"{row.p99():.3f}" if row.runs else "-"
        print(
            f"| {name} | {p99} | {'n/a' if added is None else f'{added:+.3f}'} "
            f"| {sum(r.errors for r in row.runs)} |"
        )
    values, messages = summary(figures, open_loop)
    print()
    for message in messages:
        print(message)
    print(last_line(values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
