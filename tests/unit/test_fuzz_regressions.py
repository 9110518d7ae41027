"""Inputs the fuzzers found, replayed through their targets, plus the behaviour each one fixed.

Every file in fuzz/regressions/TARGET/ once broke an invariant of that target (see
docs/conformance.md "Fuzzing"); replaying it must now pass. No atheris needed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fuzz import loadgen_response, proxy_path
from fuzz.wire import MemoryTransport
from loadgen.client import Connection, _Wire, build_request
from loadgen.config import Target

REGRESSIONS = Path(__file__).resolve().parents[2] / "fuzz" / "regressions"
CASES = sorted(p for p in REGRESSIONS.glob("*/*") if p.is_file())
TARGETS = {"proxy": proxy_path, "loadgen": loadgen_response}


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.name}" for p in CASES])
def test_saved_input_passes_its_target(path: Path) -> None:
    TARGETS[path.parent.name].test_one_input(path.read_bytes())


def test_every_target_has_seeds_and_the_proxy_target_checks_what_goes_upstream() -> None:
    seeds = REGRESSIONS.parent / "seeds"
    assert {p.name for p in seeds.iterdir()} == set(TARGETS)
    # The proxy target must catch a bad upstream request: its checker alone, fed one directly.
    loop = asyncio.new_event_loop()
    try:
        side = proxy_path.UpstreamSide(None, MemoryTransport(("h", 1), loop))  # type: ignore[arg-type]
        with pytest.raises(proxy_path.Finding, match="hop-by-hop header b'keep-alive'"):
            side.written(b"GET / HTTP/1.1\r\nHost: x\r\nKeep-Alive: 5\r\n\r\n")
        side = proxy_path.UpstreamSide(None, MemoryTransport(("h", 1), loop))  # type: ignore[arg-type]
        with pytest.raises(proxy_path.Finding, match="unparsable request"):
            side.written(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
    finally:
        loop.close()


def test_loadgen_reports_a_status_outside_100_599_as_an_error() -> None:
    """Found by the loadgen fuzzer: llhttp parses "020" as status 20, which was counted a success."""
    loop = asyncio.new_event_loop()
    try:
        target = Target(host="127.0.0.1", port=9, host_header="h", path="/")
        conn = Connection(target, build_request("GET", target), 60.0, loop=loop)
        transport = MemoryTransport(("127.0.0.1", 9), loop)
        wire = _Wire(conn)
        transport.protocol = wire
        conn._transport, conn._wire = transport, wire
        got: list[tuple[int, str | None]] = []
        conn.send(lambda _s, _d, status, _b, error: got.append((status, error)))
        wire.data_received(b"HTTP/1.1 020 OK\r\nContent-Length: 0\r\n\r\n")
        assert got == [(0, "other")]
        conn.close()
    finally:
        loop.close()
