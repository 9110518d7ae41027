"""Scaling the backend service while the lab runs: no restart, no client errors."""

from __future__ import annotations

import time

import httpx

from .conftest import Lab, wait_until
from .traffic import Trickle


def test_scale_out_reaches_new_replicas_within_two_seconds_and_scale_in_loses_no_get(lab3: Lab) -> None:
    lab3.scale(5)
    ready = time.monotonic()
    ids = {c.attrs["Config"]["Hostname"] for c in lab3.containers("backend")}
    assert len(ids) == 5
    seen: set[str] = set()
    with httpx.Client(base_url=lab3.base_url, timeout=10) as client:
        while seen != ids and time.monotonic() - ready < 5:
            r = client.get("/")
            assert r.status_code == 200
            seen.add(r.headers["x-backend-id"])
    took = time.monotonic() - ready
    assert seen == ids, f"after {took:.1f}s traffic reached {sorted(seen)} of {sorted(ids)}"
    assert took <= 2.0, f"new replicas got traffic only after {took:.2f}s"

    with Trickle(f"{lab3.base_url}/") as trickle:
        wait_until(lambda: len(trickle.outcomes) >= 5, 30, "the trickle is flowing")
        lab3.run("up", "-d", "--no-recreate", "--scale", "backend=2", "backend")
        scaled = time.monotonic()
        remaining = {c.attrs["Config"]["Hostname"] for c in lab3.containers("backend")}
        time.sleep(3)
    assert len(remaining) == 2
    assert trickle.failures() == [], f"clients saw errors while scaling in: {trickle.failures()[:5]}"
    assert len(trickle.outcomes) > 100
    # Within a couple of DNS re-resolutions the removed replicas get nothing more.
    assert trickle.backends_since(scaled + 1.5) == remaining
