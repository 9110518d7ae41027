"""Runtime state shared by every connection of one proxy instance, built and wired here.

Passed explicitly to protocols instead of living in module globals so tests can
run several proxies in one process and so nothing in the request path needs to
import the server or admin modules.

This is the one place where policy objects are made from a ``Config`` (they take their values
as required arguments: the defaults live in ``Config`` only) and where an upstream group's
collaborators are hooked to it:

- ``group.on_capacity`` -> the in-flight cap's queue (``Admission.wake``);
- ``group.outlier`` -> passive outlier detection (``OutlierDetector``, fed by ``Endpoint.observe``);
- the access log's drop counter -> the proxy's ``Counters``;
- ``group.on_connect_failure`` -> DNS discovery's early re-resolution (``Discovery.stale``);
- the group's endpoints themselves <- discovery (``update``) and the active health checker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from proxy.accesslog import AccessLog
from proxy.admission import Admission
from proxy.balancer import Balancer, make_balancer
from proxy.config import Config
from proxy.counters import Counters
from proxy.discovery import Discovery, Resolver, make_discovery
from proxy.health import HealthChecker
from proxy.outlier import OutlierDetector
from proxy.pool import Address, UpstreamGroup
from proxy.retry import RetryBudget, RetryPolicy

if TYPE_CHECKING:
    from engine.connection import HTTPConnection


class ProxyState:
    """Config plus the live objects requests consult: endpoints, policy, access log, connections."""

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        group: UpstreamGroup,
        balancer: Balancer,
        access_log: AccessLog | None,
    ) -> None:
        self.config = config
        self.loop = loop
        self.group = group
        self.balancer = balancer
        self.access_log = access_log
        self.connections: set[HTTPConnection] = set()  # DownstreamProtocols (or --app connections)
        self.draining = False
        self.counters = Counters()
        if access_log is not None:
            access_log.counters = self.counters  # its drops: access_log_dropped_total on /metrics
        self.no_endpoints = f"502 Bad Gateway: no upstream endpoints for {config.upstream}\n".encode()
        # Retries (retry.py) and admission control (admission.py; None when the in-flight cap is off).
        self.retry_policy = RetryPolicy.from_config(config)
        self.retry_budget = RetryBudget.from_config(config)
        self.admission = Admission.from_config(config, group, lambda: self.balancer, self.counters, loop)
        if self.admission is not None:
            group.on_capacity = self.admission.wake
        group.outlier = OutlierDetector.from_config(config, self.counters)
        self.tunnels_open = 0  # Upgrade tunnels (WebSocket) currently spliced, a gauge for /metrics

    @classmethod
    def from_config(
        cls, config: Config, loop: asyncio.AbstractEventLoop, access_log: AccessLog | None
    ) -> ProxyState:
        """The state ``config`` asks for: its upstream group, its balancing policy, the rest."""
        group = UpstreamGroup.from_config(config, loop)
        return cls(config, loop, group, make_balancer(config.policy, config), access_log)


class Feeds:
    """What keeps a group's endpoints current while the proxy runs: discovery and health checks."""

    def __init__(self, discovery: Discovery | None, health: HealthChecker | None) -> None:
        self.discovery = discovery
        self.health = health

    async def stop(self) -> None:
        if self.discovery is not None:
            await self.discovery.stop()
        if self.health is not None:
            await self.health.stop()


async def start_feeds(
    state: ProxyState, *, resolver: Resolver | None = None, endpoints: Sequence[Address] | None = None
) -> Feeds:
    """Fill ``state.group`` and keep it current: ``endpoints`` pins a static set (no discovery);
    otherwise ``--discovery`` gives its first answer before this returns (so the first requests
    have targets) and follows changes from then on. Then the active health checker starts."""
    config, group = state.config, state.group
    discovery: Discovery | None = None
    if endpoints is not None:
        group.update(endpoints)
    else:
        discovery = make_discovery(config, group, resolver)
        await discovery.refresh()
        discovery.start()
        group.on_connect_failure = discovery.stale
    health = HealthChecker.from_config(config, group, state.counters)
    if health is not None:
        health.start()
    group.start()
    return Feeds(discovery, health)
