"""Open-loop, fixed-rate latency driver (wrk2's idea) for the host benchmarks.

Why: wrk 4.1 (Debian) is closed-loop and has no ``-R``; under a closed loop a slow response
delays the next request, so tail latency hides (coordinated omission). Here request *i* is due
at ``t0 + i/rate`` no matter what; if no connection is free it waits in a queue and its latency
is still counted from the due time. With one event loop the timer granularity is about 1 ms, so
requests leave in small bursts (wrk2 does the same); both paths measured in one run see the
same bursts, which is why the benchmark reports the *difference* of p99 (added latency).

Use ``run_fixed_rate(url, cpu=0, rate=10_000, duration_s=5)`` (runs this module pinned in a
subprocess) or ``python -m benchmarks.fixedrate URL --rate R --duration S`` (prints JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import httptools

from benchmarks.host import pinned


@dataclass(frozen=True, slots=True)
class FixedRateResult:
    rate: float  # asked
    achieved: float  # responses per second in the measured window
    requests: int  # responses in the measured window
    errors: int  # non-2xx/3xx, resets, connect failures
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float


class _Conn(asyncio.Protocol):
    def __init__(self, driver: _Driver) -> None:
        self.d = driver
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.due = 0.0
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.d.errors += 1
            self.transport.close()  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        self.d.done(self, status)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.d.lost(self)


class _Driver:
    def __init__(self, host: str, port: int, path: str, rate: float, duration: float, warmup: float) -> None:
        self.host, self.port = host, port
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        self.rate, self.duration, self.warmup = rate, duration, warmup
        self.idle: list[_Conn] = []
        self.queue: collections.deque[float] = collections.deque()
        self.latencies: list[float] = []
        self.errors = 0
        self.measured_from = 0.0
        self.measured_to = 0.0
        self.in_flight = 0

    def send(self, conn: _Conn, due: float) -> None:
        conn.due = due
        self.in_flight += 1
        conn.transport.write(self.request)  # type: ignore[union-attr]

    def done(self, conn: _Conn, status: int) -> None:
        now = time.perf_counter()
        self.in_flight -= 1
        if self.measured_from <= conn.due < self.measured_to:
            if 200 <= status < 400:
                self.latencies.append(now - conn.due)
            else:
                self.errors += 1
        if self.queue:
            self.send(conn, self.queue.popleft())
        else:
            self.idle.append(conn)

    def lost(self, conn: _Conn) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
        elif conn.due:
            self.in_flight -= 1
            if self.measured_from <= conn.due < self.measured_to:
                self.errors += 1

    async def run(self, connections: int) -> None:
        loop = asyncio.get_running_loop()
        conns = []
        for _ in range(connections):
            _, c = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
            conns.append(c)
        self.idle = list(conns)
        t0 = time.perf_counter()
        self.measured_from = t0 + self.warmup
        self.measured_to = t0 + self.warmup + self.duration
        end = self.measured_to
        interval = 1.0 / self.rate
        issued = 0
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            due_count = int((now - t0) * self.rate) + 1
            while issued < due_count:
                due = t0 + issued * interval
                issued += 1
                if self.idle:
                    self.send(self.idle.pop(), due)
                else:
                    self.queue.append(due)
            await asyncio.sleep(max(0.0, t0 + issued * interval - time.perf_counter()))
        # Let the measured window's stragglers finish (bounded), then count the rest as errors.
        deadline = time.perf_counter() + 5.0
        while (self.in_flight or self.queue) and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        self.errors += len([d for d in self.queue if self.measured_from <= d < self.measured_to])
        for c in conns:
            c.transport.close()  # type: ignore[union-attr]

    def result(self) -> FixedRateResult:
        lat = sorted(self.latencies)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000.0 if lat else float("nan")

        return FixedRateResult(
            rate=self.rate,
            achieved=len(lat) / self.duration,
            requests=len(lat),
            errors=self.errors,
            p50_ms=pct(0.50),
            p99_ms=pct(0.99),
            p999_ms=pct(0.999),
            max_ms=lat[-1] * 1000.0 if lat else float("nan"),
        )


def drive(
    url: str, rate: float, duration_s: float, connections: int = 50, warmup_s: float = 1.0
) -> FixedRateResult:
    parts = urlsplit(url)
    driver = _Driver(
        parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/", rate, duration_s, warmup_s
    )
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        runner.run(driver.run(connections))
    return driver.result()


def run_fixed_rate(
    url: str,
    *,
    rate: float,
    duration_s: float = 5.0,
    cpu: int | None = 0,
    connections: int = 50,
    warmup_s: float = 1.0,
) -> FixedRateResult:
    """Run the driver in a subprocess pinned to ``cpu`` (like wrk) and return its result."""
    cmd = pinned(
        [
            sys.executable,
            "-m",
            "benchmarks.fixedrate",
            url,
            f"--rate={rate:g}",
            f"--duration={duration_s:g}",
            f"--connections={connections}",
            f"--warmup={warmup_s:g}",
        ],
        cpu,
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + warmup_s + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"fixed-rate driver failed ({proc.returncode}): {proc.stderr.strip()}")
    return FixedRateResult(**json.loads(proc.stdout))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fixedrate", description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--rate", type=float, required=True, help="requests per second (open loop)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--warmup", type=float, default=1.0, help="seconds sent but not measured first")
    a = p.parse_args(argv)
    if a.rate <= 0 or a.duration <= 0 or a.connections < 1:
        p.error("--rate and --duration must be > 0, --connections >= 1")
    res = drive(a.url, a.rate, a.duration, a.connections, a.warmup)
    print(json.dumps(asdict(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
