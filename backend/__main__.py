"""`python -m backend`: Uvicorn serving the backend app, configured by flags or environment."""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn

from backend.faults import fault_config_from_env


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        sys.exit(f"backend: error: {name}={raw!r} is not an integer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m backend",
        description="asgi-lab backend: FastAPI under Uvicorn (httptools, uvloop).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default=os.environ.get("BACKEND_HOST", "0.0.0.0"), help="env BACKEND_HOST")
    parser.add_argument("--port", type=int, default=_env_int("BACKEND_PORT", 8001), help="env BACKEND_PORT")
    parser.add_argument(
        "--keep-alive",
        type=int,
        default=_env_int("BACKEND_KEEP_ALIVE", 15),
        help="seconds an idle keep-alive connection stays open; keep it above the proxy's "
        "--pool-idle-timeout so that the proxy, not the backend, closes idle connections "
        "(env BACKEND_KEEP_ALIVE)",
    )
    parser.add_argument(
        "--forwarded-allow-ips",
        default=os.environ.get("BACKEND_FORWARDED_ALLOW_IPS", "*"),
        help="peers trusted to set X-Forwarded-For/-Proto; '*' inside the lab's private network "
        "(env BACKEND_FORWARDED_ALLOW_IPS)",
    )
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("BACKEND_ACCESS_LOG", "0").lower() in ("1", "true", "yes", "on"),
        help="Uvicorn's access log; off because the proxy logs every request (env BACKEND_ACCESS_LOG)",
    )
    args = parser.parse_args(argv)
    try:
        fault_config_from_env(os.environ)  # checked here so a typo stops the start with one line
    except ValueError as exc:
        parser.error(str(exc))
    if not 0 < args.port < 65536:
        parser.error(f"--port/BACKEND_PORT must be 1-65535, got {args.port}")
    if args.keep_alive < 1:
        parser.error(f"--keep-alive/BACKEND_KEEP_ALIVE must be >= 1 second, got {args.keep_alive}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    uvicorn.run(
        "backend.app:app",
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        timeout_keep_alive=args.keep_alive,
        proxy_headers=True,
        forwarded_allow_ips=args.forwarded_allow_ips,
        access_log=args.access_log,
        server_header=False,
    )


if __name__ == "__main__":
    main()
