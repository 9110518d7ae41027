"""Scenario files: how the load changes over time, what it is made of, and what happens to the lab.

A scenario turns one experiment of the docs ("kill a replica at load", "scale out and in at load")
into a file that can be rerun and compared, instead of a shell session with a stopwatch. It has
three parts, each validated up front so that a typo costs one line of stderr, not a 30 s run:

* ``stages``: the load level over time, in requests per second (``mode: rate``, the open loop) or
  in connections (``mode: concurrency``, the closed loop). Four shapes, played one after another;
  each starts from the level the previous one ended at, like k6's stages:

  ======== ==================================== ============================================
  kind     fields                               level during the stage
  ======== ==================================== ============================================
  hold     duration, target (optional)          ``target``, or the previous level when omitted
  ramp     duration, to, from (optional)        linear from ``from`` (default: the previous
                                                level, 0 for the first stage) to ``to``
  step     duration, target                     jumps to ``target`` and stays there
  spike    duration, target, peak_duration,     the previous level, except ``target`` from
           at (optional, default 0)             ``at`` to ``at + peak_duration`` in the stage;
                                                the next stage starts from the previous level
  ======== ==================================== ============================================

* ``mix``: weighted request kinds ``{weight, method, path, headers, body_size}``; each entry gets
  weight / sum of weights of the requests, in a fixed smooth weighted round-robin order (not at
  random: see ``mix.py``), so every second carries each entry's share. Absent: the CLI's request
  (URL path, ``--method``, ``--header``), so a scenario can be only a load shape.
* ``actions``: things done to containers at a time into the run (``at``, seconds): ``stop``,
  ``kill``, ``pause``, ``unpause``, ``restart`` a service's containers, ``scale`` a service, and
  ``policy``: switch the proxy's load-balancing policy through its admin API (``PUT /policy``).
  ``actions.py`` performs them; this module only checks their form.

Durations are seconds, as a number or a string with a unit (``"500ms"``, ``"10s"``, ``"2m"``).
Files are YAML (``.yaml``/``.yml``) or TOML (``.toml``) with the same structure. Every error is a
:class:`ScenarioError` whose message names the file and the field path, e.g.
``scenarios/x.yaml: stages[2].duration: must be a positive number of seconds, got "ten"``.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NoReturn, TypedDict

import yaml

MODES = ("rate", "concurrency")
STAGE_KINDS = ("hold", "ramp", "step", "spike")
ACTION_KINDS = ("stop", "kill", "pause", "unpause", "restart", "scale", "policy")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MAX_BODY_SIZE = 64 * 1024 * 1024
MAX_REPLICAS = 50

_TOP_KEYS = ("name", "description", "url", "mode", "stages", "mix", "actions")
_STAGE_KEYS = {
    "hold": ("kind", "duration", "target"),
    "ramp": ("kind", "duration", "from", "to"),
    "step": ("kind", "duration", "target"),
    "spike": ("kind", "duration", "target", "peak_duration", "at"),
}
_MIX_KEYS = ("weight", "method", "path", "headers", "body_size")
_ACTION_ARGS = {
    "stop": ("timeout",),  # seconds of grace before SIGKILL, like `docker stop -t`
    "kill": ("signal",),
    "pause": (),
    "unpause": (),
    "restart": ("timeout",),
    "scale": ("replicas", "timeout"),  # timeout: grace of the replicas removed
    "policy": ("policy", "admin_port"),  # PUT the proxy admin API's /policy (proxy/admin.py)
}
_ACTION_KEYS = ("at", "kind", "target")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}
_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m)?\s*$")
# A Compose service name, then an optional replica selector: a container number, random or all.
_TARGET_RE = re.compile(r"^([a-zA-Z0-9][a-zA-Z0-9_.-]*)(?::([0-9]+|random|all))?$")
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_SIGNAL_RE = re.compile(r"^(SIG)?[A-Z0-9]+$|^[0-9]+$")
_POLICY_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message is shown to the user as is (CLI: exit 2)."""


@dataclass(frozen=True)
class Stage:
    """One stage, normalised: ``start``/``end`` are elapsed seconds, levels are resolved numbers."""

    kind: str
    start: float
    end: float
    level_from: float  # level at the start (ramp), or the base level (spike)
    level_to: float  # level at the end (ramp, hold, step) or the peak (spike)
    peak_start: float = 0.0  # spike only, elapsed seconds
    peak_end: float = 0.0

    def level_at(self, t: float) -> float:
        if self.kind == "ramp":
            span = self.end - self.start
            frac = (t - self.start) / span if span > 0 else 1.0
            return self.level_from + (self.level_to - self.level_from) * min(1.0, max(0.0, frac))
        if self.kind == "spike":
            return self.level_to if self.peak_start <= t < self.peak_end else self.level_from
        return self.level_to

    @property
    def exit_level(self) -> float:
        """The level the next stage starts from (a spike goes back to its base)."""
        return self.level_from if self.kind == "spike" else self.level_to


@dataclass(frozen=True)
class RequestSpec:
    """One kind of request in the mix; ``body_size`` bytes of body (0: none)."""

    weight: float
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body_size: int = 0


class ActionArgs(TypedDict, total=False):
    """The extra fields of an action, by kind (validated in :func:`_actions`)."""

    replicas: int  # scale
    policy: str  # policy
    admin_port: int  # policy
    timeout: float  # stop, restart, scale: seconds of grace
    signal: str  # kill: a name like SIGKILL or a number, as text


@dataclass(frozen=True)
class Action:
    """Something done to the lab's containers ``at_s`` seconds into the run (see ``actions.py``).

    ``target`` is ``service`` (every container of it; what ``scale`` takes) or ``service:N`` (the
    replica whose Compose container number is N, i.e. ``<project>-backend-N``), ``service:random``
    (one replica picked when the action runs) or ``service:all``. ``args`` holds the kind's extra
    fields: ``replicas`` (scale), ``timeout`` (stop, restart, scale), ``signal`` (kill),
    ``policy`` and ``admin_port`` (policy).
    """

    at_s: float
    kind: str
    target: str
    args: ActionArgs = field(default_factory=lambda: ActionArgs())

    @property
    def service(self) -> str:
        return self.target.split(":", 1)[0]

    @property
    def selector(self) -> str:
        """``all``, ``random`` or a container number as a string."""
        _, _, sel = self.target.partition(":")
        return sel or "all"


@dataclass(frozen=True)
class Scenario:
    """A validated scenario; :meth:`target_at` is what the schedulers ask once per tick."""

    name: str
    mode: Literal["rate", "concurrency"]
    stages: tuple[Stage, ...]
    mix: list[RequestSpec]
    actions: list[Action]
    url: str | None = None
    description: str = ""
    source: str = ""

    @property
    def duration_s(self) -> float:
        return self.stages[-1].end if self.stages else 0.0

    def target_at(self, t: float) -> float:
        """Requests per second (rate mode) or connections (concurrency mode) at elapsed ``t``.

        Before 0 it is the first stage's level, after the end the last level: a caller that
        overshoots by a tick keeps a sane value instead of dropping to 0.
        """
        stages = self.stages
        if t < 0:
            return stages[0].level_at(stages[0].start)
        for stage in stages:
            if t < stage.end:
                return stage.level_at(t)
        return stages[-1].level_at(stages[-1].end)


# ---------------------------------------------------------------------------------------------
# Loading and validation


def load_scenario(path: str | Path) -> Scenario:
    """Read, parse and validate a scenario file; raises :class:`ScenarioError` (one clear line)."""
    p = Path(path)
    where = str(path)
    suffix = p.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ScenarioError(
            f"{where}: unknown scenario format {suffix or '(no extension)'!r}, expected .yaml, .yml or .toml"
        )
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{where}: cannot read: {exc}") from None
    if suffix == ".toml":
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ScenarioError(f"{where}: not valid TOML: {exc}") from None
    else:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ScenarioError(f"{where}: not valid YAML: {at}{problem}") from None
    return parse_scenario(doc, where, default_name=p.stem)


def parse_scenario(doc: object, where: str = "<scenario>", default_name: str = "scenario") -> Scenario:
    """Validate an already parsed document (a dict as YAML/TOML give it)."""
    v = _Validator(where)
    top = v.mapping(doc, "", _TOP_KEYS)
    name = v.string(top.get("name", default_name), "name")
    description = v.string(top.get("description", ""), "description", allow_empty=True)
    url = top.get("url")
    if url is not None:
        url = v.string(url, "url")
        if not url.startswith("http://"):
            v.fail("url", f"must start with http://, got {_show(url)}")
    mode_raw = top.get("mode", "rate")
    if mode_raw not in MODES:
        v.fail("mode", f"must be one of {', '.join(MODES)}, got {_show(mode_raw)}")
    mode: Literal["rate", "concurrency"] = "rate" if mode_raw == "rate" else "concurrency"
    if "stages" not in top:
        v.fail("stages", "required: a list of stages (hold, ramp, step, spike)")
    stages = _stages(v, top["stages"], mode)
    duration = stages[-1].end
    mix = _mix(v, top.get("mix", []))
    actions = _actions(v, top.get("actions", []), duration)
    return Scenario(
        name=name,
        mode=mode,
        stages=stages,
        mix=mix,
        actions=actions,
        url=url,
        description=description,
        source=where,
    )


def _stages(v: _Validator, raw: object, mode: str) -> tuple[Stage, ...]:
    items = v.sequence(raw, "stages", non_empty=True)
    stages: list[Stage] = []
    t = 0.0
    prev: float | None = None
    for i, item in enumerate(items):
        at = f"stages[{i}]"
        kind = v.kind(item, at, STAGE_KINDS)
        d = v.mapping(item, at, _STAGE_KEYS[kind])
        if "duration" not in d:
            v.fail(f"{at}.duration", "required")
        duration = v.seconds(d["duration"], f"{at}.duration")
        end = t + duration
        if kind == "hold":
            if "target" in d:
                level = v.level(d["target"], f"{at}.target", mode)
            elif prev is None:
                v.fail(f"{at}.target", "required in the first stage (there is no previous level to hold)")
            else:
                level = prev
            stage = Stage("hold", t, end, level, level)
        elif kind == "ramp":
            if "to" not in d:
                v.fail(f"{at}.to", "required: the level the ramp ends at")
            start_level = v.level(d["from"], f"{at}.from", mode) if "from" in d else (prev or 0.0)
            stage = Stage("ramp", t, end, start_level, v.level(d["to"], f"{at}.to", mode))
        elif kind == "step":
            if "target" not in d:
                v.fail(f"{at}.target", "required: the level to jump to")
            level = v.level(d["target"], f"{at}.target", mode)
            stage = Stage("step", t, end, level, level)
        else:  # spike
            for key in ("target", "peak_duration"):
                if key not in d:
                    v.fail(f"{at}.{key}", "required")
            peak = v.level(d["target"], f"{at}.target", mode)
            peak_d = v.seconds(d["peak_duration"], f"{at}.peak_duration")
            offset = v.seconds(d.get("at", 0), f"{at}.at", allow_zero=True)
            if offset + peak_d > duration + 1e-9:
                v.fail(
                    f"{at}.peak_duration",
                    f"the peak ({_num(offset)} s + {_num(peak_d)} s) must fit in the stage's "
                    f"duration ({_num(duration)} s)",
                )
            base = prev or 0.0
            stage = Stage("spike", t, end, base, peak, t + offset, t + offset + peak_d)
        stages.append(stage)
        prev = stage.exit_level
        t = end
    if not any(s.level_to > 0 or s.level_from > 0 for s in stages):
        v.fail("stages", "every level is 0: the scenario would send nothing")
    return tuple(stages)


def _mix(v: _Validator, raw: object) -> list[RequestSpec]:
    items = v.sequence(raw, "mix")
    mix: list[RequestSpec] = []
    for i, item in enumerate(items):
        at = f"mix[{i}]"
        d = v.mapping(item, at, _MIX_KEYS)
        weight = v.number(d.get("weight", 1), f"{at}.weight", positive=True)
        method = d.get("method", "GET")
        if not isinstance(method, str) or method.upper() not in METHODS:
            v.fail(f"{at}.method", f"must be one of {', '.join(METHODS)}, got {_show(method)}")
        method = method.upper()
        path = d.get("path", "/")
        if (
            not isinstance(path, str)
            or not path.startswith("/")
            or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in path)
        ):
            v.fail(
                f"{at}.path",
                f"must start with / and contain no spaces or control characters, got {_show(path)}",
            )
        headers = _headers(v, d.get("headers", {}), f"{at}.headers")
        body_size = d.get("body_size", 0)
        if (
            isinstance(body_size, bool)
            or not isinstance(body_size, int)
            or not 0 <= body_size <= MAX_BODY_SIZE
        ):
            v.fail(
                f"{at}.body_size",
                f"must be an integer number of bytes from 0 to {MAX_BODY_SIZE}, got {_show(body_size)}",
            )
        if body_size and method == "HEAD":
            v.fail(f"{at}.body_size", "a HEAD request carries no body")
        framing = {name.lower() for name, _ in headers} & {"content-length", "transfer-encoding"}
        if framing:
            v.fail(f"{at}.headers", f"{sorted(framing)[0]} is set from body_size, do not give it")
        mix.append(RequestSpec(weight, method, path, headers, body_size))
    return mix


def _headers(v: _Validator, raw: object, at: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, Mapping):
        v.fail(at, f"must be a mapping of header name to value, got {_show(raw)}")
    out = []
    for name, value in raw.items():
        if not isinstance(name, str) or not _TOKEN_RE.match(name):
            v.fail(at, f"bad header name {_show(name)}")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            v.fail(f"{at}.{name}", f"must be a string, got {_show(value)}")
        value = str(value)
        if any(c in value for c in "\r\n\0"):
            v.fail(f"{at}.{name}", "contains CR, LF or NUL")
        out.append((name, value))
    return tuple(out)


def _actions(v: _Validator, raw: object, duration: float) -> list[Action]:
    items = v.sequence(raw, "actions")
    actions: list[Action] = []
    for i, item in enumerate(items):
        at = f"actions[{i}]"
        kind = v.kind(item, at, ACTION_KINDS)
        d = v.mapping(item, at, _ACTION_KEYS + _ACTION_ARGS[kind])
        for key in ("at", "target"):
            if key not in d:
                v.fail(f"{at}.{key}", "required")
        at_s = v.seconds(d["at"], f"{at}.at", allow_zero=True)
        if at_s > duration:
            v.fail(f"{at}.at", f"{_num(at_s)} s is after the end of the stages ({_num(duration)} s)")
        target = d["target"]
        m = _TARGET_RE.match(target) if isinstance(target, str) else None
        if m is None:
            v.fail(
                f"{at}.target",
                f"must be SERVICE, SERVICE:N, SERVICE:random or SERVICE:all, got {_show(target)}",
            )
        if m.group(2) == "0":
            v.fail(f"{at}.target", "Compose container numbers start at 1")
        args = ActionArgs()
        if kind == "scale":
            if m.group(2) is not None:
                v.fail(f"{at}.target", f"scale takes a service, not a replica: {_show(m.group(1))}")
            if "replicas" not in d:
                v.fail(f"{at}.replicas", "required: how many replicas to scale to")
            n = d["replicas"]
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_REPLICAS:
                v.fail(f"{at}.replicas", f"must be an integer from 0 to {MAX_REPLICAS}, got {_show(n)}")
            args["replicas"] = n
        if kind == "policy":
            if m.group(2) is not None:
                v.fail(f"{at}.target", f"policy takes the proxy service, not a replica: {_show(m.group(1))}")
            policy = d.get("policy")
            if not isinstance(policy, str) or not _POLICY_RE.match(policy):
                v.fail(
                    f"{at}.policy",
                    f"required: a load-balancing policy name like least_request, got {_show(policy)}",
                )
            args["policy"] = policy
            port = d.get("admin_port", 8080)
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                v.fail(f"{at}.admin_port", f"must be a port number, got {_show(port)}")
            args["admin_port"] = port
        if "timeout" in d:
            args["timeout"] = v.seconds(d["timeout"], f"{at}.timeout", allow_zero=True)
        if "signal" in d:
            sig = d["signal"]
            if isinstance(sig, bool) or not isinstance(sig, (str, int)) or not _SIGNAL_RE.match(str(sig)):
                v.fail(f"{at}.signal", f"must be a signal name like SIGKILL or a number, got {_show(sig)}")
            args["signal"] = str(sig)
        actions.append(Action(at_s, kind, m.group(0), args))
    actions.sort(key=lambda a: a.at_s)  # stable: same-time actions keep the file's order
    return actions


class _Validator:
    """Shared checks; every failure is one :class:`ScenarioError` naming the file and field path."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, at: str, message: str) -> NoReturn:
        prefix = f"{self.where}: {at}: " if at else f"{self.where}: "
        raise ScenarioError(prefix + message)

    def mapping(self, raw: object, at: str, allowed: tuple[str, ...]) -> dict[str, object]:
        if not isinstance(raw, Mapping):
            what = "must be" if at else "the file must hold"
            self.fail(at, f"{what} a mapping of keys to values, got {_show(raw)}")
        for key in raw:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                maybe = f" (did you mean {_show(hint[0])}?)" if hint else ""
                self.fail(at, f"unknown key {_show(key)}{maybe}; allowed: {', '.join(allowed)}")
        return dict(raw)

    def sequence(self, raw: object, at: str, non_empty: bool = False) -> list[object]:
        if not isinstance(raw, list):
            self.fail(at, f"must be a list, got {_show(raw)}")
        if non_empty and not raw:
            self.fail(at, "must not be empty")
        return raw

    def kind(self, raw: object, at: str, kinds: tuple[str, ...]) -> str:
        if not isinstance(raw, Mapping):
            self.fail(at, f"must be a mapping with a kind ({', '.join(kinds)}), got {_show(raw)}")
        if "kind" not in raw:
            self.fail(f"{at}.kind", f"required: one of {', '.join(kinds)}")
        kind: object = raw["kind"]
        if not isinstance(kind, str) or kind not in kinds:
            self.fail(f"{at}.kind", f"must be one of {', '.join(kinds)}, got {_show(kind)}")
        return kind

    def string(self, raw: object, at: str, allow_empty: bool = False) -> str:
        if not isinstance(raw, str) or (not allow_empty and not raw.strip()):
            self.fail(at, f"must be a non-empty string, got {_show(raw)}")
        return raw

    def number(self, raw: object, at: str, positive: bool = False) -> float:
        value = _finite(raw)
        if value is None or value < 0 or (positive and value == 0):
            self.fail(at, f"must be a {'positive' if positive else 'non-negative'} number, got {_show(raw)}")
        return value

    def seconds(self, raw: object, at: str, allow_zero: bool = False) -> float:
        want = "a non-negative" if allow_zero else "a positive"
        value: float | None = None
        if isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw):
            value = float(raw)
        elif isinstance(raw, str):
            m = _DURATION_RE.match(raw)
            if m:
                value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
        if value is None or value < 0 or (value == 0 and not allow_zero):
            self.fail(
                at,
                f'must be {want} number of seconds (or a string like "500ms", "10s", "2m"), got {_show(raw)}',
            )
        return value

    def level(self, raw: object, at: str, mode: str) -> float:
        if mode == "concurrency":
            if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
                self.fail(
                    at, f"must be a whole number of connections >= 0 (mode: concurrency), got {_show(raw)}"
                )
            return float(raw)
        value = _finite(raw)
        if value is None or value < 0:
            self.fail(at, f"must be a number of requests per second >= 0 (mode: rate), got {_show(raw)}")
        return value


def _finite(raw: object) -> float | None:
    """A YAML/TOML number (not a bool, not inf/nan) as a float, else None."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        return None
    return float(raw)


def _show(value: object) -> str:
    """How a bad value is quoted in a message: JSON-like, so "ten" and 10 are told apart."""
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _num(x: float) -> str:
    return f"{x:g}"
