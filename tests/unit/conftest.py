"""Fixtures over the proxy harness (tests/unit/harness.py): the boilerplate of a proxy test, once.

- ``loop_kind``: a test that takes it runs on both event loops the proxy supports (asyncio, uvloop).
- ``proxied``: runs ``main(srv, *upstreams)`` with ``n`` fake upstreams (``FakeUpstream``) behind a
  real in-process proxy configured with ``Config(**cfg)``; everything is closed afterwards, also
  when ``main`` fails.

The harness's functions stay importable on their own (``run``, ``proxy``, ``fetch``...) for tests
that need another shape (a custom upstream, several proxies).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol

import pytest

from proxy.server import ProxyServer
from tests.unit.harness import LOOPS, FakeUpstream, addr, proxy, run


@pytest.fixture(params=list(LOOPS))
def loop_kind(request: pytest.FixtureRequest) -> str:
    """The event loop to run on: each test taking it runs once per loop."""
    return str(request.param)


class Proxied(Protocol):
    def __call__(
        self,
        main: Callable[..., Awaitable[None]],
        n: int = 1,
        loop: str = "uvloop",
        **cfg: object,
    ) -> None: ...


@pytest.fixture
def proxied() -> Proxied:
    """``proxied(main, n=2, max_retries=1)``: ``await main(srv, up1, up2)`` through a proxy."""

    def go(main: Callable[..., Awaitable[None]], n: int = 1, loop: str = "uvloop", **cfg: object) -> None:
        async def inside() -> None:
            async with contextlib.AsyncExitStack() as stack:
                ups = [await stack.enter_async_context(FakeUpstream()) for _ in range(n)]
                srv: ProxyServer = await stack.enter_async_context(
                    proxy(endpoints=[addr(u) for u in ups], **cfg)
                )
                await main(srv, *ups)

        run(inside, loop)

    return go
