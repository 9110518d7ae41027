"""`python -m backend`: the backend app under the ASGI server ``--server`` names.

Checks the flags (each with an environment equivalent), then replaces itself with that server's
command line (`backend.servers.command`), so the server is the container's main process and
gets Docker's SIGTERM directly. The app reads which server it runs under from BACKEND_SERVER.

Every bad value (a flag, its environment variable, an injected-fault variable) is one line,
``backend: error: <message>``, and exit status 2, before any server starts, like the proxy's:
each of the five servers would otherwise fail in its own way (a usage text, a traceback, exit 1)
or, for a listen address that does not resolve, not fail at all.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
import tempfile
from typing import NoReturn

from backend.faults import fault_config_from_env
from backend.metrics import MULTIPROC_ENV
from backend.servers import (
    DEFAULT_SERVER,
    SERVERS,
    Server,
    Settings,
    command,
    forwarded_env,
    parse_server,
)

DEFAULTS = Settings()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line and exit 2, whatever was wrong (argparse would print the usage first)."""
        self.exit(2, f"backend: error: {message}\n")


def _env_int(parser: _Parser, name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        parser.error(f"{name}={raw!r} is not an integer")


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _env_bool(parser: _Parser, name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value not in _TRUE + _FALSE:
        parser.error(f"{name}={raw!r} must be one of 1/0/true/false/yes/no/on/off")
    return value in _TRUE


def _check_host(parser: _Parser, host: str) -> None:
    """An IP literal, or a name that resolves: what every server can bind."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        parser.error(
            f"--host/BACKEND_HOST {host!r} is neither an IP address nor a name that resolves ({exc})"
        )


def build_parser() -> _Parser:
    """The flags, their defaults read from the environment now (an env typo exits here)."""
    parser = _Parser(
        prog="python -m backend",
        description="asgi-lab backend: the FastAPI app under one of five ASGI servers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--server",
        default=os.environ.get("BACKEND_SERVER", DEFAULT_SERVER),
        help=f"the ASGI server: {', '.join(SERVERS)} (env BACKEND_SERVER)",
    )
    parser.add_argument(
        "--host", default=os.environ.get("BACKEND_HOST", DEFAULTS.host), help="env BACKEND_HOST"
    )
    parser.add_argument(
        "--port", type=int, default=_env_int(parser, "BACKEND_PORT", DEFAULTS.port), help="env BACKEND_PORT"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=_env_int(parser, "BACKEND_WORKERS", DEFAULTS.workers),
        help="server processes sharing the port (env BACKEND_WORKERS)",
    )
    parser.add_argument(
        "--keep-alive",
        type=int,
        default=_env_int(parser, "BACKEND_KEEP_ALIVE", DEFAULTS.keep_alive),
        help="seconds an idle keep-alive connection stays open; keep it above the proxy's "
        "--pool-idle-timeout so that the proxy, not the backend, closes idle connections "
        "(env BACKEND_KEEP_ALIVE)",
    )
    parser.add_argument(
        "--forwarded-allow-ips",
        default=os.environ.get("BACKEND_FORWARDED_ALLOW_IPS", DEFAULTS.forwarded_allow_ips),
        help="peers trusted to set X-Forwarded-For/-Proto; '*' inside the lab's private network "
        "(env BACKEND_FORWARDED_ALLOW_IPS)",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=int,
        default=_env_int(parser, "BACKEND_GRACEFUL_TIMEOUT", DEFAULTS.graceful_timeout),
        help="on SIGTERM, seconds requests in flight get to finish (env BACKEND_GRACEFUL_TIMEOUT)",
    )
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=_env_bool(parser, "BACKEND_ACCESS_LOG", DEFAULTS.access_log),
        help="the server's access log; off because the proxy logs every request (env BACKEND_ACCESS_LOG)",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.server = parse_server(args.server)
    except ValueError as exc:
        parser.error(f"--server/BACKEND_SERVER: {exc}")
    try:
        fault_config_from_env(os.environ)  # checked here so a typo stops the start with one line
    except ValueError as exc:
        parser.error(str(exc))
    _check_host(parser, args.host)
    if not 0 < args.port < 65536:
        parser.error(f"--port/BACKEND_PORT must be 1-65535, got {args.port}")
    if args.workers < 1:
        parser.error(f"--workers/BACKEND_WORKERS must be >= 1, got {args.workers}")
    if args.keep_alive < 1:
        parser.error(f"--keep-alive/BACKEND_KEEP_ALIVE must be >= 1 second, got {args.keep_alive}")
    if args.graceful_timeout < 1:
        parser.error(
            f"--graceful-timeout/BACKEND_GRACEFUL_TIMEOUT must be >= 1 second, got {args.graceful_timeout}"
        )
    return args


def settings(args: argparse.Namespace) -> Settings:
    return Settings(
        host=args.host,
        port=args.port,
        workers=args.workers,
        keep_alive=args.keep_alive,
        forwarded_allow_ips=args.forwarded_allow_ips,
        access_log=args.access_log,
        graceful_timeout=args.graceful_timeout,
    )


def main(argv: list[str] | None = None) -> NoReturn:
    args = parse_args(argv)
    server: Server = args.server
    s = settings(args)
    cmd = command(server, s)
    # The app answers GET / with the server's name; backend.forwarded reads its inputs.
    env = {**os.environ, "BACKEND_SERVER": server, **forwarded_env(server, s)}
    if s.workers > 1 and not env.get(MULTIPROC_ENV):
        # Several processes: /metrics sums them through prometheus_client's multiprocess files.
        env[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="backend-metrics-")
    print(f"backend: serving {s.app} with {server} on {s.host}:{s.port}", file=sys.stderr, flush=True)
    os.execvpe(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
