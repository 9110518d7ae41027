"""Command-line flags and ``LOADGEN_*`` environment variables, validated into one :class:`Config`.

Every option can come from a flag or from an environment variable ``LOADGEN_<NAME>`` because the
load generator runs both by hand and as a compose service, where env is the natural knob. Flags
win over env so a one-off override on the command line never needs the environment cleared.

| flag              | env                   | default | meaning                                     |
|-------------------|-----------------------|---------|---------------------------------------------|
| ``URL``           | ``LOADGEN_URL``       | -       | target, ``http://host[:port][/path][?q]``    |
| ``--concurrency`` | ``LOADGEN_CONCURRENCY`` | 10    | closed loop: connections, back to back      |
| ``--rate``        | ``LOADGEN_RATE``      | none    | open loop: requests per second (intended)   |
| ``--connections`` | ``LOADGEN_CONNECTIONS`` | auto  | open loop: most connections open at once    |
| ``--max-backlog`` | ``LOADGEN_MAX_BACKLOG`` | 10000 | open loop: most requests waiting for a      |
|                   |                       |         | connection; more are dropped and counted    |
| ``--workers``     | ``LOADGEN_WORKERS``   | 1       | processes sharing the load, merged exactly  |
| ``--scenario``    | ``LOADGEN_SCENARIO``  | none    | YAML/TOML scenario: stages, mix, actions    |
| ``--body-size``   | ``LOADGEN_BODY_SIZE`` | 0       | request body bytes (single-request mix)     |
| ``--duration``    | ``LOADGEN_DURATION``  | 20      | seconds to keep issuing requests            |
| ``--timeout``     | ``LOADGEN_TIMEOUT``   | 10      | per-request seconds (connect included)      |
| ``--method``      | ``LOADGEN_METHOD``    | GET     | request method (upper-cased)                |
| ``--header``      | ``LOADGEN_HEADER``    | none    | ``'Name: value'``; flag repeatable, env     |
|                   |                       |         | takes several separated by newlines; any    |
|                   |                       |         | ``--header`` replaces all env headers       |
| ``--json``        | ``LOADGEN_JSON``      | none    | write the whole report to this file         |
| ``--results-dir`` | ``LOADGEN_RESULTS_DIR`` | none  | write ``DIR/<UTC stamp>/report.json`` + md  |
| ``--no-live``     | ``LOADGEN_NO_LIVE``   | off     | no live line (env: 1/true/yes/on); alias    |
|                   | ``LOADGEN_QUIET``     |         | ``--quiet``/``-q``                          |
| ``--dashboard``   | ``LOADGEN_DASHBOARD`` | none    | live page on ``[HOST:]PORT`` (host default  |
|                   |                       |         | 127.0.0.1; port 0: any free one)            |
| ``--tag``         | ``LOADGEN_TAGS``      | none    | ``KEY=VALUE`` recorded in the report (e.g.  |
|                   |                       |         | ``policy=p2c``); flag repeatable, env takes |
|                   |                       |         | several separated by commas; ``compare``    |
|                   |                       |         | labels runs by the tags that differ         |
| ``--coordinator`` | ``LOADGEN_COORDINATOR`` | none  | distributed: listen on ``[HOST:]PORT`` for   |
|                   |                       |         | workers, run the experiment through them    |
| ``--expect-workers`` | ``LOADGEN_EXPECT_WORKERS`` | - | distributed: workers to wait for (required) |
| ``--worker``      | ``LOADGEN_WORKER``    | none    | distributed: be a worker of the coordinator |
|                   |                       |         | at ``HOST[:PORT]`` (port 7000)              |
| ``--join-timeout`` | ``LOADGEN_JOIN_TIMEOUT`` | 60   | distributed: seconds for all workers to join |
|                   |                       |         | (coordinator) or to reach it (worker)       |

``--concurrency`` and ``--rate`` choose the loop and exclude each other (a flag of one beats the
environment's other). ``--scenario`` sets mode, load and duration itself, so it excludes
``--rate``, ``--concurrency`` and ``--duration`` flags (their environment variables are ignored
then); the URL may come from the scenario's ``url``, and a URL given here wins over it.
``--worker`` takes the target, the load and the scenario from its coordinator, so it refuses them
as flags (and ignores their environment variables); see docs/loadgen.md, "Distributed runs".

Validation is strict and up front: a typo should cost one line of stderr and exit status 2, not
twenty seconds of a run against the wrong thing. Errors are raised as :class:`ConfigError` with a
message that names the offending flag or variable; ``__main__`` turns it into
``loadgen: error: <message>``.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

ENV_PREFIX = "LOADGEN_"
DEFAULT_CONCURRENCY = 10
DEFAULT_DURATION_S = 20.0
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_METHOD = "GET"
DEFAULT_WORKERS = 1
DEFAULT_JOIN_TIMEOUT_S = 60.0
#: Open loop: most due requests waiting for a free connection (whole run; split like
#: --connections between workers). A due request beyond it is dropped and counted, as k6 counts
#: dropped_iterations; 10,000 floats are ~80 KB, the unbounded backlog grew with rate x stall.
DEFAULT_MAX_BACKLOG = 10_000
DEFAULT_DASHBOARD_HOST = "127.0.0.1"
MAX_BODY_SIZE = 64 * 1024 * 1024

# RFC 9110 "token": what a method or a header name may be made of.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_TRUTHY = {"1", "true", "yes", "on"}
_FALSY = {"", "0", "false", "no", "off"}


class ConfigError(ValueError):
    """A bad flag, env value or URL; the message is shown to the user as is."""


@dataclass(frozen=True)
class Target:
    """Where to connect and what to put in the request line, split once so the hot path never parses."""

    host: str  # for connecting: an IPv6 literal has no brackets here
    port: int
    host_header: str  # for the Host header: brackets kept, port only when not 80
    path: str  # path plus ``?query``; never empty


@dataclass(frozen=True)
class Config:
    url: str | None  # None only with a scenario that names the URL (see plan.make_plan)
    target: Target | None
    concurrency: int = DEFAULT_CONCURRENCY
    rate: float | None = None  # set: open loop
    connections: int | None = None  # open loop pool cap; None: derived from the rate (plan.py)
    max_backlog: int = DEFAULT_MAX_BACKLOG  # open loop: most requests waiting for a connection
    workers: int = DEFAULT_WORKERS
    scenario_path: str | None = None
    body_size: int = 0
    duration_s: float = DEFAULT_DURATION_S
    timeout_s: float = DEFAULT_TIMEOUT_S
    method: str = DEFAULT_METHOD
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    json_path: str | None = None
    results_dir: str | None = None
    quiet: bool = False
    dashboard: tuple[str, int] | None = None  # (host, port) of the live page; None: no page
    tags: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    coordinator: tuple[str, int] | None = None  # distributed: (host, port) to listen on
    expect_workers: int | None = None  # distributed: how many workers the coordinator waits for
    worker_of: tuple[str, int] | None = None  # distributed: this process is a worker of (host, port)
    join_timeout_s: float = DEFAULT_JOIN_TIMEOUT_S

    @property
    def mode(self) -> str:
        """``open`` with a rate, else ``closed`` (a scenario's own mode is resolved in plan.py)."""
        return "open" if self.rate is not None else "closed"


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage, so every error is the same single line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def _build_parser() -> _Parser:
    p = _Parser(
        prog="python -m loadgen",
        description="HTTP/1.1 load generator. Closed loop (--concurrency C: C keep-alive connections "
        "back to back) or open loop (--rate R: requests at intended times, latency corrected for "
        "coordinated omission, as wrk2). Writes a latency/status/backend report.",
        allow_abbrev=False,
        epilog="Every option also reads LOADGEN_<NAME> from the environment (e.g. LOADGEN_URL, "
        "LOADGEN_CONCURRENCY, LOADGEN_RESULTS_DIR); flags win. Compare two runs: "
        "python -m loadgen compare A/report.json B/report.json.",
    )
    p.add_argument("url", nargs="?", metavar="URL", help="target, http://host[:port][/path] (LOADGEN_URL)")
    p.add_argument(
        "-c", "--concurrency", metavar="C", help=f"closed loop: connections (default {DEFAULT_CONCURRENCY})"
    )
    p.add_argument("-r", "--rate", metavar="R", help="open loop: requests per second")
    p.add_argument(
        "--connections",
        metavar="N",
        help="open loop: most connections open at once (default: rate/10, >= 64)",
    )
    p.add_argument(
        "--max-backlog",
        metavar="N",
        help="open loop: most requests waiting for a free connection; more are dropped and counted "
        f"(default {DEFAULT_MAX_BACKLOG}; 0: drop at once, as k6)",
    )
    p.add_argument("-w", "--workers", metavar="N", help=f"processes (default {DEFAULT_WORKERS})")
    p.add_argument(
        "-s", "--scenario", metavar="FILE", help="scenario file (.yaml/.toml): stages, mix, actions"
    )
    p.add_argument("--body-size", metavar="BYTES", help="request body size (default 0)")
    p.add_argument("-d", "--duration", metavar="S", help=f"seconds (default {DEFAULT_DURATION_S:g})")
    p.add_argument("--timeout", metavar="S", help=f"per-request seconds (default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("-m", "--method", metavar="METHOD", help=f"request method (default {DEFAULT_METHOD})")
    p.add_argument(
        "-H", "--header", action="append", metavar="'NAME: VALUE'", help="extra request header, repeatable"
    )
    p.add_argument("--json", metavar="FILE", help="write the whole report as JSON to FILE")
    p.add_argument(
        "--results-dir",
        metavar="DIR",
        help="write DIR/<UTC stamp>/: report.json, timeline.csv, summary.md, plots",
    )
    p.add_argument(
        "-q",
        "--quiet",
        "--no-live",
        dest="quiet",
        action="store_true",
        default=None,
        help="no live line on stderr",
    )
    p.add_argument(
        "--dashboard",
        metavar="[HOST:]PORT",
        help=f"serve a live page of the run on HOST:PORT (default host {DEFAULT_DASHBOARD_HOST})",
    )
    p.add_argument(
        "--tag",
        action="append",
        metavar="KEY=VALUE",
        help="a label recorded in the report (policy=p2c), repeatable; compare labels runs by them",
    )
    p.add_argument(
        "--coordinator",
        metavar="[HOST:]PORT",
        help="distributed run: wait for --expect-workers workers on this address, then run through them",
    )
    p.add_argument("--expect-workers", metavar="N", help="distributed run: workers the coordinator waits for")
    p.add_argument(
        "--worker", metavar="HOST[:PORT]", help="be a worker of the coordinator at HOST:PORT (port 7000)"
    )
    p.add_argument(
        "--join-timeout",
        metavar="S",
        help="seconds for the workers to join / to reach the coordinator "
        f"(default {DEFAULT_JOIN_TIMEOUT_S:g})",
    )
    return p


_TAG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def parse_dashboard(raw: str, source: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); port 0 picks a free one."""
    raw = raw.strip()
    host, sep, port_s = raw.rpartition(":")
    if not sep:
        host, port_s = DEFAULT_DASHBOARD_HOST, raw
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port_s.isdigit() or int(port_s) > 65535:
        raise ConfigError(f"{source} must be [HOST:]PORT with a port 0-65535, got {raw!r}")
    return host, int(port_s)


def parse_tag(raw: str, source: str) -> tuple[str, str]:
    key, sep, value = raw.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not _TAG_KEY.match(key) or any(c in value for c in "\r\n\0,"):
        raise ConfigError(f"{source}: malformed tag {raw!r}, expected KEY=VALUE (no comma in VALUE)")
    return key, value


def parse_target(url: str) -> Target:
    """Reject anything the minimal client cannot speak, before any connection is made."""
    if not url:
        raise ConfigError("empty URL")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ConfigError(f"URL must not contain whitespace or control characters: {url!r}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        raise ConfigError(f"https is not supported, use http://: {url}")
    if scheme != "http":
        raise ConfigError(f"URL must start with http://: {url}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"credentials in the URL are not supported: {url}")
    host = parts.hostname
    if not host:
        raise ConfigError(f"URL has no host: {url}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"bad port in URL: {url}") from None
    if port == 0:
        raise ConfigError(f"bad port in URL: {url}")
    shown_host = f"[{host}]" if ":" in host else host
    host_header = shown_host if port in (None, 80) else f"{shown_host}:{port}"
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(host=host, port=port or 80, host_header=host_header, path=path)


def parse_header(raw: str, source: str) -> tuple[str, str]:
    """Split ``'Name: value'``; reject anything that could break the prebuilt request bytes."""
    name, sep, value = raw.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _TOKEN.match(name):
        raise ConfigError(f"{source}: malformed header {raw!r}, expected 'Name: value'")
    if any(c in value for c in "\r\n\0"):
        raise ConfigError(f"{source}: header value of {name!r} contains CR, LF or NUL")
    return name, value


def _number(raw: str, source: str, kind: type[int] | type[float], minimum: float, inclusive: bool) -> float:
    op = ">=" if inclusive else ">"
    want = f"{'an integer' if kind is int else 'a number'} {op} {minimum:g}"
    try:
        value: float = kind(raw)
    except ValueError:
        raise ConfigError(f"{source} must be {want}, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):  # NaN / inf
        raise ConfigError(f"{source} must be {want}, got {raw!r}")
    if value < minimum or (not inclusive and value == minimum):
        raise ConfigError(f"{source} must be {want}, got {raw!r}")
    return value


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Merge flags over env over defaults and validate; raises :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    args = _build_parser().parse_args(argv)

    def pick(flag_value: str | None, name: str) -> tuple[str | None, str]:
        if flag_value is not None:
            return flag_value, "--" + name.lower().replace("_", "-")
        env_name = ENV_PREFIX + name
        raw = env.get(env_name)
        return (raw if raw not in (None, "") else None), env_name

    raw, src = pick(args.join_timeout, "JOIN_TIMEOUT")
    join_timeout = DEFAULT_JOIN_TIMEOUT_S if raw is None else float(_number(raw, src, float, 0, False))
    worker_raw, worker_src = pick(args.worker, "WORKER")
    if worker_raw is not None:
        return _worker_config(args, env, worker_raw, worker_src, join_timeout)

    scenario_path, _ = pick(args.scenario, "SCENARIO")
    url, _ = pick(args.url, "URL")
    if url is None and scenario_path is None:
        raise ConfigError("a target URL is required (positional URL or LOADGEN_URL)")
    target = parse_target(url) if url is not None else None

    if scenario_path is not None:
        given = [f for f, v in (("--rate", args.rate), ("--concurrency", args.concurrency),
                                ("--duration", args.duration)) if v is not None]  # fmt: skip
        if given:
            raise ConfigError(
                f"{given[0]} conflicts with --scenario (the scenario sets the load and duration)"
            )
        concurrency, rate, duration = DEFAULT_CONCURRENCY, None, DEFAULT_DURATION_S
    else:
        rate_raw, rate_src = pick(args.rate, "RATE")
        conc_raw, conc_src = pick(args.concurrency, "CONCURRENCY")
        if args.rate is not None and args.concurrency is not None:
            raise ConfigError("--rate (open loop) and --concurrency (closed loop) exclude each other")
        if args.rate is not None:
            conc_raw = None
        elif args.concurrency is not None:
            rate_raw = None
        elif rate_raw is not None and conc_raw is not None:
            raise ConfigError(
                "LOADGEN_RATE (open loop) and LOADGEN_CONCURRENCY (closed loop) exclude each other"
            )
        rate = None if rate_raw is None else float(_number(rate_raw, rate_src, float, 0, False))
        concurrency = (
            DEFAULT_CONCURRENCY if conc_raw is None else int(_number(conc_raw, conc_src, int, 1, True))
        )
        raw, src = pick(args.duration, "DURATION")
        duration = DEFAULT_DURATION_S if raw is None else float(_number(raw, src, float, 0, False))

    raw, src = pick(args.connections, "CONNECTIONS")
    connections = None if raw is None else int(_number(raw, src, int, 1, True))
    if connections is not None and scenario_path is None and rate is None:
        if args.connections is not None:
            raise ConfigError("--connections is the open-loop pool size (with --rate); use --concurrency")
        connections = None  # LOADGEN_CONNECTIONS left in the environment of a closed-loop run
    raw, src = pick(args.max_backlog, "MAX_BACKLOG")
    max_backlog = DEFAULT_MAX_BACKLOG if raw is None else int(_number(raw, src, int, 0, True))
    if args.max_backlog is not None and scenario_path is None and rate is None:
        raise ConfigError(
            "--max-backlog bounds the open loop's backlog (with --rate); the closed loop has none"
        )
    raw, src = pick(args.workers, "WORKERS")
    workers = DEFAULT_WORKERS if raw is None else int(_number(raw, src, int, 1, True))
    coordinator, expect_workers = _coordinator(args, pick, workers)
    raw, src = pick(args.body_size, "BODY_SIZE")
    body_size = 0 if raw is None else int(_number(raw, src, int, 0, True))
    if body_size > MAX_BODY_SIZE:
        raise ConfigError(f"{src} must be at most {MAX_BODY_SIZE} bytes, got {raw!r}")
    raw, src = pick(args.timeout, "TIMEOUT")
    timeout = DEFAULT_TIMEOUT_S if raw is None else float(_number(raw, src, float, 0, False))

    raw, src = pick(args.method, "METHOD")
    method = DEFAULT_METHOD if raw is None else raw.strip().upper()
    if not _TOKEN.match(method):
        raise ConfigError(f"{src}: bad method {raw!r}")

    if args.header is not None:
        headers = tuple(parse_header(h, "--header") for h in args.header)
    else:
        env_headers = env.get(ENV_PREFIX + "HEADER", "")
        headers = tuple(
            parse_header(line, ENV_PREFIX + "HEADER") for line in env_headers.splitlines() if line.strip()
        )

    json_path, _ = pick(args.json, "JSON")
    results_dir, _ = pick(args.results_dir, "RESULTS_DIR")

    if args.quiet:
        quiet = True
    else:
        quiet = False
        for name in ("NO_LIVE", "QUIET"):
            raw_quiet = env.get(ENV_PREFIX + name, "").strip().lower()
            if raw_quiet not in _TRUTHY | _FALSY:
                raise ConfigError(
                    f"{ENV_PREFIX}{name} must be one of 1/0/true/false/yes/no/on/off, got {raw_quiet!r}"
                )
            quiet = quiet or raw_quiet in _TRUTHY

    raw, src = pick(args.dashboard, "DASHBOARD")
    dashboard = None if raw is None else parse_dashboard(raw, src)
    if args.tag is not None:
        tags = tuple(parse_tag(t, "--tag") for t in args.tag)
    else:
        env_tags = env.get(ENV_PREFIX + "TAGS", "")
        tags = tuple(parse_tag(t, ENV_PREFIX + "TAGS") for t in env_tags.split(",") if t.strip())
    if len({k for k, _ in tags}) != len(tags):
        raise ConfigError(f"the same tag key given twice: {', '.join(k for k, _ in tags)}")

    return Config(
        url=url,
        target=target,
        concurrency=concurrency,
        rate=rate,
        connections=connections,
        max_backlog=max_backlog,
        workers=workers,
        scenario_path=scenario_path,
        body_size=body_size,
        duration_s=duration,
        timeout_s=timeout,
        method=method,
        headers=headers,
        json_path=json_path,
        results_dir=results_dir,
        quiet=quiet,
        dashboard=dashboard,
        tags=tags,
        coordinator=coordinator,
        expect_workers=expect_workers,
        join_timeout_s=join_timeout,
    )


#: Flags a worker refuses: its coordinator decides them.
_COORDINATOR_DECIDES = (
    ("url", "URL"), ("rate", "--rate"), ("concurrency", "--concurrency"), ("connections", "--connections"),
    ("max_backlog", "--max-backlog"),
    ("scenario", "--scenario"), ("duration", "--duration"), ("timeout", "--timeout"), ("method", "--method"),
    ("header", "--header"), ("body_size", "--body-size"), ("workers", "--workers"),
    ("coordinator", "--coordinator"), ("expect_workers", "--expect-workers"),
    ("results_dir", "--results-dir"), ("dashboard", "--dashboard"),
)  # fmt: skip


def _worker_config(
    args: argparse.Namespace, env: Mapping[str, str], raw: str, src: str, join_timeout: float
) -> Config:
    """``--worker``: only where the coordinator is, how long to try, --quiet and --json."""
    from loadgen.protocol import parse_address

    for dest, flag in _COORDINATOR_DECIDES:
        if getattr(args, dest, None) is not None:
            raise ConfigError(f"{flag} conflicts with --worker (the coordinator decides it)")
    try:
        worker_of = parse_address(raw, None, src)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    quiet = bool(args.quiet) or any(
        env.get(ENV_PREFIX + name, "").strip().lower() in _TRUTHY for name in ("NO_LIVE", "QUIET")
    )
    json_path = args.json if args.json is not None else (env.get(ENV_PREFIX + "JSON") or None)
    return Config(
        url=None,
        target=None,
        quiet=quiet,
        json_path=json_path,
        worker_of=worker_of,
        join_timeout_s=join_timeout,
    )


def _coordinator(
    args: argparse.Namespace, pick: Callable[[str | None, str], tuple[str | None, str]], workers: int
) -> tuple[tuple[str, int] | None, int | None]:
    """``--coordinator [HOST:]PORT`` with ``--expect-workers N``, validated together."""
    from loadgen.protocol import parse_address

    raw, src = pick(args.coordinator, "COORDINATOR")
    n_raw, n_src = pick(args.expect_workers, "EXPECT_WORKERS")
    if raw is None:
        if args.expect_workers is not None:
            raise ConfigError("--expect-workers needs --coordinator")
        return None, None
    if n_raw is None:
        raise ConfigError(f"{src} needs --expect-workers N (LOADGEN_EXPECT_WORKERS)")
    expect = int(_number(n_raw, n_src, int, 1, True))
    if workers != 1:
        raise ConfigError("--workers runs local processes; with --coordinator start more --worker processes")
    try:
        address = parse_address(raw, "0.0.0.0", src)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return address, expect
