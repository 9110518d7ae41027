"""A replica that vanished (its address drops SYNs) must not hold requests for --connect-timeout."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from time import perf_counter

import pytest

from tests.unit.harness import FakeUpstream, access_lines, addr, fetch, get, proxy, run


@contextlib.contextmanager
def blackhole() -> Iterator[tuple[str, int]]:
    """A loopback address whose connects never complete, like a removed container's IP.

    A listener with backlog 0 whose accept queue is already full: Linux drops further SYNs
    instead of refusing them, so a connect just hangs (the client retransmits its SYN).
    """
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    address = lsock.getsockname()
    fillers = []
    try:
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(address)
            fillers.append(c)
        yield address
    finally:
        for c in fillers:
            c.close()
        lsock.close()


def test_the_blackhole_really_hangs_a_connect() -> None:
    async def main() -> None:
        with blackhole() as (host, port), pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.open_connection(host, port), 0.5)

    run(main)


def test_a_connect_that_hangs_moves_the_request_on_and_cools_the_endpoint(loop_kind: str) -> None:
    async def main() -> None:
        with blackhole() as dead:
            async with (
                FakeUpstream() as good,
                proxy(
                    endpoints=[dead, addr(good)],
                    connect_timeout=2.0,
                    connect_slow_threshold=0.1,
                    fail_timeout=5,
                ) as srv,
            ):
                assert srv.state is not None
                group = srv.state.group
                hints: list[int] = []
                group.on_connect_failure = lambda: hints.append(1)  # what DNS discovery hooks
                t0 = perf_counter()
                # Round robin sends half of these to the dead address first.
                first = await asyncio.gather(*(fetch(srv.port, get(f"/c{i}")) for i in range(4)))
                after = [await fetch(srv.port, get(f"/s{i}")) for i in range(4)]
                elapsed = perf_counter() - t0
                assert [r.status for r in first + after] == [200] * 8
                assert elapsed < 1.0, f"took {elapsed:.2f}s: requests waited for the connect timeout"
                dead_ep = group.endpoints[dead]
                # Only the first wave picked it (two of four, unless the cooling came first);
                # each of those moved on, and no request after them tried it again.
                assert 1 <= dead_ep.requests <= 2 and dead_ep.cooling
                assert srv.state.counters.count("connect_slow", "moved") == dead_ep.requests
                assert hints, "the slow connect asked discovery to re-resolve"
                assert {line["upstream"] for line in access_lines(srv)} == {f"127.0.0.1:{good.port}"}
                assert dead_ep.in_flight == 0 and group.endpoints[addr(good)].in_flight == 0

    run(main, loop_kind)


def test_with_no_other_endpoint_a_slow_connect_waits_for_the_connect_timeout() -> None:
    async def main() -> None:
        with blackhole() as dead:
            async with proxy(endpoints=[dead], connect_timeout=0.6, connect_slow_threshold=0.1) as srv:
                t0 = perf_counter()
                resp = await fetch(srv.port, get("/"))
                elapsed = perf_counter() - t0
                assert resp.status == 502 and b"timed out after 0.6s" in resp.body
                assert elapsed >= 0.55, "the only endpoint was given the whole --connect-timeout"
                assert srv.state is not None
                assert srv.state.counters.count("connect_slow", "waited") == 1
                assert srv.state.group.endpoints[dead].in_flight == 0

    run(main)


def test_slow_connect_threshold_zero_switches_it_off() -> None:
    async def main() -> None:
        with blackhole() as dead:
            async with (
                FakeUpstream() as good,
                proxy(endpoints=[dead, addr(good)], connect_timeout=0.5, connect_slow_threshold=0) as srv,
            ):
                t0 = perf_counter()
                resp = await fetch(srv.port, get("/"))  # round robin: the dead address first
                assert resp.status == 200
                assert perf_counter() - t0 >= 0.45, "without the threshold the connect timeout applies"
                assert srv.state is not None and srv.state.counters.count("connect_slow") == 0

    run(main)
