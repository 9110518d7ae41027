"""Scenario files: every mistake is one clear line naming the file and the field; shapes are right."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loadgen.scenario import Action, RequestSpec, ScenarioError, load_scenario, parse_scenario

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "loadgen" / "scenarios").glob("*.*"))

# Prefixes for the mix and actions cases: a valid stage list first.
MIX = "stages:\n- {kind: hold, duration: 1, target: 1}\nmix:\n"
ACT = "stages:\n- {kind: hold, duration: 10, target: 1}\nactions:\n"

GOOD = """\
name: demo
url: http://proxy:8000/
mode: rate
stages:
  - {kind: hold, duration: 5, target: 100}
mix:
  - {weight: 7, method: POST, path: /echo, body_size: 1024, headers: {Content-Type: text/plain}}
  - {weight: 3, method: get, path: /}
actions:
  - {at: 4s, kind: kill, target: "backend:1"}
  - {at: 1, kind: scale, target: backend, replicas: 5}
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str, name: str = "s.yaml") -> str:
    path = write(tmp_path, text, name)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert "\n" not in message, "one line"
    assert message.startswith(f"{path}: "), "names the file first"
    return message[len(f"{path}: ") :]


def test_a_good_file_gives_the_contracts_objects(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, GOOD))
    assert (s.name, s.mode, s.url, s.duration_s) == ("demo", "rate", "http://proxy:8000/", 5.0)
    assert s.mix == [
        RequestSpec(7.0, "POST", "/echo", (("Content-Type", "text/plain"),), 1024),
        RequestSpec(3.0, "GET", "/", (), 0),
    ]
    # Sorted by time, whatever the file's order; durations with units are seconds.
    assert s.actions == [
        Action(1.0, "scale", "backend", {"replicas": 5}),
        Action(4.0, "kill", "backend:1", {}),
    ]
    assert (s.actions[1].service, s.actions[1].selector) == ("backend", "1")


def test_toml_and_yaml_give_the_same_scenario(tmp_path: Path) -> None:
    toml = """\
    name = "demo"
    url = "http://proxy:8000/"
    [[stages]]
    kind = "hold"
    duration = 5
    target = 100
    [[mix]]
    weight = 7
    method = "POST"
    path = "/echo"
    body_size = 1024
    headers = {Content-Type = "text/plain"}
    [[mix]]
    weight = 3
    method = "get"
    path = "/"
    [[actions]]
    at = "4s"
    kind = "kill"
    target = "backend:1"
    [[actions]]
    at = 1
    kind = "scale"
    target = "backend"
    replicas = 5
    """
    a = load_scenario(write(tmp_path, GOOD, "demo.yaml"))
    b = load_scenario(write(tmp_path, toml, "demo.toml"))
    assert (a.stages, a.mix, a.actions, a.url) == (b.stages, b.mix, b.actions, b.url)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The example from the issue: a word where a number belongs.
        (
            "stages:\n- {kind: hold, duration: 1, target: 5}\n- {kind: hold, duration: 2}\n"
            "- {kind: hold, duration: ten}\n",
            'stages[2].duration: must be a positive number of seconds (or a string like "500ms", '
            '"10s", "2m"), got "ten"',
        ),
        ("stages:\n- {kind: hold, duration: 0, target: 5}\n", "stages[0].duration: must be a positive"),
        ("stages:\n- {kind: hold, duration: -3, target: 5}\n", "stages[0].duration: must be a positive"),
        ("stages:\n- {kind: hold, durration: 1, target: 5}\n",
         'stages[0]: unknown key "durration" (did you mean "duration"?); allowed: kind, duration, target'),
        ("stages:\n- {kind: hold, duration: 1, target: 5}\nspeed: 3\n",
         'unknown key "speed"; allowed: name, description, url, mode, stages, mix, actions'),
        ("stages:\n- {kind: wait, duration: 1}\n",
         'stages[0].kind: must be one of hold, ramp, step, spike, got "wait"'),
        ("stages:\n- {duration: 1}\n", "stages[0].kind: required: one of hold, ramp, step, spike"),
        ("stages: []\n", "stages: must not be empty"),
        ("mode: rate\n", "stages: required"),
        ("stages: {kind: hold}\n", 'stages: must be a list, got {"kind": "hold"}'),
        ("stages:\n- {kind: hold, duration: 1}\n", "stages[0].target: required in the first stage"),
        ("stages:\n- {kind: ramp, duration: 1}\n", "stages[0].to: required"),
        ("stages:\n- {kind: step, duration: 1}\n", "stages[0].target: required"),
        ("stages:\n- {kind: spike, duration: 5, target: 9}\n", "stages[0].peak_duration: required"),
        ("stages:\n- {kind: spike, duration: 5, target: 9, peak_duration: 3, at: 4}\n",
         "stages[0].peak_duration: the peak (4 s + 3 s) must fit in the stage's duration (5 s)"),
        ("stages:\n- {kind: hold, duration: 1, target: -5}\n",
         "stages[0].target: must be a number of requests per second >= 0 (mode: rate), got -5"),
        ("mode: concurrency\nstages:\n- {kind: hold, duration: 1, target: 2.5}\n",
         "stages[0].target: must be a whole number of connections >= 0 (mode: concurrency), got 2.5"),
        ("stages:\n- {kind: hold, duration: 1, target: 0}\n", "stages: every level is 0"),
        ("mode: closed\nstages:\n- {kind: hold, duration: 1, target: 1}\n",
         'mode: must be one of rate, concurrency, got "closed"'),
        ("url: https://x/\nstages:\n- {kind: hold, duration: 1, target: 1}\n", "url: must start with http://"),
        (MIX + "- {weight: 0}\n",
         "mix[0].weight: must be a positive number, got 0"),
        (MIX + "- {weight: -1}\n",
         "mix[0].weight: must be a positive number, got -1"),
        (MIX + "- {method: FETCH}\n",
         'mix[0].method: must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, got "FETCH"'),
        (MIX + "- {path: echo}\n",
         'mix[0].path: must start with / and contain no spaces or control characters, got "echo"'),
        (MIX + "- {method: POST, body_size: 1.5}\n",
         "mix[0].body_size: must be an integer number of bytes"),
        (MIX + "- {method: HEAD, body_size: 5}\n",
         "mix[0].body_size: a HEAD request carries no body"),
        (MIX + "- {headers: {Content-Length: 5}}\n",
         "mix[0].headers: content-length is set from body_size"),
        (MIX + "- {headers: {'X A': b}}\n",
         'mix[0].headers: bad header name "X A"'),
        (MIX + "- {headers: [a]}\n",
         "mix[0].headers: must be a mapping of header name to value"),
        (MIX + "- {wieght: 1}\n",
         'mix[0]: unknown key "wieght" (did you mean "weight"?)'),
        (ACT + "- {at: 11, kind: kill, target: backend}\n",
         "actions[0].at: 11 s is after the end of the stages (10 s)"),
        (ACT + "- {at: 1, kind: explode, target: x}\n",
         'actions[0].kind: must be one of stop, kill, pause, unpause, restart, scale, policy, got "explode"'),
        (ACT + "- {kind: kill, target: backend}\n",
         "actions[0].at: required"),
        (ACT + "- {at: 1, kind: kill}\n",
         "actions[0].target: required"),
        (ACT + "- {at: 1, kind: kill, target: 'backend:first'}\n",
         'actions[0].target: must be SERVICE, SERVICE:N, SERVICE:random or SERVICE:all, got "backend:first"'),
        (ACT + "- {at: 1, kind: kill, target: 'backend:0'}\n",
         "actions[0].target: Compose container numbers start at 1"),
        (ACT + "- {at: 1, kind: scale, target: backend}\n",
         "actions[0].replicas: required"),
        (ACT + "- {at: 1, kind: scale, target: backend, replicas: two}\n",
         'actions[0].replicas: must be an integer from 0 to 50, got "two"'),
        (ACT + "- {at: 1, kind: scale, target: 'backend:1', replicas: 2}\n",
         'actions[0].target: scale takes a service, not a replica: "backend"'),
        (ACT + "- {at: 1, kind: kill, target: backend, replicas: 2}\n",
         'actions[0]: unknown key "replicas"; allowed: at, kind, target, signal'),
        (ACT + "- {at: 1, kind: policy, target: proxy}\n",
         "actions[0].policy: required"),
        (ACT + "- {at: 1, kind: kill, target: b, signal: 'KILL me'}\n",
         'actions[0].signal: must be a signal name like SIGKILL or a number, got "KILL me"'),
        ("- just\n- a list\n", 'the file must hold a mapping of keys to values, got ["just", "a list"]'),
        ("", "the file must hold a mapping of keys to values, got null"),
        ("stages: [\n", "not valid YAML: line 2, column 1"),
    ],
)  # fmt: skip
def test_each_mistake_is_one_line_naming_the_field(tmp_path: Path, text: str, expected: str) -> None:
    assert error_of(tmp_path, text).startswith(expected)


def test_toml_syntax_errors_and_file_problems(tmp_path: Path) -> None:
    assert error_of(tmp_path, "stages = [", "s.toml").startswith("not valid TOML: ")
    assert error_of(tmp_path, "stages: []", "s.json").startswith("unknown scenario format '.json'")
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ScenarioError, match=f"^{missing}: no such file$"):
        load_scenario(missing)


def test_yaml_booleans_are_not_numbers(tmp_path: Path) -> None:
    # YAML's `yes` is True, and True is an int in Python: it must not become 1 req/s.
    assert error_of(tmp_path, "stages:\n- {kind: hold, duration: 1, target: yes}\n").startswith(
        "stages[0].target: must be a number of requests per second >= 0 (mode: rate), got true"
    )


def shape(stages: list[dict], mode: str = "rate") -> object:
    return parse_scenario({"mode": mode, "stages": stages}, "t.yaml")


def test_hold_ramp_step_spike_levels_over_time() -> None:
    s = shape(
        [
            {"kind": "ramp", "duration": 10, "to": 100},  # 0..10: 0 -> 100
            {"kind": "hold", "duration": 5},  # 10..15: 100 (previous level)
            {"kind": "spike", "duration": 10, "target": 500, "at": 2, "peak_duration": 3},  # 17..20 peak
            {"kind": "ramp", "duration": 4, "to": 300},  # 25..29: from 100 (the spike went back)
            {"kind": "step", "duration": "2s", "target": 50},  # 29..31
        ]
    )
    assert s.duration_s == 31.0
    expected = {
        0: 0.0, 2.5: 25.0, 5: 50.0, 9.99: pytest.approx(99.9), 10: 100.0, 14.9: 100.0,
        15: 100.0, 16.99: 100.0, 17: 500.0, 19.99: 500.0, 20: 100.0, 24.9: 100.0,
        25: 100.0, 27: 200.0, 29: 50.0, 30.9: 50.0,
    }  # fmt: skip
    for t, level in expected.items():
        assert s.target_at(t) == level, t
    # Outside the run: the edge levels, never a drop to 0 for a caller a tick late.
    assert s.target_at(-1) == 0.0 and s.target_at(31) == 50.0 and s.target_at(1e9) == 50.0


def test_ramp_from_overrides_the_previous_level_and_concurrency_levels() -> None:
    s = shape(
        [{"kind": "hold", "duration": 2, "target": 10}, {"kind": "ramp", "duration": 2, "from": 30, "to": 50}]
    )
    assert [s.target_at(t) for t in (1, 2, 3)] == [10.0, 30.0, 40.0]
    c = shape(
        [{"kind": "step", "duration": 2, "target": 4}, {"kind": "ramp", "duration": 4, "to": 8}],
        "concurrency",
    )
    assert c.mode == "concurrency" and [c.target_at(t) for t in (0, 2, 4, 6)] == [4.0, 4.0, 6.0, 8.0]


def test_default_name_is_the_file_stem_and_mix_defaults(tmp_path: Path) -> None:
    s = load_scenario(
        write(tmp_path, "stages:\n- {kind: hold, duration: 1, target: 1}\nmix:\n- {}\n", "my-run.yml")
    )
    assert s.name == "my-run" and s.url is None and s.mode == "rate"
    assert s.mix == [RequestSpec(1.0, "GET", "/", (), 0)]
    bare = load_scenario(write(tmp_path, "stages:\n- {kind: hold, duration: 1, target: 1}\n"))
    assert bare.mix == [] and bare.actions == []  # the CLI's request, no actions


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_scenarios_are_valid(path: Path) -> None:
    s = load_scenario(path)
    assert s.url == "http://proxy:8000/", "shipped scenarios target the lab's proxy from its network"
    assert s.duration_s > 0 and math.isfinite(s.duration_s)
    assert all(0 <= a.at_s <= s.duration_s for a in s.actions)


def test_shipped_scenarios_cover_the_docs_experiments() -> None:
    names = {p.name for p in SHIPPED}
    assert {
        "policy-slow-replica.yaml",
        "kill-replica.yaml",
        "scale-out-in.yaml",
        "post-heavy-kill.yaml",
    } <= names
    kill = load_scenario(REPO / "loadgen/scenarios/kill-replica.yaml")
    assert [(a.at_s, a.kind, a.target) for a in kill.actions] == [(10.0, "kill", "backend:1")]
    post = load_scenario(REPO / "loadgen/scenarios/post-heavy-kill.yaml")
    weights = {spec.method: spec.weight / sum(m.weight for m in post.mix) for spec in post.mix}
    assert weights == {"POST": 0.7, "GET": 0.3} and [a.kind for a in post.actions] == ["kill"]
    scale = load_scenario(REPO / "loadgen/scenarios/scale-out-in.yaml")
    assert [a.args["replicas"] for a in scale.actions] == [5, 2]


def test_cli_exits_2_with_the_scenario_error(tmp_path: Path) -> None:
    bad = write(tmp_path, "stages:\n- {kind: hold, duration: ten, target: 5}\n", "bad.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "loadgen", "http://127.0.0.1:9/", "--scenario", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"loadgen: error: {bad}: stages[0].duration: must be a positive number")
    assert result.stdout == ""
