"""Active health checks against real local sockets: thresholds, timeouts, and picks skipping the unhealthy."""

from __future__ import annotations

import asyncio
import logging

import pytest

from proxy.balancer import RoundRobin
from proxy.config import Config, load_config
from proxy.counters import Counters
from proxy.health import HEALTHY, MAX_STATUS_LINE, UNHEALTHY, UNKNOWN, HealthChecker, HealthPolicy
from proxy.pool import Endpoint, UpstreamGroup
from tests.unit.upstreams import LocalServer, StatusServer


def group_of(*addresses: tuple[str, int]) -> UpstreamGroup:
    group = UpstreamGroup.from_config(Config(), asyncio.get_running_loop())
    group.update(addresses)
    return group


def policy(**knobs: float | str) -> HealthPolicy:
    """Config's health knobs but for ``knobs`` (HealthPolicy's field names)."""
    names = {"path": "health_path", "interval": "health_interval", "timeout": "health_timeout"}
    return HealthPolicy.from_config(Config(**{names.get(k, k): v for k, v in knobs.items()}))  # type: ignore[arg-type]


def test_probe_passes_on_2xx_and_names_every_kind_of_failure() -> None:
    async def main() -> None:
        async with (
            StatusServer() as ok,
            StatusServer(lambda p: 503) as sick,
            StatusServer() as stuck,
        ):
            stuck.hang = True
            closed = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
            refused_port = closed.sockets[0].getsockname()[1]
            closed.close()
            await closed.wait_closed()
            group = group_of(ok.address, sick.address, stuck.address, ("127.0.0.1", refused_port))
            checker = HealthChecker(group, policy(path="/health", timeout=0.2), "backend:8001", None)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            results = await asyncio.gather(*(checker.probe(ep) for ep in group.live))
            took = loop.time() - t0
        assert results[0] is None
        assert results[1] == "status 503"
        assert results[2] == "no answer within 0.2s"
        assert results[3] and "refused" in results[3].lower()
        assert took < 1.0, "probes run concurrently and the timeout bounds them"
        assert ok.paths == {"/health": 1}, "the check uses the configured path, nothing else"

    asyncio.run(main())


def test_thresholds_move_endpoint_between_states_and_picks_follow() -> None:
    async def main() -> None:
        group = group_of(("10.0.0.1", 1), ("10.0.0.2", 1))
        a, b = group.live
        counters = Counters()
        checker = HealthChecker(group, policy(unhealthy_threshold=3, healthy_threshold=2), "x", counters)
        assert a.health.state == UNKNOWN and not group.unavailable(), "unknown endpoints take traffic"
        checker.record(a, None)
        assert a.health.state == HEALTHY, "a new endpoint's first pass is enough"
        checker.record(a, "status 500")
        checker.record(a, "status 500")
        assert a.health.state == HEALTHY and not group.unavailable(), "two failures are under the threshold"
        checker.record(a, "status 500")
        assert a.health.state == UNHEALTHY and group.unavailable() == {a}
        rr = RoundRobin()
        assert {rr.pick(group.live, group.unavailable()) for _ in range(4)} == {b}
        checker.record(a, None)
        assert a.health.state == UNHEALTHY, "one pass does not bring it back"
        checker.record(a, "timeout")
        checker.record(a, None)
        assert a.health.state == UNHEALTHY, "a failure in between restarts the run of passes"
        checker.record(a, None)
        assert a.health.state == HEALTHY and not group.unavailable()
        assert counters.count("health_changes", "unhealthy") == 1
        assert counters.count("health_changes", "healthy") == 1
        assert counters.count("health_checks", "fail") == 4
        assert counters.count("health_checks", "pass") == 4

    asyncio.run(main())


def test_every_endpoint_unhealthy_means_panic_not_refusal() -> None:
    async def main() -> None:
        group = group_of(("10.0.0.1", 1), ("10.0.0.2", 1))
        checker = HealthChecker(group, policy(unhealthy_threshold=1), "x", None)
        for ep in group.live:
            checker.record(ep, "status 500")
        assert all(ep.health.state == UNHEALTHY for ep in group.live)
        assert not group.unavailable() and group.panic, "with nothing healthy, try them all"

    asyncio.run(main())


def test_checker_task_marks_a_hanging_replica_unhealthy_after_threshold_failed_checks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "proxy.health")

    async def main() -> None:
        async with StatusServer() as good, StatusServer() as bad:
            group = group_of(good.address, bad.address)
            knobs = policy(interval=0.05, timeout=0.05, unhealthy_threshold=2, healthy_threshold=2)
            checker = HealthChecker(group, knobs, "x", None)
            checker.start()
            loop = asyncio.get_running_loop()

            async def wait_for(state: object, *, both: bool = False) -> None:
                watched = group.live if both else group.live[1:]
                t0 = loop.time()
                while any(ep.health.state != state for ep in watched) and loop.time() - t0 < 5:
                    await asyncio.sleep(0.01)

            await wait_for(HEALTHY, both=True)
            assert all(ep.health.state == HEALTHY for ep in group.live)
            bad.hang = True
            probes_before = bad.paths["/health"]
            await wait_for(UNHEALTHY)
            assert group.live[1].health.state == UNHEALTHY
            assert group.live[0].health.state == HEALTHY
            # Counted in probes, not seconds (a loaded machine stretches time): the threshold is 2
            # failed checks, and one more may have been in flight when the replica started hanging.
            assert 2 <= bad.paths["/health"] - probes_before <= 3
            bad.hang = False
            await wait_for(HEALTHY)
            assert group.live[1].health.state == HEALTHY
            await checker.stop()
            probes = good.paths["/health"]
            await asyncio.sleep(0.15)
            assert good.paths["/health"] == probes, "stop() ends the probing"

    asyncio.run(main())
    text = caplog.text
    assert "unhealthy after 2 failed checks of /health" in text
    assert "healthy again after 2 passed checks" in text


def test_config_switches_checking_off_with_interval_zero() -> None:
    async def main() -> None:
        group = group_of(("10.0.0.1", 1))
        assert HealthChecker.from_config(Config(health_interval=0), group, None) is None
        checker = HealthChecker.from_config(Config(health_path="/ready", health_interval=3), group, None)
        assert checker is not None and checker.policy.path == "/ready" and checker.policy.interval == 3
        assert checker.policy.timeout == Config().health_timeout, "the knobs not given are Config's"

    asyncio.run(main())


class LongLineServer(LocalServer):
    """Answers every request with ``status`` and a reason phrase of ``size`` bytes, then closes."""

    def __init__(self, status: int, size: int) -> None:
        self.status, self.size = status, size

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\n\r\n" % (self.status, b"x" * self.size))
        await writer.drain()
        writer.close()


def test_a_status_line_over_64_kib_fails_that_endpoint_only_and_the_round_goes_on() -> None:
    """#12: the check used to raise out of the round, so the 503-answering replica stayed healthy."""

    async def main() -> None:
        async with (
            LongLineServer(503, MAX_STATUS_LINE + 1024) as huge,
            StatusServer(lambda p: 503) as sick,
            StatusServer() as ok,
        ):
            group = group_of(huge.address, sick.address, ok.address)
            counters = Counters()
            checker = HealthChecker(group, policy(timeout=2.0, unhealthy_threshold=1), "x", counters)
            assert await checker.probe(group.live[0]) == "status line over 64 KiB"
            await checker.check_all()
            states = [ep.health.state for ep in group.live]
        assert states == [UNHEALTHY, UNHEALTHY, HEALTHY]
        assert counters.count("health_checks", "fail") == 2 and counters.count("health_checks", "pass") == 1

    asyncio.run(main())


def test_a_probe_that_raises_fails_its_endpoint_and_the_others_are_still_recorded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        group = group_of(("10.0.0.1", 1), ("10.0.0.2", 1))
        checker = HealthChecker(group, policy(unhealthy_threshold=1), "x", None)
        broken = group.live[0]

        async def probe(ep: Endpoint) -> str | None:
            if ep is broken:
                raise RuntimeError("a bug in the probe")
            return None

        checker.probe = probe  # type: ignore[method-assign]
        await checker.check_all()
        assert [ep.health.state for ep in group.live] == [UNHEALTHY, HEALTHY]

    asyncio.run(main())
    assert "health probe raised RuntimeError('a bug in the probe')" in caplog.text


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--discovery", "k8s"], {}, "--discovery / PROXY_DISCOVERY: expected dns or docker"),
        (["--health-path", "health"], {}, "--health-path / PROXY_HEALTH_PATH"),
        ([], {"PROXY_HEALTH_PATH": "/a b"}, "--health-path / PROXY_HEALTH_PATH"),
        ([], {"PROXY_HEALTH_INTERVAL": "-1"}, "--health-interval / PROXY_HEALTH_INTERVAL"),
        (["--health-timeout", "0"], {}, "--health-timeout / PROXY_HEALTH_TIMEOUT"),
        (["--unhealthy-threshold", "0"], {}, "--unhealthy-threshold / PROXY_UNHEALTHY_THRESHOLD"),
        (["--healthy-threshold", "two"], {}, "--healthy-threshold / PROXY_HEALTHY_THRESHOLD"),
        (
            ["--outlier-consecutive-5xx", "-1"],
            {},
            "--outlier-consecutive-5xx / PROXY_OUTLIER_CONSECUTIVE_5XX",
        ),
        (["--outlier-base-ejection", "0"], {}, "--outlier-base-ejection / PROXY_OUTLIER_BASE_EJECTION"),
        (
            ["--outlier-max-ejection", "1"],
            {},
            "--outlier-max-ejection / PROXY_OUTLIER_MAX_EJECTION must be >=",
        ),
        (["--outlier-max-ejection-percent", "150"], {}, "PROXY_OUTLIER_MAX_EJECTION_PERCENT: must be <= 100"),
    ],
)
def test_bad_discovery_health_outlier_flags_exit_2_naming_flag_and_env(
    argv: list[str], env: dict[str, str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        load_config(argv, env)
    assert info.value.code == 2
    assert needle in capsys.readouterr().err


def test_discovery_health_outlier_flags_and_env_parse() -> None:
    env = {"PROXY_DISCOVERY": "Docker", "PROXY_DOCKER_PROJECT": "lab", "PROXY_HEALTH_INTERVAL": "0"}
    cfg = load_config(["--docker-service", "api", "--outlier-max-ejection-percent", "100"], env)
    assert (cfg.discovery, cfg.docker_project, cfg.docker_service) == ("docker", "lab", "api")
    assert cfg.health_interval == 0 and cfg.outlier_max_ejection_percent == 100
    assert load_config([], {"PROXY_DOCKER_SERVICE": ""}).docker_service is None, "blank = default"


def test_a_result_for_an_endpoint_that_left_during_its_probe_is_not_recorded() -> None:
    async def main() -> None:
        group = group_of(("10.0.0.1", 1), ("10.0.0.2", 1))
        counters = Counters()
        checker = HealthChecker(group, policy(unhealthy_threshold=1), "x", counters)
        leaving = group.live[0]

        async def probe(ep: Endpoint) -> str | None:
            if ep is leaving:
                group.update([("10.0.0.2", 1)])  # discovery drops it while its check runs
            return "status 503"

        checker.probe = probe  # type: ignore[method-assign]
        await checker.check_all()
        assert leaving.health.state == UNKNOWN and counters.count("health_checks") == 1
        assert group.live[0].health.state == UNHEALTHY

    asyncio.run(main())
