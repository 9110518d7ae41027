"""Runtime state shared by every connection of one proxy instance.

Passed explicitly to protocols instead of living in module globals so tests can
run several proxies in one process and so nothing in the request path needs to
import the server or admin modules.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from proxy.accesslog import AccessLog
from proxy.balancer import Balancer
from proxy.config import Config
from proxy.counters import Counters
from proxy.pool import UpstreamGroup

if TYPE_CHECKING:
    from proxy.downstream import DownstreamProtocol


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
        self.connections: set[DownstreamProtocol] = set()
        self.draining = False
        self.counters = Counters()
        self.no_endpoints = f"502 Bad Gateway: no upstream endpoints for {config.upstream}\n".encode()
