"""Injected faults (EXTRA_DELAY_MS, FAIL_RATE, FAIL_STATUS) make a replica slow or flaky on purpose."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest

from backend.__main__ import parse_args
from backend.app import api
from backend.faults import FaultConfig, Faults, fault_config_from_env


def calls(faults: Faults, paths: list[str]) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=faults)
        async with httpx.AsyncClient(transport=transport, base_url="http://backend") as client:
            return [await client.get(p) for p in paths]

    return asyncio.run(go())


def test_fail_rate_fails_about_that_share_and_spares_health() -> None:
    faults = Faults(api, FaultConfig(fail_rate=0.3, fail_status=503), rng=random.Random(7))
    answers = calls(faults, ["/"] * 400)
    failed = [r for r in answers if r.status_code == 503]
    assert 80 <= len(failed) <= 160
    assert all(r.headers["x-injected-fault"] == "1" for r in failed)
    assert all(r.status_code == 200 for r in calls(faults, ["/health"] * 50))


def test_extra_delay_slows_routes_but_not_health() -> None:
    faults = Faults(api, FaultConfig(extra_delay_ms=150))
    t0 = time.perf_counter()
    calls(faults, ["/health"])
    health_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert calls(faults, ["/"])[0].status_code == 200
    assert time.perf_counter() - t0 >= 0.15
    assert health_s < 0.15


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FAIL_RATE": "1.5"}, "FAIL_RATE='1.5' must be between 0 and 1"),
        ({"EXTRA_DELAY_MS": "slow"}, "EXTRA_DELAY_MS='slow' is not a number"),
        ({"FAIL_STATUS": "404"}, "FAIL_STATUS='404' must be between 500 and 599"),
    ],
)
def test_bad_fault_values_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fault_config_from_env(env)


def test_bad_fault_env_stops_the_backend_with_a_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAIL_RATE", "lots")
    with pytest.raises(SystemExit) as info:
        parse_args([])
    assert info.value.code == 2
    assert "FAIL_RATE='lots' is not a number" in capsys.readouterr().err
