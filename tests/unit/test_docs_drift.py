"""Docs tables checked against the code they describe, so that the two cannot drift apart.

The proxy's flags table has its own test (test_proxy_config.py); these cover the load generator's
and the backend's tables in README.md, the asgilab flag tables of docs/asgi.md, and what README
says about the test suite. Each table row is parsed, the flag looked up in the real parser, and
its environment variable and default checked by loading a configuration with them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    body = text.split(heading + "\n", 1)[1]
    stop = re.search(rf"^#{{1,{len(level)}}} ", body, re.MULTILINE)
    return body[: stop.start()] if stop else body


def _rows(text: str) -> Iterator[list[str]]:
    """The cells of each Markdown table row whose first cell names a flag or the URL."""
    for line in text.splitlines():
        if line.startswith("| `"):
            yield [cell.strip() for cell in line.strip().strip("|").split("|")]


def _names(cell: str) -> list[str]:
    """`-c`, `--concurrency` -> ["-c", "--concurrency"]; `--dashboard [HOST:]PORT` -> ["--dashboard"]."""
    return [name.split(" ", 1)[0] for name in re.findall(r"`([^`]+)`", cell)]


# --- load generator ------------------------------------------------------------------------

LOADGEN = _section(README, "### Load generator (`python -m loadgen --help`)")
# Config field for each parser dest whose name differs.
LOADGEN_FIELDS = {
    "scenario": "scenario_path",
    "duration": "duration_s",
    "timeout": "timeout_s",
    "header": "headers",
    "json": "json_path",
    "tag": "tags",
    "worker": "worker_of",
    "join_timeout": "join_timeout_s",
}
# For each environment variable: a value other than its default, what it needs beside it to be a
# valid configuration, and the Config field and value it must give.
LOADGEN_ENV: dict[str, tuple[str, dict[str, str], str, object]] = {
    "LOADGEN_URL": ("http://example.test:81/x", {}, "url", "http://example.test:81/x"),
    "LOADGEN_CONCURRENCY": ("7", {}, "concurrency", 7),
    "LOADGEN_RATE": ("123", {}, "rate", 123.0),
    "LOADGEN_CONNECTIONS": ("71", {"LOADGEN_RATE": "100"}, "connections", 71),
    "LOADGEN_WORKERS": ("2", {}, "workers", 2),
    "LOADGEN_DURATION": ("3", {}, "duration_s", 3.0),
    "LOADGEN_TIMEOUT": ("4", {}, "timeout_s", 4.0),
    "LOADGEN_METHOD": ("HEAD", {}, "method", "HEAD"),
    "LOADGEN_HEADER": ("X-A: b", {}, "headers", (("X-A", "b"),)),
    "LOADGEN_BODY_SIZE": ("5", {}, "body_size", 5),
    "LOADGEN_JSON": ("/tmp/r.json", {}, "json_path", "/tmp/r.json"),
    "LOADGEN_RESULTS_DIR": ("/tmp/results", {}, "results_dir", "/tmp/results"),
    "LOADGEN_QUIET": ("1", {}, "quiet", True),
    "LOADGEN_NO_LIVE": ("1", {}, "quiet", True),
    "LOADGEN_TAGS": ("policy=p2c", {}, "tags", (("policy", "p2c"),)),
    "LOADGEN_JOIN_TIMEOUT": ("9", {}, "join_timeout_s", 9.0),
}
# Variables whose effect needs more than a value (a file, a peer): checked by name only, against
# the parser's LOADGEN_<NAME> spelling.
LOADGEN_ENV_BY_NAME = {
    "LOADGEN_SCENARIO",
    "LOADGEN_DASHBOARD",
    "LOADGEN_COORDINATOR",
    "LOADGEN_EXPECT_WORKERS",
    "LOADGEN_WORKER",
}


def _loadgen_rows() -> dict[str, list[str]]:
    rows = {}
    for cells in _rows(LOADGEN):
        for name in _names(cells[0]):
            rows[name] = cells
    return rows


def test_readme_loadgen_table_names_exactly_the_parsers_flags() -> None:
    from loadgen.config import _build_parser

    flags = {s for a in _build_parser()._actions for s in a.option_strings if s not in ("-h", "--help")}
    documented = set(_loadgen_rows()) - {"URL"}
    assert sorted(flags - documented) == [], "flags missing from README's load generator table"
    assert sorted(documented - flags) == [], "README rows for flags `python -m loadgen` does not have"


def test_readme_loadgen_table_env_variables_are_the_ones_the_config_reads() -> None:
    """Each variable of a row, set alone, changes that row's flag's Config field (as expected)."""
    from loadgen.config import ConfigError, _build_parser, load_config

    base = load_config(["http://x/"], {})
    dests = {s: a.dest for a in _build_parser()._actions for s in a.option_strings}
    seen = set()
    for flag, cells in _loadgen_rows().items():
        for env in re.findall(r"`(LOADGEN_[A-Z_]+)`", cells[1]):
            seen.add(env)
            if env in LOADGEN_ENV_BY_NAME:
                continue
            argv = [] if env == "LOADGEN_URL" else ["http://x/"]
            if env in LOADGEN_ENV:  # a value and what it must give
                value, extra, field, want = LOADGEN_ENV[env]
                cfg = load_config(argv, {**extra, env: value})
                assert getattr(cfg, field) == want != getattr(base, field), f"{env} did not set {field}"
                continue
            # A variable this test has no value for (a new flag): some plain value must change
            # the field of its row's flag, in closed or in open loop.
            dest = dests[flag]
            field = LOADGEN_FIELDS.get(dest, dest)
            changed = False
            for value in ("7", "123", "0", "1", "HEAD", "/tmp/x"):
                for extra in ({}, {"LOADGEN_RATE": "100"}):
                    try:
                        cfg = load_config(argv, {**extra, env: value})
                    except ConfigError:  # not a valid value for this one
                        continue
                    changed = changed or getattr(cfg, field) != getattr(base, field)
            assert changed, f"{env} (README's row for {flag}) changes no value of Config.{field}"
    assert seen >= set(LOADGEN_ENV) | LOADGEN_ENV_BY_NAME, "variables this test knows but README lost"


def _documented_default(cell: str) -> object:
    """A default cell as a value: `10` -> 10.0, `GET` -> "GET", none/off -> None; else the text."""
    text = cell.split(" (", 1)[0].strip()
    if text in ("none", "off"):
        return None
    literal = re.fullmatch(r"`([^`]*)`", text)
    if literal is None:
        return text  # prose: "max(64, rate/10)", "required ..."
    value = literal.group(1)
    try:
        return float(value)
    except ValueError:
        return value


def _same(documented: object, actual: object) -> bool:
    if documented is None:
        return actual in (None, False, (), "")
    if isinstance(documented, float):
        return isinstance(actual, (int, float)) and not isinstance(actual, bool) and actual == documented
    return documented == actual


def test_readme_loadgen_table_defaults_are_the_configs() -> None:
    from loadgen.config import _build_parser, load_config

    cfg = load_config(["http://x/"], {})
    rows = _loadgen_rows()
    for action in _build_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        cells = rows[action.option_strings[-1]]
        documented = _documented_default(cells[2])
        actual = getattr(cfg, LOADGEN_FIELDS.get(action.dest, action.dest))
        if action.dest == "connections":  # "max(64, rate/10)": the open loop's computed default
            from loadgen.plan import default_open_connections

            assert documented == "max(64, rate/10)", cells[2]
            assert actual is None and [default_open_connections(r) for r in (100, 2000)] == [64, 200]
            continue
        if action.dest == "expect_workers":
            assert str(documented).startswith("required with `--coordinator`"), cells[2]
            continue
        assert _same(documented, actual), (
            f"{action.option_strings}: README says {cells[2]}, Config {actual!r}"
        )


# --- backend -------------------------------------------------------------------------------


@pytest.fixture
def backend_parser(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The backend's parser as a shell without BACKEND_* variables builds it (defaults read env)."""
    import os

    for name in [n for n in os.environ if n.startswith("BACKEND_")]:
        monkeypatch.delenv(name)
    from backend.__main__ import build_parser

    return build_parser()


def test_readme_backend_table_defaults_are_the_parsers(backend_parser) -> None:  # type: ignore[no-untyped-def]
    section = _section(README, "### Backend (`python -m backend --help`)")
    rows = {_names(cells[0])[0]: cells for cells in _rows(section) if cells[0].startswith("`--")}
    checked = 0
    for action in backend_parser._actions:
        flag = action.option_strings[0]
        if flag in ("-h", "--help"):
            continue
        cells = rows[flag]
        documented = _documented_default(cells[2])
        default = action.default
        if isinstance(default, bool):
            assert documented is None if default is False else cells[2] == "on", (flag, cells[2])
        else:
            assert _same(documented, default if documented.__class__ is str else float(default)), (
                f"{flag}: README says {cells[2]}, the parser {default!r}"
            )
        checked += 1
    assert checked == len(rows), "README rows for flags the backend does not have"


# --- asgilab -------------------------------------------------------------------------------

ASGI_DOCS = (REPO / "docs" / "asgi.md").read_text(encoding="utf-8")
_UNITS = {"s": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "k": 1024, "m": 1024**2, "g": 1024**3}


def _asgi_value(text: str) -> float | str | None:
    """ "10 s", "`16m` (16 MiB...)", "8 KiB target", "10,000", "`0` (off)", "off", "`auto`"."""
    text = text.replace("`", "").strip()
    if text.startswith("off"):
        return 0.0
    match = re.match(r"([\d,]+(?:\.\d+)?)\s*(KiB|MiB|GiB|s|k|m|g)?\b", text)
    if match is None:
        return text.split(" ", 1)[0]
    return float(match.group(1).replace(",", "")) * _UNITS.get(match.group(2) or "", 1)


def _asgi_rows() -> Iterator[tuple[str, str | None, str]]:
    """(flag, documented environment variable or None, default cell) of docs/asgi.md's flag tables."""
    for cells in _rows(ASGI_DOCS):
        names = _names(cells[0])
        flags = [n for n in names if n.startswith("--")]
        if not flags or len(cells) < 3:
            continue
        envs = [n for n in names if n.startswith("ASGILAB_")]
        defaults = cells[1].split(", ") if len(flags) > 1 else [cells[1]]
        assert len(defaults) == len(flags), f"one default per flag: {cells}"
        for i, (flag, default) in enumerate(zip(flags, defaults, strict=True)):
            yield flag, envs[i] if i < len(envs) else None, default


def test_asgi_docs_flag_tables_match_asgilab_parser_and_defaults() -> None:
    from asgilab import config

    defaults = config.Config()
    rows = list(_asgi_rows())
    assert len(rows) >= 15, "the tables of docs/asgi.md were not found"
    for flag, env, cell in rows:
        assert flag in config.OPTIONS, f"docs/asgi.md documents {flag}, which asgilab does not have"
        field = flag[2:].replace("-", "_")
        if env is not None:
            assert env == config.ENV_PREFIX + field.upper(), f"{flag}: docs name {env}"
            kind = config.OPTIONS[flag][0]
            sample = {"lifespan": "off", "size": "3k", "bool": "false", "level": "DEBUG"}.get(kind, "7")
            loaded = config.load_config(["x:app"], {env: sample})
            assert getattr(loaded, field) != getattr(defaults, field), f"{env} did not set {field}"
        documented = _asgi_value(cell)
        actual = getattr(defaults, field)
        if isinstance(documented, str):
            assert documented == actual, f"{flag}: docs say {cell}, Config {actual!r}"
        else:
            assert documented == float(actual), f"{flag}: docs say {cell}, Config {actual!r}"


def test_every_asgilab_config_field_has_a_flag() -> None:
    """The parser and the Config dataclass agree (the tables above are checked against both)."""
    from asgilab import config

    fields = {f.name for f in dataclasses.fields(config.Config)} - {"app"}
    assert fields == {flag[2:].replace("-", "_") for flag in config.OPTIONS}


# --- the test suite ------------------------------------------------------------------------


def test_readme_states_no_exact_test_counts_the_suite_outgrows() -> None:
    """Counts of tests go stale with every commit; README gives the time and the command instead."""
    counts = re.findall(r"\b\d[\d,]* (?:passed|skipped|unit tests|integration tests|browser tests)\b", README)
    assert counts == [], f"README states test counts: {counts}"


def test_ci_runs_the_readmes_test_command() -> None:
    """`.ci/run` is the README's command (`./lab test`), so what CI proves is what a user runs."""
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^exec \./lab test\b", ci, re.MULTILINE), ci
    assert "./lab test" in _section(README, "## The two commands")


def test_readme_names_the_integration_projects_as_the_fixtures_do() -> None:
    conftest = (REPO / "tests" / "integration" / "conftest.py").read_text()
    (prefix,) = re.findall(r'^PROJECT_PREFIX = "([^"]+)"', conftest, re.MULTILINE)
    assert f"`{prefix}<name>-<random>`" in README
