"""Limits: request line (414), headers (431), body (413), connections and per-replica admission (503)."""

from __future__ import annotations

import asyncio
from time import perf_counter

import pytest

from proxy.admission import Admission
from proxy.balancer import make_balancer
from proxy.config import Config, ConfigError, build_parser, config_from
from proxy.counters import Counters
from proxy.health import HEALTHY, UNHEALTHY, set_health
from proxy.pool import Endpoint, UpstreamGroup
from tests.unit.harness import (
    FakeUpstream,
    Resp,
    access_lines,
    addr,
    connect,
    fetch,
    get,
    proxy,
    read_response,
    run,
)


async def refused(port: int, raw: bytes) -> Resp:
    """Send ``raw``, read the answer, and check the proxy then ends the connection."""
    r, w = await connect(port)
    w.write(raw)
    resp = await read_response(r)
    assert resp.get("Connection") == "close"
    assert await asyncio.wait_for(r.read(), 3) == b"", "connection closed after the refusal"
    w.close()
    return resp


def rejected(srv: object, status: int) -> int:
    return srv.state.counters.count("rejected", str(status))  # type: ignore[attr-defined]


def test_414_for_a_request_target_over_the_limit_and_fine_just_under() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port, max_request_line=1024) as srv:
            ok = "/" + "a" * 1023
            assert (await fetch(srv.port, get(ok))).status == 200
            resp = await refused(srv.port, get("/" + "a" * 1024))
            assert resp.status == 414 and b"414 URI Too Long" in resp.body
            # Also when the target arrives slowly and never ends: refused once it passes the limit.
            r, w = await connect(srv.port)
            w.write(b"GET /" + b"b" * 600)
            await asyncio.sleep(0.05)
            w.write(b"b" * 600)
            resp = await read_response(r)
            assert resp.status == 414
            assert [rq.target for rq in up.requests] == [ok]
            assert rejected(srv, 414) == 2
            assert [line["status"] for line in access_lines(srv)] == [200, 414, 414]

    run(main)


def test_431_for_too_many_or_too_large_headers_or_an_endless_header_line() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port, max_headers=20, max_header_bytes=4096) as srv:
            many = "".join(f"X-H{i}: v\r\n" for i in range(21))
            assert (await refused(srv.port, get("/", many))).status == 431
            big = f"X-Big: {'v' * 4100}\r\n"
            assert (await refused(srv.port, get("/", big))).status == 431
            # A header line that never ends would otherwise be buffered without bound.
            r, w = await connect(srv.port)
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
            for _ in range(20):
                w.write(b"v" * 1024)
                await asyncio.sleep(0)
            resp = await read_response(r)
            assert resp.status == 431
            assert up.requests == []
            assert rejected(srv, 431) == 3
            assert (
                await fetch(srv.port, get("/", "".join(f"X-H{i}: v\r\n" for i in range(18))))
            ).status == 200

    run(main)


def test_413_for_a_content_length_over_the_limit_before_the_body_is_sent(loop_kind: str) -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port, max_body_size=1000) as srv:
            r, w = await connect(srv.port)
            # Only the head: the answer must not wait for a body the proxy will not take.
            w.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
            resp = await read_response(r)
            assert resp.status == 413 and resp.get("Connection") == "close"
            assert b"1001 bytes, the limit is 1000" in resp.body
            # The client goes on sending its body anyway: it is drained, then the connection ends.
            w.write(b"x" * 1001)
            assert await asyncio.wait_for(r.read(), 3) == b""
            body = b"y" * 1000
            raw = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + body
            assert (await fetch(srv.port, raw)).body == body
            assert [len(rq.body) for rq in up.requests] == [1000]
            assert rejected(srv, 413) == 1
            (line, _) = access_lines(srv)
            assert line["status"] == 413 and line["upstream"] is None

    run(main, loop_kind)


def test_413_for_a_chunked_body_as_soon_as_it_passes_the_limit() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port, max_body_size=1000) as srv:
            r, w = await connect(srv.port)
            w.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            w.write(b"200\r\n" + b"z" * 512 + b"\r\n")
            await asyncio.sleep(0.05)
            w.write(b"200\r\n" + b"z" * 512 + b"\r\n")  # 1024 > 1000: refused here
            resp = await read_response(r)
            assert resp.status == 413
            assert await asyncio.wait_for(r.read(), 3) == b""
            await asyncio.sleep(0.05)
            assert up.requests == [], "the upstream never got a complete request"
            assert up.closed == 1, "the upstream connection carrying the partial body was closed"
            (line,) = access_lines(srv)
            assert line["status"] == 413 and rejected(srv, 413) == 1
            # 0 switches the limit off.
        async with FakeUpstream() as up, proxy(up.port, max_body_size=0) as srv:
            big = b"q" * 300_000
            raw = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(big) + big
            assert (await fetch(srv.port, raw)).body == big

    run(main)


def test_connections_over_the_limit_get_503_with_retry_after_and_are_closed(loop_kind: str) -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port, max_connections=2) as srv:
            held = [await connect(srv.port) for _ in range(2)]
            await asyncio.sleep(0.05)
            resp = await refused(srv.port, get("/"))
            assert resp.status == 503 and resp.get("Retry-After") == "1"
            assert b"maximum of 2 client connections" in resp.body
            # The held connections are served normally meanwhile.
            r, w = held[0]
            w.write(get("/held"))
            assert (await read_response(r)).body == b"ok GET /held"
            for _, w in held:
                w.close()
            await asyncio.sleep(0.05)
            assert (await fetch(srv.port, get("/after"))).status == 200
            assert [rq.target for rq in up.requests] == ["/held", "/after"]
            assert rejected(srv, 503) == 1
            assert 503 in [line["status"] for line in access_lines(srv)]

    run(main, loop_kind)


def test_in_flight_cap_queues_then_refuses_when_the_queue_is_full() -> None:
    async def main() -> None:
        async with (
            FakeUpstream() as up,
            proxy(up.port, max_in_flight_per_upstream=1, queue_size=1, queue_timeout=5) as srv,
        ):
            first = asyncio.ensure_future(fetch(srv.port, get("/slow?0.3")))
            await asyncio.sleep(0.05)
            second = asyncio.ensure_future(fetch(srv.port, get("/queued")))
            await asyncio.sleep(0.05)
            assert [rq.target for rq in up.requests] == ["/slow?0.3"], "the second request waits for the slot"
            third = await fetch(srv.port, get("/over"))
            assert third.status == 503 and third.get("Retry-After") == "1"
            assert b"queue is full" in third.body
            assert (await first).status == 200
            resp = await second
            assert resp.status == 200 and resp.body == b"ok GET /queued"
            assert [rq.target for rq in up.requests] == ["/slow?0.3", "/queued"]
            assert up.connections == 1, "the queued request reused the freed connection"
            assert rejected(srv, 503) == 1
            assert srv.state is not None and srv.state.counters.count("queue_overflow", "full") == 1
            assert srv.state.group.live[0].in_flight == 0

    run(main)


def test_queue_timeout_gives_503_and_a_client_leaving_the_queue_frees_its_place() -> None:
    async def main() -> None:
        async with (
            FakeUpstream() as up,
            proxy(up.port, max_in_flight_per_upstream=1, queue_size=1, queue_timeout=0.2) as srv,
        ):
            slow = asyncio.ensure_future(fetch(srv.port, get("/slow?0.6")))
            await asyncio.sleep(0.05)
            resp = await fetch(srv.port, get("/waits"))
            assert resp.status == 503 and b"within 0.2s" in resp.body
            assert srv.state is not None and srv.state.counters.count("queue_overflow", "timeout") == 1
            # A queued client that hangs up leaves the queue: the next one can queue.
            _r, w = await connect(srv.port)
            w.write(get("/gone"))
            await asyncio.sleep(0.05)
            w.transport.abort()
            await asyncio.sleep(0.05)
            assert srv.state is not None and srv.state.admission is not None
            assert not srv.state.admission.waiting
            assert (await slow).status == 200
            assert "/gone" not in [rq.target for rq in up.requests]

    run(main)


def test_in_flight_cap_spreads_concurrent_requests_over_replicas() -> None:
    async def main() -> None:
        async with (
            FakeUpstream() as a,
            FakeUpstream() as b,
            proxy(endpoints=[addr(a), addr(b)], max_in_flight_per_upstream=1, queue_size=0) as srv,
        ):
            first = asyncio.ensure_future(fetch(srv.port, get("/slow?0.3")))
            await asyncio.sleep(0.05)
            second = asyncio.ensure_future(fetch(srv.port, get("/slow?0.3")))
            await asyncio.sleep(0.05)
            third = await fetch(srv.port, get("/"))
            assert third.status == 503, "both replicas at their cap and no queue"
            assert [(await f).status for f in (first, second)] == [200, 200]
            assert (len(a.requests), len(b.requests)) == (1, 1)

    run(main)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1048576", 1 << 20),
        ("512k", 512 << 10),
        ("100m", 100 << 20),
        ("1G", 1 << 30),
        ("0", 0),
        ("64KB", 64 << 10),
    ],
)
def test_body_size_accepts_nginx_style_suffixes(value: str, expected: int) -> None:
    assert config_from(build_parser().parse_args(["--max-body-size", value]), {}).max_body_size == expected


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--max-body-size", "lots", "--max-body-size / PROXY_MAX_BODY_SIZE"),
        ("--max-connections", "-1", "--max-connections / PROXY_MAX_CONNECTIONS"),
        ("--queue-timeout", "0", "--queue-timeout / PROXY_QUEUE_TIMEOUT"),
        ("--retry-on", "teapot", "--retry-on / PROXY_RETRY_ON"),
        ("--retry-on", "404", "--retry-on / PROXY_RETRY_ON"),
        ("--retry-methods", "GET,P0ST", "--retry-methods / PROXY_RETRY_METHODS"),
        ("--client-body-timeout", "0", "--client-body-timeout / PROXY_CLIENT_BODY_TIMEOUT"),
    ],
)
def test_bad_limit_and_retry_values_are_refused(flag: str, value: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        config_from(build_parser().parse_args([flag, value]), {})


def test_retry_settings_from_the_environment() -> None:
    cfg = config_from(
        build_parser().parse_args([]),
        {"PROXY_RETRY_METHODS": "get, put", "PROXY_RETRY_ON": "reset,502,503", "PROXY_MAX_RETRIES": "3"},
    )
    assert cfg.retry_methods == frozenset({"GET", "PUT"})
    assert cfg.retry_on == frozenset({"reset", "502", "503"})
    assert cfg.max_retries == 3
    assert config_from(build_parser().parse_args(["--retry-on", "none"]), {}).retry_on == frozenset()


class _Waiter:
    """A request as admission control sees it (``admission.Waiter``), without a client."""

    hash_key = None
    request_id = b"test"

    def __init__(self) -> None:
        self.got: list[Endpoint] = []
        self.failed: list[int] = []

    def admitted(self, ep: Endpoint) -> None:
        self.got.append(ep)

    def fail(self, status: int, body: bytes, retry_after: int = 0) -> None:
        self.failed.append(status)


def test_admission_skips_full_and_unavailable_endpoints_and_reuses_the_cached_set_if_none_is_full() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        cfg = Config(fail_timeout=5, max_in_flight_per_upstream=2, queue_size=10, queue_timeout=1)
        group = UpstreamGroup.from_config(cfg, loop)
        group.update([("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)])
        a, b, c = group.live
        balancer = make_balancer(cfg.policy, cfg)
        adm = Admission.from_config(cfg, group, lambda: balancer, Counters(), loop)
        assert adm is not None and adm.cap == 2
        # Per request while the cap is on: nothing full, nothing tried -> the group's cached set.
        assert adm.exclude() is group.unavailable()
        group.mark_failed(c)
        assert adm.exclude() is group.unavailable() and set(adm.exclude()) == {c}
        a.in_flight = 2
        assert set(adm.exclude()) == {a, c}
        assert set(adm.exclude(also=[b])) == {a, b, c}
        # A retry keeps the endpoint chosen for it while it has room, else takes an untried one.
        assert adm.retry_slot(b, [a], _Waiter()) is b
        b.in_flight = 2
        assert adm.retry_slot(b, [b], _Waiter()) is None  # c is cooling, a and b are full
        assert (
            Admission.from_config(
                Config(), group, lambda: make_balancer("round_robin", cfg), Counters(), loop
            )
            is None
        )
        group.close()

    run(main)


def test_queued_requests_are_dispatched_as_soon_as_an_endpoint_becomes_available() -> None:
    """Capacity that appears (a new replica, one healthy or cooled off again) serves the queue at once."""

    async def main() -> None:
        async with FakeUpstream() as busy, FakeUpstream() as other:
            for how in ("discovered", "healthy", "cooled"):
                start = [addr(busy)] if how == "discovered" else [addr(busy), addr(other)]
                async with proxy(
                    endpoints=start,
                    max_in_flight_per_upstream=1,
                    queue_timeout=3,
                    fail_timeout=0.3,
                ) as srv:
                    assert srv.state is not None
                    group = srv.state.group
                    if how == "healthy":
                        set_health(group.live[1], UNHEALTHY)
                    elif how == "cooled":
                        group.mark_failed(group.live[1])  # cooling for --fail-timeout (0.3 s)
                    slow = asyncio.ensure_future(fetch(srv.port, get("/slow?2")))
                    await asyncio.sleep(0.1)
                    t0 = perf_counter()
                    queued = asyncio.ensure_future(fetch(srv.port, get(f"/{how}")))
                    await asyncio.sleep(0.1)
                    assert srv.state.admission is not None and len(srv.state.admission.waiting) == 1, how
                    if how == "discovered":
                        group.update([addr(busy), addr(other)])
                    elif how == "healthy":
                        set_health(group.live[1], HEALTHY)
                    resp = await queued
                    elapsed = perf_counter() - t0
                    assert resp.status == 200 and resp.body == f"ok GET /{how}".encode(), how
                    assert elapsed < 1.0, f"{how}: waited {elapsed:.2f}s, until the busy request ended"
                    assert (await slow).status == 200
                    assert f"/{how}" in [rq.target for rq in other.requests]

    run(main)


def test_admission_acquire_queue_expiry_cancel_and_release_on_its_own_timer() -> None:
    """The seam the request path uses: acquire, release, cancel; the queue's one timer is the admission's."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        cfg = Config(max_in_flight_per_upstream=1, queue_size=2, queue_timeout=0.2)
        group = UpstreamGroup.from_config(cfg, loop)
        group.update([("10.0.0.1", 80)])
        (ep,) = group.live
        counters = Counters()
        policy = [make_balancer(cfg.policy, cfg)]  # what state.balancer is; PUT /policy replaces it
        adm = Admission.from_config(cfg, group, lambda: policy[0], counters, loop)
        assert adm is not None
        first, second, third, fourth = _Waiter(), _Waiter(), _Waiter(), _Waiter()
        adm.acquire(first, b"none")
        assert first.got == [ep]
        ep.acquire()  # what the admitted request's attempt does
        adm.acquire(second, b"none")
        adm.acquire(third, b"none")
        assert list(adm.waiting) == [second, third] and adm.timer is not None
        adm.acquire(fourth, b"none")
        assert fourth.failed == [503] and counters.count("queue_overflow", "full") == 1
        adm.cancel(third)  # its client went away
        adm.cancel(third)  # and twice is harmless
        assert list(adm.waiting) == [second]
        adm.release(ep)  # the first request is done: the oldest waiter gets the slot at once
        assert second.got == [ep] and not adm.waiting
        ep.acquire()
        late = _Waiter()
        adm.acquire(late, b"none")
        await asyncio.sleep(0.35)
        assert late.failed == [503] and late.got == [] and not adm.waiting
        assert counters.count("queue_overflow", "timeout") == 1 and counters.count("rejected", "503") == 2
        assert third.got == [] and third.failed == [], "a cancelled waiter hears nothing more"

        class Recording:
            """A policy that records being asked (the one switched to at runtime)."""

            name = "recording"
            needs_key = False
            asked = 0

            def pick(self, live: object, exclude: object, key: object) -> Endpoint | None:
                Recording.asked += 1
                return ep

        policy[0] = Recording()  # type: ignore[assignment]
        queued = _Waiter()
        adm.acquire(queued, b"none")
        adm.release(ep)
        assert queued.got == [ep] and Recording.asked == 2, "the queue picks with the policy in use now"
        adm.close()
        group.close()

    run(main)
