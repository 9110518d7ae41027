"""The host benchmark's own parts: wrk output parsing and the open-loop run through loadgen.

Speed itself is never asserted here (that is what ``python -m benchmarks.proxy`` prints, as
ratios within one run); these check that the harness reads and measures what it claims to.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from benchmarks.host import parse_loadgen_report, parse_wrk, run_open_loop

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


def _report(**over: Any) -> dict[str, Any]:
    """An open-loop loadgen report with what parse_loadgen_report reads (as loadgen writes it)."""
    report: dict[str, Any] = {
        "mode": "open",
        "responses": 4000,
        "status": {"200": 4000},
        "errors": {"connect": 0, "timeout": 0, "reset": 0, "other": 0},
        "rate_check": {
            "intended_rps": 2000.0,
            "achieved_rps": 1999.5,
            "kept_up": True,
            "reason": None,
            "unsent": 0,
        },
        "latency_ms": {"p50": 0.044, "p90": 0.059, "p99": 0.603, "max": 3.4},
    }
    report.update(over)
    return report


def test_open_loop_report_gives_corrected_percentiles_and_no_errors() -> None:
    r = parse_loadgen_report(_report())
    assert (r.rate, r.achieved, r.responses) == (2000.0, 1999.5, 4000)
    assert (r.p50_ms, r.p99_ms) == (0.044, 0.603)
    assert r.errors == 0 and r.kept_up and r.reason is None


def test_open_loop_errors_count_transport_failures_non_2xx_and_unsent_requests() -> None:
    rc = {**_report()["rate_check"], "unsent": 4, "kept_up": False, "reason": "generator behind"}
    r = parse_loadgen_report(
        _report(
            status={"200": 3990, "502": 5, "304": 1},
            errors={"connect": 1, "timeout": 0, "reset": 2, "other": 0},
            rate_check=rc,
        )
    )
    assert r.errors == 5 + 1 + 1 + 2 + 4
    assert not r.kept_up and r.reason == "generator behind"


def test_a_closed_loop_report_is_refused() -> None:
    with pytest.raises(ValueError, match="not an open-loop"):
        parse_loadgen_report(_report(mode="closed"))


class _Server:
    """Keep-alive HTTP/1.1 server on its own loop and thread, answering ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
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
        answer = b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n\r\nok" % self.status
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.mark.parametrize(("status", "ok"), [(200, True), (503, False)])
def test_run_open_loop_drives_loadgen_at_the_rate_and_counts_error_answers(status: int, ok: bool) -> None:
    """The real ``python -m loadgen --rate`` subprocess (not pinned) against a local server."""
    srv = _Server(status)
    try:
        r = run_open_loop(f"http://127.0.0.1:{srv.port}/", rate=200, duration_s=1.0, cpu=None, connections=4)
    finally:
        srv.stop()
    assert r.rate == 200.0
    assert 190 <= r.responses <= 210
    if ok:
        assert r.errors == 0 and r.p50_ms <= r.p99_ms
    else:
        assert r.errors == r.responses  # every 503 is an error, never a fast success
