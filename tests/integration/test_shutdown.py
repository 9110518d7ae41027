"""Stopping the proxy container: in-flight requests finish, the process exits 0.

Runs last (conftest.LAST_FILES): it stops the proxy and starts it again, which gives it a new host port.
"""

from __future__ import annotations

import time

import httpx

from .conftest import Lab
from .traffic import BackgroundGet


def test_sigterm_lets_in_flight_requests_finish_and_exits_zero(lab3: Lab) -> None:
    (proxy,) = lab3.containers("proxy")
    client = BackgroundGet(f"{lab3.base_url}/delay/1500", timeout=10)
    try:
        # SIGTERM only once the request is waiting on a backend (a busy host can take a while).
        deadline = time.monotonic() + 5
        while sum(e["in_flight"] for e in lab3.endpoints()) < 1:
            assert time.monotonic() < deadline, "the slow request never reached a backend"
            time.sleep(0.05)
        started = time.monotonic()
        proxy.stop(timeout=10)  # SIGTERM, SIGKILL after 10 s
        stopped_after = time.monotonic() - started
        reply = client.result(timeout=10)
        proxy.reload()
        assert isinstance(reply, httpx.Response), reply
        assert reply.status_code == 200
        assert reply.headers.get("connection") == "close", "a draining proxy closes the connection"
        assert proxy.attrs["State"]["ExitCode"] == 0, proxy.logs()[-2000:]
        assert stopped_after < 5, f"the proxy took {stopped_after:.1f}s to stop: drain did not end"
    finally:
        lab3.run("up", "-d", "--wait", "--no-deps", "proxy")
        lab3.publish()
    assert httpx.get(f"{lab3.base_url}/", timeout=10).status_code == 200
