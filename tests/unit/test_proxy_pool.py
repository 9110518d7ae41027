"""The endpoint set: drain on removal, the per-request `unavailable()` set, panic, snapshot."""

from __future__ import annotations

import asyncio
import logging

import pytest

from proxy.balancer import RoundRobin
from proxy.config import Config
from proxy.health import HEALTHY, UNHEALTHY, set_health
from proxy.outlier import eject
from proxy.pool import UpstreamGroup

A, B, C = ("10.0.0.1", 8001), ("10.0.0.2", 8001), ("10.0.0.3", 8001)


def new_group(**config: float) -> UpstreamGroup:
    return UpstreamGroup.from_config(Config(**config), asyncio.get_running_loop())  # type: ignore[arg-type]


class FakeConn:
    def __init__(self) -> None:
        self.closed = False
        self.idle_since = 0.0

    def reusable(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True


def test_removed_endpoint_drains_in_flight_then_disappears() -> None:
    async def main() -> None:
        group = new_group()
        group.update([A, B])
        a = group.endpoints[A]
        conn = FakeConn()
        a.put_idle(conn)  # type: ignore[arg-type]
        a.in_flight = 1  # a request is running on another connection
        assert group.update([B]) is True
        assert conn.closed, "idle connections of a leaving endpoint are closed at once"
        assert [ep.address for ep in group.live] == [B], "no new picks"
        (view,) = [v for v in group.snapshot() if v["address"] == "10.0.0.1:8001"]
        assert view["draining"] is True and view["in_flight"] == 1
        back = FakeConn()
        a.put_idle(back)  # type: ignore[arg-type]
        assert back.closed, "a connection released by the in-flight request is not pooled"
        a.release()
        assert A not in group.endpoints, "gone once its last request finished"
        assert group.update([B]) is False, "same set: no change reported"

    asyncio.run(main())


def test_endpoint_coming_back_while_draining_is_revived_with_its_state() -> None:
    async def main() -> None:
        group = new_group()
        group.update([A, B])
        a = group.endpoints[A]
        a.in_flight = 1
        group.update([B])
        group.update([A, B])
        assert group.endpoints[A] is a and a.live

    asyncio.run(main())


def test_unavailable_is_the_union_cached_until_something_changes() -> None:
    async def main() -> None:
        group = new_group(fail_timeout=0.05)
        group.update([A, B, C])
        a, b, c = group.live
        empty = group.unavailable()
        assert not empty and group.unavailable() is empty, "cached: no rebuild per request"
        group.mark_failed(a)
        eject(b, 10)
        assert group.unavailable() == {a, b}
        cached = group.unavailable()
        assert group.unavailable() is cached
        rr = RoundRobin()
        assert {rr.pick(group.live, group.unavailable()) for _ in range(6)} == {c}
        await asyncio.sleep(0.08)
        assert group.unavailable() == {b}, "the connect cool-down ends on its own"
        set_health(c, UNHEALTHY)
        assert group.unavailable() == {b, c}
        view = {v["address"]: v for v in group.snapshot()}
        assert view["10.0.0.3:8001"]["health"] == "unhealthy"
        assert view["10.0.0.2:8001"]["ejected"] is True
        assert view["10.0.0.1:8001"]["failed_recently"] is False
        group.update([B, C])
        assert not group.unavailable() and group.panic, "A left: now every live endpoint is excluded"

    asyncio.run(main())


def test_every_endpoint_excluded_means_panic_and_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "proxy.pool")

    async def main() -> None:
        group = new_group()
        group.update([A, B])
        a, b = group.live
        eject(a, 10)
        set_health(b, UNHEALTHY)
        assert not group.unavailable() and group.panic, "try them all rather than refuse every request"
        assert RoundRobin().pick(group.live, group.unavailable()) is not None
        set_health(b, HEALTHY)
        assert group.unavailable() == {a} and not group.panic

    asyncio.run(main())
    assert "every endpoint is failing; panic mode" in caplog.text
    assert "panic mode over" in caplog.text


def test_fail_timeout_zero_never_cools_and_close_cancels_timers() -> None:
    async def main() -> None:
        group = new_group(fail_timeout=0)
        group.update([A, B])
        group.mark_failed(group.live[0])
        assert not group.unavailable()
        eject(group.live[1], 60)
        timer = group.live[1].outlier.timer
        assert timer is not None
        group.close()
        assert timer.cancelled()

    asyncio.run(main())


def test_a_drained_endpoint_leaves_no_timer_behind_and_changes_wake_the_queue() -> None:
    async def main() -> None:
        group = new_group(fail_timeout=30)
        woken: list[int] = []
        group.on_capacity = lambda: woken.append(1)
        group.update([A, B])
        a = group.endpoints[A]
        group.mark_failed(a)
        eject(a, 60)
        cool, ejection = a.cool_timer, a.outlier.timer
        assert cool is not None and ejection is not None
        group.update([B])  # A leaves discovery with nothing in flight: removed at once
        assert A not in group.endpoints
        woken.clear()
        assert cool.cancelled() and ejection.cancelled(), "a removed endpoint's timers must not fire later"
        b = group.endpoints[B]
        set_health(b, UNHEALTHY)
        assert woken == [], "an endpoint going out frees no capacity"
        set_health(b, HEALTHY)
        assert woken == [1], "one coming back may take a queued request now"

    asyncio.run(main())


def test_docs_list_each_endpoint_record_with_the_class_and_module_that_own_it() -> None:
    """Drift check: docs/proxy.md's table of an endpoint's records is what an Endpoint holds."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "proxy.md").read_text()
    rows = re.findall(r"^\| `ep\.(\w+)` \(`(\w+)`\) \| `(\w+)\.py` \|", text, re.M)
    assert rows, "the records table is gone from docs/proxy.md"
    loop = asyncio.new_event_loop()
    try:
        group = UpstreamGroup.from_config(Config(), loop)
        group.update([A])
        ep = group.live[0]
        documented = {attr: (cls, f"proxy.{module}") for attr, cls, module in rows}
        actual = {
            name: (type(value).__name__, type(value).__module__)
            for name in type(ep).__slots__
            if type(value := getattr(ep, name)).__module__.startswith("proxy.")
            and type(value).__module__ != "proxy.pool"
        }
        assert documented == actual
    finally:
        loop.close()


def test_the_default_pool_keeps_the_connections_of_200_concurrent_requests() -> None:
    """With 200 requests at once to one replica (wrk -c200 behind one backend), every upstream
    connection they opened is kept for the next burst: the default --pool-max-idle (1024) is above
    what a replica carries, so a burst after a burst opens nothing new (with 128 it opened 72)."""
    from tests.unit.harness import proxy

    n = 200

    async def main() -> None:
        gate = asyncio.Event()
        waiting = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal waiting
            try:
                while True:
                    await reader.readuntil(b"\r\n\r\n")
                    waiting += 1
                    if waiting >= n:
                        gate.set()
                    await gate.wait()  # every request of the burst is in flight at once
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        upstream = await asyncio.start_server(handle, "127.0.0.1", 0)
        address = ("127.0.0.1", upstream.sockets[0].getsockname()[1])

        async def get(port: int) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = await reader.read()
            writer.close()
            return data[:12]

        try:
            async with proxy(endpoints=[address], health_interval=0) as srv:
                assert srv.state is not None and srv.config.pool_max_idle == Config().pool_max_idle
                ep = srv.state.group.live[0]
                for burst in range(2):
                    waiting = 0
                    gate.clear()
                    replies = await asyncio.gather(*(get(srv.port) for _ in range(n)))
                    assert replies == [b"HTTP/1.1 200"] * n
                    if burst == 0:
                        opened = ep.connects
                        assert opened == n and len(ep.idle) == n, (opened, len(ep.idle))
                assert ep.connects == opened, "the second burst went out on pooled connections only"
        finally:
            upstream.close()

    asyncio.run(asyncio.wait_for(main(), 30))
