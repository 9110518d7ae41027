"""Command-line and environment configuration, validated once at start.

Every option is a CLI flag with a ``PROXY_<NAME>`` environment twin so the
same image can be tuned from docker-compose (env) or by hand (flags); flags win.
Validation happens here, before any socket is opened, so a typo fails fast with
exit code 2 and a message naming both spellings instead of surfacing later as a
confusing runtime error.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from engine import options, trust
from engine.options import ConfigError as ConfigError  # re-exported: callers catch config.ConfigError
from proxy.balancer import POLICIES, parse_hash_on
from proxy.retry import RETRY_ON_WORDS

ENV_PREFIX = "PROXY_"
_N = TypeVar("_N", int, float)
MAX_WORKERS = 64


@dataclass(frozen=True, slots=True)
class Config:
    """The validated settings; frozen so nothing in the request path can mutate them."""

    upstream_host: str = "backend"
    upstream_port: int = 8001
    listen_host: str = "0.0.0.0"
    listen_port: int = 8000
    admin_host: str | None = "0.0.0.0"  # None disables the admin listener
    admin_port: int = 8080
    # Processes sharing listen_port with SO_REUSEPORT, each with its own loop, pools and discovery;
    # worker i serves admin on admin_port + i (proxy/server.py, "Workers" in docs/proxy.md).
    workers: int = 1
    # An ASGI app (module:attribute) served in-process instead of forwarding: same listener,
    # limits, access log and metrics (asgilab/site.py, "Proxy --app" in docs/asgi.md).
    app: str | None = None
    resolve_interval: float = 1.0
    pool_idle_timeout: float = 4.0
    # Idle upstream connections kept per endpoint: above the concurrency one replica carries, or a
    # burst over it closes connections the next burst reopens (docs/proxy.md, "Cap"). HAProxy and
    # Envoy keep every idle connection by default; --pool-idle-timeout still closes unused ones.
    pool_max_idle: int = 1024
    connect_timeout: float = 2.0
    # A connect still pending after this long marks the endpoint failed and moves the request on
    # (exchange.py, "Slow connects" in docs/proxy.md); 0 = off.
    connect_slow_threshold: float = 0.25
    fail_timeout: float = 1.0
    upstream_timeout: float = 30.0
    # Idle time allowed between two reads of an upstream response body (nginx's proxy_read_timeout;
    # proxy/upstream.py): then the client connection is closed. 0 = off.
    upstream_read_timeout: float = 60.0
    # Per-try response-head deadline (Envoy's per_try_timeout; proxy/attempt.py): a slower try of a
    # retriable request moves on to another endpoint. 0 = off; else below upstream_timeout.
    attempt_timeout: float = 0.0
    client_header_timeout: float = 30.0
    client_body_timeout: float = 30.0
    # A client that reads nothing of its response for this long is cut, and the upstream connection
    # and buffers it held are released (engine.flow.SendWatch; nginx's send_timeout 60 s); 0 = off.
    client_send_timeout: float = 60.0
    # A WebSocket (Upgrade) tunnel with no byte either way for this long is closed on both sides
    # (proxy/tunnel.py; HAProxy's timeout tunnel, 1 h in its docs); 0 = off.
    websocket_idle_timeout: float = 3600.0
    drain_timeout: float = 10.0
    # Retries (proxy/retry.py).
    retry_methods: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS"})
    retry_on: frozenset[str] = frozenset({"connect-failure", "reset", "503"})
    max_retries: int = 2
    retry_budget_percent: float = 20.0
    retry_budget_min: float = 10.0
    # Limits (proxy/downstream.py, proxy/admission.py); 0 switches a limit off.
    max_request_line: int = 8 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_body_size: int = 100 * 1024 * 1024
    max_connections: int = 10_000
    max_in_flight_per_upstream: int = 0
    queue_size: int = 100
    queue_timeout: float = 1.0
    access_log: bool = True
    log_level: str = "INFO"
    policy: str = "round_robin"
    # consistent_hash (proxy/balancer.py): the key (header:NAME, cookie:NAME or client) and the
    # bounded load's factor (Envoy's hash_balance_factor 125 %, the paper's c; 0 = unbounded).
    hash_on: str = "client"
    hash_balance_factor: float = 1.25
    # Seconds a latency spike keeps counting in peak-EWMA's estimate (proxy/ewma.py; Finagle's and
    # Linkerd's default decay time).
    ewma_decay: float = 10.0
    # Discovery (proxy/discovery.py): "dns" re-resolves the upstream name, "docker" follows the
    # Compose service's containers through the Docker socket (project None = the proxy's own).
    discovery: str = "dns"
    docker_project: str | None = None
    docker_service: str | None = None  # None = the upstream host name
    # Active health checks (proxy/health.py); health_interval 0 switches them off.
    health_path: str = "/health"
    health_interval: float = 2.0
    health_timeout: float = 1.0
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2
    # Passive outlier detection (proxy/outlier.py); a consecutive count of 0 switches it off.
    outlier_consecutive_5xx: int = 5
    outlier_consecutive_failures: int = 5
    outlier_base_ejection: float = 5.0
    outlier_max_ejection: float = 60.0
    outlier_max_ejection_percent: float = 50.0
    # Admin write actions and the dashboard's event stream (proxy/admin.py, proxy/events.py).
    # Bearer token for every admin write (policy switch, drain/undrain); "" = only loopback
    # clients may use them (docs/security.md). Kept out of repr().
    admin_token: str = field(default="", repr=False)
    # Peers whose X-Forwarded-For chain is kept (engine/trust.py: addresses, networks, local, *);
    # "" = none: the proxy is the edge, and a client's own X-Forwarded-For is dropped.
    forwarded_allow_ips: str = ""
    events_history: float = 900.0  # seconds of per-second snapshots replayed to a late viewer

    @property
    def upstream(self) -> str:
        return f"{self.upstream_host}:{self.upstream_port}"


_NAMES = options.Spelling(ENV_PREFIX)
_env_name = _NAMES.env
_both = _NAMES.both


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


def _number(flag: str, value: str, kind: type[_N], minimum: float, *, strict: bool) -> _N:
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


def _numbers(
    get: options.Reader, kw: dict[str, Any], *table: tuple[str, type[int] | type[float], float, bool]
) -> None:
    """Validate the numeric flags of ``table`` (flag, int or float, minimum, strict) into ``kw``."""
    for flag, kind, minimum, strict in table:
        if (v := get(flag)) is not None:
            kw[flag.lstrip("-").replace("-", "_")] = _number(flag, v, kind, minimum, strict=strict)


def _size(flag: str, value: str) -> int:
    """Bytes, with nginx's k/m/g suffixes (binary: 1m = 1048576)."""
    return options.parse_size(_both(flag), value)


def _words(value: str) -> list[str]:
    low = value.strip()
    if low.lower() in ("", "none", "off"):
        return []
    return [w.strip() for w in low.split(",") if w.strip()]


def _methods(flag: str, value: str) -> frozenset[str]:
    words = _words(value)
    for w in words:
        if not w.isalpha():
            raise ConfigError(f"{_both(flag)}: expected HTTP method names like GET,HEAD, got {w!r}")
    return frozenset(w.upper() for w in words)


def _retry_on(flag: str, value: str) -> frozenset[str]:
    words = [w.lower() for w in _words(value)]
    for w in words:
        if w not in RETRY_ON_WORDS and not (w.isdigit() and 500 <= int(w) <= 599):
            raise ConfigError(
                f"{_both(flag)}: expected {', '.join(RETRY_ON_WORDS)} or a 5xx status code, got {w!r}"
            )
    return frozenset(words)


def build_parser() -> argparse.ArgumentParser:
    """The CLI; values stay strings here so env and flags go through the same validation."""
    d = Config()
    p = options.OneLineParser(
        prog="python -m proxy",
        description="asyncio HTTP/1.1 reverse proxy. Every flag can also be set with the "
        "environment variable PROXY_<FLAG_NAME> (e.g. PROXY_UPSTREAM); flags win over env.",
    )

    def opt(flag: str, default: object, help_: str) -> None:
        p.add_argument(
            flag, default=None, metavar="VALUE", help=f"{help_} [env {_env_name(flag)}; default {default}]"
        )

    opt("--upstream", d.upstream, "upstream HOST:PORT, re-resolved by DNS; each address is an endpoint")
    opt("--listen", f"{d.listen_host}:{d.listen_port}", "proxy listen address HOST:PORT")
    opt(
        "--admin-listen",
        f"{d.admin_host}:{d.admin_port}",
        "admin listener HOST:PORT for /metrics, /upstreams and /healthz ('off' disables)",
    )
    opt("--resolve-interval", d.resolve_interval, "seconds between DNS re-resolutions of the upstream")
    opt("--pool-idle-timeout", d.pool_idle_timeout, "seconds an idle upstream connection is kept")
    opt("--pool-max-idle", d.pool_max_idle, "max idle upstream connections kept per endpoint")
    opt("--connect-timeout", d.connect_timeout, "seconds to establish an upstream connection")
    opt(
        "--connect-slow-threshold",
        d.connect_slow_threshold,
        "seconds a connect may pend before its endpoint counts as failed and the request moves on (0 = off)",
    )
    opt(
        "--fail-timeout",
        d.fail_timeout,
        "seconds an endpoint gets no new requests after a failed connect (nginx's fail_timeout; 0 = off)",
    )
    opt("--upstream-timeout", d.upstream_timeout, "seconds to wait for upstream response headers (then 504)")
    opt(
        "--upstream-read-timeout",
        d.upstream_read_timeout,
        "seconds an upstream response body may send nothing (then the client connection is closed; 0 = off)",
    )
    opt(
        "--attempt-timeout",
        d.attempt_timeout,
        "seconds one try may wait for response headers before a retriable request tries another "
        "endpoint (0 = off; below --upstream-timeout)",
    )
    opt("--client-header-timeout", d.client_header_timeout, "seconds to receive request headers (then 408)")
    opt(
        "--client-body-timeout",
        d.client_body_timeout,
        "seconds the client may go silent while sending a request body (then 408 and close)",
    )
    opt(
        "--retry-methods",
        ",".join(sorted(d.retry_methods)),
        "comma-separated methods retried after a reset or a retriable status ('none' = no retries)",
    )
    opt(
        "--retry-on",
        ",".join(sorted(d.retry_on)),
        "comma-separated failures that are retried: connect-failure, reset, 5xx status codes ('none')",
    )
    opt(
        "--max-retries",
        d.max_retries,
        "retries per request after it was sent (connect failovers not counted)",
    )
    opt(
        "--retry-budget-percent",
        d.retry_budget_percent,
        "retries allowed as a percentage of the requests of the last 10 s (Finagle/Envoy retry budget)",
    )
    opt(
        "--retry-budget-min", d.retry_budget_min, "retries per second always allowed on top of the percentage"
    )
    opt("--max-request-line", d.max_request_line, "bytes of request target allowed (then 414; 0 = no limit)")
    opt("--max-header-bytes", d.max_header_bytes, "bytes of request headers allowed (then 431; 0 = no limit)")
    opt("--max-headers", d.max_headers, "number of request headers allowed (then 431; 0 = no limit)")
    opt(
        "--max-body-size",
        d.max_body_size,
        "request body bytes allowed, k/m/g suffixes accepted (then 413 and close; 0 = no limit)",
    )
    opt(
        "--max-connections",
        d.max_connections,
        "client connections served at once; more are answered 503 + Retry-After and closed (0 = no limit)",
    )
    opt(
        "--max-in-flight-per-upstream",
        d.max_in_flight_per_upstream,
        "requests in flight per endpoint; more wait in a queue (0 = no limit)",
    )
    opt("--queue-size", d.queue_size, "requests that may wait for a free endpoint slot (then 503)")
    opt("--queue-timeout", d.queue_timeout, "seconds a request may wait in that queue (then 503)")
    opt("--drain-timeout", d.drain_timeout, "seconds in-flight requests get to finish on SIGTERM/SIGINT")
    opt(
        "--client-send-timeout",
        d.client_send_timeout,
        "seconds a client may read nothing of its response before the connection is cut (0 = off)",
    )
    opt(
        "--websocket-idle-timeout",
        d.websocket_idle_timeout,
        "seconds a WebSocket tunnel may carry no byte either way before both sides are closed (0 = off)",
    )
    opt(
        "--app",
        "none",
        "serve this ASGI app (module:attribute, e.g. backend.app:app) in-process instead of forwarding",
    )
    opt(
        "--workers",
        d.workers,
        "processes sharing the listen port (SO_REUSEPORT), each with its own pools; "
        "worker i serves admin on the admin port + i",
    )
    p.add_argument(
        "--access-log",
        dest="access_log",
        action="store_const",
        const="1",
        default=None,
        help="write one JSON access-log line per request to stdout [env PROXY_ACCESS_LOG; default on]",
    )
    p.add_argument("--no-access-log", dest="access_log", action="store_const", const="0", help="disable it")
    opt(
        "--admin-token",
        "none",
        "bearer token every admin write (PUT/POST /policy, drain, undrain) requires; without one "
        "only loopback clients may use them",
    )
    opt(
        "--forwarded-allow-ips",
        "none",
        "proxies in front of this one whose X-Forwarded-For is kept: addresses, networks, 'local' "
        "(this host's networks) or '*'; from any other client it is replaced by the client's address",
    )
    opt(
        "--events-history",
        d.events_history,
        "seconds of per-second snapshots /events replays to a late viewer",
    )
    opt("--log-level", d.log_level, "stderr log level: DEBUG, INFO, WARNING, ERROR")
    opt("--policy", d.policy, f"load-balancing policy: {', '.join(POLICIES)}")
    opt("--hash-on", d.hash_on, "consistent_hash key: header:NAME, cookie:NAME or client (address)")
    opt(
        "--hash-balance-factor",
        d.hash_balance_factor,
        "consistent_hash bounded load: an endpoint holding ceil(FACTOR x (in-flight total + 1) / "
        "endpoints) requests is skipped (>= 1; 0 = unbounded)",
    )
    opt("--ewma-decay", d.ewma_decay, "seconds a latency spike keeps counting in peak_ewma's estimate")
    opt(
        "--discovery",
        d.discovery,
        "endpoint source: dns (re-resolve the upstream host) or docker (Docker socket)",
    )
    opt("--docker-project", "the proxy's own", "Compose project whose containers docker discovery follows")
    opt("--docker-service", "the upstream host", "Compose service whose containers docker discovery follows")
    opt("--health-path", d.health_path, "path of the active health check (GET, 2xx passes)")
    opt(
        "--health-interval",
        d.health_interval,
        "seconds between active health checks of each endpoint (0 = off)",
    )
    opt("--health-timeout", d.health_timeout, "seconds a health check may take before it counts as failed")
    opt(
        "--unhealthy-threshold",
        d.unhealthy_threshold,
        "failed checks in a row that mark an endpoint unhealthy",
    )
    opt(
        "--healthy-threshold",
        d.healthy_threshold,
        "passed checks in a row that bring an unhealthy endpoint back",
    )
    opt("--outlier-consecutive-5xx", d.outlier_consecutive_5xx, "5xx responses in a row that eject (0 = off)")
    opt(
        "--outlier-consecutive-failures",
        d.outlier_consecutive_failures,
        "connect failures, resets or timeouts in a row that eject (0 = off)",
    )
    opt("--outlier-base-ejection", d.outlier_base_ejection, "seconds of the first ejection; x N for the N-th")
    opt("--outlier-max-ejection", d.outlier_max_ejection, "longest ejection in seconds")
    opt(
        "--outlier-max-ejection-percent",
        d.outlier_max_ejection_percent,
        "most of the live endpoints, in percent (rounded down), ejected at once",
    )
    return p


def config_from(ns: argparse.Namespace, env: Mapping[str, str]) -> Config:
    """Merge flags over env and validate; raises ConfigError on the first bad value."""

    get = _NAMES.reader(ns, env)
    kw: dict[str, Any] = {}  # Config's keyword arguments, each checked by its parser before it goes in
    if (v := get("--upstream")) is not None:
        host, port = parse_hostport("--upstream", v)
        if not v.strip().rpartition(":")[0]:
            raise ConfigError(f"{_both('--upstream')}: expected HOST:PORT, got {v!r}")
        kw["upstream_host"], kw["upstream_port"] = host, port
    if (v := get("--listen")) is not None:
        kw["listen_host"], kw["listen_port"] = parse_hostport("--listen", v)
    if (v := get("--admin-listen")) is not None:
        kw["admin_host"], kw["admin_port"] = parse_hostport("--admin-listen", v, allow_off=True)
    _numbers(
        get,
        kw,
        ("--resolve-interval", float, 0.0, True),
        ("--pool-idle-timeout", float, 0.0, True),
        ("--pool-max-idle", int, 0, False),
        ("--connect-timeout", float, 0.0, True),
        ("--connect-slow-threshold", float, 0.0, False),
        ("--fail-timeout", float, 0.0, False),
        ("--upstream-timeout", float, 0.0, True),
        ("--upstream-read-timeout", float, 0.0, False),
        ("--attempt-timeout", float, 0.0, False),
        ("--client-header-timeout", float, 0.0, True),
        ("--client-body-timeout", float, 0.0, True),
        ("--drain-timeout", float, 0.0, False),
        ("--client-send-timeout", float, 0.0, False),
        ("--websocket-idle-timeout", float, 0.0, False),
        ("--max-retries", int, 0, False),
        ("--retry-budget-percent", float, 0.0, False),
        ("--retry-budget-min", float, 0.0, False),
        ("--max-request-line", int, 0, False),
        ("--max-header-bytes", int, 0, False),
        ("--max-headers", int, 0, False),
        ("--max-connections", int, 0, False),
        ("--max-in-flight-per-upstream", int, 0, False),
        ("--queue-size", int, 0, False),
        ("--queue-timeout", float, 0.0, True),
    )
    if (v := get("--max-body-size")) is not None:
        kw["max_body_size"] = _size("--max-body-size", v)
    if (v := get("--retry-methods")) is not None:
        kw["retry_methods"] = _methods("--retry-methods", v)
    if (v := get("--retry-on")) is not None:
        kw["retry_on"] = _retry_on("--retry-on", v)
    attempt, upstream = kw.get("attempt_timeout", 0.0), kw.get("upstream_timeout", Config().upstream_timeout)
    if attempt and attempt >= upstream:
        raise ConfigError(
            f"{_both('--attempt-timeout')}: must be below {_both('--upstream-timeout')} ({upstream:g}), "
            f"got {attempt:g} (0 switches it off)"
        )
    if (v := get("--access-log")) is not None:
        kw["access_log"] = options.parse_bool(_both("--access-log"), v, blank=False)
    if (v := get("--log-level")) is not None:
        kw["log_level"] = options.parse_level(_both("--log-level"), v)
    if (v := get("--policy")) is not None:
        if v not in POLICIES:
            raise ConfigError(f"{_both('--policy')}: expected one of {', '.join(POLICIES)}, got {v!r}")
        kw["policy"] = v
    if (v := get("--hash-on")) is not None:
        try:
            parse_hash_on(v)
        except ValueError as exc:
            raise ConfigError(f"{_both('--hash-on')}: {exc}") from None
        kw["hash_on"] = v.strip()
    if (v := get("--hash-balance-factor")) is not None:
        factor = _number("--hash-balance-factor", v, float, 0.0, strict=False)
        if 0 < factor < 1:
            raise ConfigError(f"{_both('--hash-balance-factor')}: must be 0 (off) or >= 1, got {v!r}")
        kw["hash_balance_factor"] = factor
    if (v := get("--ewma-decay")) is not None:
        kw["ewma_decay"] = _number("--ewma-decay", v, float, 0.0, strict=True)
    if (v := get("--workers")) is not None:
        kw["workers"] = _number("--workers", v, int, 1, strict=False)
        if kw["workers"] > MAX_WORKERS:
            raise ConfigError(f"{_both('--workers')}: at most {MAX_WORKERS}, got {v!r}")
        if kw["workers"] > 1 and kw.get("listen_port", Config().listen_port) == 0:
            raise ConfigError(f"{_both('--workers')} > 1 needs a fixed {_both('--listen')} port, not 0")
        if kw["workers"] > 1 and kw.get("admin_port", Config().admin_port) + kw["workers"] - 1 > 65535:
            raise ConfigError(f"{_both('--workers')}: admin ports (admin port + worker index) exceed 65535")
    _discovery_health_outlier(get, kw)
    if (v := get("--app")) is not None and v.strip() and v.strip().lower() != "none":
        module, _, attr = v.strip().partition(":")
        if not module or not attr:
            raise ConfigError(f"{_both('--app')}: expected module:attribute, got {v!r}")
        kw["app"] = v.strip()
    _admin_events(get, kw)
    return Config(**kw)


def _admin_events(get: options.Reader, kw: dict[str, Any]) -> None:
    """Flags of the admin write actions and the dashboard's event stream (admin.py, events.py)."""
    if (v := get("--admin-token")) is not None:
        token = v.strip()
        if token and (len(token) < 8 or any(c.isspace() or not c.isprintable() for c in token)):
            raise ConfigError(
                f"{_both('--admin-token')}: expected at least 8 printable characters, no spaces"
            )
        kw["admin_token"] = token
    if (v := get("--forwarded-allow-ips")) is not None:
        try:
            trust.parse(v)
        except ValueError as exc:
            raise ConfigError(f"{_both('--forwarded-allow-ips')}: {exc}") from None
        kw["forwarded_allow_ips"] = v.strip()
    if (v := get("--events-history")) is not None:
        kw["events_history"] = _number("--events-history", v, float, 1.0, strict=False)
        if kw["events_history"] > 86400:
            raise ConfigError(f"{_both('--events-history')}: at most 86400 seconds, got {v!r}")


def _discovery_health_outlier(get: options.Reader, kw: dict[str, Any]) -> None:
    """Flags of discovery.py, health.py and outlier.py, validated together (they cross-check)."""
    if (v := get("--discovery")) is not None:
        if v.strip().lower() not in ("dns", "docker"):
            raise ConfigError(f"{_both('--discovery')}: expected dns or docker, got {v!r}")
        kw["discovery"] = v.strip().lower()
    for flag in ("--docker-project", "--docker-service"):
        if (v := get(flag)) is not None and v.strip():
            kw[flag.lstrip("-").replace("-", "_")] = v.strip()
    if (v := get("--health-path")) is not None:
        if not v.startswith("/") or any(c.isspace() or ord(c) < 32 for c in v):
            raise ConfigError(f"{_both('--health-path')}: expected a path like /health, got {v!r}")
        kw["health_path"] = v
    _numbers(
        get,
        kw,
        ("--health-interval", float, 0.0, False),
        ("--health-timeout", float, 0.0, True),
        ("--unhealthy-threshold", int, 1, False),
        ("--healthy-threshold", int, 1, False),
        ("--outlier-consecutive-5xx", int, 0, False),
        ("--outlier-consecutive-failures", int, 0, False),
        ("--outlier-base-ejection", float, 0.0, True),
        ("--outlier-max-ejection", float, 0.0, True),
        ("--outlier-max-ejection-percent", float, 0.0, False),
    )
    d = Config()
    if kw.get("outlier_max_ejection_percent", 0) > 100:
        got = get("--outlier-max-ejection-percent")
        raise ConfigError(f"{_both('--outlier-max-ejection-percent')}: must be <= 100, got {got!r}")
    base = kw.get("outlier_base_ejection", d.outlier_base_ejection)
    if kw.get("outlier_max_ejection", d.outlier_max_ejection) < base:
        raise ConfigError(
            f"{_both('--outlier-max-ejection')} must be >= {_both('--outlier-base-ejection')} ({base:g})"
        )


def load_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Parse argv + env; on a bad value print one line to stderr and exit 2 like argparse does."""
    return options.load(build_parser(), config_from, argv, env)
