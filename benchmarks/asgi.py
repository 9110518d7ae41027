"""ASGI servers compared in one run on the host: asgilab, Uvicorn, Gunicorn, Hypercorn, Granian.

    python -m benchmarks.asgi [--rounds 3] [--duration 4] [--quick] [--servers a,b]
    python -m benchmarks.asgi --hop          # the second hop: direct, through the proxy, in-process
    ./lab bench asgi [args]                  # installs the tools (scripts/bench-tools), then this

Measurement model. Every server runs one worker pinned to one core (``--server-cpu``, default 1)
and ``wrk -t1 -c50`` runs pinned to the other (``--wrk-cpu``, default 0), so each server gets the
same CPU budget and the load generator never competes with it. Each server is started with the
command line the lab's backend image uses (``backend.servers.command``: Uvicorn with httptools
and uvloop, Gunicorn with the Uvicorn worker, Hypercorn with uvloop, Granian, asgilab), without
access logs and without X-Forwarded-* handling (nothing forwards here). Every (server, app) pair
is measured in turn, in an order rotated every round, after an unmeasured warm-up; each figure
is the median over the rounds. Two apps (``benchmarks.asgi_apps``): a raw ASGI hello, where the
server's own cost dominates, and a FastAPI hello, where the framework's does.

Columns: req/s, p50 and p99 latency (closed loop: latency at saturation, not at a chosen rate),
errors (wrk's socket errors + non-2xx responses, summed over rounds) and the server's CPU time
per request (user + system of every process holding the listening socket, over the run,
divided by the requests served). CPU per request is the figure least disturbed by other load on
a shared machine; req/s is what the ratios use. A pair with any error gets no ratio, only a
message saying which run failed: a server that drops connections must not look fast.

Memory per idle keep-alive connection (asgilab and Uvicorn, raw app): a fresh server, warmed by
one request, then ``--idle-connections`` connections each send one request, read the answer and
stay open; the growth of the server's resident set, divided by the connections, is the figure.

The last line is machine-readable::

    asgilab/uvicorn=<raw ratio> asgilab/granian=<raw ratio> fastapi_asgilab/uvicorn=<ratio>

(``n/a`` where a ratio could not be taken, with the reason printed above it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import sys
import time
from pathlib import Path

from backend.servers import SERVERS, Server, Settings, command, parse_server
from benchmarks.figures import Figures, Target, cpu_ratio, format_ratios, ratio, run_rounds
from benchmarks.host import (
    ToolMissing,
    free_port,
    listener_pids,
    python_server,
    require_tools,
    set_nice,
)

APPS: dict[str, str] = {"raw": "benchmarks.asgi_apps:raw", "fastapi": "benchmarks.asgi_apps:fastapi"}
# The ratios of the last line: (label, (server, app) measured, (server, app) it is compared with).
RATIOS: tuple[tuple[str, tuple[str, str], tuple[str, str]], ...] = (
    ("asgilab/uvicorn", ("asgilab", "raw"), ("uvicorn", "raw")),
    ("asgilab/granian", ("asgilab", "raw"), ("granian", "raw")),
    ("fastapi_asgilab/uvicorn", ("asgilab", "fastapi"), ("uvicorn", "fastapi")),
)
MEMORY_SERVERS: tuple[Server, ...] = ("asgilab", "uvicorn")


def parse_vmrss_kib(status: str) -> int:
    """``VmRSS`` from the text of /proc/PID/status, in KiB."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError("no VmRSS line (a kernel thread, or the process is gone)")


def rss_kib(pids: set[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            total += parse_vmrss_kib(Path(f"/proc/{pid}/status").read_text())
    return total


def server_command(server: Server, app: str, port: int) -> list[str]:
    """The lab's command line for ``server``: 127.0.0.1:port, one worker, no forwarded headers.

    Logging at warning: nobody reads the servers' stderr during a run, and a chatty one must not
    block on a full pipe.
    """
    settings = Settings(
        app=app, host="127.0.0.1", port=port, workers=1, forwarded_allow_ips=None, log_level="warning"
    )
    return command(server, settings)


def print_table(figures: dict[str, Figures], first_col: str, ratio_to: str | None = None) -> None:
    head = f"| {first_col} | req/s | p50 ms | p99 ms | errors | server CPU us/req |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if ratio_to:
        head += f" req/s / {ratio_to} |"
        rule += "---:|"
    print(head)
    print(rule)
    base = figures.get(ratio_to) if ratio_to else None
    for name, f in figures.items():
        if not f.runs:
            print(f"| {name} | {f.failed or 'not measured'} |  |  |  |  |" + (" |" if ratio_to else ""))
            continue
        row = (
            f"| {name} | {f.median('rps'):,.0f} | {f.median('p50_ms'):.2f} | {f.median('p99_ms'):.2f} "
            f"| {f.errors} | {statistics.median(f.cpu_us):.1f} |"
        )
        if ratio_to:
            value, _ = ratio(f, base)
            row += f" {'n/a' if value is None else f'{value:.2f}x'} |"
        print(row)


# --- memory per idle keep-alive connection ---------------------------------------------------
def open_idle_connections(port: int, count: int) -> list[socket.socket]:
    """``count`` connections, each having sent one request and read its whole answer, left open."""
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    socks = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(s)
            s.sendall(request)
            data = b""
            while not data.endswith(b"hello world\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("the server closed a fresh keep-alive connection")
                data += chunk
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def idle_memory(server: Server, count: int, cpu: int) -> float:
    """Bytes of server RSS per idle keep-alive connection (a fresh server, raw app)."""
    port = free_port()
    with python_server(server_command(server, APPS["raw"], port), port, cpu):
        pids = listener_pids(port)
        for s in open_idle_connections(port, 1):  # first request: lazily built state, not per-connection
            s.close()
        time.sleep(0.3)
        before = rss_kib(pids)
        socks = open_idle_connections(port, count)
        try:
            time.sleep(0.5)  # let the server settle (no request is in flight: all were answered)
            after = rss_kib(pids)
        finally:
            for s in socks:
                s.close()
    return (after - before) * 1024 / count


# --- the hop table ---------------------------------------------------------------------------
HOP_DIRECT = "(a) Uvicorn direct"
HOP_PROXY = "(c) proxy -> Uvicorn"
HOP_IN_PROCESS = "(d) proxy --app (in-process)"


def proxy_command(port: int, *, upstream: int | None = None, app: str | None = None) -> list[str]:
    """``python -m proxy`` as benchmarks.proxy runs it, forwarding to ``upstream`` or serving ``app``."""
    target = f"--upstream=127.0.0.1:{upstream}" if upstream is not None else f"--app={app}"
    return [
        sys.executable, "-m", "proxy", target, f"--listen=127.0.0.1:{port}",
        "--admin-listen=off", "--log-level=WARNING", "--no-access-log",
    ]  # fmt: skip


def start_hop_paths(cpu: int, stack: contextlib.ExitStack, figures: dict[str, Figures]) -> dict[str, Target]:
    """The FastAPI hello served four ways, every serving process on ``cpu``; failures recorded."""
    app = APPS["fastapi"]
    paths: dict[str, Target] = {}

    def start(name: str, cmd: list[str], port: int) -> bool:
        figures[name] = figures.get(name) or Figures(name)
        try:
            stack.enter_context(python_server(cmd, port, cpu))
        except RuntimeError as exc:
            figures[name].failed = "did not start"
            print(f"benchmarks.asgi: {name}: {exc}".rstrip(), file=sys.stderr)
            return False
        paths[name] = Target(port, listener_pids(port))
        return True

    for name, server in ((HOP_DIRECT, "uvicorn"), ("(b) asgilab direct", "asgilab")):
        port = free_port()
        start(name, server_command(server, app, port), port)  # type: ignore[arg-type]
    # (c): the proxy and the Uvicorn behind it share the one core, as the other rows' server does,
    # and (c)'s CPU column is both processes': the hop's whole price.
    upstream, port = free_port(), free_port()
    if start(HOP_PROXY, server_command("uvicorn", app, upstream), upstream):
        upstream_pids = paths.pop(HOP_PROXY).pids
        if start(HOP_PROXY, proxy_command(port, upstream=upstream), port):
            paths[HOP_PROXY].pids.update(upstream_pids)
    port = free_port()
    start(HOP_IN_PROCESS, proxy_command(port, app=app), port)
    return paths


def main_hop(a: argparse.Namespace) -> int:
    figures: dict[str, Figures] = {}
    with contextlib.ExitStack() as stack:
        paths = start_hop_paths(a.server_cpu, stack, figures)
        print(
            f"# hop: {a.rounds} round(s) x {a.duration:g}s, wrk -t1 -c50 on cpu {a.wrk_cpu}, "
            f"every serving process on cpu {a.server_cpu}",
            file=sys.stderr,
        )
        run_rounds(paths, figures, rounds=a.rounds, cpu=a.wrk_cpu, duration=a.duration, warmup=a.warmup)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(
        f"\nThe second hop, {stamp}: FastAPI hello, medians of {a.rounds} alternating round(s) of "
        f"{a.duration:g}s, wrk -t1 -c50 on cpu {a.wrk_cpu}; one core ({a.server_cpu}) for all that "
        "serves: for (c) the proxy and Uvicorn share it, and its CPU column is both processes'"
    )
    print()
    print_table(figures, "path", ratio_to=HOP_DIRECT)
    print()
    values = []
    for label, name in (("hop/direct", HOP_PROXY), ("inprocess/direct", HOP_IN_PROCESS)):
        value, why = ratio(figures[name], figures[HOP_DIRECT])
        if why:
            print(f"no ratio for {label}: {why}")
        values.append((label, value))
    print(format_ratios(values))
    return 0


# --- the comparison --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.asgi", description=__doc__.splitlines()[0])
    p.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds; medians are reported (default 3)"
    )
    p.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run (default 4)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run (default 1)")
    p.add_argument("--quick", action="store_true", help="1 round of 1 s: a smoke run, not a measurement")
    p.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated subset of {','.join(SERVERS)} (default all)",
    )
    p.add_argument("--apps", default="raw,fastapi", help="comma-separated subset of raw,fastapi")
    p.add_argument(
        "--idle-connections",
        type=int,
        default=1000,
        help="idle keep-alive connections for the memory figure (0 skips it; default 1000)",
    )
    p.add_argument("--hop", action="store_true", help="measure the second hop instead (FastAPI hello)")
    p.add_argument("--server-cpu", type=int, default=1, help="core of the server under test (default 1)")
    p.add_argument("--wrk-cpu", type=int, default=0, help="core of wrk (default 0)")
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of every benchmarked process (negative puts them ahead of other load; root)",
    )
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.duration, a.warmup = 1, 1.0, 1.0
        a.idle_connections = min(a.idle_connections, 200)
    servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    apps = [x.strip() for x in a.apps.split(",") if x.strip()]
    if bad := [s for s in servers if s not in SERVERS]:
        p.error(f"--servers: unknown {', '.join(bad)}; choose from {', '.join(SERVERS)}")
    if bad := [x for x in apps if x not in APPS]:
        p.error(f"--apps: unknown {', '.join(bad)}; choose from {', '.join(APPS)}")
    if a.rounds < 1 or a.duration <= 0 or a.idle_connections < 0:
        p.error("--rounds must be >= 1, --duration > 0 and --idle-connections >= 0")
    try:
        require_tools("wrk", "taskset")
    except ToolMissing as exc:
        print(f"benchmarks.asgi: {exc}", file=sys.stderr)
        return 2
    set_nice(a.nice)
    if len(os.sched_getaffinity(0)) < 2:
        print("benchmarks.asgi: WARNING: fewer than 2 cores; wrk and the server share one", file=sys.stderr)
        a.server_cpu = a.wrk_cpu = 0
    if a.hop:
        return main_hop(a)

    figures: dict[str, Figures] = {}
    paths: dict[str, Target] = {}
    key: dict[tuple[str, str], str] = {}
    with contextlib.ExitStack() as stack:
        for server in servers:
            for app in apps:
                name = f"{server} {app}"
                key[(server, app)] = name
                figures[name] = Figures(name)
                port = free_port()
                try:
                    cmd = server_command(parse_server(server), APPS[app], port)
                    stack.enter_context(python_server(cmd, port, a.server_cpu))
                except RuntimeError as exc:
                    figures[name].failed = "did not start"
                    print(f"benchmarks.asgi: {name}: {exc}".rstrip(), file=sys.stderr)
                    continue
                paths[name] = Target(port, listener_pids(port))
        print(
            f"# {a.rounds} round(s) x {a.duration:g}s per row, wrk -t1 -c50 on cpu {a.wrk_cpu}; "
            f"each server one worker on cpu {a.server_cpu}",
            file=sys.stderr,
        )
        run_rounds(paths, figures, rounds=a.rounds, cpu=a.wrk_cpu, duration=a.duration, warmup=a.warmup)

    memory: dict[str, list[float]] = {}
    if a.idle_connections:
        for rnd in range(a.rounds):
            order = list(MEMORY_SERVERS) if rnd % 2 == 0 else list(reversed(MEMORY_SERVERS))
            for server in (s for s in order if s in servers):
                try:
                    per_conn = idle_memory(server, a.idle_connections, a.server_cpu)
                except (RuntimeError, OSError) as exc:
                    print(f"benchmarks.asgi: memory, {server}: {exc}".rstrip(), file=sys.stderr)
                    continue
                memory.setdefault(server, []).append(per_conn)
                print(
                    f"# round {rnd + 1} memory {server:<8} {per_conn:,.0f} bytes per idle connection",
                    file=sys.stderr,
                )

    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(
        f"\nASGI servers, {stamp}: medians of {a.rounds} alternating round(s) of {a.duration:g}s, "
        f"wrk -t1 -c50 on cpu {a.wrk_cpu}, each server one worker on cpu {a.server_cpu}"
        + (f"; all at nice {a.nice}" if a.nice else "")
    )
    print()
    print_table(figures, "server, app")
    if memory:
        print()
        print(f"Memory per idle keep-alive connection ({a.idle_connections} connections, raw app, median):")
        print()
        print("| server | bytes per connection |")
        print("|---|---:|")
        for server, samples in memory.items():
            print(f"| {server} | {statistics.median(samples):,.0f} |")
    print()
    by_cpu = [
        (label, cpu_ratio(figures.get(key.get(num, "")), figures.get(key.get(den, ""))))
        for label, num, den in RATIOS
    ]
    print(
        "By CPU per request (the other server's over asgilab's; > 1: asgilab spends less per request; "
        f"the figure least disturbed by other load): {format_ratios(by_cpu)}"
    )
    print()
    values: list[tuple[str, float | None]] = []
    for label, num, den in RATIOS:
        value, why = ratio(figures.get(key.get(num, "")), figures.get(key.get(den, "")))
        if why:
            print(f"no ratio for {label}: {why}")
        values.append((label, value))
    print(format_ratios(values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
