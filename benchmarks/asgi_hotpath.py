"""The ASGI servers' Python cost per request (CPU time), without sockets: asgilab against Uvicorn.

Like ``benchmarks.hotpath`` for the proxy: the transport is an in-memory fake, so what this
reports (microseconds of CPU per request, ``time.process_time``) is the part of the cost the
server's code controls, free of the kernel's loopback TCP and of other load on the machine.
``C`` keep-alive connections each send their next request as soon as the previous response's
last byte is written (what ``wrk -c`` does), on one uvloop loop; both servers get the same
fake transport, the same app and a lifespan ``state`` dict (as under ``--lifespan auto``).
Runs alternate between the servers and the median of each is printed.

    python -m benchmarks.asgi_hotpath [-n 20000] [--rounds 5] [--apps raw,fastapi]
    python -m benchmarks.asgi_hotpath --servers asgilab --apps fastapi --profile   # cProfile top 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import cProfile
import logging
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

import uvloop

from asgilab.config import Config as AsgilabConfig
from asgilab.site import AppSite
from benchmarks.asgi_apps import fastapi, raw
from benchmarks.hotpath import InMemoryTransport
from engine.connection import HTTPConnection

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
END = b"hello world\n"
APPS: dict[str, Any] = {"raw": raw, "fastapi": fastapi}


class FakeTransport(InMemoryTransport):
    """Swallows writes; when a response's last byte goes out, the client sends its next request."""

    def __init__(self, loop: asyncio.AbstractEventLoop, done: Callable[[], bool]) -> None:
        super().__init__()
        self.loop = loop
        self.done = done
        self.protocol: asyncio.Protocol | None = None
        self.context = contextvars.copy_context()

    def write(self, data: bytes) -> None:  # type: ignore[override, unused-ignore]
        if data.endswith(END) and not self.done():
            assert self.protocol is not None
            # In the connection's own context (as a socket read would be), not the app's Task's.
            self.loop.call_soon(self.protocol.data_received, REQUEST, context=self.context)

    def writelines(self, data: Any) -> None:
        self.write(b"".join(data))

    def get_extra_info(self, name: str, default: object = None) -> object:
        if name == "peername":
            return ("127.0.0.1", 40000)
        if name == "sockname":
            return ("127.0.0.1", 8000)
        return default


def asgilab_factory(app: Any, loop: asyncio.AbstractEventLoop) -> Callable[[], asyncio.Protocol]:
    cfg = AsgilabConfig(app="x:y", access_log=False)
    site = AppSite(app, cfg, loop, state={})
    site.server = ("127.0.0.1", 8000)
    return lambda: HTTPConnection(site)


def uvicorn_factory(app: Any, loop: asyncio.AbstractEventLoop) -> Callable[[], asyncio.Protocol]:
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    cfg = Config(app, http="httptools", loop="none", lifespan="off", access_log=False, proxy_headers=False)
    cfg.load()
    state = ServerState()
    state.default_headers = [(b"date", b"Tue, 01 Dec 2026 10:00:00 GMT")]
    return lambda: HttpToolsProtocol(cfg, state, {}, loop)


FACTORIES = {"asgilab": asgilab_factory, "uvicorn": uvicorn_factory}


async def drive(server: str, app: Any, n: int, conns: int, profile: bool) -> float:
    """CPU microseconds per request for ``n`` requests over ``conns`` connections."""
    loop = asyncio.get_running_loop()
    factory = FACTORIES[server](app, loop)
    finished = loop.create_future()
    served = 0

    def done() -> bool:
        nonlocal served
        served += 1
        if served >= n:
            if not finished.done():
                finished.set_result(None)
            return True
        return False

    protocols = []
    for _ in range(conns):
        t = FakeTransport(loop, done)
        p = factory()
        t.protocol = p
        p.connection_made(t)
        protocols.append(p)
    prof = cProfile.Profile() if profile else None
    t0 = time.process_time()
    if prof is not None:
        prof.enable()
    for p in protocols:
        p.data_received(REQUEST)
    await finished
    if prof is not None:
        prof.disable()
    elapsed = time.process_time() - t0
    await asyncio.sleep(0.01)
    for p in protocols:
        p.connection_lost(None)
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    return elapsed / served * 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.asgi_hotpath", description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=20000, help="requests per run (default 20000)")
    ap.add_argument("-c", type=int, default=50, help="keep-alive connections (default 50)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating runs per server (default 5)")
    ap.add_argument("--servers", default="asgilab,uvicorn")
    ap.add_argument("--apps", default="raw,fastapi")
    ap.add_argument("--profile", action="store_true", help="cProfile top 30 (one run per row)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    servers = args.servers.split(",")
    apps = args.apps.split(",")
    rounds = 1 if args.profile else args.rounds
    results: dict[tuple[str, str], list[float]] = {(s, a): [] for s in servers for a in apps}
    loop = uvloop.new_event_loop()
    try:
        for a in apps:  # warm-up (imports, caches)
            for s in servers:
                loop.run_until_complete(drive(s, APPS[a], 2000, args.c, False))
        for _ in range(rounds):
            for a in apps:
                for s in servers:
                    us = loop.run_until_complete(drive(s, APPS[a], args.n, args.c, args.profile))
                    results[(s, a)].append(us)
    finally:
        loop.close()
    print(f"in-memory loop, {args.n} requests x {rounds} round(s), {args.c} connections, uvloop")
    for (s, a), runs in results.items():
        runs_s = " ".join(f"{r:.1f}" for r in runs)
        print(f"{s:8} {a:8} {statistics.median(runs):6.1f} us/req CPU  (runs: {runs_s})")
    if "asgilab" in servers and "uvicorn" in servers:
        ratios = [
            f"{a}_uvicorn/asgilab="
            f"{statistics.median(results[('uvicorn', a)]) / statistics.median(results[('asgilab', a)]):.2f}"
            for a in apps
        ]
        print(" ".join(ratios))


if __name__ == "__main__":
    main()
