"""Soak: a long run at half capacity through the proxy to 3 replicas, watching for slow leaks.

Opt-in (30 minutes by default): ``LAB_SOAK=1 ./lab test tests/integration/test_soak.py -s``;
``LAB_SOAK_DURATION=600`` shortens it (seconds). Figures of a full run: docs/resilience.md.

What it does, in one lab of its own (access log off: at thousands of lines a second for half an
hour the engine's log files, not the proxy, would be what is measured; the dashboard's replay
ring, ``--events-history``, cut to 60 s: at its default of 15 minutes it fills during the soak
itself, and the first full run here counted its ~4 MB as growth, docs/resilience.md):

1. Capacity: a closed-loop run (``CAPACITY_CONNECTIONS`` connections, ``CAPACITY_SECONDS``) through
   the proxy; its req/s is the capacity of this machine at this moment.
2. Soak: an open-loop run at half that rate, over as many connections, for the whole duration
   (the open loop's default of rate/10 connections would cost the 2 cores more than the proxy
   does and measure the generator), as three back-to-back loadgen
   runs in one container (first window, the middle, last window: each its own exact HDR p99; the
   gaps are the ~0.3 s a Python process takes to start). The window is 5 minutes, or a third of
   the duration when that is shorter.
3. Meanwhile the proxy's RSS and open descriptors are read from the host's /proc every
   ``SAMPLE_EVERY`` seconds (the backends' too, reported but not judged: they are the fixture).

Pass: no failed request; the proxy's RSS in the last window at most 5 % above the first window
(medians of the samples); its open descriptors flat: once the load stops and its pooled
connections idle out, back to the count at rest before the soak (+2); under load they follow
latency and are reported, first and last window; the last window's p99 within 20 % of the
first's. The machine's other work shows in the figures: the test prints them all before judging.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from .conftest import Lab, own_lab

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get("LAB_SOAK", "").lower() not in ("1", "true", "yes"),
        reason="opt-in: LAB_SOAK=1 ./lab test tests/integration/test_soak.py -s",
    ),
]

CAPACITY_CONNECTIONS = 64
CAPACITY_SECONDS = 20
SAMPLE_EVERY = 10.0
STARTUP_S = 5.0  # the loadgen container's start: samples before it are of an idle proxy
RSS_GROWTH_MAX = 0.05
FDS_AT_REST_SLACK = 2  # e.g. a health check's connection open at the moment of the count
REST_STABLE_S = 6.0  # the pool's idle timeout (4 s in Compose) and a margin
P99_DRIFT_MAX = 0.20


def _duration() -> float:
    raw = os.environ.get("LAB_SOAK_DURATION", "1800")
    try:
        value = float(raw)
    except ValueError:
        raise pytest.UsageError(f"LAB_SOAK_DURATION must be seconds, got {raw!r}") from None
    if value < 30:
        raise pytest.UsageError(f"LAB_SOAK_DURATION must be at least 30 seconds, got {raw!r}")
    return value


@pytest.fixture(scope="module")
def soak_lab(docker_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    results = tmp_path_factory.mktemp("soak-results")
    env = {"PROXY_ACCESS_LOG": "false", "LOADGEN_RESULTS": str(results)}
    override = results.parent / "soak-override.yml"  # Compose does not pass this one by itself
    override.write_text("services:\n  proxy:\n    environment:\n      PROXY_EVENTS_HISTORY: '60'\n")
    build = ("backend", "proxy", "loadgen")
    files = (str(override),)
    with own_lab(tmp_path_factory, "soak", env=env, compose_files=files, build=build, own_images=True) as lab:
        yield lab


def _loadgen(lab: Lab, out: Path, *args: str, timeout: float) -> None:
    lab.loadgen(out, *args).wait(timeout)


def _fds_at_rest(container: docker.models.containers.Container) -> int:
    """The proxy's open descriptors once idle: unchanged for REST_STABLE_S (pooled connections closed)."""
    seen: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen.append(Lab.usage(container)[1])
        if len(seen) > REST_STABLE_S and len(set(seen[-int(REST_STABLE_S) - 1 :])) == 1:
            return seen[-1]
        time.sleep(1.0)  # a sampling period: the value itself is what is awaited
    raise AssertionError(f"the proxy's descriptors never settled after the load: {seen}")


def _median(samples: list[tuple[float, int, int]], since: float, until: float, column: int) -> float:
    values = [s[column] for s in samples if since <= s[0] < until]
    assert values, f"no sample between {since:.0f} s and {until:.0f} s"
    return statistics.median(values)


def test_half_capacity_for_the_duration_leaks_nothing(soak_lab: Lab, tmp_path: Path) -> None:
    lab, duration = soak_lab, _duration()
    window = min(300.0, duration / 3)
    out = tmp_path
    out.chmod(0o777)  # the loadgen container may run as a non-root user

    _loadgen(
        lab, out, "http://proxy:8000/", "--concurrency", str(CAPACITY_CONNECTIONS),
        "--duration", str(CAPACITY_SECONDS), "--json", "/out/capacity.json", "--quiet",
        timeout=CAPACITY_SECONDS + 120,
    )  # fmt: skip
    capacity = json.loads((out / "capacity.json").read_text())
    assert capacity["failed"] == 0, capacity["errors"]
    rate = max(1, round(capacity["rps"] / 2))

    (proxy,) = lab.containers("proxy")
    backends = lab.containers("backend")
    fds_rest_before = _fds_at_rest(proxy)
    segments = [("first", window), ("middle", duration - 2 * window), ("last", window)]
    segments = [(name, seconds) for name, seconds in segments if seconds > 0]
    script = " && ".join(
        f"python -m loadgen http://proxy:8000/ --rate {rate} --connections {CAPACITY_CONNECTIONS} "
        f"--duration {seconds:g} --json /out/{name}.json --quiet"
        for name, seconds in segments
    )
    started = time.monotonic()
    run = lab.loadgen(out, "-c", script, entrypoint="sh")
    samples: list[tuple[float, int, int]] = []  # (seconds since start, proxy RSS bytes, proxy fds)
    backend_samples: list[tuple[float, int, int]] = []  # the same, summed over the backends
    try:
        while run.running():
            at = time.monotonic() - started
            rss, fds = Lab.usage(proxy)
            samples.append((at, rss, fds))
            usages = [Lab.usage(b) for b in backends]
            backend_samples.append((at, sum(u[0] for u in usages), sum(u[1] for u in usages)))
            assert at < duration + 300, "the soak's loadgen runs did not end"
            time.sleep(SAMPLE_EVERY)  # a sampling period, not an ordering of events
    except BaseException:
        run.stop()
        raise
    run.wait(timeout=60)
    elapsed = time.monotonic() - started
    fds_rest_after = _fds_at_rest(proxy)
    reports = {name: json.loads((out / f"{name}.json").read_text()) for name, _ in segments}

    # The windows in sampler time: the first starts a few seconds in (the container starts).
    first_from, first_to = STARTUP_S, window + STARTUP_S
    last_from, last_to = elapsed - window, elapsed + 1
    windows = ((first_from, first_to), (last_from, last_to))
    rss_first, rss_last = (_median(samples, a, b, 1) for a, b in windows)
    fds_first, fds_last = (_median(samples, a, b, 2) for a, b in windows)
    p99_first = reports["first"]["latency_ms"]["p99"]
    p99_last = reports["last"]["latency_ms"]["p99"]
    requests = sum(r["requests"] for r in reports.values())
    failed = sum(r["failed"] for r in reports.values())
    figures = {
        "duration_s": round(elapsed, 1),
        "window_s": window,
        "capacity_rps": capacity["rps"],
        "capacity_p99_ms": capacity["latency_ms"]["p99"],
        "rate_rps": rate,
        "requests": requests,
        "failed": failed,
        "kept_up": {name: r["rate_check"]["kept_up"] for name, r in reports.items()},
        "achieved_rps": {name: r["rate_check"]["achieved_rps"] for name, r in reports.items()},
        "p50_ms": {name: r["latency_ms"]["p50"] for name, r in reports.items()},
        "p99_ms": {name: r["latency_ms"]["p99"] for name, r in reports.items()},
        "p99_drift": round(p99_last / p99_first - 1, 4),
        "uncorrected_p99_ms": {name: r["latency_uncorrected_ms"]["p99"] for name, r in reports.items()},
        "proxy_rss_mb": {
            "first_window_median": round(rss_first / 2**20, 2),
            "last_window_median": round(rss_last / 2**20, 2),
            "min": round(min(s[1] for s in samples) / 2**20, 2),
            "max": round(max(s[1] for s in samples) / 2**20, 2),
        },
        "proxy_rss_growth": round(rss_last / rss_first - 1, 4),
        "proxy_fds": {
            "at_rest_before": fds_rest_before,
            "at_rest_after": fds_rest_after,
            "first_window_median": fds_first,
            "last_window_median": fds_last,
            "min": min(s[2] for s in samples),
            "max": max(s[2] for s in samples),
        },
        "backends_rss_mb_first_last": [
            round(_median(backend_samples, first_from, first_to, 1) / 2**20, 2),
            round(_median(backend_samples, last_from, last_to, 1) / 2**20, 2),
        ],
        "backends_fds_first_last": [
            _median(backend_samples, first_from, first_to, 2),
            _median(backend_samples, last_from, last_to, 2),
        ],
        "samples": len(samples),
    }
    print("\nsoak figures: " + json.dumps(figures, indent=1))
    report_to = os.environ.get("LAB_SOAK_REPORT")
    if report_to:
        Path(report_to).write_text(json.dumps({**figures, "proxy_samples": samples}, indent=1))

    assert failed == 0, {name: r["errors"] for name, r in reports.items()}
    assert rss_last <= rss_first * (1 + RSS_GROWTH_MAX), f"proxy RSS grew: {figures['proxy_rss_mb']}"
    # Descriptors in use under load follow latency (a slower second keeps more requests, so more
    # upstream connections, open); at rest they must come back to where they were.
    assert fds_rest_after <= fds_rest_before + FDS_AT_REST_SLACK, (
        f"proxy descriptors leaked: {figures['proxy_fds']}"
    )
    # A generator that fell behind its rate measured the machine, not the proxy: say so, not "p99".
    behind = {
        name: r["rate_check"]["reason"] for name, r in reports.items() if not r["rate_check"]["kept_up"]
    }
    assert behind == {}, f"the machine could not keep the rate (other work on it?): {behind}"
    assert abs(p99_last - p99_first) <= P99_DRIFT_MAX * p99_first, f"p99 drifted: {figures['p99_ms']}"
