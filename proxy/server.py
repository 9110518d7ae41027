"""Process wiring: event loop, listeners, discovery, signals and graceful drain.

``ProxyServer`` is usable in-process (tests start it on port 0 with a static or
literal-IP upstream); ``main`` adds the CLI, logging, uvloop and signals.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import TextIO

from proxy.accesslog import AccessLog
from proxy.admin import AdminServer
from proxy.balancer import make_balancer
from proxy.config import Config, load_config, setup_logging
from proxy.context import ProxyState
from proxy.discovery import DnsDiscovery, Resolver
from proxy.downstream import DownstreamProtocol
from proxy.pool import Address, UpstreamGroup

log = logging.getLogger("proxy.server")


class ProxyServer:
    """Owns everything one proxy instance runs; ``start`` then ``drain``."""

    def __init__(
        self,
        config: Config,
        *,
        access_log_stream: TextIO | None = None,
        resolver: Resolver | None = None,
        endpoints: Sequence[Address] | None = None,
    ) -> None:
        """``endpoints`` pins a static set (no DNS); ``resolver`` replaces getaddrinfo (tests)."""
        self.config = config
        self._access_log_stream = access_log_stream
        self._resolver = resolver
        self._static = endpoints
        self.state: ProxyState | None = None
        self.discovery: DnsDiscovery | None = None
        self.server: asyncio.AbstractServer | None = None
        self.admin: AdminServer | None = None

    async def start(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        group = UpstreamGroup(
            cfg.upstream,
            loop,
            max_idle=cfg.pool_max_idle,
            idle_timeout=cfg.pool_idle_timeout,
            fail_timeout=cfg.fail_timeout,
        )
        access_log = AccessLog(self._access_log_stream, loop) if cfg.access_log else None
        state = self.state = ProxyState(cfg, loop, group, make_balancer(cfg.policy), access_log)
        if self._static is not None:
            group.update(self._static)
        else:
            self.discovery = DnsDiscovery(
                group, cfg.upstream_host, cfg.upstream_port, cfg.resolve_interval, self._resolver
            )
            await self.discovery.refresh()  # first answer before accepting, so early requests have targets
            self.discovery.start()
        group.start()
        self.server = await loop.create_server(
            lambda: DownstreamProtocol(state),
            cfg.listen_host,
            cfg.listen_port,
            reuse_address=True,
            backlog=2048,
        )
        if cfg.admin_host is not None:
            self.admin = AdminServer(state)
            await self.admin.start(cfg.admin_host, cfg.admin_port)
        log.info(
            "proxy listening on %s:%d -> %s (policy %s, admin %s)",
            cfg.listen_host,
            self.port,
            cfg.upstream,
            cfg.policy,
            f"{cfg.admin_host}:{self.admin.port}" if self.admin else "off",
        )

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    @property
    def admin_port(self) -> int:
        assert self.admin is not None
        return self.admin.port

    async def drain(self, timeout: float | None = None) -> bool:
        """Stop accepting, close idle clients, wait for in-flight requests; True if all finished."""
        state = self.state
        assert state is not None and self.server is not None
        timeout = self.config.drain_timeout if timeout is None else timeout
        state.draining = True
        self.server.close()
        for conn in list(state.connections):
            conn.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while state.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        clean = not state.connections
        if not clean:
            log.warning("drain timeout: closing %d busy connection(s)", len(state.connections))
            for conn in list(state.connections):
                conn.transport.abort()
        await self.close()
        return clean

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.discovery is not None:
            await self.discovery.stop()
        if self.state is not None:
            for conn in list(self.state.connections):
                conn.transport.abort()
            self.state.group.close()
            if self.state.access_log is not None:
                self.state.access_log.flush()
        if self.admin is not None:
            self.admin.close()
        await asyncio.sleep(0)  # let transports run their connection_lost callbacks


async def serve(config: Config) -> None:
    """Run until SIGTERM/SIGINT, then drain."""
    server = ProxyServer(config)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: draining (up to %gs)", config.drain_timeout)
    clean = await server.drain()
    log.info("drained %s; exiting", "cleanly" if clean else "with forced closes")


def _loop_factory():  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dep in the image, optional elsewhere
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config(argv)
    setup_logging(config.log_level)
    try:
        with asyncio.Runner(loop_factory=_loop_factory) as runner:
            runner.run(serve(config))
    except OSError as exc:
        log.error("startup failed: %s", exc)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
