"""Does the distributed load generator scale? One worker against two, in one run, and is the merge exact?

``python -m benchmarks.distributed [--rounds 3] [--duration 5] [--quota 0.2] [--connections 50]``
(``./lab bench distributed``). Needs nginx and taskset (``scripts/bench-tools``), root for the CPU
quota.

A static nginx (``benchmarks.host.static_upstream``, one worker) is the target. Each round runs
``python -m loadgen --coordinator ... --expect-workers 1`` with one worker, then the same with
``--expect-workers 2`` and two workers (closed loop, ``--connections`` in total, split by the
coordinator), workers pinned one per core (core 1; cores 0 and 1). The figure of merit is
``two/one``: the median req/s of the two-worker runs over that of the one-worker runs; ideal 2.0,
the target is >= 1.7.

On a 2-core machine the target and the generator share the cores, and nginx needs more CPU per
request than the generator does, so two uncapped workers would only move the bottleneck to
nginx. ``--quota Q`` therefore caps every worker at Q of a core (a cgroup ``cpu`` quota, v1 or
v2), which leaves nginx the headroom to answer both: what is measured is how the generator's own
throughput scales with workers. ``--quota 0`` drops the cap (use it on a machine with cores to
spare). The CPU column (user+sys of the workers and of nginx, from the kernel) shows who worked.

Each worker also writes its own report (``--worker ... --json``); the benchmark adds the workers'
raw corrected histograms with ``hdrh`` directly and checks that the coordinator's merged
percentiles are the same numbers (``merge_exact``).

On a loaded machine the workers get less than their quota (the CPU column says so), so the
benchmark also prints requests per worker CPU second, two workers over one (``cpu_efficiency``):
the part of the scaling that does not depend on how much CPU the machine had left.

The last line is machine-readable:
``distributed two/one=<ratio> cpu_efficiency=<x> merge_exact=<yes|no> quota=<Q>``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from benchmarks.host import ToolMissing, cpu_seconds, listener_pids, pinned, require_tools, static_upstream

REPO = Path(__file__).resolve().parents[1]
CORES = (1, 0)  # worker i runs on CORES[i]
#: The quota's accounting period: short, so a capped worker is throttled in 10 ms slices rather
#: than stopped for most of every 100 ms (the default), which would show as latency spikes.
PERIOD_US = 10_000
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}


@contextlib.contextmanager
def cpu_cap(quota: float) -> Iterator[Path | None]:
    """A fresh cgroup capped at ``quota`` of one core (None: no cap); removed afterwards."""
    if quota <= 0:
        yield None
        return
    name = f"asgi-lab-bench-{uuid.uuid4().hex[:8]}"
    v1 = Path("/sys/fs/cgroup/cpu")
    if (v1 / "cpu.cfs_quota_us").exists():
        group = v1 / name
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(int(quota * PERIOD_US)))
    else:
        group = Path("/sys/fs/cgroup") / name
        group.mkdir()
        (group / "cpu.max").write_text(f"{int(quota * PERIOD_US)} {PERIOD_US}")
    try:
        yield group
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:  # its processes are still exiting
                time.sleep(0.1)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LOADGEN_")}


def _spawn_worker(port: int, cpu: int, group: Path | None, json_path: Path) -> subprocess.Popen[str]:
    cmd = pinned(
        [sys.executable, "-m", "loadgen", "--worker", f"127.0.0.1:{port}", "-q", "--json", str(json_path)],
        cpu,
    )
    if group is not None:  # join the cgroup first, then become the worker (children inherit it)
        cmd = ["sh", "-c", f'echo $$ > "{group}/cgroup.procs" && exec "$@"', "sh", *cmd]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stderr=subprocess.PIPE, text=True)


def _wait_cpu(proc: subprocess.Popen[str], timeout: float) -> float:
    """Wait for a child and return its user+sys CPU seconds (wait4's rusage, children included)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("a worker did not finish")
        time.sleep(0.05)


def run_fleet(url: str, workers: int, a: argparse.Namespace, groups: list[Path | None]) -> dict[str, Any]:
    """One distributed run; returns the coordinator's report plus the workers' own and their CPU."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "loadgen", "--coordinator", "127.0.0.1:0",
               "--expect-workers", str(workers), url, "-c", str(a.connections), "-d", f"{a.duration:g}",
               "--json", str(out)]  # fmt: skip
        coord = subprocess.Popen(
            cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert coord.stderr is not None
            first = coord.stderr.readline()  # "loadgen: coordinator listening on 127.0.0.1:PORT, ..."
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", first)
            if not m:
                raise RuntimeError(f"coordinator did not start: {first}{coord.stderr.read()}")
            port = int(m.group(1))
            own = [Path(tmp) / f"worker{i}.json" for i in range(workers)]
            procs = [_spawn_worker(port, CORES[i], groups[i], own[i]) for i in range(workers)]
            cpu = [_wait_cpu(p, a.duration + 60) for p in procs]
            _, err = coord.communicate(timeout=60)
        finally:
            if coord.poll() is None:
                coord.kill()
        if coord.returncode != 0 or not out.exists():
            raise RuntimeError(f"coordinator failed ({coord.returncode}):\n{err}")
        return {
            "report": json.loads(out.read_text()),
            "own": [json.loads(p.read_text()) for p in own],
            "cpu": cpu,
        }


def merge_exact(run: dict[str, Any]) -> bool:
    """The coordinator's percentiles == those of the workers' own histograms added by hdrh here."""
    total = HdrHistogram(1, 60_000_000, 3)
    for own in run["own"]:
        total.add(HdrHistogram.decode(own["histograms"]["corrected"].encode()))
    merged = run["report"]["latency_ms"]
    if total.get_total_count() != run["report"]["responses"]:
        return False
    for key, pct in PERCENTILES.items():
        if round(total.get_value_at_percentile(pct) / 1000.0, 3) != merged[key]:
            return False
    return bool(round(total.get_max_value() / 1000.0, 3) == merged["max"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of 1 and 2 workers (default 3)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    p.add_argument(
        "--quota", type=float, default=0.2, help="CPU cap per worker, in cores; 0: none (default 0.2)"
    )
    p.add_argument(
        "--connections", type=int, default=50, help="closed-loop connections in total (default 50)"
    )
    a = p.parse_args(argv)
    try:
        require_tools("nginx", "taskset")
    except ToolMissing as exc:
        print(f"benchmarks.distributed: {exc}", file=sys.stderr)
        return 2
    if a.quota > 0 and os.geteuid() != 0:
        print(
            "benchmarks.distributed: --quota needs root (a cgroup per worker); or pass --quota 0",
            file=sys.stderr,
        )
        return 2
    rows: list[str] = []
    rps: dict[int, list[float]] = {1: [], 2: []}
    per_cpu: dict[int, list[float]] = {1: [], 2: []}  # requests per CPU second of the workers
    exact = True
    with cpu_cap(a.quota) as g0, cpu_cap(a.quota) as g1, static_upstream(cpu=None) as port:
        url = f"http://127.0.0.1:{port}/"
        nginx = listener_pids(port)
        for i in range(a.rounds):
            for n in (1, 2):
                before = cpu_seconds(nginx)
                run = run_fleet(url, n, a, [g0, g1])
                nginx_cpu = cpu_seconds(nginx) - before
                r = run["report"]
                ok = merge_exact(run)
                exact = exact and ok
                rps[n].append(r["rps"])
                per_cpu[n].append(r["requests"] / max(sum(run["cpu"]), 1e-9))
                lat = r["latency_ms"]
                each = " + ".join(f"{w['rps']:,.0f}" for w in r["distributed"]["workers"])
                cpu = " + ".join(f"{c:.2f}" for c in run["cpu"])
                rows.append(
                    f"| {i + 1} | {n} | {r['rps']:,.0f} | {each} | {lat['p50']:.2f} / {lat['p99']:.2f} "
                    f"| {cpu} | {per_cpu[n][-1]:,.0f} | {nginx_cpu:.2f} | {'yes' if ok else 'NO'} |"
                )
                print(rows[-1], file=sys.stderr, flush=True)
    ratio = statistics.median(rps[2]) / statistics.median(rps[1])
    cap = f"{a.quota:g} core each (cgroup cpu quota)" if a.quota > 0 else "none"
    print("# distributed loadgen: one worker vs two, static nginx (1 worker process, not pinned)")
    print()
    cores = ", ".join(map(str, CORES))
    print(f"Closed loop, {a.connections} connections in total, {a.duration:g} s per run, workers pinned to "
          f"cores {cores}; CPU cap per worker: {cap}; {os.cpu_count()} cores.")  # fmt: skip
    print()
    print("| round | workers | req/s | per worker | p50 / p99 ms | worker CPU s | requests per worker CPU s "
          "| nginx CPU s | merge exact |")  # fmt: skip
    print("|---:|---:|---:|---|---:|---:|---:|---:|---|")
    for row in rows:
        print(row)
    for n in (1, 2):
        mid_rps, mid_cpu = statistics.median(rps[n]), statistics.median(per_cpu[n])
        print(f"| median | {n} | {mid_rps:,.0f} | | | | {mid_cpu:,.0f} | | |")
    print()
    verdict = "meets" if ratio >= 1.7 else "BELOW"
    efficiency = statistics.median(per_cpu[2]) / statistics.median(per_cpu[1])
    print(f"two/one = {ratio:.3f} ({verdict} the 1.7 target); requests per worker CPU second, two/one = "
          f"{efficiency:.3f} (1.0: a second worker costs no more per request; startup included)")  # fmt: skip
    print(
        f"distributed two/one={ratio:.3f} cpu_efficiency={efficiency:.3f} "
        f"merge_exact={'yes' if exact else 'no'} quota={a.quota:g}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
