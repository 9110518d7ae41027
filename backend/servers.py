"""The five ASGI servers the backend can run under, each given the same settings.

`command(server, settings)` is the whole difference between them: the command line that makes
that server serve an app with the lab's settings. `python -m backend` execs it (so the server is
the container's main process and receives Docker's SIGTERM itself), and `benchmarks.asgi` runs
the same command lines, so the benchmark measures the servers exactly as the lab runs them.

What "the same settings" means, per knob:

- one listener on ``host:port``, ``workers`` processes (one by default);
- keep-alive: an idle connection stays open ``keep_alive`` seconds, above the proxy's pool idle
  timeout (4 s), so that the proxy and not the server closes idle connections (the keep-alive
  race); Granian has no keep-alive option, but hyper's header read timeout also runs while a
  connection waits for its next request (measured: an idle connection closes after it), so
  that one is set (hyper caps it at 60 s);
- X-Forwarded-For/-Proto from ``forwarded_allow_ips`` peers (engine/trust.py: by default
  ``local``, the networks the replica is on, which is where the proxy is; given to every server
  as addresses and networks, ``local`` expanded where the command is built): the servers' own
  option where they have one (Uvicorn, Gunicorn's Uvicorn worker, asgilab), Uvicorn's
  middleware around the app where they have none (Granian, Hypercorn: ``backend.forwarded``),
  so all five read them alike;
- on SIGTERM: stop accepting, let requests in flight finish for ``graceful_timeout`` seconds;
- access log off unless asked (the proxy logs every request); HTTP/1.1 only.

This module imports none of the servers: building a command line needs none of them installed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Final, Literal, get_args

from engine import trust

Server = Literal["uvicorn", "asgilab", "granian", "hypercorn", "gunicorn"]
SERVERS: Final[tuple[str, ...]] = get_args(Server)
DEFAULT_SERVER: Final[Server] = "uvicorn"
# The app target a server imports when X-Forwarded-* come from Uvicorn's middleware around it.
FORWARDED_TARGET: Final = "backend.forwarded:app"
# backend.forwarded reads what it wraps from these (set by `with_forwarded_env`).
ENV_WRAPPED_TARGET: Final = "BACKEND_WRAPPED_APP"
ENV_FORWARDED_ALLOW_IPS: Final = "BACKEND_FORWARDED_ALLOW_IPS"


@dataclass(frozen=True, slots=True)
class Settings:
    """What every server is told; `command` translates it into each one's flags."""

    app: str = "backend.app:app"  # "module:attribute"
    host: str = "0.0.0.0"
    port: int = 8001
    workers: int = 1
    keep_alive: int = 15  # seconds
    forwarded_allow_ips: str | None = "local"  # None: do not read X-Forwarded-* at all
    access_log: bool = False
    graceful_timeout: int = 8  # seconds; below Docker's 10 s stop timeout
    log_level: str = "info"  # the servers' own log (not access log): info, warning, error


def parse_server(value: str) -> Server:
    """The server named by ``value``; ValueError with the choices otherwise."""
    name = value.strip().lower()
    if name not in SERVERS:
        raise ValueError(f"unknown server {value!r}; choose one of {', '.join(SERVERS)}")
    return name  # type: ignore[return-value]


def _forwarded_app(s: Settings) -> str:
    """The target to serve when the server has no X-Forwarded-* option of its own."""
    return FORWARDED_TARGET if s.forwarded_allow_ips is not None else s.app


def forwarded_env(server: Server, s: Settings) -> dict[str, str]:
    """Environment the command needs on top of the current one (backend.forwarded's inputs)."""
    if server in ("granian", "hypercorn") and s.forwarded_allow_ips is not None:
        return {ENV_WRAPPED_TARGET: s.app, ENV_FORWARDED_ALLOW_IPS: _expanded(s).forwarded_allow_ips or ""}
    return {}


def _expanded(s: Settings) -> Settings:
    """``s`` with ``local`` in forwarded_allow_ips replaced by this machine's networks."""
    if s.forwarded_allow_ips is None or trust.LOCAL not in s.forwarded_allow_ips:
        return s
    return replace(s, forwarded_allow_ips=trust.expand(s.forwarded_allow_ips))


def command(server: Server, s: Settings, python: str = sys.executable) -> list[str]:
    """The command line that runs ``server`` serving ``s.app`` with settings ``s``."""
    s = _expanded(s)
    py = [python, "-m"]
    if server == "uvicorn":
        cmd = [
            *py, "uvicorn", s.app, "--host", s.host, "--port", str(s.port),
            "--workers", str(s.workers), "--loop", "uvloop", "--http", "httptools",
            "--timeout-keep-alive", str(s.keep_alive),
            "--timeout-graceful-shutdown", str(s.graceful_timeout),
            "--no-server-header", "--access-log" if s.access_log else "--no-access-log",
            "--log-level", s.log_level,
        ]  # fmt: skip
        if s.forwarded_allow_ips is None:
            return [*cmd, "--no-proxy-headers"]
        return [*cmd, "--proxy-headers", "--forwarded-allow-ips", s.forwarded_allow_ips]
    if server == "asgilab":
        cmd = [
            *py, "asgilab", s.app, "--host", s.host, "--port", str(s.port),
            "--workers", str(s.workers), "--keep-alive", str(s.keep_alive),
            "--graceful-timeout", str(s.graceful_timeout),
            "--access-log" if s.access_log else "--no-access-log", "--log-level", s.log_level.upper(),
        ]  # fmt: skip
        if s.forwarded_allow_ips is None:
            return [*cmd, "--no-proxy-headers"]
        return [*cmd, "--proxy-headers", "--forwarded-allow-ips", s.forwarded_allow_ips]
    if server == "gunicorn":
        # Gunicorn's arbiter forks the workers; each is Uvicorn (uvloop + httptools: the worker's
        # "auto" picks them when installed) fed Gunicorn's settings.
        return [
            *py, "gunicorn", "--worker-class", "uvicorn_worker.UvicornWorker",
            "--bind", f"{s.host}:{s.port}", "--workers", str(s.workers),
            "--keep-alive", str(s.keep_alive), "--graceful-timeout", str(s.graceful_timeout),
            "--no-control-socket",  # Gunicorn 27's admin socket in ~/.gunicorn: not needed here
            "--log-level", s.log_level,
            # "" trusts no peer: the worker still runs its middleware but believes no header.
            "--forwarded-allow-ips", s.forwarded_allow_ips or "",
            *(["--access-logfile", "-"] if s.access_log else []),
            s.app,
        ]  # fmt: skip
    if server == "hypercorn":
        return [
            *py, "hypercorn", "--bind", f"{s.host}:{s.port}", "--workers", str(s.workers),
            "--worker-class", "uvloop", "--keep-alive", str(s.keep_alive),
            "--graceful-timeout", str(s.graceful_timeout), "--log-level", s.log_level,
            *(["--access-logfile", "-"] if s.access_log else []),
            _forwarded_app(s),
        ]  # fmt: skip
    if server == "granian":
        return [
            *py, "granian", "--interface", "asgi", "--host", s.host, "--port", str(s.port),
            "--workers", str(s.workers), "--loop", "uvloop", "--http", "1",
            "--http1-header-read-timeout", str(min(s.keep_alive, 60) * 1000),
            "--workers-kill-timeout", str(s.graceful_timeout),
            "--access-log" if s.access_log else "--no-access-log", "--log-level", s.log_level,
            _forwarded_app(s),
        ]  # fmt: skip
    raise ValueError(f"unknown server {server!r}")
