"""What to run: the CLI's flags and an optional scenario, resolved into one :class:`Plan`.

The runners (``schedule``) and the worker processes (``workers``) never look at flags or scenario
files; they get a plan and, with ``--workers N``, their index in ``0..N-1``. A worker's share is
exact, not rounded per worker: in open loop worker ``w`` sends every N-th request of the one global
schedule (indices ``w, w+N, w+2N, ...``), so the union of the workers' intended send times is the
schedule of a single process at the full rate; in closed loop worker ``w`` runs the connections
``k`` with ``k mod N == w``, so the shares add up to the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loadgen.config import Config, ConfigError, Target, parse_target
from loadgen.mix import Request, RequestLike

if TYPE_CHECKING:  # the scenario module loads PyYAML: only a scenario run needs it
    from loadgen.scenario import Action, Scenario, Stage

#: Open loop without ``--connections``: enough connections for this much latency at the peak
#: rate (Little's law: busy connections = rate x latency), but at least MIN_OPEN_CONNECTIONS.
#: Connections are opened lazily, so an unused allowance costs nothing.
OPEN_LATENCY_ALLOWANCE_S = 0.1
MIN_OPEN_CONNECTIONS = 64


class Constant:
    """A load level that never changes (the CLI's ``--rate``/``--concurrency``); picklable."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, t: float) -> float:
        return self.value


@dataclass(frozen=True)
class Plan:
    url: str
    target: Target
    mode: str  # "open" (a rate) or "closed" (a number of connections)
    duration_s: float
    load_at: Callable[[float], float]  # req/s (open) or connections (closed) at elapsed t
    constant: float | None  # the level when it never changes (fast paths), else None
    peak: float  # highest level over the run
    mix: tuple[RequestLike, ...]
    actions: tuple[Action, ...]
    scenario: str | None
    connections: int  # open loop: most connections open at once, whole run; closed: peak
    max_backlog: int  # open loop: most requests waiting for a connection, whole run (0 in closed)
    timeout_s: float
    workers: int
    stages: tuple[Stage, ...] = ()  # the scenario's stages, for the reports' stage marks

    def share(self, total: int, index: int, count: int) -> int:
        """How many of ``total`` items worker ``index`` of ``count`` gets (k mod count == index)."""
        return max(0, (total - index + count - 1) // count)


def _peak(load_at: Callable[[float], float], duration_s: float) -> float:
    steps = max(1, min(100_000, int(duration_s * 100)))
    return max(load_at(duration_s * i / steps) for i in range(steps + 1))


def default_open_connections(peak_rate: float) -> int:
    return max(MIN_OPEN_CONNECTIONS, math.ceil(peak_rate * OPEN_LATENCY_ALLOWANCE_S))


def make_plan(config: Config, scenario: Scenario | None = None) -> Plan:
    """Resolve flags + scenario; raises ConfigError for combinations that cannot run."""
    url = config.url
    if url is None and scenario is not None:
        url = scenario.url
    if not url:
        where = f" and {config.scenario_path} has no url" if scenario is not None else ""
        raise ConfigError(f"a target URL is required (positional URL or LOADGEN_URL){where}")
    target = parse_target(url)
    cli_request = Request(
        method=config.method, path=target.path, headers=config.headers, body_size=config.body_size
    )
    if scenario is None:
        mode = "open" if config.rate is not None else "closed"
        level = float(config.rate) if config.rate is not None else float(config.concurrency)
        load_at: Callable[[float], float] = Constant(level)
        constant: float | None = level
        duration = config.duration_s
        mix: Sequence[RequestLike] = (cli_request,)
        actions: tuple[Action, ...] = ()
        name = None
        peak = level
    else:
        mode = "open" if scenario.mode == "rate" else "closed"
        load_at = scenario.target_at
        duration = float(scenario.duration_s)
        peak = _peak(load_at, duration)
        levels = {load_at(duration * i / 50) for i in range(51)}
        constant = peak if len(levels) == 1 else None
        mix = tuple(scenario.mix) or (cli_request,)
        actions = tuple(sorted(scenario.actions, key=lambda a: a.at_s))
        name = scenario.name
    connections = (
        (config.connections or default_open_connections(peak)) if mode == "open" else math.ceil(peak)
    )
    if connections < config.workers:
        what = "--connections" if mode == "open" else "connections (--concurrency or the scenario's peak)"
        raise ConfigError(f"--workers {config.workers} needs at least as many {what}, got {connections}")
    return Plan(
        url=url,
        target=target,
        mode=mode,
        duration_s=duration,
        load_at=load_at,
        constant=constant,
        peak=peak,
        mix=tuple(mix),
        actions=actions,
        scenario=name,
        connections=connections,
        max_backlog=config.max_backlog if mode == "open" else 0,
        timeout_s=config.timeout_s,
        workers=config.workers,
        stages=tuple(scenario.stages) if scenario is not None else (),
    )
