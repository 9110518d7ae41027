"""asgilab's settings: Uvicorn's CLI habits, each flag with an ``ASGILAB_<NAME>`` twin.

One table (``OPTIONS``) names every flag, its kind and help; the defaults are the
``Config`` dataclass's, nowhere else. Values from flags and from the environment go through
the same validation, before any socket is opened: a bad value is one line on stderr and exit
status 2, naming both spellings (flags win over the environment).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from engine import options
from engine.options import ConfigError as ConfigError  # re-exported: callers catch config.ConfigError

ENV_PREFIX = "ASGILAB_"
MAX_WORKERS = 64
LifespanMode = Literal["auto", "on", "off"]


@dataclass(frozen=True, slots=True)
class Config:
    """The validated settings (the single source of every default)."""

    app: str = ""  # "module:attribute", e.g. backend.app:app
    host: str = "127.0.0.1"
    port: int = 8000
    uds: str | None = None  # a Unix socket path instead of host/port
    workers: int = 1
    backlog: int = 2048
    lifespan: LifespanMode = "auto"
    root_path: str = ""
    proxy_headers: bool = True
    forwarded_allow_ips: str = "127.0.0.1"  # comma-separated addresses/networks, or *
    access_log: bool = True
    log_level: str = "INFO"
    # Start each app call eagerly, with a Task only once it waits (asgilab/site.py: AppSite.run).
    # Off by default: anyio (Starlette, FastAPI) needs a Task from the first step.
    eager: bool = False
    # Limits (0 = off) and timeouts (seconds), enforced by the engine (engine/limits.py) and the cycle.
    max_request_line: int = 8 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_body_size: int = 100 * 1024 * 1024
    max_connections: int = 10_000
    limit_concurrency: int = 0  # requests served at once; more are answered 503 (Uvicorn's flag)
    header_timeout: float = 10.0  # request head deadline (then 408; Uvicorn has none)
    body_timeout: float = 30.0  # longest silence mid-body (then 408)
    keep_alive: float = 5.0  # idle keep-alive connections close after this (Uvicorn's 5 s)
    graceful_timeout: float = 10.0  # SIGTERM: in-flight requests get this long (Uvicorn: forever)
    # A client that reads nothing of its response for this long is cut; the app's send() raises
    # (engine.flow.SendWatch; nginx's send_timeout 60 s; Uvicorn has none). 0 = off.
    client_send_timeout: float = 60.0
    # WebSocket (asgilab/websocket.py)
    ws_max_size: int = 16 * 1024 * 1024
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    ws_idle_timeout: float = 0.0

    def listen_text(self) -> str:
        return f"unix:{self.uds}" if self.uds else f"http://{self.host}:{self.port}"


# flag -> (kind, help). Kinds: str, int, float, size, bool, lifespan, level, ips, port.
OPTIONS: dict[str, tuple[str, str]] = {
    "--host": ("str", "address to bind"),
    "--port": ("port", "TCP port to bind (0 = any free port)"),
    "--uds": ("str", "bind a Unix domain socket at this path instead of --host/--port"),
    "--workers": ("int", "processes sharing the port (SO_REUSEPORT), each with its own loop"),
    "--backlog": ("int", "listen backlog"),
    "--lifespan": ("lifespan", "lifespan protocol: auto (use if the app supports it), on, off"),
    "--root-path": ("str", "ASGI root_path: the prefix the app is mounted under"),
    "--proxy-headers": ("bool", "trust X-Forwarded-For/-Proto from --forwarded-allow-ips"),
    "--forwarded-allow-ips": ("ips", "comma-separated peer addresses or networks trusted (* = all)"),
    "--access-log": ("bool", "one JSON line per request on stdout"),
    "--log-level": ("level", "stderr log level: DEBUG, INFO, WARNING, ERROR"),
    "--eager": (
        "bool",
        "start the app in the parser callback, a Task only once it waits (not for anyio apps)",
    ),
    "--max-request-line": ("int", "bytes of request target allowed (then 414; 0 = no limit)"),
    "--max-header-bytes": ("int", "bytes of request headers allowed (then 431; 0 = no limit)"),
    "--max-headers": ("int", "number of request headers allowed (then 431; 0 = no limit)"),
    "--max-body-size": ("size", "request body bytes, k/m/g suffixes (then 413 and close; 0 = no limit)"),
    "--max-connections": ("int", "client connections at once; more get 503 + Retry-After (0 = no limit)"),
    "--limit-concurrency": ("int", "requests in the app at once; more get 503 + Retry-After (0 = no limit)"),
    "--header-timeout": ("float", "seconds for a request's head to arrive (then 408)"),
    "--body-timeout": ("float", "seconds the client may go silent while sending a body (then 408)"),
    "--keep-alive": ("float", "seconds an idle keep-alive connection is kept"),
    "--graceful-timeout": ("float", "seconds in-flight requests get on SIGTERM before connections are cut"),
    "--client-send-timeout": (
        "float",
        "seconds a client may read nothing of its response before the connection is cut (0 = off)",
    ),
    "--ws-max-size": ("size", "largest WebSocket message in bytes (then close 1009)"),
    "--ws-ping-interval": ("float", "seconds between server pings (0 = off)"),
    "--ws-ping-timeout": ("float", "seconds a pong may take before the connection is dropped (0 = off)"),
    "--ws-idle-timeout": ("float", "seconds without a data message before close 1001 (0 = off)"),
}
# Strictly positive timeouts (0 would mean "refuse at once"); the others accept 0.
_POSITIVE = {"--header-timeout", "--body-timeout", "--keep-alive", "--workers", "--backlog"}


_NAMES = options.Spelling(ENV_PREFIX)
env_name = _NAMES.env
_both = _NAMES.both
_field = options.dest


def _convert(flag: str, kind: str, value: str) -> Any:
    v = value.strip()
    if kind == "str":
        return v if flag != "--uds" else (v or None)
    if kind == "bool":
        return options.parse_bool(_both(flag), value)
    if kind == "lifespan":
        if v not in ("auto", "on", "off"):
            raise ConfigError(f"{_both(flag)}: expected auto, on or off, got {value!r}")
        return v
    if kind == "level":
        return options.parse_level(_both(flag), value)
    if kind == "ips":
        for item in (w.strip() for w in v.split(",")):
            if item and item != "*":
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ConfigError(f"{_both(flag)}: not an address or network: {item!r}") from None
        return v
    if kind == "size":
        return options.parse_size(_both(flag), value)
    try:
        num: float = int(v) if kind in ("int", "port") else float(v)
    except ValueError:
        raise ConfigError(f"{_both(flag)}: expected a number, got {value!r}") from None
    if not math.isfinite(num) or num < 0 or (flag in _POSITIVE and num <= 0):
        rel = "> 0" if flag in _POSITIVE else ">= 0"
        raise ConfigError(f"{_both(flag)}: must be {rel}, got {value!r}")
    if kind == "port" and num > 65535:
        raise ConfigError(f"{_both(flag)}: port out of range, got {value!r}")
    return num


def build_parser() -> argparse.ArgumentParser:
    """The CLI; values stay strings here so env and flags go through the same validation."""
    d = Config()
    p = options.OneLineParser(
        prog="python -m asgilab",
        description="The lab's ASGI server. Every flag has an environment twin ASGILAB_<FLAG_NAME> "
        "(e.g. ASGILAB_PORT); flags win.",
    )
    p.add_argument(
        "app", nargs="?", default=None, help=f"the ASGI app as module:attribute [env {env_name('--app')}]"
    )
    for flag, (kind, help_) in OPTIONS.items():
        default = getattr(d, _field(flag))
        env = env_name(flag)
        if kind == "bool":
            p.add_argument(
                flag,
                dest=_field(flag),
                action="store_const",
                const="1",
                default=None,
                help=f"{help_} [env {env}; default {'on' if default else 'off'}]",
            )
            p.add_argument(
                "--no-" + flag[2:], dest=_field(flag), action="store_const", const="0", help=argparse.SUPPRESS
            )
        else:
            p.add_argument(
                flag,
                dest=_field(flag),
                default=None,
                metavar="VALUE",
                help=f"{help_} [env {env}; default {default!r}]",
            )
    return p


def config_from(ns: argparse.Namespace, env: Mapping[str, str]) -> Config:
    """Merge flags over env and validate; raises ConfigError on the first bad value."""
    kw: dict[str, Any] = {}
    app = ns.app if ns.app is not None else env.get(env_name("--app"))
    if not app or ":" not in app or not all(app.partition(":")[::2]):
        got = f", got {app!r}" if app else ""
        raise ConfigError(f"the app (argument / {env_name('--app')}): expected module:attribute{got}")
    kw["app"] = app.strip()
    get = _NAMES.reader(ns, env)
    for flag, (kind, _) in OPTIONS.items():
        if (value := get(flag)) is not None:
            kw[_field(flag)] = _convert(flag, kind, value)
    cfg = Config(**kw)
    if cfg.workers > MAX_WORKERS:
        raise ConfigError(f"{_both('--workers')}: at most {MAX_WORKERS}, got {cfg.workers}")
    if cfg.workers > 1 and not cfg.uds and cfg.port == 0:
        raise ConfigError(f"{_both('--workers')} > 1 needs a fixed {_both('--port')}, not 0")
    if cfg.workers > 1 and cfg.uds:
        raise ConfigError(f"{_both('--workers')} > 1 cannot share a Unix socket ({_both('--uds')})")
    if cfg.root_path and (not cfg.root_path.startswith("/") or cfg.root_path.endswith("/")):
        raise ConfigError(f"{_both('--root-path')}: expected a path like /api (no trailing /)")
    return cfg


def load_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Parse argv + env; on a bad value print one line to stderr and exit 2."""
    return options.load(build_parser(), config_from, argv, env)


def replace(cfg: Config, **changes: Any) -> Config:
    """A copy with some fields changed (tests, and ``python -m proxy --app``)."""
    return dataclasses.replace(cfg, **changes)
