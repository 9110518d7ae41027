"""The proxy's /dashboard in a real Chromium, against an in-process proxy with two local upstreams.

The proxy, its upstreams and a steady trickle of requests run on an event loop in a thread of
this process, so these tests need no Docker; the Compose lab version (a replica killed for real)
is tests/browser/test_proxy_dashboard_lab.py.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from proxy.config import Config
from proxy.server import ProxyServer
from tests.browser.pagecheck import canvas_colours
from tests.unit.upstreams import StatusServer

TOKEN = "page-token-123"


@dataclass
class LiveProxy:
    """A proxy over two upstreams on a background loop; ``traffic`` paces a request every 10 ms."""

    token: str = ""
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    upstreams: list[StatusServer] = field(default_factory=list)
    server: ProxyServer | None = None
    traffic: bool = True
    sent: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)  # strong references: tasks are weak

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.admin_port}"

    def label(self, i: int) -> str:
        host, port = self.upstreams[i].address
        return f"{host}:{port}"

    async def _start(self) -> None:
        for i in range(2):
            up = StatusServer(body=b"replica-%d" % i)
            await up.__aenter__()
            self.upstreams.append(up)
        cfg = Config(
            upstream_host="127.0.0.1",
            upstream_port=1,
            listen_host="127.0.0.1",
            listen_port=0,
            admin_host="127.0.0.1",
            admin_port=0,
            access_log=False,
            health_interval=0,
            admin_token=self.token,
        )
        self.server = ProxyServer(
            cfg, access_log_stream=io.StringIO(), endpoints=[u.address for u in self.upstreams]
        )
        await self.server.start()
        self.tasks.append(self.loop.create_task(self._traffic()))

    async def _traffic(self) -> None:
        assert self.server is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        while True:
            if not self.traffic:
                await asyncio.sleep(0.05)
                continue
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(len(b"replica-0"))
            self.sent += 1
            await asyncio.sleep(0.01)

    def served(self, i: int) -> int:
        return self.upstreams[i].paths["/"]


def _run_proxy(token: str) -> Iterator[LiveProxy]:
    live = LiveProxy(token=token)
    started = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(live.loop)
        live.loop.run_until_complete(live._start())
        started.set()
        live.loop.run_forever()

    thread = threading.Thread(target=main, name="live-proxy", daemon=True)
    thread.start()
    assert started.wait(10), "the in-process proxy did not start"
    try:
        yield live
    finally:

        async def stop() -> None:
            if live.server is not None:
                await live.server.close()
            for up in live.upstreams:
                await up.__aexit__(None, None, None)
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), live.loop).result(10)
        live.loop.call_soon_threadsafe(live.loop.stop)
        thread.join(10)


@pytest.fixture
def live_proxy() -> Iterator[LiveProxy]:
    yield from _run_proxy("")


@pytest.fixture
def live_proxy_token() -> Iterator[LiveProxy]:
    yield from _run_proxy(TOKEN)


def rows(page: Any) -> dict[str, dict[str, str]]:
    """The replica table as {address: {column: text}} for the columns the tests read."""
    out = {}
    for tr in page.query_selector_all("#replicas tbody tr"):
        cells = [td.inner_text() for td in tr.query_selector_all("td")]
        out[tr.get_attribute("data-addr")] = {
            "state": tr.get_attribute("data-state"),
            "rps": cells[3],
            "2xx": cells[5],
        }
    return out


def wait_until(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return value


def test_dashboard_shows_a_row_per_replica_with_moving_numbers_and_drawn_charts(
    browser_page: Any, live_proxy: LiveProxy
) -> None:
    page = browser_page.page
    page.goto(live_proxy.url + "/dashboard")
    page.wait_for_selector("#replicas tbody tr")
    assert page.inner_text("#conn") == "live"
    labels = {live_proxy.label(0), live_proxy.label(1)}
    assert wait_until(lambda: set(rows(page)) == labels), rows(page)
    first = {addr: int(r["2xx"]) for addr, r in rows(page).items()}
    time.sleep(2.5)
    later = rows(page)
    for addr in labels:
        assert int(later[addr]["2xx"]) > first[addr], "the 2xx count moves under load"
        assert later[addr]["state"] == "healthy"
    assert wait_until(lambda: all(float(r["rps"]) > 0 for r in rows(page).values())), rows(page)
    # Four charts, each drew more than its background and axes (series lines in their colours).
    colours = canvas_colours(page, ".chart")
    assert len(colours) == 4 and all(n > 3 for n in colours), colours
    browser_page.assert_no_console_errors()


def test_a_drain_from_the_page_stops_new_requests_to_that_replica(
    browser_page: Any, live_proxy: LiveProxy
) -> None:
    page = browser_page.page
    page.goto(live_proxy.url + "/dashboard")
    victim = live_proxy.label(0)
    page.wait_for_selector(f'button[data-action="drain"][data-addr="{victim}"]')
    page.click(f'button[data-action="drain"][data-addr="{victim}"]')
    assert wait_until(lambda: rows(page).get(victim, {}).get("state") == "draining"), rows(page)
    page.wait_for_selector(f'button[data-action="undrain"][data-addr="{victim}"]')
    served = live_proxy.served(0)
    other = live_proxy.served(1)
    time.sleep(1.5)
    assert live_proxy.served(0) == served, "a drained replica got new requests"
    assert live_proxy.served(1) > other, "the other replica took the traffic"
    assert page.inner_text("#notice") == ""
    page.wait_for_function("document.querySelector('#events').innerText.includes('drained')")
    page.click(f'button[data-action="undrain"][data-addr="{victim}"]')
    assert wait_until(lambda: live_proxy.served(0) > served), "undrained: traffic comes back"
    browser_page.assert_no_console_errors()


def test_the_page_asks_for_the_token_once_and_sends_it(
    browser_page: Any, live_proxy_token: LiveProxy
) -> None:
    page = browser_page.page
    prompts: list[str] = []

    def on_dialog(dialog: Any) -> None:
        prompts.append(dialog.message)
        dialog.accept(TOKEN)

    page.on("dialog", on_dialog)
    page.goto(live_proxy_token.url + "/dashboard")
    victim = live_proxy_token.label(1)
    page.wait_for_selector(f'button[data-action="drain"][data-addr="{victim}"]')
    page.click(f'button[data-action="drain"][data-addr="{victim}"]')
    assert wait_until(lambda: rows(page).get(victim, {}).get("state") == "draining"), rows(page)
    page.click(f'button[data-action="undrain"][data-addr="{victim}"]')
    assert wait_until(lambda: rows(page).get(victim, {}).get("state") == "healthy"), rows(page)
    assert len(prompts) == 1 and "token" in prompts[0].lower(), prompts
    assert page.evaluate("sessionStorage.getItem('asgilab-proxy-admin-token')") == TOKEN
    # The policy control reaches the proxy too.
    page.select_option("#policy", "least_request")
    assert wait_until(
        lambda: page.input_value("#policy") == "least_request" and "policy" in page.inner_text("#events")
    )
    assert live_proxy_token.server is not None and live_proxy_token.server.state is not None
    assert live_proxy_token.server.state.balancer.name == "least_request"
    # The page's switch needed that token: the same write without it is refused (docs/security.md).
    refused = httpx.put(live_proxy_token.url + "/policy", content="p2c", timeout=5)
    assert refused.status_code == 401 and live_proxy_token.server.state.balancer.name == "least_request"
    browser_page.assert_no_console_errors()


def test_a_late_viewer_gets_the_history(browser_page: Any, live_proxy: LiveProxy) -> None:
    time.sleep(3.5)  # three ticks before the page opens
    page = browser_page.page
    page.goto(live_proxy.url + "/dashboard")
    page.wait_for_selector("#replicas tbody tr")
    points = page.evaluate("data.t.length")
    assert points >= 3, f"the page started with {points} points: history was not replayed"
    browser_page.assert_no_console_errors()
