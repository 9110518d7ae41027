"""/metrics after real traffic: an in-process proxy, tiny upstreams, parsed with prometheus_client."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import Config
from proxy.counters import LATENCY_BUCKETS, Counters, Histogram
from proxy.health import UNHEALTHY, set_health
from proxy.outlier import eject, uneject
from proxy.server import ProxyServer
from tests.unit.harness import free_port
from tests.unit.upstreams import StatusServer

P = "asgilab_proxy_"


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    async def guarded() -> None:
        await asyncio.wait_for(coro_fn(), 8)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(guarded())


# -- helpers shared with test_proxy_admin.py ------------------------------------------------------
@contextlib.asynccontextmanager
async def proxy(
    endpoints: Sequence[tuple[str, int]], worker: int = 0, **cfg: object
) -> AsyncIterator[ProxyServer]:
    settings: dict[str, object] = {
        "upstream_host": "127.0.0.1",
        "upstream_port": 1,
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "admin_host": "127.0.0.1",
        "admin_port": 0,
        "access_log": False,
    }
    settings.update(cfg)
    srv = ProxyServer(Config(**settings), access_log_stream=io.StringIO(), endpoints=endpoints, worker=worker)  # type: ignore[arg-type]
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {}
    for line in head[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(head[0].split()[1]), headers, body


async def get_many(port: int, paths: Sequence[str]) -> list[int]:
    """Send ``paths`` one after another on one keep-alive connection; the statuses received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    statuses = []
    try:
        for path in paths:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            statuses.append((await read_response(reader))[0])
    finally:
        writer.close()
    return statuses


async def http(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request to the admin listener, which answers once and closes: status, headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def scrape(srv: ProxyServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics parsed: (sample name, labels) -> value."""
    status, headers, body = await http(srv.admin_port, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[s.name, frozenset(s.labels.items())] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[P + name, frozenset(labels.items())]


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == P + name and want <= lab)


def label_values(samples: dict, name: str, label: str) -> set[str]:
    return {dict(lab)[label] for (n, lab) in samples if n == P + name and label in dict(lab)}


# -- pieces ---------------------------------------------------------------------------------------
def test_histogram_buckets_are_prometheus_le_and_cumulative() -> None:
    h = Histogram((0.001, 0.01, 0.1))
    for v in (0.0005, 0.001, 0.002, 0.01, 0.5, 7.0):
        h.observe(v)
    # le semantics: a value equal to a bound lands in that bound's bucket.
    assert h.cumulative() == [("0.001", 2), ("0.01", 4), ("0.1", 4), ("+Inf", 6)]
    assert h.count == 6 and h.sum == pytest.approx(7.5135)


def test_counters_response_classes() -> None:
    c = Counters()
    for status in (200, 204, 301, 404, 499, 502, 504):
        c.response(status, 0.002)
    assert c.responses == [0, 0, 2, 1, 2, 2]
    assert c.latency.count == 7 and len(c.latency.counts) == len(LATENCY_BUCKETS) + 1


# -- through a real proxy -------------------------------------------------------------------------
def test_counts_match_what_clients_saw() -> None:
    async def main() -> None:
        async with StatusServer() as a, StatusServer() as b, proxy([a.address, b.address]) as srv:
            statuses = await get_many(srv.port, ["/"] * 7)
            statuses += await get_many(srv.port, ["/status/404", "/status/500"])
            assert statuses == [200] * 7 + [404, 500]
            m = await scrape(srv)

            assert value(m, "requests_total", code_class="2xx") == 7
            assert value(m, "requests_total", code_class="4xx") == 1
            assert value(m, "requests_total", code_class="5xx") == 1
            assert total(m, "requests_total") == 9
            assert value(m, "request_duration_seconds_count") == 9
            assert value(m, "request_duration_seconds_bucket", le="+Inf") == 9
            assert 0 < value(m, "request_duration_seconds_sum") < 9 * 8

            ups = {f"{h}:{p}" for h, p in (a.address, b.address)}
            assert label_values(m, "upstream_requests_total", "upstream") == ups
            # Round robin over two endpoints: 5 and 4 attempts, matching what each upstream served.
            per = {f"{h}:{p}": u.requests for (h, p), u in ((a.address, a), (b.address, b))}
            for up, served in per.items():
                assert total(m, "upstream_requests_total", upstream=up) == served
                assert value(m, "upstream_duration_seconds_count", upstream=up) == served
            assert sorted(per.values()) == [4, 5]
            assert total(m, "upstream_requests_total", code_class="5xx") == 1
            assert total(m, "upstream_requests_total", code_class="failed") == 0

            # Keep-alive: each upstream saw one connection, later requests reused it.
            for (host, port), upstream in ((a.address, a), (b.address, b)):
                opened = value(m, "upstream_connections_opened_total", upstream=f"{host}:{port}")
                assert opened == upstream.connections == 1
            assert total(m, "upstream_requests_reused_total") == 9 - 2
            for up in ups:
                assert value(m, "upstream_connection_reuse_ratio", upstream=up) > 0.5
                assert value(m, "pool_idle_connections", upstream=up) == 1
                assert value(m, "upstream_in_flight", upstream=up) == 0
                assert value(m, "upstream_health", upstream=up, state="healthy") == 1
            assert value(m, "in_flight") == 0
            assert value(m, "endpoints", state="healthy") == 2
            assert value(m, "balancer_info", policy="round_robin") == 1
            assert m["process_open_fds", frozenset()] > 0  # the process collector rides along

    run(main)


def test_retried_attempts_count_per_upstream_and_request_once() -> None:
    async def main() -> None:
        async with StatusServer() as a, StatusServer() as b, proxy([a.address, b.address]) as srv:
            # 503 is retried by default (--retry-on): the client sees one 503, each attempt is counted.
            assert await get_many(srv.port, ["/status/503"]) == [503]
            attempts = a.requests + b.requests
            assert attempts >= 2
            m = await scrape(srv)
            assert value(m, "requests_total", code_class="5xx") == 1
            assert value(m, "request_duration_seconds_count") == 1
            assert total(m, "upstream_requests_total", code_class="5xx") == attempts
            assert total(m, "upstream_duration_seconds_count") == attempts
            assert total(m, "retries_total") == attempts - 1

    run(main)


def test_failed_connect_counts_as_failure_and_client_502() -> None:
    async def main() -> None:
        dead = ("127.0.0.1", free_port())
        async with proxy([dead]) as srv:
            assert await get_many(srv.port, ["/", "/"]) == [502, 502]
            m = await scrape(srv)
            up = f"{dead[0]}:{dead[1]}"
            assert value(m, "requests_total", code_class="5xx") == 2
            assert value(m, "upstream_requests_total", upstream=up, code_class="failed") == 2
            assert value(m, "upstream_failures_total", upstream=up, reason="connect") == 2
            assert value(m, "upstream_connections_opened_total", upstream=up) == 0
            assert value(m, "upstream_connection_reuse_ratio", upstream=up) == 0

    run(main)


def test_in_flight_while_a_request_waits() -> None:
    async def main() -> None:
        # The upstream accepts but never answers: the request stays in flight until we look.
        started = asyncio.Event()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            started.set()
            with contextlib.suppress(Exception):
                await reader.read()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        addr = ("127.0.0.1", server.sockets[0].getsockname()[1])
        async with proxy([addr]) as srv:
            _, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            await started.wait()
            m = await scrape(srv)
            assert value(m, "in_flight") == 1
            assert value(m, "connections_open") == 1
            assert value(m, "upstream_in_flight", upstream=f"{addr[0]}:{addr[1]}") == 1
            writer.close()
        server.close()

    run(main)


def test_event_counters_map_to_families() -> None:
    async def main() -> None:
        async with StatusServer() as a, proxy([a.address]) as srv:
            assert srv.state is not None
            c = srv.state.counters
            c.inc("retries", "connect")
            c.inc("retries", "connect")
            c.inc("retries", "reset")
            c.inc("rejected", "431")
            c.inc("retry_budget_exhausted")
            c.inc("requests", "clash")  # would collide with requests_total: skipped, not mangled
            m = await scrape(srv)
            assert value(m, "retries_total", reason="connect") == 2
            assert value(m, "retries_total", reason="reset") == 1
            assert value(m, "rejected_total", status="431") == 1
            assert value(m, "retry_budget_exhausted_total") == 1
            assert ("asgilab_proxy_requests_total", frozenset({("reason", "clash")})) not in m

    run(main)


def test_outlier_ejection_shows_in_metrics() -> None:
    async def main() -> None:
        good, bad = StatusServer(), StatusServer(500)
        async with good, bad, proxy([good.address, bad.address], outlier_consecutive_5xx=2) as srv:
            statuses = await get_many(srv.port, ["/"] * 10)
            # Round robin until the bad replica's second 500 ejects it; then only the good one.
            assert statuses.count(500) == bad.requests == 2 and good.requests == 8
            m = await scrape(srv)
            b = f"{bad.address[0]}:{bad.address[1]}"
            assert value(m, "ejections_total", reason="5xx") == 1
            assert value(m, "upstream_ejections_total", upstream=b) == 1
            assert value(m, "upstream_health", upstream=b, state="ejected") == 1
            assert value(m, "endpoints", state="ejected") == 1
            assert value(m, "upstream_requests_total", upstream=b, code_class="5xx") == 2
            assert value(m, "requests_total", code_class="5xx") == 2

    run(main)


def test_health_states_exported() -> None:
    async def main() -> None:
        ups = StatusServer(), StatusServer(), StatusServer()
        async with ups[0] as a, ups[1] as b, ups[2] as c, proxy([a.address, b.address, c.address]) as srv:
            assert srv.state is not None
            group = srv.state.group
            ea, eb, ec = group.live
            eject(eb, 30)  # as outlier detection does it, minus the decision (ejections counts decisions)
            eb.outlier.ejections += 1
            set_health(ec, UNHEALTHY)
            m = await scrape(srv)
            assert value(m, "upstream_health", upstream=ea.label, state="healthy") == 1
            assert value(m, "upstream_health", upstream=eb.label, state="ejected") == 1
            assert value(m, "upstream_health", upstream=eb.label, state="healthy") == 0
            assert value(m, "upstream_ejections_total", upstream=eb.label) == 1
            assert value(m, "upstream_health", upstream=ec.label, state="unhealthy") == 1
            assert value(m, "endpoints", state="healthy") == 1
            uneject(eb)
            # An endpoint discovery dropped while a request is on it is draining until it ends.
            ea.in_flight += 1
            group.update([b.address, c.address])
            m = await scrape(srv)
            assert value(m, "upstream_health", upstream=ea.label, state="draining") == 1
            assert value(m, "endpoints", state="draining") == 1
            ea.release()
            m = await scrape(srv)
            assert ea.label not in label_values(m, "upstream_health", "upstream")

    run(main)


def test_workers_each_count_their_own_share() -> None:
    """--workers N: every worker has its own admin listener and counters; their sum is the total."""

    async def main() -> None:
        port = free_port()
        settings = {"listen_port": port, "workers": 2}
        up = StatusServer()
        async with up, proxy([up.address], 0, **settings) as w0, proxy([up.address], 1, **settings) as w1:
            assert w0.port == w1.port == port and w0.admin_port != w1.admin_port
            for _ in range(40):  # new connections: the kernel spreads them over both workers
                assert await get_many(port, ["/"]) == [200]
            m0, m1 = await scrape(w0), await scrape(w1)
        assert value(m0, "worker_info", worker="0", workers="2") == 1
        assert value(m1, "worker_info", worker="1", workers="2") == 1
        served = [value(m, "requests_total", code_class="2xx") for m in (m0, m1)]
        assert sum(served) == 40 == up.requests

    run(main)
