"""The reference aiohttp reverse proxy: ``web.Application`` + one keep-alive ``ClientSession``.

This is what a careful Python developer writes without a hand-made protocol layer: uvloop,
one session for the process (its TCPConnector pools keep-alive upstream connections), the
body read whole (the static upstream sends 12 bytes), hop-by-hop headers dropped both ways.
It is the benchmark's "Python baseline"; the issue's goal is this proxy at >= 3x it.

    python -m benchmarks.aiohttp_proxy --listen 127.0.0.1:9000 --upstream 127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiohttp
import uvloop
from aiohttp import web

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",  # recomputed by aiohttp from the body
    )
)


def make_app(upstream: str) -> web.Application:
    base = f"http://{upstream}"
    app = web.Application()

    async def on_startup(app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=None)
        app["session"] = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def on_cleanup(app: web.Application) -> None:
        await app["session"].close()

    async def handle(request: web.Request) -> web.Response:
        session: aiohttp.ClientSession = request.app["session"]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read() if request.body_exists else None
        async with session.request(
            request.method,
            base + request.rel_url.raw_path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as up:
            payload = await up.read()
            out = {k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=up.status, body=payload, headers=out)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.aiohttp_proxy")
    p.add_argument("--listen", default="127.0.0.1:9000")
    p.add_argument("--upstream", required=True, help="HOST:PORT")
    a = p.parse_args(argv)
    host, _, port = a.listen.rpartition(":")
    uvloop.install()
    web.run_app(make_app(a.upstream), host=host, port=int(port), access_log=None, print=None, reuse_port=True)
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(main())
