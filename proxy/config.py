"""Command-line and environment configuration, validated once at start.

Every option is a CLI flag with a ``PROXY_<NAME>`` environment twin so the
same image can be tuned from docker-compose (env) or by hand (flags); flags win.
Validation happens here, before any socket is opened, so a typo fails fast with
exit code 2 and a message naming both spellings instead of surfacing later as a
confusing runtime error.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from proxy.balancer import POLICIES

ENV_PREFIX = "PROXY_"


@dataclass(frozen=True, slots=True)
class Config:
    """The validated settings; frozen so nothing in the request path can mutate them."""

    upstream_host: str = "backend"
    upstream_port: int = 8001
    listen_host: str = "0.0.0.0"
    listen_port: int = 8000
    admin_host: str | None = "0.0.0.0"  # None disables the admin listener
    admin_port: int = 8080
    resolve_interval: float = 1.0
    pool_idle_timeout: float = 4.0
    pool_max_idle: int = 128
    connect_timeout: float = 2.0
    fail_timeout: float = 1.0
    upstream_timeout: float = 30.0
    client_header_timeout: float = 30.0
    drain_timeout: float = 10.0
    access_log: bool = True
    log_level: str = "INFO"
    policy: str = "round_robin"

    @property
    def upstream(self) -> str:
        return f"{self.upstream_host}:{self.upstream_port}"


class ConfigError(ValueError):
    """A bad option value; the message already names the flag and env var."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage dump: the message is what matters in container logs.
        self.exit(2, f"{self.prog}: error: {message}\n")


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _both(flag: str) -> str:
    return f"{flag} / {_env_name(flag)}"


def parse_hostport(flag: str, value: str, *, allow_off: bool = False) -> tuple[str | None, int]:
    """Split ``host:port``; ``[v6]:port`` brackets and a bare ``:port`` (all interfaces) are allowed."""
    value = value.strip()
    if allow_off and value.lower() in ("", "off", "none", "disabled"):
        return None, 0
    host, sep, port_s = value.rpartition(":")
    if not sep or not port_s.isdigit():
        raise ConfigError(f"{_both(flag)}: expected HOST:PORT, got {value!r}")
    port = int(port_s)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{_both(flag)}: port out of range in {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", port


def _number(flag: str, value: str, kind: type, minimum: float, *, strict: bool) -> Any:
    try:
        num = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{_both(flag)}: expected a number, got {value!r}") from None
    if isinstance(num, float) and not math.isfinite(num):
        raise ConfigError(f"{_both(flag)}: expected a finite number, got {value!r}")
    if (strict and num <= minimum) or (not strict and num < minimum):
        rel = ">" if strict else ">="
        raise ConfigError(f"{_both(flag)}: must be {rel} {minimum:g}, got {value!r}")
    return num


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(flag: str, value: str) -> bool:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"{_both(flag)}: expected a boolean (1/0, true/false), got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    """The CLI; values stay strings here so env and flags go through the same validation."""
    d = Config()
    p = _Parser(
        prog="python -m proxy",
        description="asyncio HTTP/1.1 reverse proxy. Every flag can also be set with the "
        "environment variable PROXY_<FLAG_NAME> (e.g. PROXY_UPSTREAM); flags win over env.",
    )

    def opt(flag: str, default: Any, help_: str) -> None:
        p.add_argument(
            flag, default=None, metavar="VALUE", help=f"{help_} [env {_env_name(flag)}; default {default}]"
        )

    opt("--upstream", d.upstream, "upstream HOST:PORT, re-resolved by DNS; each address is an endpoint")
    opt("--listen", f"{d.listen_host}:{d.listen_port}", "proxy listen address HOST:PORT")
    opt(
        "--admin-listen",
        f"{d.admin_host}:{d.admin_port}",
        "admin listener HOST:PORT for /healthz and /upstreams ('off' disables)",
    )
    opt("--resolve-interval", d.resolve_interval, "seconds between DNS re-resolutions of the upstream")
    opt("--pool-idle-timeout", d.pool_idle_timeout, "seconds an idle upstream connection is kept")
    opt("--pool-max-idle", d.pool_max_idle, "max idle upstream connections kept per endpoint")
    opt("--connect-timeout", d.connect_timeout, "seconds to establish an upstream connection")
    opt(
        "--fail-timeout",
        d.fail_timeout,
        "seconds an endpoint gets no new requests after a failed connect (nginx's fail_timeout; 0 = off)",
    )
    opt("--upstream-timeout", d.upstream_timeout, "seconds to wait for upstream response headers (then 504)")
    opt("--client-header-timeout", d.client_header_timeout, "seconds to receive request headers (then 408)")
    opt("--drain-timeout", d.drain_timeout, "seconds in-flight requests get to finish on SIGTERM/SIGINT")
    p.add_argument(
        "--access-log",
        dest="access_log",
        action="store_const",
        const="1",
        default=None,
        help="write one JSON access-log line per request to stdout [env PROXY_ACCESS_LOG; default on]",
    )
    p.add_argument("--no-access-log", dest="access_log", action="store_const", const="0", help="disable it")
    opt("--log-level", d.log_level, "stderr log level: DEBUG, INFO, WARNING, ERROR")
    opt("--policy", d.policy, f"load-balancing policy: {', '.join(POLICIES)}")
    return p


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def config_from(ns: argparse.Namespace, env: Mapping[str, str]) -> Config:
    """Merge flags over env and validate; raises ConfigError on the first bad value."""

    def get(flag: str, dest: str | None = None) -> str | None:
        value = getattr(ns, dest or flag.lstrip("-").replace("-", "_"))
        if value is None:
            value = env.get(_env_name(flag))
        return value

    kw: dict[str, Any] = {}
    if (v := get("--upstream")) is not None:
        host, port = parse_hostport("--upstream", v)
        if not v.strip().rpartition(":")[0]:
            raise ConfigError(f"{_both('--upstream')}: expected HOST:PORT, got {v!r}")
        kw["upstream_host"], kw["upstream_port"] = host, port
    if (v := get("--listen")) is not None:
        kw["listen_host"], kw["listen_port"] = parse_hostport("--listen", v)
    if (v := get("--admin-listen")) is not None:
        kw["admin_host"], kw["admin_port"] = parse_hostport("--admin-listen", v, allow_off=True)
    for flag, kind, minimum, strict in (
        ("--resolve-interval", float, 0.0, True),
        ("--pool-idle-timeout", float, 0.0, True),
        ("--pool-max-idle", int, 0, False),
        ("--connect-timeout", float, 0.0, True),
        ("--fail-timeout", float, 0.0, False),
        ("--upstream-timeout", float, 0.0, True),
        ("--client-header-timeout", float, 0.0, True),
        ("--drain-timeout", float, 0.0, False),
    ):
        if (v := get(flag)) is not None:
            kw[flag.lstrip("-").replace("-", "_")] = _number(flag, v, kind, minimum, strict=strict)
    if (v := get("--access-log")) is not None:
        kw["access_log"] = _bool("--access-log", v)
    if (v := get("--log-level")) is not None:
        level = v.strip().upper()
        if level not in _LEVELS:
            raise ConfigError(f"{_both('--log-level')}: expected one of {', '.join(_LEVELS)}, got {v!r}")
        kw["log_level"] = level
    if (v := get("--policy")) is not None:
        if v not in POLICIES:
            raise ConfigError(f"{_both('--policy')}: expected one of {', '.join(POLICIES)}, got {v!r}")
        kw["policy"] = v
    return Config(**kw)


def load_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Parse argv + env; on a bad value print one line to stderr and exit 2 like argparse does."""
    parser = build_parser()
    ns = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return config_from(ns, os.environ if env is None else env)
    except ConfigError as exc:
        parser.error(str(exc))


def setup_logging(level: str) -> None:
    """Operational logs go to stderr so stdout stays pure JSON access log."""
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
