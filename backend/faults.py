"""Injected faults: make one replica slow or flaky on purpose, for experiments and tests.

Set per replica through the environment, so a Compose override (or `docker run -e`) can
single one replica out:

- ``EXTRA_DELAY_MS``: every request waits this long before it is handled (default 0).
- ``FAIL_RATE``: this share of requests (0.0-1.0) is answered with ``FAIL_STATUS`` at once,
  without reaching the route (default 0).
- ``FAIL_STATUS``: the status used for injected failures (500-599, default 500).

``/health`` and ``/stats`` are exempt: a slow or flaky application whose health endpoint still
answers is exactly the case passive outlier detection exists for, and tests read ``/stats``.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

EXEMPT = frozenset({"/health", "/stats"})


@dataclass(frozen=True)
class FaultConfig:
    extra_delay_ms: float = 0.0
    fail_rate: float = 0.0
    fail_status: int = 500

    @property
    def active(self) -> bool:
        return self.extra_delay_ms > 0 or self.fail_rate > 0


def fault_config_from_env(env: Mapping[str, str]) -> FaultConfig:
    """Read and validate the fault variables; raises ValueError with a message naming the variable."""

    def number(name: str, default: float, low: float, high: float) -> float:
        raw = env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a number") from None
        if not low <= value <= high:
            raise ValueError(f"{name}={raw!r} must be between {low:g} and {high:g}")
        return value

    return FaultConfig(
        extra_delay_ms=number("EXTRA_DELAY_MS", 0.0, 0.0, 60_000.0),
        fail_rate=number("FAIL_RATE", 0.0, 0.0, 1.0),
        fail_status=int(number("FAIL_STATUS", 500, 500, 599)),
    )


class Faults:
    """Pure ASGI middleware applying a FaultConfig; a no-op pass-through when nothing is set."""

    def __init__(self, app: ASGIApp, config: FaultConfig, rng: random.Random | None = None) -> None:
        self.app = app
        self.config = config
        self.rng = rng or random.Random()
        self._body = json.dumps({"error": "injected failure", "status": config.fail_status}).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cfg = self.config
        if scope["type"] != "http" or not cfg.active or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        if cfg.extra_delay_ms > 0:
            await asyncio.sleep(cfg.extra_delay_ms / 1000)
        if cfg.fail_rate > 0 and self.rng.random() < cfg.fail_rate:
            await send(
                {
                    "type": "http.response.start",
                    "status": cfg.fail_status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(self._body)).encode()),
                        (b"x-injected-fault", b"1"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": self._body})
            return
        await self.app(scope, receive, send)
