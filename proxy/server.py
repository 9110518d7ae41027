"""Process wiring: event loop, listeners, discovery, signals and graceful drain.

``ProxyServer`` is usable in-process (tests start it on port 0 with a static or
literal-IP upstream); ``main`` adds the CLI, logging, uvloop and signals.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, TextIO

from engine.connection import HTTPConnection
from engine.handler import Site
from engine.process import new_event_loop, setup_logging, until_signalled
from engine.workers import supervise
from proxy.accesslog import AccessLog
from proxy.admin import AdminServer
from proxy.config import Config, load_config
from proxy.discovery import Discovery, Resolver
from proxy.downstream import DownstreamProtocol, ProxySite, limits_from
from proxy.health import HealthChecker
from proxy.pool import Address
from proxy.state import Feeds, ProxyState, start_feeds

if TYPE_CHECKING:  # asgilab is imported only with --app
    from asgilab.lifespan import Lifespan

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
        worker: int = 0,
    ) -> None:
        """``endpoints`` pins a static set (no DNS); ``resolver`` replaces getaddrinfo (tests);
        ``worker`` is this process's index under ``--workers`` (its admin port is offset by it)."""
        self.config = config
        self.worker = worker
        self._access_log_stream = access_log_stream
        self._resolver = resolver
        self._static = endpoints
        self.state: ProxyState | None = None
        self.site: ProxySite | None = None
        self.lifespan: Lifespan | None = None  # --app: the app's lifespan
        self.feeds: Feeds | None = None  # discovery and health checks (state.start_feeds)
        self.server: asyncio.Server | None = None
        self.admin: AdminServer | None = None

    async def start(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        access_log = AccessLog(self._access_log_stream, loop) if cfg.access_log else None
        state = self.state = ProxyState.from_config(cfg, loop, access_log)
        if cfg.app is not None:
            await self._listen(await self._app_site(state))
            return
        self.feeds = await start_feeds(state, resolver=self._resolver, endpoints=self._static)
        site = self.site = ProxySite(state)
        await self._listen(site)

    async def _app_site(self, state: ProxyState) -> Site:
        """``--app``: the engine's other handler, the ASGI cycle, behind the proxy's own listener.

        No discovery, health checks or pools: the app answers in this process. Limits, access
        log, counters (/metrics) and the drain are the proxy's.
        """
        from asgilab.config import Config as AppConfig
        from asgilab.importer import import_from_string
        from asgilab.site import AppSite

        cfg = self.config
        assert cfg.app is not None
        app = import_from_string(cfg.app)
        app_cfg = AppConfig(app=cfg.app, proxy_headers=False, graceful_timeout=cfg.drain_timeout)
        from asgilab.lifespan import Lifespan

        self.lifespan = Lifespan(app, "auto", logging.getLogger("proxy.lifespan"))
        await self.lifespan.startup()
        lifespan_state = self.lifespan.state
        return AppSite(
            app,
            app_cfg,
            state.loop,
            limits=limits_from(cfg),
            access_log=state.access_log,
            state=lifespan_state,
            observer=state.counters,
            counters=state.counters,
            connections=state.connections,
        )

    async def _listen(self, site: Site) -> None:
        cfg = self.config
        state = self.state
        assert state is not None
        loop = state.loop
        factory: Callable[[], HTTPConnection]
        if isinstance(site, ProxySite):
            factory = partial(DownstreamProtocol, site)
        else:
            factory = partial(HTTPConnection, site)
        self.server = await loop.create_server(
            factory,
            cfg.listen_host,
            cfg.listen_port,
            reuse_address=True,
            # Several workers bind the same port; the kernel spreads new connections among them.
            reuse_port=cfg.workers > 1 or None,
            backlog=2048,
        )
        if cfg.admin_host is not None:
            self.admin = AdminServer(state, worker=self.worker)
            await self.admin.start(cfg.admin_host, cfg.admin_port + self.worker if cfg.admin_port else 0)
        log.info(
            "%sproxy listening on %s:%d -> %s (policy %s, admin %s)",
            f"worker {self.worker}: " if cfg.workers > 1 else "",
            cfg.listen_host,
            self.port,
            f"app {cfg.app} in-process" if cfg.app else cfg.upstream,
            cfg.policy,
            f"{cfg.admin_host}:{self.admin.port}" if self.admin else "off",
        )

    @property
    def discovery(self) -> Discovery | None:
        return self.feeds.discovery if self.feeds is not None else None

    @property
    def health(self) -> HealthChecker | None:
        return self.feeds.health if self.feeds is not None else None

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

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
        if self.feeds is not None:
            await self.feeds.stop()
        if self.state is not None:
            refused = self.site.refused if self.site is not None else ()
            for conn in [*self.state.connections, *refused]:  # refused: a 503 still lingering
                conn.transport.abort()
            self.state.group.close()
            if self.state.access_log is not None:
                self.state.access_log.close()  # flushed, and its writer thread done
        if self.lifespan is not None:
            lifespan, self.lifespan = self.lifespan, None
            await lifespan.shutdown(self.config.drain_timeout)
        if self.admin is not None:
            self.admin.close()
        await asyncio.sleep(0)  # let transports run their connection_lost callbacks


async def serve(config: Config, worker: int = 0) -> None:
    """Run until SIGTERM/SIGINT, then drain."""
    server = ProxyServer(config, worker=worker)
    await server.start()
    await until_signalled()
    log.info("signal received: draining (up to %gs)", config.drain_timeout)
    clean = await server.drain()
    log.info("drained %s; exiting", "cleanly" if clean else "with forced closes")


def run_worker(config: Config, worker: int = 0) -> int:
    """One proxy process: its own event loop, pools, discovery and admin listener."""
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(serve(config, worker))
    except OSError as exc:
        log.error("startup failed: %s", exc)
        return 1
    except Exception as exc:
        if config.app is None or type(exc).__name__ != "LifespanFailed":
            raise
        log.error("--app lifespan startup failed: %s", exc)  # asgilab.lifespan.LifespanFailed
        return 1
    return 0


def _proxy_worker(config: Config, worker: int) -> int:  # pragma: no cover - runs in a child process
    setup_logging(config.log_level)
    return run_worker(config, worker)


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config(argv)
    if config.app is not None:
        from asgilab.importer import ImportFromStringError, import_from_string

        try:
            import_from_string(config.app)  # fail fast, once, with one line (exit 2 like a bad flag)
        except ImportFromStringError as exc:
            print(f"python -m proxy: error: --app / PROXY_APP: {exc}", file=sys.stderr)
            return 2
    setup_logging(config.log_level)
    if config.workers > 1:
        return supervise(config.workers, partial(_proxy_worker, config), "proxy")
    return run_worker(config)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
