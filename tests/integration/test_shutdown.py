"""Stopping the proxy container: in-flight requests finish, the process exits 0.

Runs last (file order): it stops the proxy and starts it again, which gives it a new host port.
"""

from __future__ import annotations

import threading
import time

import httpx

from .conftest import Lab


def test_sigterm_lets_in_flight_requests_finish_and_exits_zero(lab3: Lab) -> None:
    (proxy,) = lab3.containers("proxy")
    replies: list[httpx.Response | Exception] = []

    def slow_request() -> None:
        try:
            replies.append(httpx.get(f"{lab3.base_url}/delay/1500", timeout=10))
        except httpx.HTTPError as exc:
            replies.append(exc)

    client = threading.Thread(target=slow_request)
    client.start()
    try:
        time.sleep(0.5)  # the request is now waiting on a backend
        started = time.monotonic()
        proxy.stop(timeout=10)  # SIGTERM, SIGKILL after 10 s
        stopped_after = time.monotonic() - started
        client.join(timeout=10)
        proxy.reload()
        assert len(replies) == 1 and isinstance(replies[0], httpx.Response), replies
        assert replies[0].status_code == 200
        assert replies[0].headers.get("connection") == "close", "a draining proxy closes the connection"
        assert proxy.attrs["State"]["ExitCode"] == 0, proxy.logs()[-2000:]
        assert stopped_after < 5, f"the proxy took {stopped_after:.1f}s to stop: drain did not end"
    finally:
        lab3.run("up", "-d", "--wait", "--no-deps", "proxy")
        lab3.publish()
    assert httpx.get(f"{lab3.base_url}/", timeout=10).status_code == 200
