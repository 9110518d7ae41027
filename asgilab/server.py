"""Process wiring: import the app, lifespan, listen, serve, drain on SIGTERM, ``--workers``.

Order matters: the app's lifespan startup runs *before* the socket is bound (a load balancer
must not send requests to an app that is not ready); on SIGTERM the listener closes first,
idle connections close, in-flight requests get ``--graceful-timeout`` (bounded, unlike
Uvicorn's default of forever), then the rest are cut and lifespan shutdown runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any, TextIO

from asgilab.asgi_types import ASGIApp
from asgilab.config import Config, load_config
from asgilab.importer import ImportFromStringError, import_from_string
from asgilab.lifespan import Lifespan, LifespanFailed
from asgilab.site import AppSite
from engine.accesslog import AccessLog
from engine.connection import HTTPConnection
from engine.process import new_event_loop, setup_logging, until_signalled
from engine.workers import supervise

log = logging.getLogger("asgilab.server")


class StartupFailed(Exception):
    """Lifespan startup failed: the process exits 1 with the app's message."""


class AsgiServer:
    """Owns one process's listener, lifespan and connections; ``start`` then ``drain``."""

    def __init__(self, config: Config, app: ASGIApp, *, access_log_stream: TextIO | None = None) -> None:
        self.config = config
        self.app = app
        self._access_log_stream = access_log_stream
        self.lifespan: Lifespan | None = None
        self.site: AppSite | None = None
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        state: dict[str, Any] | None = None
        if cfg.lifespan != "off":
            self.lifespan = Lifespan(self.app, cfg.lifespan, logging.getLogger("asgilab.lifespan"))
            try:
                await self.lifespan.startup()
            except LifespanFailed as exc:
                raise StartupFailed(str(exc)) from None
            state = self.lifespan.state
        access_log = AccessLog(self._access_log_stream, loop) if cfg.access_log else None
        site = self.site = AppSite(self.app, cfg, loop, access_log=access_log, state=state)
        if cfg.uds:
            if os.path.exists(cfg.uds):
                os.unlink(cfg.uds)
            self.server = await loop.create_unix_server(
                lambda: HTTPConnection(site), cfg.uds, backlog=cfg.backlog
            )
            site.server = (cfg.uds, None)  # type: ignore[assignment]  # the spec's [path, None]
        else:
            self.server = await loop.create_server(
                lambda: HTTPConnection(site),
                cfg.host,
                cfg.port,
                reuse_address=True,
                reuse_port=cfg.workers > 1 or None,
                backlog=cfg.backlog,
            )
            sock = self.server.sockets[0]
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                host, port = sock.getsockname()[:2]
                site.server = (str(host), int(port))
        log.info("asgilab serving %s on %s", cfg.app, self.listen_text())

    def listen_text(self) -> str:
        if self.config.uds:
            return f"unix:{self.config.uds}"
        return f"http://{self.config.host}:{self.port}"

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def drain(self, timeout: float | None = None) -> bool:
        """Stop accepting, close idle connections, let in-flight requests finish; True if all did."""
        site = self.site
        assert site is not None and self.server is not None
        timeout = self.config.graceful_timeout if timeout is None else timeout
        self.server.close()
        for conn in list(site.connections):
            conn.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (site.connections or site.tasks) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        clean = not site.connections and not site.tasks
        if not clean:
            log.warning(
                "graceful timeout (%gs): cutting %d connection(s), cancelling %d app task(s)",
                timeout,
                len(site.connections),
                len(site.tasks),
            )
        await self.close()
        return clean

    async def close(self) -> None:
        site = self.site
        if self.server is not None:
            self.server.close()
        if site is not None:
            for conn in [*site.connections, *site.refused]:  # (refused: their 503 still lingering)
                conn.transport.abort()
            for task in list(site.tasks):
                task.cancel()
            if site.tasks:
                await asyncio.wait(list(site.tasks), timeout=1.0)
            if site.access_log is not None:
                site.access_log.close()  # the queued lines reach stdout before the process exits
        if self.lifespan is not None:
            await self.lifespan.shutdown(self.config.graceful_timeout)
            self.lifespan = None
        if self.config.uds and os.path.exists(self.config.uds):
            os.unlink(self.config.uds)
        await asyncio.sleep(0)


async def serve(config: Config, app: ASGIApp) -> int:
    """Run until SIGTERM/SIGINT, then drain; the exit status."""
    server = AsgiServer(config, app)
    try:
        await server.start()
    except StartupFailed as exc:
        log.error("lifespan startup failed: %s", exc)
        return 1
    await until_signalled()
    log.info("signal received: draining (up to %gs)", config.graceful_timeout)
    clean = await server.drain()
    log.info("drained %s; exiting", "cleanly" if clean else "with forced closes")
    return 0


def run_worker(config: Config, worker: int = 0) -> int:
    """One serving process: import the app, its own loop, lifespan and listener."""
    setup_logging(config.log_level)
    try:
        app = import_from_string(config.app)
    except ImportFromStringError as exc:
        print(f"python -m asgilab: error: {exc}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(serve(config, app))
    except OSError as exc:
        log.error("startup failed: %s", exc)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config(argv)
    try:
        import_from_string(config.app)  # fail fast, once, before any worker starts
    except ImportFromStringError as exc:
        print(f"python -m asgilab: error: {exc}", file=sys.stderr)
        return 2
    if config.workers > 1:
        setup_logging(config.log_level)
        return supervise(config.workers, partial(run_worker, config), "asgilab")
    return run_worker(config)
