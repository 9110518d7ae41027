"""The host benchmark's own parts: wrk output parsing and the open-loop fixed-rate driver.

Speed itself is never asserted here (that is what ``python -m benchmarks.proxy`` prints, as
ratios within one run); these check that the harness reads and measures what it claims to.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from benchmarks.fixedrate import drive
from benchmarks.host import parse_wrk

WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:55689/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   763.60us  222.23us   1.14s    98.33%
    Req/Sec    98.33k    21.77k  121.89k    72.73%
  Latency Distribution
     50%  580.00us
     75%  640.00us
     90%    1.71ms
     99%    1.20s
  107174 requests in 5.10s, 16.35MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:  21014.51
Transfer/sec:     14.84MB
"""


def test_parse_wrk_reads_rate_percentiles_in_ms_and_errors() -> None:
    r = parse_wrk(WRK_OUTPUT)
    assert r.rps == pytest.approx(21014.51)
    assert r.p50_ms == pytest.approx(0.58)
    assert r.p99_ms == pytest.approx(1200.0)
    assert r.requests == 107174
    assert r.errors == 3 + 2 + 7


def test_parse_wrk_refuses_output_without_latency_distribution() -> None:
    with pytest.raises(ValueError, match="unexpected wrk output"):
        parse_wrk("Running 1s test @ http://x/\nRequests/sec: 5.0\n")


class _Server:
    """Keep-alive HTTP/1.1 server on its own loop; answers after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0, status: int = 200) -> None:
        self.delay, self.status = delay, status
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._conn, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reason = b"OK" if self.status == 200 else b"Err"
        with_body = b"HTTP/1.1 %d %s\r\nContent-Length: 2\r\n\r\nok" % (self.status, reason)
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(with_body)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def _shutdown(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.loop.stop()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
        self.thread.join(5)


def test_fixed_rate_sends_on_schedule_and_counts_every_response() -> None:
    srv = _Server()
    try:
        t0 = time.monotonic()
        res = drive(f"http://127.0.0.1:{srv.port}/", rate=400, duration_s=1.0, connections=4, warmup_s=0.2)
        took = time.monotonic() - t0
    finally:
        srv.stop()
    assert res.errors == 0
    assert 380 <= res.requests <= 420  # 400/s for the 1 s measured window
    assert took < 4.0
    assert 0 < res.p50_ms <= res.p99_ms <= res.max_ms


def test_fixed_rate_counts_waiting_for_a_connection_as_latency() -> None:
    # 2 connections, 50 ms per response -> at most 40/s get through, 100/s are asked: requests
    # queue, and (unlike a closed loop) their wait shows up in the latency.
    srv = _Server(delay=0.05)
    try:
        res = drive(f"http://127.0.0.1:{srv.port}/", rate=100, duration_s=1.0, connections=2, warmup_s=0.0)
    finally:
        srv.stop()
    assert res.errors == 0 and res.requests == 100  # all answered, late
    assert res.p99_ms > 300  # far beyond the 50 ms service time


def test_fixed_rate_counts_error_statuses() -> None:
    srv = _Server(status=503)
    try:
        res = drive(f"http://127.0.0.1:{srv.port}/", rate=100, duration_s=0.5, connections=2, warmup_s=0.0)
    finally:
        srv.stop()
    assert res.requests == 0 and res.errors >= 45
