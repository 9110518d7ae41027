"""Retries: what is tried again after which failure, where, and when the budget says no."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from time import perf_counter

import pytest

from proxy.config import Config, ConfigError, build_parser, config_from
from proxy.counters import Counters
from proxy.failure import CONNECT, PROTOCOL, RESET, TIMEOUT
from proxy.pool import Endpoint, UpstreamGroup
from proxy.retry import KEEP_BODY_LIMIT, RETRY_ON_WORDS, RetryBudget, RetryPolicy, RetryState
from tests.unit.harness import (
    FakeUpstream,
    access_lines,
    addr,
    fetch,
    free_port,
    get,
    proxy,
    read_head,
    run,
)
from tests.unit.upstreams import LocalServer


def post(path: str, body: bytes, method: str = "POST") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def test_reset_before_any_response_byte_is_retried_on_another_replica(loop_kind: str) -> None:
    async def main() -> None:
        async with FakeUpstream() as bad, FakeUpstream() as good:
            bad.reset_all = True  # reads the request, then dies without a byte of response
            async with proxy(endpoints=[addr(bad), addr(good)], fail_timeout=0) as srv:
                for i in range(6):
                    resp = await fetch(srv.port, get(f"/r{i}"))
                    assert resp.status == 200 and resp.body == f"ok GET /r{i}".encode()
                assert bad.requests, "the failing replica did receive requests (so they were re-sent)"
                assert [r.target for r in good.requests] == [f"/r{i}" for i in range(6)]
                assert srv.state is not None
                assert srv.state.counters.count("retries", "reset") == len(bad.requests)
                assert {line["upstream"] for line in access_lines(srv)} == {f"127.0.0.1:{good.port}"}

    run(main, loop_kind)


def test_503_is_retried_on_a_different_replica_and_forwarded_when_none_is_left(loop_kind: str) -> None:
    async def main() -> None:
        async with FakeUpstream() as busy, FakeUpstream() as good:
            busy.status_all = 503
            async with proxy(endpoints=[addr(busy), addr(good)]) as srv:
                for _ in range(4):
                    resp = await fetch(srv.port, get("/"))
                    assert resp.status == 200 and resp.body == b"ok GET /"
                assert srv.state is not None
                assert srv.state.counters.count("retries", "503") == len(busy.requests) >= 1
                # The 503's connection was drained and pooled, not thrown away.
                assert busy.connections == 1
            async with proxy(endpoints=[addr(busy)]) as srv:
                before = len(busy.requests)
                resp = await fetch(srv.port, get("/"))
                assert resp.status == 503 and resp.body == b"nope 503", "no other replica: forwarded as is"
                assert len(busy.requests) == before + 1, "never retried on the replica that said 503"

    run(main, loop_kind)


def test_post_is_never_retried_by_default_but_a_kept_put_body_is_when_configured() -> None:
    async def main() -> None:
        async with FakeUpstream() as bad, FakeUpstream() as good:
            bad.reset_all = True
            async with proxy(endpoints=[addr(bad), addr(good)], fail_timeout=0) as srv:
                results = [await fetch(srv.port, post("/echo", b"data")) for _ in range(4)]
                hit_bad = len(bad.requests)
                assert hit_bad >= 1
                assert [r.status for r in results].count(502) == hit_bad, (
                    "a POST that reached a replica fails"
                )
                assert srv.state is not None and srv.state.counters.count("retries") == 0
            bad.requests.clear()
            good.requests.clear()
            async with proxy(
                endpoints=[addr(bad), addr(good)], fail_timeout=0, retry_methods=frozenset({"PUT"})
            ) as srv:
                for _ in range(4):
                    resp = await fetch(srv.port, post("/echo", b"kept body", "PUT"))
                    assert resp.status == 200 and resp.body == b"kept body"
                assert bad.requests and all(r.body == b"kept body" for r in good.requests)
                # A body too large to keep was streamed, so it cannot be sent a second time.
                big = b"x" * (KEEP_BODY_LIMIT + 1)
                statuses = [(await fetch(srv.port, post("/echo", big, "PUT"))).status for _ in range(2)]
                assert 502 in statuses and all(len(r.body) in (9, len(big)) for r in good.requests)

    run(main)


def test_budget_exhaustion_stops_retries_and_the_client_sees_the_error() -> None:
    async def main() -> None:
        async with FakeUpstream() as bad, FakeUpstream() as good:
            bad.reset_all = True
            # No share of traffic, 0.2 retries/s over the 10 s window: exactly 2 retries allowed.
            async with proxy(
                endpoints=[addr(bad), addr(good)],
                fail_timeout=0,
                retry_budget_percent=0.0,
                retry_budget_min=0.2,
            ) as srv:
                statuses = [(await fetch(srv.port, get("/"))).status for _ in range(6)]
                first_on_bad = len(bad.requests)
                assert first_on_bad >= 3
                assert statuses.count(502) == first_on_bad - 2
                assert srv.state is not None
                counters = srv.state.counters
                assert counters.count("retries", "reset") == 2
                assert counters.count("retry_budget_exhausted", "reset") == first_on_bad - 2

    run(main)


def test_max_retries_bounds_attempts_per_request() -> None:
    async def main() -> None:
        async with FakeUpstream() as a, FakeUpstream() as b, FakeUpstream() as c:
            for up in (a, b, c):
                up.reset_all = True
            async with proxy(endpoints=[addr(a), addr(b), addr(c)], fail_timeout=0, max_retries=1) as srv:
                resp = await fetch(srv.port, get("/"))
                assert resp.status == 502 and b"closed the connection before responding" in resp.body
                assert len(a.requests) + len(b.requests) + len(c.requests) == 2
                assert srv.state is not None
                assert srv.state.counters.count("retries_exhausted", "reset") == 1

    run(main)


def test_connect_failures_move_on_without_spending_the_budget() -> None:
    async def main() -> None:
        dead = ("127.0.0.1", free_port())
        async with FakeUpstream() as up:
            async with proxy(
                endpoints=[dead, addr(up)], fail_timeout=0, retry_budget_percent=0.0, retry_budget_min=0.0
            ) as srv:
                for _ in range(4):
                    assert (await fetch(srv.port, get("/"))).status == 200
                assert srv.state is not None
                assert srv.state.counters.count("retries", "connect-failure") >= 2
                assert srv.state.counters.count("retry_budget_exhausted") == 0
            # Without connect-failure in --retry-on a refused connect is the client's 502.
            async with proxy(
                endpoints=[dead, addr(up)], fail_timeout=0, retry_on=frozenset({"reset"})
            ) as srv:
                statuses = [(await fetch(srv.port, get("/"))).status for _ in range(4)]
                assert 502 in statuses and 200 in statuses

    run(main)


def test_retry_on_can_add_statuses_and_drop_reset() -> None:
    async def main() -> None:
        async with FakeUpstream() as bad, FakeUpstream() as good:
            bad.status_all = 502
            async with proxy(endpoints=[addr(bad), addr(good)], retry_on=frozenset({"502"})) as srv:
                statuses = [(await fetch(srv.port, get("/"))).status for _ in range(3)]
                assert statuses == [200, 200, 200] and bad.requests
            bad.status_all = None
            bad.reset_all = True
            bad.requests.clear()
            async with proxy(endpoints=[addr(bad), addr(good)], fail_timeout=0, retry_on=frozenset()) as srv:
                statuses = [(await fetch(srv.port, get("/"))).status for _ in range(4)]
                assert statuses.count(502) == len(bad.requests) >= 1

    run(main)


@pytest.mark.parametrize(
    ("percent", "floor", "requests", "allowed"),
    [(20.0, 0.0, 50, 10), (0.0, 1.0, 0, 10), (10.0, 0.5, 100, 15), (0.0, 0.0, 1000, 0)],
)
def test_budget_allows_a_share_of_requests_plus_a_floor(
    percent: float, floor: float, requests: int, allowed: int
) -> None:
    budget = RetryBudget(percent, floor, window=10)
    for _ in range(requests):
        budget.deposit(100.2)
    granted = sum(budget.try_withdraw(100.5) for _ in range(allowed + 5))
    assert granted == allowed


def test_budget_forgets_requests_and_retries_older_than_its_window() -> None:
    budget = RetryBudget(50.0, 0.0, window=10)
    for _ in range(10):
        budget.deposit(0.5)
    assert sum(budget.try_withdraw(1.0) for _ in range(10)) == 5
    assert not budget.try_withdraw(9.9)
    # 11 s later the old deposits and withdrawals have expired: nothing to retry on.
    assert not budget.try_withdraw(11.0)
    for _ in range(4):
        budget.deposit(11.5)
    assert sum(budget.try_withdraw(12.0) for _ in range(4)) == 2
    assert budget.balance(12.0) == 0


def test_retry_is_reported_to_each_endpoint_tried() -> None:
    async def main() -> None:
        async with FakeUpstream() as bad, FakeUpstream() as good:
            bad.reset_all = True
            async with proxy(endpoints=[addr(bad), addr(good)], fail_timeout=0) as srv:
                resps = await asyncio.gather(*(fetch(srv.port, get("/")) for _ in range(4)))
                assert [r.status for r in resps] == [200] * 4
                assert srv.state is not None
                eps = {ep.label: ep for ep in srv.state.group.live}
                bad_ep, good_ep = eps[f"127.0.0.1:{bad.port}"], eps[f"127.0.0.1:{good.port}"]
                tries = len(bad.requests)  # each was cut, then sent on to `good`
                assert tries >= 1
                # The failing endpoint saw every try on it, each ending in a reset with no response
                # head, and each retried elsewhere; the good one answered all 4, retried none.
                assert (bad_ep.requests, bad_ep.retries, bad_ep.failures) == (tries, tries, {"reset": tries})
                assert bad_ep.responses == [tries, 0, 0, 0, 0, 0]
                assert (good_ep.requests, good_ep.retries, good_ep.failures) == (4, 0, {})
                assert good_ep.responses == [0, 0, 4, 0, 0, 0]
                assert srv.state.counters.count("retries", "reset") == tries
                assert all(ep.in_flight == 0 for ep in eps.values()), "every attempt released its endpoint"

    run(main)


class Stalling503(LocalServer):
    """Answers every request 503 and then never finishes the body (``/endless``: an endless chunked
    stream; else a Content-Length body of which only a part is sent; ``/small``: a whole short one).
    """

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                line, _headers = await read_head(reader)
                target = line.split(" ")[1]
                self.requests.append(target)
                if target == "/late":  # a whole short body, 0.3 s after the head
                    writer.write(b"HTTP/1.1 503 X\r\nContent-Length: 4\r\n\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.3)
                    writer.write(b"busy")
                    await writer.drain()
                    continue
                if target == "/small":
                    writer.write(b"HTTP/1.1 503 X\r\nContent-Length: 4\r\n\r\nbusy")
                    await writer.drain()
                    continue
                if target == "/endless":
                    writer.write(b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n")
                    while True:
                        writer.write(b"5\r\nbusy.\r\n")
                        await writer.drain()
                        await asyncio.sleep(0.01)
                writer.write(b"HTTP/1.1 503 X\r\nContent-Length: 100\r\n\r\nbusy")
                await writer.drain()
                await asyncio.sleep(3600)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def test_a_503_whose_body_never_ends_is_dropped_and_retried_without_waiting_for_it(loop_kind: str) -> None:
    async def main() -> None:
        async with (
            Stalling503() as bad,
            FakeUpstream() as good,
            proxy(
                endpoints=[("127.0.0.1", bad.port), addr(good)], upstream_timeout=5, health_interval=0
            ) as srv,
        ):
            for path, most in (("/endless", 0.5), ("/stalled", 1.5), ("/small", 0.5)):
                bad_before = len(bad.requests)
                t0 = perf_counter()
                # Two requests: round robin sends one of them to the 503 replica first.
                resps = await asyncio.gather(*(fetch(srv.port, get(path)) for _ in range(2)))
                elapsed = perf_counter() - t0
                assert [r.status for r in resps] == [200, 200], path
                assert {r.body for r in resps} == {f"ok GET {path}".encode()}
                assert len(bad.requests) == bad_before + 1, path
                assert elapsed < most, f"{path}: {elapsed:.2f}s, the 503 body held the request"
            assert srv.state is not None
            assert srv.state.counters.count("retries", "503") == 3
            # The complete small 503 left its connection pooled; the other two were closed.
            ep = srv.state.group.endpoints[("127.0.0.1", bad.port)]
            assert len(ep.idle) == 1 and bad.connections == 3
            assert ep.in_flight == 0

    run(main, loop_kind)


def test_a_503_retry_passes_the_in_flight_cap_and_never_puts_a_replica_over_it() -> None:
    async def main() -> None:
        async with (
            Stalling503() as bad,
            FakeUpstream() as good,
            proxy(
                endpoints=[("127.0.0.1", bad.port), addr(good)],
                max_in_flight_per_upstream=1,
                health_interval=0,
            ) as srv,
        ):
            # The 503's head picks `good` for the retry; its body takes 0.3 s, and meanwhile
            # another request takes good's only slot.
            late = asyncio.ensure_future(fetch(srv.port, get("/late")))
            await asyncio.sleep(0.1)
            busy = asyncio.ensure_future(fetch(srv.port, get("/slow?0.6")))
            resp = await late
            assert resp.status == 503 and resp.get("Retry-After") == "1"
            assert b"every other endpoint has 1 requests in flight" in resp.body
            assert (await busy).status == 200
            assert [rq.target for rq in good.requests] == ["/slow?0.6"], "good never got 2 at once"
            assert srv.state is not None
            assert srv.state.counters.count("queue_overflow", "retry") == 1
            # With the slot free again, the same retry goes through.
            resp = await fetch(srv.port, get("/late"))
            assert resp.status == 200 and resp.body == b"ok GET /late"
            assert all(ep.in_flight == 0 for ep in srv.state.group.live)

    run(main)


# -- the retry table, row by row, on RetryState.next (docs/proxy.md "Retries and timeouts") ----------
class _Picker:
    """The balancer as a retry sees it: the first endpoint not excluded (``retry.Picker``)."""

    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.endpoints = endpoints

    def pick_excluding(self, exclude: Collection[Endpoint]) -> Endpoint | None:
        return next((ep for ep in self.endpoints if ep not in exclude), None)


def _rules(
    method: bytes = b"GET", *, body: str = "none", n: int = 3, **cfg: object
) -> tuple[RetryState, list[Endpoint], _Picker, Counters]:
    """A request's RetryState under ``Config(**cfg)`` (``body``: none, kept, streamed) and ``n`` endpoints."""
    config = Config(**cfg)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()  # the group's timers are never started here
    group = UpstreamGroup.from_config(config, loop)
    group.update([(f"10.0.0.{i}", 80) for i in range(1, n + 1)])
    loop.close()
    counters = Counters()
    policy = RetryPolicy.from_config(config)
    keep = body == "kept" and RetryState.keeps_body(policy, method, False, 10)
    rs = RetryState(policy, RetryBudget.from_config(config), counters, method, body != "none", keep)
    if keep:
        rs.keep(b"0123456789")
    return rs, list(group.live), _Picker(list(group.live)), counters


def test_row_connect_failure_any_method_every_untried_endpoint_once_not_budgeted() -> None:
    rs, (a, b, c), picker, counters = _rules(
        b"POST", body="streamed", retry_budget_percent=0, retry_budget_min=0
    )
    assert rs.retries_left == 0, "POST is not in --retry-methods"
    assert rs.next(CONNECT, a, picker, 0.0, b"r") is b
    assert rs.next(CONNECT, b, picker, 0.0, b"r") is c
    assert rs.next(CONNECT, c, picker, 0.0, b"r") is None, "each endpoint once"
    assert counters.count("retries", "connect-failure") == 2 and counters.count("retry_budget_exhausted") == 0
    assert (a.retries, b.retries, c.retries) == (1, 1, 0)
    off, (a, _b, _c), picker, _ = _rules(retry_on=frozenset({"reset"}))
    assert off.next(CONNECT, a, picker, 0.0, b"r") is None, "connect-failure not in --retry-on"


def test_row_reset_needs_a_retry_method_and_a_kept_body_then_falls_back_to_the_same_endpoint() -> None:
    rs, (a, b), picker, counters = _rules(n=2)
    assert rs.next(RESET, a, picker, 0.0, b"r") is b
    assert rs.next(RESET, b, picker, 0.0, b"r") is b, "no endpoint left: a fresh connection to the same"
    assert rs.next(RESET, b, picker, 0.0, b"r") is None, "--max-retries (2) spent"
    assert counters.count("retries", "reset") == 2 and counters.count("retries_exhausted", "reset") == 1
    kept, (a, b), picker, _ = _rules(b"PUT", body="kept", n=2, retry_methods=frozenset({"PUT"}))
    assert kept.next(RESET, a, picker, 0.0, b"r") is b and kept.replay() == [b"0123456789"]
    streamed, (a, _b), picker, _ = _rules(b"PUT", body="streamed", n=2, retry_methods=frozenset({"PUT"}))
    assert streamed.next(RESET, a, picker, 0.0, b"r") is None, "a body that was not kept is never resent"
    post, (a, _b), picker, counters = _rules(b"POST", n=2)
    assert post.next(RESET, a, picker, 0.0, b"r") is None
    assert counters.count("retries_exhausted") == 0, "not retriable at all is not 'exhausted'"
    off, (a, _b), picker, _ = _rules(n=2, retry_on=frozenset({"503"}))
    assert off.next(RESET, a, picker, 0.0, b"r") is None, "reset not in --retry-on"


def test_row_timeout_only_with_attempt_timeout_and_only_on_another_endpoint() -> None:
    rs, (a, b), picker, counters = _rules(n=2, attempt_timeout=0.5)
    assert rs.next(TIMEOUT, a, picker, 0.0, b"r", body_done=False) is None, "the upload may be what is slow"
    assert rs.next(TIMEOUT, a, picker, 0.0, b"r") is b
    assert rs.next(TIMEOUT, b, picker, 0.0, b"r") is None, "never the same endpoint again"
    assert counters.count("retries", "timeout") == 1
    off, (a, _b), picker, _ = _rules(n=2)
    assert off.next(TIMEOUT, a, picker, 0.0, b"r") is None, "--attempt-timeout off: a 504 is never retried"
    post, (a, _b), picker, _ = _rules(b"POST", n=2, attempt_timeout=0.5)
    assert post.next(TIMEOUT, a, picker, 0.0, b"r") is None


def test_row_status_only_listed_codes_only_a_whole_body_only_another_endpoint() -> None:
    rs, (a, b), picker, counters = _rules(n=2)
    assert rs.next(503, a, picker, 0.0, b"r", body_done=False) is None, "the body is still arriving"
    assert rs.next(502, a, picker, 0.0, b"r") is None, "502 is not in the default --retry-on"
    assert rs.next(503, a, picker, 0.0, b"r") is b
    assert rs.next(503, b, picker, 0.0, b"r") is None, "no other endpoint: the 503 is forwarded"
    assert counters.count("retries", "503") == 1


def test_row_protocol_failures_are_never_retried() -> None:
    rs, (a, _b), picker, counters = _rules(
        n=2, attempt_timeout=0.5, retry_on=frozenset({"connect-failure", "reset", "502", "503"})
    )
    assert rs.next(PROTOCOL, a, picker, 0.0, b"r") is None
    assert counters.count("retries") == 0


def test_the_budget_bounds_every_row_but_connect_failure() -> None:
    # No share, 0.1 retries/s over the 10 s window: one retry in all.
    rs, (a, b, _c), picker, counters = _rules(
        retry_budget_percent=0, retry_budget_min=0.1, attempt_timeout=0.5
    )
    assert rs.next(RESET, a, picker, 5.0, b"r") is b
    for trigger in (RESET, TIMEOUT, 503):
        assert rs.next(trigger, b, picker, 5.0, b"r") is None
    assert rs.next(CONNECT, b, picker, 5.0, b"r") is not None
    assert [counters.count("retry_budget_exhausted", w) for w in ("reset", "timeout", "503")] == [1, 1, 1]
    assert rs.retries_left == 1, "a refused retry does not spend --max-retries"


def test_retry_on_words_come_from_retry_py() -> None:
    assert RETRY_ON_WORDS == ("connect-failure", "reset")
    with pytest.raises(ConfigError, match="expected connect-failure, reset or a 5xx status code"):
        config_from(build_parser().parse_args(["--retry-on", "timeout"]), {})
