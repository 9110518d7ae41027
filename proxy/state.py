"""Runtime state shared by every connection of one proxy instance.

Passed explicitly to protocols instead of living in module globals so tests can
run several proxies in one process and so nothing in the request path needs to
import the server or admin modules.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING

from proxy.accesslog import AccessLog
from proxy.admission import Admission
from proxy.balancer import Balancer
from proxy.config import Config
from proxy.counters import Counters
from proxy.pool import UpstreamGroup
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
        self.no_endpoints = f"502 Bad Gateway: no upstream endpoints for {config.upstream}\n".encode()
        # Retries (retry.py) and admission control (admission.py; None when the in-flight cap is off).
        self.retry_policy = RetryPolicy(config.retry_methods, config.retry_on, config.max_retries)
        self.retry_budget = RetryBudget(config.retry_budget_percent, config.retry_budget_min)
        self.admission: Admission | None = (
            Admission(config.max_in_flight_per_upstream, config.queue_size, config.queue_timeout)
            if config.max_in_flight_per_upstream
            else None
        )
        if self.admission is not None:
            group.on_capacity = partial(self.admission.wake, group)
        self.tunnels_open = 0  # Upgrade tunnels (WebSocket) currently spliced, a gauge for /metrics
