"""DNS endpoint discovery: one name, re-resolved on an interval.

Docker's embedded DNS returns one A record per running replica of a service,
so re-resolving ``backend`` every second is enough to follow
``docker compose --scale backend=N`` without restarting the proxy. NXDOMAIN
means "no containers right now" (empty set); any other failure is treated as
transient and the last known set is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence

from proxy.pool import Address, UpstreamGroup

log = logging.getLogger("proxy.discovery")

Resolver = Callable[[str, int], Awaitable[Sequence[Address]]]

# getaddrinfo errors that mean "this name has no addresses" rather than "DNS is unwell".
_NOT_FOUND = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def make_resolver(loop: asyncio.AbstractEventLoop) -> Resolver:
    async def resolve(host: str, port: int) -> list[Address]:
        infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
        # Sorted so the same DNS answer in a different order is not reported as a change.
        return sorted({(info[4][0], info[4][1]) for info in infos}, key=_sort_key)

    return resolve


def _sort_key(addr: Address) -> tuple[tuple[int, ...] | tuple[str], int]:
    try:
        return tuple(int(p) for p in addr[0].split(".")), addr[1]
    except ValueError:
        return (addr[0],), addr[1]


class DnsDiscovery:
    """Feeds an UpstreamGroup from periodic resolutions of ``host:port``."""

    def __init__(
        self,
        group: UpstreamGroup,
        host: str,
        port: int,
        interval: float,
        resolver: Resolver | None = None,
    ) -> None:
        self.group = group
        self.host = host
        self.port = port
        self.interval = interval
        self.resolver = resolver or make_resolver(group.loop)
        self._task: asyncio.Task[None] | None = None
        self._warned = False

    async def refresh(self) -> None:
        """Resolve once and apply the result (or the failure policy) to the group."""
        try:
            addresses = await self.resolver(self.host, self.port)
        except socket.gaierror as exc:
            if exc.errno in _NOT_FOUND:
                if self.group.live:
                    log.warning("upstream %s:%d not found in DNS: %s", self.host, self.port, exc)
                self.group.update(())
            else:
                log.warning("resolving %s:%d failed, keeping last endpoints: %s", self.host, self.port, exc)
            return
        except OSError as exc:
            log.warning("resolving %s:%d failed, keeping last endpoints: %s", self.host, self.port, exc)
            return
        if not addresses and not self._warned:
            log.warning("upstream %s:%d resolved to no addresses", self.host, self.port)
            self._warned = True
        self.group.update(addresses)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception:  # never let discovery die: the proxy would freeze its endpoint set
                log.exception("endpoint refresh failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
