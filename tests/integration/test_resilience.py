"""A replica killed with SIGKILL under load costs clients nothing; WebSockets pass through the lab."""

from __future__ import annotations

import re
import time

import httpx
from websockets.sync.client import connect as ws_connect

from .conftest import Lab, wait_until
from .traffic import Trickle


def _metric(lab: Lab, name: str, labels: str = "") -> float:
    """One sample of the proxy's /metrics (0 when absent), e.g. _metric(lab, "retries_total")."""
    text = httpx.get(f"{lab.admin_url}/metrics", timeout=5).text
    pattern = rf"^asgilab_proxy_{re.escape(name)}{re.escape(labels)}\s+([0-9.e+]+)$"
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.MULTILINE))


def _retries(lab: Lab) -> dict[str, float]:
    text = httpx.get(f"{lab.admin_url}/metrics", timeout=5).text
    found = re.findall(r'^asgilab_proxy_retries_total\{reason="([^"]*)"\}\s+([0-9.e+]+)$', text, re.MULTILINE)
    return {reason: float(value) for reason, value in found}


def test_kill_9_one_of_three_backends_under_steady_get_load_fails_no_request(lab3: Lab) -> None:
    victim = lab3.containers("backend")[0]
    victim_id = victim.attrs["Config"]["Hostname"]
    before = _retries(lab3)
    # Steady concurrent GETs: quick ones, and slower ones so that requests are in flight on the
    # victim at the moment it dies (those are reset before any response byte, and retried).
    clients = [Trickle(f"{lab3.base_url}/", pause=0.005) for _ in range(4)]
    clients += [Trickle(f"{lab3.base_url}/delay/40", pause=0.0) for _ in range(4)]
    try:
        for client in clients:
            client.__enter__()
        wait_until(lambda: all(len(c.outcomes) >= 3 for c in clients), 30, "every client has had answers")
        served_before = {o.backend for c in clients for o in c.outcomes}
        victim.kill(signal="SIGKILL")
        killed_at = time.monotonic()
        time.sleep(5)
    finally:
        for client in clients:
            client.__exit__(None, None, None)
    try:
        outcomes = [o for c in clients for o in c.outcomes]
        failures = [o for c in clients for o in c.failures()]
        after_kill = [o for o in outcomes if o.at > killed_at]
        assert victim_id in served_before, "the victim was serving before it was killed"
        assert failures == [], f"{len(failures)} of {len(outcomes)} requests failed: {failures[:5]}"
        assert len(after_kill) > 100, (
            f"only {len(after_kill)} requests after the kill: the load was not steady"
        )
        # The dead replica leaves the proxy's endpoints (DNS no longer lists it)...
        lab3.wait_for_endpoints(2, timeout=10)
        # ...and the requests it took down with it were sent again elsewhere.
        after = _retries(lab3)
        retried = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        # A client's longest wait between two answers bounds the slowest request it saw.
        stall = max(
            (b.at - a.at for c in clients for a, b in zip(c.outcomes, c.outcomes[1:], strict=False)),
            default=0.0,
        )
        print(
            f"\n{len(outcomes)} requests, {len(after_kill)} after the kill, 0 failed; "
            f"retries during the test by reason: {retried}; longest wait for an answer {stall:.3f}s"
        )
        assert sum(retried.values()) >= 1, f"no retry was counted: {after}"
        assert victim_id not in {o.backend for o in outcomes if o.at > killed_at + 0.5}
    finally:
        lab3.scale(3)  # restarts the killed container; lab3 also re-checks at the next test
        lab3.wait_for_endpoints(3, timeout=20)


def test_websocket_echo_through_the_lab_is_counted(lab3: Lab) -> None:
    opened = _metric(lab3, "websocket_tunnels_total", '{protocol="websocket"}')
    url = lab3.base_url.replace("http://", "ws://") + "/ws"
    with ws_connect(url, open_timeout=10, max_size=None) as ws:
        ws.send("hello through the proxy")
        assert ws.recv(timeout=5) == "hello through the proxy"
        payload = bytes(range(256)) * 4096  # 1 MiB
        ws.send(payload)
        assert ws.recv(timeout=10) == payload
        assert _metric(lab3, "websocket_tunnels_open") == 1
    assert _metric(lab3, "websocket_tunnels_total", '{protocol="websocket"}') == opened + 1
    deadline = time.monotonic() + 5
    while _metric(lab3, "websocket_tunnels_open") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _metric(lab3, "websocket_tunnels_open") == 0
    # Plain HTTP on the same proxy is unaffected.
    assert httpx.get(f"{lab3.base_url}/", timeout=5).status_code == 200
