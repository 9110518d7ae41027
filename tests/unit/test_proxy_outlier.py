"""Passive outlier detection: consecutive failures eject, ejections grow, a cap holds, traffic moves."""

from __future__ import annotations

import asyncio
import io
import logging

import pytest

from proxy.config import Config
from proxy.counters import Counters
from proxy.outlier import OutlierDetector, OutlierPolicy, eject, uneject
from proxy.pool import UpstreamGroup
from proxy.server import ProxyServer
from tests.unit.upstreams import StatusServer


def setup(n: int = 3, **policy: float) -> tuple[UpstreamGroup, OutlierDetector, Counters]:
    """A group of ``n`` with a detector whose knobs are Config's, but for ``policy``'s."""
    cfg = Config(**{f"outlier_{k}": v for k, v in policy.items()})  # type: ignore[arg-type]
    group = UpstreamGroup.from_config(cfg, asyncio.get_running_loop())
    group.update([(f"10.0.0.{i}", 8001) for i in range(1, n + 1)])
    counters = Counters()
    detector = OutlierDetector(OutlierPolicy.from_config(cfg), counters)
    group.outlier = detector
    return group, detector, counters


def test_consecutive_5xx_eject_and_a_success_resets_the_count(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        group, _, counters = setup(consecutive_5xx=3)
        ep = group.live[0]
        for status in (500, 502, 200, 503, 500):
            ep.observe(status, 0.01, None)
        assert not ep.ejected, "the 200 broke the run: only two in a row since"
        assert ep.outlier.consecutive_5xx == 2
        ep.observe(404, 0.01, None)  # a client error is not the upstream failing
        for _ in range(3):
            ep.observe(500, 0.01, None)
        assert ep.ejected and group.unavailable() == {ep}
        assert counters.count("ejections", "5xx") == 1
        (view,) = [v for v in group.snapshot() if v["address"] == ep.label]
        assert view["ejected"] is True and view["ejections"] == 1 and 0 < view["ejected_for"] <= 5

    asyncio.run(main())
    assert "ejected for 5s after 3 consecutive 5xx failures (ejection #1)" in caplog.text


def test_gateway_failures_count_separately_and_protocol_errors_count_as_5xx() -> None:
    async def main() -> None:
        group, _, counters = setup(consecutive_5xx=3, consecutive_failures=2)
        a, b = group.live[0], group.live[1]
        a.observe(0, 0.1, "reset")
        a.observe(0, 2.0, "timeout")
        assert a.ejected and counters.count("ejections", "gateway") == 1
        b.observe(0, 0.0, "protocol")
        b.observe(0, 0.0, "protocol")
        assert not b.ejected and b.outlier.consecutive_5xx == 2 and b.outlier.consecutive_failures == 0

    asyncio.run(main())


def test_ejection_time_grows_with_each_ejection_up_to_the_max_and_ends_on_time() -> None:
    async def main() -> None:
        group, detector, _ = setup(consecutive_5xx=1, base_ejection=0.05, max_ejection=0.12)
        ep = group.live[0]
        loop = asyncio.get_running_loop()
        lengths = []
        for _ in range(4):
            ep.observe(500, 0.0, None)
            assert ep.ejected
            lengths.append(round(ep.outlier.ejected_until - loop.time(), 2))
            while ep.ejected:
                await asyncio.sleep(0.005)
            assert ep not in group.unavailable(), "back in rotation once the time is up"
        assert lengths == [0.05, 0.1, 0.12, 0.12]
        assert ep.outlier.ejections == 4
        # Clear of trouble for longer than max_ejection: the next ejection starts from base again.
        ep.outlier.ejected_until = loop.time() - 1.0
        assert detector.ejection_time(ep, loop.time()) == 0.05

    asyncio.run(main())


def test_max_ejection_percent_keeps_most_replicas_in(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        group, _, counters = setup(n=3, consecutive_5xx=1, max_ejection_percent=50)
        a, b, c = group.live
        a.observe(500, 0.0, None)
        b.observe(500, 0.0, None)
        c.observe(500, 0.0, None)
        assert [a.ejected, b.ejected, c.ejected] == [True, False, False], "50 % of 3 is one endpoint"
        assert counters.count("ejections") == 1
        # A single replica is never ejected: there would be nothing left.
        solo, _, _ = setup(n=1, consecutive_5xx=1, max_ejection_percent=100)
        solo.live[0].observe(500, 0.0, None)
        assert solo.live[0].ejected, "100 % allows ejecting all (panic rule then applies)"
        assert not solo.unavailable() and solo.panic
        none, _, _ = setup(n=1, consecutive_5xx=1, max_ejection_percent=50)
        none.live[0].observe(500, 0.0, None)
        assert not none.live[0].ejected

    asyncio.run(main())
    assert "not ejected: 1 of 3 endpoints already ejected (max 50%)" in caplog.text


def test_config_builds_the_policy_and_zero_switches_it_off() -> None:
    off = Config(outlier_consecutive_5xx=0, outlier_consecutive_failures=0)
    assert OutlierDetector.from_config(off, None) is None
    det = OutlierDetector.from_config(Config(outlier_consecutive_5xx=7, outlier_base_ejection=2.5), None)
    assert det is not None and det.policy.consecutive_5xx == 7 and det.policy.base_ejection == 2.5
    assert det.policy.consecutive_failures == Config().outlier_consecutive_failures, "the rest: Config's"


def test_the_failure_vocabulary_decides_which_count_grows() -> None:
    """connect/reset/timeout (no answer) are gateway failures; protocol (a broken answer) is a 5xx."""

    async def main() -> None:
        group, _, _ = setup(n=4, consecutive_5xx=100, consecutive_failures=100)
        for ep, failure in zip(group.live, ("connect", "reset", "timeout", "protocol"), strict=True):
            ep.observe(0, 0.01, failure)  # type: ignore[arg-type]
        counts = [(ep.outlier.consecutive_failures, ep.outlier.consecutive_5xx) for ep in group.live]
        assert counts == [(1, 0), (1, 0), (1, 0), (0, 1)]

    asyncio.run(main())


def test_an_endpoint_that_left_discovery_is_never_ejected() -> None:
    async def main() -> None:
        group, _, counters = setup(n=2, consecutive_5xx=1, max_ejection_percent=50)
        a, b = group.live
        a.in_flight = 1
        group.update([b.address])  # a leaves discovery while a request runs: draining, not live
        a.observe(500, 0.0, None)
        assert not a.ejected and counters.count("ejections") == 0, "nothing to eject: it gets no picks"
        a.release()

    asyncio.run(main())


async def _get(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1])


def test_failing_replica_stops_getting_requests_after_ejection(caplog: pytest.LogCaptureFixture) -> None:
    """Through a real proxy: the replica answering 500 gets exactly `consecutive_5xx` requests."""
    # On the module's own logger: another test may have left the "proxy" logger at WARNING.
    caplog.set_level(logging.INFO, logger="proxy.outlier")

    async def main() -> None:
        async with StatusServer() as good, StatusServer(lambda p: 500) as bad:
            cfg = Config(
                upstream_host="127.0.0.1",
                upstream_port=0,
                listen_host="127.0.0.1",
                listen_port=0,
                admin_host=None,
                health_interval=0,
                outlier_consecutive_5xx=3,
                # Long enough that the 20 requests below end inside it on a loaded machine too.
                outlier_base_ejection=1.5,
            )
            srv = ProxyServer(cfg, access_log_stream=io.StringIO(), endpoints=[good.address, bad.address])
            await srv.start()
            try:
                statuses = [await _get(srv.port) for _ in range(20)]
                assert bad.paths["/"] == 3, "ejected after its third 500 in a row"
                assert statuses.count(500) == 3 and statuses.count(200) == 17
                assert srv.state is not None and srv.state.counters.count("ejections", "5xx") == 1
                (ejected,) = [ep for ep in srv.state.group.live if ep.outlier.ejected]
                deadline = asyncio.get_running_loop().time() + 10
                while ejected.outlier.ejected:  # the ejection's end, not a guessed sleep
                    assert asyncio.get_running_loop().time() < deadline, "never back in rotation"
                    await asyncio.sleep(0.05)
                await asyncio.gather(*(_get(srv.port) for _ in range(4)))
                assert bad.paths["/"] > 3, "after the ejection time it gets traffic again"
            finally:
                await srv.close()

    asyncio.run(main())
    assert "back in rotation" in caplog.text


def test_eject_again_restarts_the_time_and_uneject_ends_it_at_once() -> None:
    async def main() -> None:
        group, _, _ = setup(n=2)
        ep = group.live[0]
        loop = asyncio.get_running_loop()
        eject(ep, 0.05)
        first = ep.outlier.timer
        eject(ep, 30)  # a second ejection replaces the first one's end
        assert first is not None and first.cancelled()
        assert ep.outlier.ejected_until - loop.time() > 29
        await asyncio.sleep(0.08)
        assert ep.ejected, "the first, shorter time no longer applies"
        woken: list[int] = []
        group.on_capacity = lambda: woken.append(1)
        uneject(ep)
        assert not ep.ejected and ep.outlier.timer is None and woken == [1]
        assert ep not in group.unavailable()

    asyncio.run(main())
