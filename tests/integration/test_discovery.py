"""Discovery against real containers: Docker discovery follows scale and stop; removed replicas drain.

The Docker-discovery stack is its own Compose project (compose/docker-discovery.yml: the proxy
reads the engine's API through the docker-reads socket filter); the DNS case uses the session ``lab``.
In both, a replica stopped with ``docker stop`` while it serves a slow request finishes that
request (Uvicorn's graceful shutdown, the proxy's drain) and clients see no error, while new
requests go to the other replicas. Figures are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from .conftest import Lab, own_lab, wait_until
from .traffic import BackgroundGet, Trickle

SLOW_MS = 3000
# Uvicorn notices SIGTERM on its next 0.1 s tick and may answer requests already on its
# connections until then; later than this, the stopped replica must not answer new requests.
GRACE = 0.5
# Docker discovery should follow a change well within DNS's resolve interval; slack for a busy host.
FOLLOW_S = 1.5


@pytest.fixture(scope="module")
def docker_lab(docker_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    env = {"PROXY_ACCESS_LOG": "false"}
    with own_lab(
        tmp_path_factory,
        "dockerdisc",
        env=env,
        compose_files=["compose/docker-discovery.yml"],
        build=("backend", "proxy", "docker-reads"),
    ) as lab:
        yield lab


def addresses(lab: Lab, service: str = "backend") -> set[str]:
    return {lab.address(c) for c in lab.containers(service)}


def live(lab: Lab) -> set[str]:
    return {e["address"] for e in lab.endpoints() if not e["draining"]}


def wait_live(lab: Lab, wanted: set[str], timeout: float = 10) -> float:
    """Seconds until the proxy's live set is `wanted` (polled every 20 ms)."""
    start = time.monotonic()
    while live(lab) != wanted:
        assert time.monotonic() - start < timeout, f"proxy has {live(lab)}, expected {wanted}"
        time.sleep(0.02)
    return time.monotonic() - start


def slow_request_then_stop(lab: Lab) -> dict:
    """Stop the replica serving a slow request, under a trickle of GETs; what everyone saw."""
    client = BackgroundGet(f"{lab.base_url}/delay/{SLOW_MS}", timeout=15)
    deadline = time.monotonic() + 5
    serving = None
    # The proxy's own view is exact: the one endpoint with a request in flight serves the slow one
    # (a backend's /stats counts a request only once its response starts, 3 s too late here).
    by_address = {lab.address(c): c for c in lab.containers("backend")}
    while serving is None and time.monotonic() < deadline:
        time.sleep(0.05)
        busy = [e["address"] for e in lab.endpoints() if e["in_flight"] > 0]
        if len(busy) == 1 and busy[0] in by_address:
            serving = by_address[busy[0]]
    assert serving is not None, "no replica is serving the slow request"
    address = lab.address(serving)
    serving_id = serving.attrs["Config"]["Hostname"]
    with Trickle(f"{lab.base_url}/") as trickle:
        wait_until(lambda: len(trickle.outcomes) >= 5, 30, "the trickle is flowing")
        stopping = threading.Thread(target=serving.stop, kwargs={"timeout": 15})  # SIGTERM
        stopped_at = time.monotonic()
        stopping.start()
        removed_after = None
        draining_seen = None
        while removed_after is None and time.monotonic() - stopped_at < 10:
            views = {e["address"]: e for e in lab.endpoints()}
            view = views.get(address)
            if view is None or view["draining"]:
                removed_after = time.monotonic() - stopped_at
                draining_seen = view
            else:
                time.sleep(0.02)
        reply = client.result(timeout=15)
        stopping.join(timeout=20)
        time.sleep(0.5)
    return {
        "reply": reply,
        "serving_id": serving_id,
        "removed_after": removed_after,
        "draining_view": draining_seen,
        "trickle": trickle,
        "stopped_at": stopped_at,
    }


def test_docker_discovery_follows_scale_up_and_down(docker_lab: Lab) -> None:
    lab = docker_lab
    assert live(lab) == addresses(lab)
    lab.scale(5)
    took_up = wait_live(lab, addresses(lab))
    print(f"\nscale 3->5: proxy had the new replicas {took_up:.2f}s after `up --wait` returned")
    assert took_up < FOLLOW_S
    with Trickle(f"{lab.base_url}/") as trickle:
        wait_until(lambda: len(trickle.outcomes) >= 5, 30, "the trickle is flowing")
        started = time.monotonic()
        lab.run("up", "-d", "--no-recreate", "--scale", "backend=2", "backend")
        returned = time.monotonic() - started
        took_down = wait_live(lab, addresses(lab))
        time.sleep(0.5)
    print(f"scale 5->2: `up` took {returned:.2f}s; proxy had the 2 replicas {took_down:.2f}s after")
    assert len(live(lab)) == 2
    assert trickle.failures() == [], trickle.failures()[:5]
    assert took_down < FOLLOW_S


def test_docker_discovery_drops_a_stopping_replica_at_sigterm_and_it_drains(docker_lab: Lab) -> None:
    lab = docker_lab
    lab.scale(3)
    wait_live(lab, addresses(lab))
    seen = slow_request_then_stop(lab)
    reply = seen["reply"]
    print(f"\ndocker discovery: stopped replica left the live set {seen['removed_after']:.2f}s after SIGTERM")
    assert isinstance(reply, httpx.Response) and reply.status_code == 200, reply
    assert reply.headers["x-backend-id"] == seen["serving_id"], "the slow request finished where it started"
    assert seen["removed_after"] is not None and seen["removed_after"] < FOLLOW_S
    view = seen["draining_view"]
    assert view is not None and view["in_flight"] >= 1, f"listed as draining with its request: {view}"
    trickle = seen["trickle"]
    assert trickle.failures() == [], trickle.failures()[:5]
    assert seen["serving_id"] not in trickle.backends_since(seen["stopped_at"] + GRACE)
    lab.scale(3)


def test_dns_discovery_drains_a_stopped_replica_too(lab3: Lab) -> None:
    """The default source: the replica leaves DNS only once it exited; retries bridge the gap."""
    seen = slow_request_then_stop(lab3)
    reply = seen["reply"]
    print(f"\ndns discovery: stopped replica left the live set {seen['removed_after']:.2f}s after SIGTERM")
    assert isinstance(reply, httpx.Response) and reply.status_code == 200, reply
    assert reply.headers["x-backend-id"] == seen["serving_id"]
    trickle = seen["trickle"]
    assert trickle.failures() == [], trickle.failures()[:5]
    assert seen["serving_id"] not in trickle.backends_since(seen["stopped_at"] + GRACE)
    assert seen["removed_after"] is not None, "DNS dropped it once the container exited"
