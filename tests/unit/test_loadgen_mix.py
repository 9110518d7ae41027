"""The request mix: weights, wire bytes, and a scenario's mix and load shape end to end."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from loadgen.config import load_config, parse_target
from loadgen.histogram import merge_exports
from loadgen.mix import MixCycle, Request, prepare, weighted_cycle
from loadgen.plan import make_plan
from loadgen.scenario import load_scenario
from loadgen.schedule import ClosedLoop, OpenLoop

from .loadgen_server import ThreadedServer


def test_weighted_cycle_is_smooth_and_exact() -> None:
    order = weighted_cycle([3, 1, 1])
    assert Counter(order) == {0: 600, 1: 200, 2: 200}
    # smooth: in every window of 5, each entry appears its share (3/1/1) give or take one
    for i in range(0, len(order) - 5):
        window = Counter(order[i : i + 5])
        assert 2 <= window[0] <= 4 and window[1] <= 2 and window[2] <= 2
    assert weighted_cycle([2.0]) == [0]


def test_prepared_request_bytes() -> None:
    target = parse_target("http://h:8080/ignored")
    post = prepare(Request(method="POST", path="/echo", headers=(("X-A", "1"),), body_size=5), target)
    head, body = post.wire.split(b"\r\n\r\n")
    assert head.startswith(b"POST /echo HTTP/1.1\r\nHost: h:8080\r\n")
    assert b"\r\nContent-Length: 5" in head and head.count(b"Content-Length") == 1 and b"X-A: 1" in head
    assert body == b"xxxxx" and not post.head and post.label == "POST /echo"
    assert prepare(Request(method="HEAD", path="/"), target).head
    mix = MixCycle([Request(weight=1, path="/a"), Request(weight=3, path="/b")], target)
    labels = Counter(mix.next().label for _ in range(400))
    assert labels == {"GET /a": 100, "GET /b": 300} and mix.single is None


def test_scenario_ramp_and_mix_in_open_loop(tmp_path: Path) -> None:
    """A rate scenario: the ramp's integral per second, the mix's weights on the wire."""
    path = tmp_path / "ramp.yaml"
    path.write_text(
        "name: ramp\nmode: rate\n"
        "stages:\n  - {kind: ramp, duration: 2s, to: 200}\n  - {kind: hold, duration: 1s}\n"
        "mix:\n  - {weight: 3, method: GET, path: /a}\n"
        "  - {weight: 1, method: POST, path: /b, body_size: 100}\n"
    )
    with ThreadedServer() as srv:
        config = load_config([srv.url, "--scenario", str(path), "--quiet"], {})
        plan = make_plan(config, load_scenario(path))
        assert (plan.mode, plan.duration_s, plan.peak, plan.constant) == ("open", 3.0, 200.0, None)
        result = asyncio.run(OpenLoop(plan).run())
    merged = merge_exports([result.timeline.export()])
    # 0 -> 200 req/s over 2 s, then 200: 50, 150 and 200 requests due in seconds 0, 1, 2
    assert [s.intended for s in merged.seconds] == [50, 150, 200]
    assert sum(s.requests for s in merged.seconds) == srv.served == 400
    assert srv.seen == {("GET", "/a", 0): 300, ("POST", "/b", 100): 100}


def test_scenario_changing_concurrency_in_closed_loop(tmp_path: Path) -> None:
    path = tmp_path / "steps.toml"
    path.write_text(
        'name = "steps"\nmode = "concurrency"\n'
        '[[stages]]\nkind = "hold"\nduration = "1s"\ntarget = 2\n'
        '[[stages]]\nkind = "step"\nduration = "1s"\ntarget = 5\n'
    )
    with ThreadedServer() as srv:
        plan = make_plan(load_config([srv.url, "--scenario", str(path), "-q"], {}), load_scenario(path))
        result = asyncio.run(ClosedLoop(plan).run())
    assert result.stats["connections_used"] == 5 == srv.connections  # 2, then 3 more at t = 1 s
