"""Load-balancing policies: what each one does with a set of fake endpoints, and the runtime switch."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.admin import AdminServer, Request
from proxy.balancer import (
    POLICIES,
    ConsistentHash,
    LeastRequest,
    PeakEwma,
    PowerOfTwo,
    Random,
    RoundRobin,
    load_bound,
    make_balancer,
    parse_hash_on,
)
from proxy.config import Config, load_config
from proxy.ewma import FAILURE_LATENCY_S, UNMEASURED_PENALTY, Load
from proxy.pool import Endpoint, UpstreamGroup
from proxy.state import ProxyState
from tests.unit.harness import proxy
from tests.unit.upstreams import StatusServer

_loops: list[asyncio.AbstractEventLoop] = []


@pytest.fixture(autouse=True)
def _close_loops() -> Iterator[None]:
    yield
    while _loops:
        _loops.pop().close()


def group(n: int, **config: float) -> UpstreamGroup:
    loop = asyncio.new_event_loop()
    _loops.append(loop)
    g = UpstreamGroup.from_config(Config(**config), loop)  # type: ignore[arg-type]
    g.update([(f"10.0.0.{i}", 80) for i in range(1, n + 1)])
    return g


def spread(balancer: object, endpoints: list[Endpoint], picks: int, key: bytes | None = None) -> Counter[str]:
    return Counter(balancer.pick(endpoints, (), key).label for _ in range(picks))  # type: ignore[attr-defined]


# -- every policy ----------------------------------------------------------------------------------


def test_registry_has_every_policy() -> None:
    assert list(POLICIES) == ["round_robin", "random", "least_request", "p2c", "peak_ewma", "consistent_hash"]
    for name in POLICIES:
        assert make_balancer(name, Config()).name == name


@pytest.mark.parametrize("name", list(POLICIES))
def test_empty_set_gives_none_and_exclude_is_honoured(name: str) -> None:
    balancer = make_balancer(name, Config())
    g = group(3)
    assert balancer.pick([], (), b"k") is None and balancer.pick([], ()) is None
    a, b, c = g.live
    for key in (None, b"user-1", b"user-2"):
        assert {balancer.pick(g.live, {a, c}, key) for _ in range(20)} == {b}
        picks = {balancer.pick(g.live, (b,), key) for _ in range(50)}
        assert b not in picks and None not in picks
        assert balancer.pick(g.live, {a, b, c}, key) is None
    assert balancer.pick(g.live[:1]) is a


# -- round robin -----------------------------------------------------------------------------------


def test_round_robin_even_spread() -> None:
    g = group(3)
    assert set(spread(RoundRobin(), g.live, 300).values()) == {100}


def test_round_robin_stays_even_over_the_rest_when_one_is_excluded() -> None:
    # One of three ejected: the other two must split evenly, not 2:1 (the excluded one's turn
    # must not always fall to its neighbour).
    g = group(3)
    rr = RoundRobin()
    a, b, c = g.live
    counts = Counter(rr.pick(g.live, {a}).label for _ in range(300))
    assert counts == {b.label: 150, c.label: 150}


def test_round_robin_spread_stays_even_when_set_changes() -> None:
    g = group(2)
    rr = RoundRobin()
    for _ in range(5):
        rr.pick(g.live)
    g.update([("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80), ("10.0.0.4", 80)])
    counts = spread(rr, g.live, 400)
    assert set(counts.values()) == {100} and len(counts) == 4
    g.update([("10.0.0.4", 80)])
    assert set(spread(rr, g.live, 10)) == {"10.0.0.4:80"}
    g.update([])
    assert rr.pick(g.live) is None


def test_group_update_drains_removed_endpoints() -> None:
    g = group(2)
    a, b = g.live
    a.in_flight = 1
    assert g.update([("10.0.0.2", 80), ("10.0.0.3", 80)])
    assert not a.live and [e.label for e in g.live] == ["10.0.0.2:80", "10.0.0.3:80"]
    assert ("10.0.0.1", 80) in g.endpoints, "kept while a request is still in flight"
    assert [s["draining"] for s in g.snapshot()] == [False, False, True]
    a.release()
    assert ("10.0.0.1", 80) not in g.endpoints
    assert not g.update([("10.0.0.2", 80), ("10.0.0.3", 80)]), "same set is not a change"
    assert g.live[0] is b


def test_endpoint_revived_when_it_comes_back() -> None:
    g = group(1)
    (a,) = g.live
    a.in_flight = 1
    g.update([])
    g.update([("10.0.0.1", 80)])
    assert g.live[0] is a and a.live


# -- random ----------------------------------------------------------------------------------------


def test_random_is_uniform_but_not_a_rotation() -> None:
    g = group(3)
    rnd = Random(seed=7)
    counts = spread(rnd, g.live, 6000)
    assert all(1800 < c < 2200 for c in counts.values()), counts
    seq = [rnd.pick(g.live) for _ in range(30)]
    assert any(seq[i] is seq[i + 1] for i in range(29)), "random repeats; round robin never does"


# -- least request ---------------------------------------------------------------------------------


def test_least_request_picks_fewest_in_flight() -> None:
    g = group(3)
    a, b, c = g.live
    a.in_flight, b.in_flight, c.in_flight = 5, 1, 3
    lr = LeastRequest()
    assert {lr.pick(g.live) for _ in range(10)} == {b}
    assert {lr.pick(g.live, (b,)) for _ in range(10)} == {c}


def test_least_request_ties_go_round_robin() -> None:
    g = group(3)
    assert set(spread(LeastRequest(), g.live, 300).values()) == {100}


# -- power of two choices --------------------------------------------------------------------------


def test_p2c_prefers_less_loaded_and_never_picks_the_busiest() -> None:
    g = group(3)
    a, b, c = g.live
    a.in_flight, b.in_flight, c.in_flight = 0, 1, 2
    counts = spread(PowerOfTwo(seed=1), g.live, 3000)
    # a wins every pair it is in (2 of 3 pairs), b only the pair (b, c), c none.
    assert counts[c.label] == 0
    assert 1850 < counts[a.label] < 2150 and 850 < counts[b.label] < 1150, counts


def test_p2c_spreads_evenly_when_loads_are_equal() -> None:
    counts = spread(PowerOfTwo(seed=3), group(3).live, 6000)
    assert all(1800 < c < 2200 for c in counts.values()), counts


# -- peak EWMA -------------------------------------------------------------------------------------


def test_peak_ewma_avoids_a_slow_endpoint_after_observations() -> None:
    g = group(3)
    fast1, slow, fast2 = g.live
    for _ in range(5):
        fast1.observe(200, 0.004, None)
        slow.observe(200, 0.080, None)
        fast2.observe(200, 0.005, None)
    pe = PeakEwma(Config(), seed=5)
    counts = spread(pe, g.live, 3000)
    assert counts[slow.label] == 0, counts
    # With the same latencies, in-flight counts still matter: a busy fast endpoint loses to the
    # slow idle one once latency x (in flight + 1) says it would answer later.
    fast1.in_flight = fast2.in_flight = 30
    assert spread(pe, g.live, 300)[slow.label] > 150
    # Round robin over the same set sends it a third, whatever it measured.
    assert spread(RoundRobin(), g.live, 300)[slow.label] == 100


def test_peak_ewma_takes_peaks_at_once_and_forgets_them_with_time() -> None:
    est = Load(decay=10.0)
    est.observe(0.010, False, now=100.0)
    est.observe(0.200, False, now=100.1)
    assert est.value == 0.200, "a slower sample replaces the estimate at once"
    est.observe(0.010, False, now=100.2)
    # Blended with weight 1 - e^(-0.1/10): 0.2 x 0.99005 + 0.01 x 0.00995, by hand.
    assert est.value == pytest.approx(0.198110, abs=1e-6), "one fast answer 0.1 s later barely moves it"
    est.observe(0.010, False, now=130.2)
    assert est.value < 0.020, "after 3 decay times a fast answer dominates"
    # Read-time decay towards 0: an endpoint that got no samples for a while looks cheaper.
    assert est.cost(130.2) == pytest.approx(est.value)
    assert est.at(140.2) == pytest.approx(est.value * math.exp(-1))
    assert est.cost(140.2) == pytest.approx(est.value * math.exp(-1))
    est.in_flight = 3
    assert est.cost(130.2) == pytest.approx(est.value * 4)


def test_endpoints_estimate_with_the_groups_decay_from_config() -> None:
    g = group(1, ewma_decay=2.0)
    (ep,) = g.live
    assert ep.load.decay == 2.0, "--ewma-decay reaches every endpoint's estimator"
    ep.observe(200, 0.050, None)
    assert ep.load.value == 0.050
    ep.acquire()
    assert (ep.in_flight, ep.requests, ep.load.in_flight) == (1, 1, 1), "the contract's names read the record"
    ep.in_flight += 1  # what a caller still writing the old attribute does: the record follows
    assert ep.load.in_flight == 2
    ep.release()
    ep.release()
    assert ep.in_flight == 0 and ep.requests == 1


def test_peak_ewma_retries_a_slow_endpoint_once_its_estimate_decays() -> None:
    g = group(2, ewma_decay=10.0)
    fast, slow = g.live
    now = [1000.0]
    fast.load.observe(0.005, False, now[0])
    slow.load.observe(0.500, False, now[0])
    pe = PeakEwma(Config(), seed=2, clock=lambda: now[0])
    assert {pe.pick(g.live) for _ in range(20)} == {fast}
    fast.in_flight = 1
    fast.load.observe(0.005, False, now[0] + 60)  # fast kept answering
    now[0] += 60  # slow: 0.5 x e^-6 = 1.2 ms < fast's 5 ms x 2
    assert pe.pick(g.live) is slow


def test_peak_ewma_failures_count_as_slow_and_new_endpoints_get_probed() -> None:
    g = group(3)
    good, failing, new = g.live
    good.observe(200, 0.005, None)
    failing.observe(0, 0.0003, "connect")  # refused at once: must not look fast
    assert failing.load.value == FAILURE_LATENCY_S
    assert new.load.value == 0.0 and new.load.cost(0.0) == 0.0, "unmeasured and idle: try it"
    new.in_flight = 1
    assert new.load.cost(0.0) == UNMEASURED_PENALTY, "one probe at a time until it answers"
    new.in_flight = 0
    counts = spread(PeakEwma(Config(), seed=9), g.live, 600)
    assert counts[failing.label] == 0 and counts[new.label] > 0, counts


# -- consistent hash -------------------------------------------------------------------------------


def hashed(config: Config | None = None) -> ConsistentHash:
    return ConsistentHash(config or Config(policy="consistent_hash", hash_balance_factor=0))


def owners(ch: ConsistentHash, endpoints: list[Endpoint], keys: list[bytes]) -> dict[bytes, str]:
    return {k: ch.pick(endpoints, (), k).label for k in keys}  # type: ignore[union-attr]


KEYS = [b"user-%d" % i for i in range(3000)]


def test_hash_same_key_same_endpoint_and_keys_spread() -> None:
    g = group(3)
    ch = hashed()
    first = owners(ch, g.live, KEYS)
    assert owners(ch, g.live, KEYS) == first
    assert owners(hashed(), list(g.live), KEYS) == first, "another proxy (new ring) agrees"
    shares = Counter(first.values())
    assert len(shares) == 3 and all(750 < c < 1250 for c in shares.values()), shares


def test_hash_ring_gives_every_endpoint_a_fair_share() -> None:
    g = group(10)
    for keys in (KEYS, [b"172.18.%d.%d" % (i // 256, i % 256) for i in range(3000)]):
        shares = Counter(owners(hashed(), g.live, keys).values())
        assert len(shares) == 10 and all(150 < c < 450 for c in shares.values()), shares  # fair: 300


def test_hash_moves_about_one_nth_of_keys_when_the_set_changes() -> None:
    g = group(10)
    ch = hashed()
    before = owners(ch, g.live, KEYS)
    g.update([*(ep.address for ep in g.live), ("10.0.0.11", 80)])
    after = owners(ch, g.live, KEYS)
    moved = [k for k in KEYS if before[k] != after[k]]
    assert 0.05 < len(moved) / len(KEYS) < 0.14, len(moved)  # ideal 1/11 = 9 %
    assert {after[k] for k in moved} == {"10.0.0.11:80"}, "keys only move to the new endpoint"
    g.update([ep.address for ep in g.live if ep.label != "10.0.0.3:80"])
    again = owners(ch, g.live, KEYS)
    moved = [k for k in KEYS if after[k] != again[k]]
    assert {after[k] for k in moved} == {"10.0.0.3:80"}, "only the removed endpoint's keys move"


def test_hash_bounded_load_spills_a_hot_key_over() -> None:
    g = group(3)
    ch = hashed(Config(hash_balance_factor=1.25))
    home = ch.pick(g.live, (), b"hot")
    assert home is not None
    # Requests for one hot key pile up: each goes where the policy says and stays in flight.
    placed = []
    for _ in range(30):
        ep = ch.pick(g.live, (), b"hot")
        assert ep is not None
        ep.in_flight += 1
        placed.append(ep)
    loads = sorted(ep.in_flight for ep in g.live)
    # The bound is ceil(1.25 x (total + 1) / 3): at 30 in flight no endpoint holds more than 13.
    assert max(loads) <= math.ceil(1.25 * 30 / 3), loads
    assert placed[0] is home and Counter(placed)[home] == max(loads)
    # Without the bound the hot key melts its home endpoint.
    unbounded = hashed()
    for ep in g.live:
        ep.in_flight = 0
    for _ in range(30):
        ep = unbounded.pick(g.live, (), b"hot")
        assert ep is not None
        ep.in_flight += 1
    assert sorted(ep.in_flight for ep in g.live) == [0, 0, 30]


ROOT = Path(__file__).resolve().parents[2]
_BOUND = re.compile(re.escape("`ceil(factor \u00d7 (in_flight_total + 1) / N)`"))  # \u00d7: the sign docs use


def _docs_bound(factor: float, in_flight_total: int, n: int) -> int:
    """The bound as docs/proxy.md and README.md write it, evaluated by hand (not by the code)."""
    return math.ceil(factor * (in_flight_total + 1) / n)


def test_the_documented_bound_is_the_one_the_policy_applies() -> None:
    """Drift check (#12): the formula in docs/proxy.md and README's flag table is what pick() does.

    For every placement of load over 3 endpoints the key's home endpoint is kept exactly while it
    holds fewer requests than the documented bound, and skipped from then on.
    """
    for doc in ("docs/proxy.md", "README.md"):
        assert _BOUND.search((ROOT / doc).read_text()), f"{doc} no longer states the bound as the code has it"
    g = group(3)
    ch = hashed(Config(hash_balance_factor=1.25))
    home = ch.pick(g.live, (), b"k")
    assert home is not None
    others = [ep for ep in g.live if ep is not home]
    for mine in range(0, 9):
        for theirs in range(0, 9):
            home.in_flight = mine
            others[0].in_flight, others[1].in_flight = theirs, 0
            bound = _docs_bound(1.25, mine + theirs, 3)
            assert load_bound(1.25, mine + theirs, 3) == bound
            kept = ch.pick(g.live, (), b"k") is home
            assert kept == (mine < bound), (mine, theirs, bound)


def test_hash_requests_without_key_fall_back_to_round_robin() -> None:
    g = group(3)
    assert set(spread(hashed(), g.live, 300, key=None).values()) == {100}


def test_hash_key_from_header_cookie_or_client() -> None:
    headers = [
        (b"Host", b"x"),
        (b"x-USER", b"alice"),
        (b"Cookie", b"theme=dark; session=abc123; other=1"),
    ]
    by = {
        "header:X-User": b"alice",
        "cookie:session": b"abc123",
        "cookie:Session": None,  # cookie names are case-sensitive
        "header:X-Missing": None,
        "client": b"192.0.2.7",
    }
    for spec, want in by.items():
        ch = ConsistentHash(Config(hash_on=spec))
        assert ch.needs_key and ch.key_for(headers, b"192.0.2.7") == want, spec
    assert not RoundRobin().needs_key and RoundRobin().key_for(headers, b"1.2.3.4") is None
    assert parse_hash_on(" header:X-User ") == ("header", b"x-user")
    for bad in ("", "header:", "cookie", "ip", "header:bad name", "query:x"):
        with pytest.raises(ValueError, match="header:NAME, cookie:NAME or client"):
            parse_hash_on(bad)


# -- configuration ---------------------------------------------------------------------------------


def test_policy_flags_and_env() -> None:
    cfg = load_config([], {})
    assert (cfg.policy, cfg.hash_on, cfg.hash_balance_factor, cfg.ewma_decay) == (
        "round_robin",
        "client",
        1.25,
        10.0,
    )
    env = {"PROXY_POLICY": "p2c", "PROXY_HASH_ON": "cookie:sid", "PROXY_EWMA_DECAY": "2.5"}
    cfg = load_config(["--policy", "consistent_hash", "--hash-balance-factor", "0"], env)
    assert (cfg.policy, cfg.hash_on, cfg.hash_balance_factor, cfg.ewma_decay) == (
        "consistent_hash",
        "cookie:sid",
        0.0,
        2.5,
    )
    assert make_balancer(cfg.policy, cfg).key_for([(b"cookie", b"sid=9")], b"") == b"9"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--policy", "fastest"], "--policy / PROXY_POLICY: expected one of round_robin, random"),
        (["--hash-on", "header"], "--hash-on / PROXY_HASH_ON: expected header:NAME"),
        (["--hash-balance-factor", "0.5"], "--hash-balance-factor / PROXY_HASH_BALANCE_FACTOR: must be 0"),
        (["--hash-balance-factor", "-1"], "--hash-balance-factor / PROXY_HASH_BALANCE_FACTOR"),
        (["--ewma-decay", "0"], "--ewma-decay / PROXY_EWMA_DECAY: must be > 0"),
        (["--ewma-decay", "soon"], "--ewma-decay / PROXY_EWMA_DECAY: expected a number"),
    ],
)
def test_bad_policy_options_exit_2_with_a_message(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        load_config(argv, {})
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


# -- runtime switch through the admin API ----------------------------------------------------------


def admin_for(policy: str = "round_robin") -> tuple[AdminServer, ProxyState]:
    g = group(3)
    cfg = Config(policy=policy, hash_on="header:X-User")
    state = ProxyState(cfg, g.loop, g, make_balancer(policy, cfg), None)
    return AdminServer(state), state


def call(admin: AdminServer, method: str, path: str, body: bytes = b"") -> tuple[int, str]:
    path, _, query = path.partition("?")
    reply = admin.dispatch(Request(method, path, query, {}, body, peer="127.0.0.1"))  # a loopback client
    return reply.status, reply.body.decode()


def test_admin_switches_policy_at_runtime(caplog: pytest.LogCaptureFixture) -> None:
    admin, state = admin_for()
    assert call(admin, "GET", "/policy")[1].count("peak_ewma") == 1
    with caplog.at_level("INFO", logger="proxy.admin"):
        status, body = call(admin, "PUT", "/policy", b"peak_ewma\n")
    assert status == 200 and '"previous": "round_robin"' in body
    assert isinstance(state.balancer, PeakEwma)
    assert "round_robin -> peak_ewma" in caplog.text
    upstreams = call(admin, "GET", "/upstreams")[1]
    assert '"policy": "peak_ewma"' in upstreams and '"latency_ewma_ms": 0.0' in upstreams
    state.group.live[0].observe(200, 0.0125, None)
    rows = json.loads(call(admin, "GET", "/upstreams")[1])["endpoints"]
    assert rows[0]["latency_ewma_ms"] == pytest.approx(12.5, rel=0.01), "decays by 1 % in 0.1 s"
    assert call(admin, "POST", "/policy?name=consistent_hash")[0] == 200
    assert (
        isinstance(state.balancer, ConsistentHash)
        and state.balancer.key_for([(b"X-User", b"u")], b"") == b"u"
    )
    assert call(admin, "PUT", "/policy", b'{"policy": "p2c"}')[0] == 200 and state.balancer.name == "p2c"
    assert state.counters.count("policy_switches") == 3
    before = state.balancer
    status, body = call(admin, "PUT", "/policy", b"fastest")
    assert status == 400 and "unknown policy 'fastest'" in body and "peak_ewma" in body
    status, body = call(admin, "PUT", "/policy")
    assert status == 400 and "unknown policy ''" in body
    assert state.balancer is before, "a bad request leaves the policy alone"


# -- through a real proxy: hash key from the request, switch over the admin port -------------------


async def _get(port: int, extra: bytes = b"", method: bytes = b"GET", path: bytes = b"/") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"%s %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n%s\r\n" % (method, path, extra))
    data = await reader.read()
    writer.close()
    return data.split(b"\r\n\r\n", 1)[1]


def test_proxy_hashes_on_header_and_switches_policy_over_admin() -> None:
    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            backends = [await stack.enter_async_context(StatusServer(body=b"b%d" % i)) for i in range(3)]
            srv = await stack.enter_async_context(
                proxy(
                    endpoints=[b.address for b in backends], policy="consistent_hash", hash_on="header:X-User"
                )
            )
            users = [b"user-%d" % i for i in range(12)]
            first = {u: await _get(srv.port, b"X-User: %s\r\n" % u) for u in users}
            again = {u: await _get(srv.port, b"X-User: %s\r\n" % u) for u in users}
            assert first == again, "each user sticks to one backend"
            assert len(set(first.values())) > 1, "users spread over backends"
            keyless = Counter([await _get(srv.port) for _ in range(9)])
            assert set(keyless.values()) == {3}, "no X-User: round robin"
            reply = await _get(srv.admin_port, b"Content-Length: 0\r\n", b"POST", b"/policy?name=p2c")
            assert b'"policy": "p2c"' in reply
            assert srv.state is not None and srv.state.balancer.name == "p2c"
            same_user = Counter([await _get(srv.port, b"X-User: user-1\r\n") for _ in range(30)])
            assert len(same_user) > 1, "after the switch the key no longer pins the backend"

    asyncio.run(asyncio.wait_for(main(), 10))
