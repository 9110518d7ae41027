"""CLI/env configuration and its validation."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proxy.config import Config, ConfigError, _size, build_parser, load_config


def test_defaults() -> None:
    cfg = load_config([], {})
    assert cfg == Config()
    assert cfg.upstream == "backend:8001" and (cfg.listen_host, cfg.listen_port) == ("0.0.0.0", 8000)
    assert (cfg.admin_host, cfg.admin_port) == ("0.0.0.0", 8080)
    assert cfg.resolve_interval == 1.0 and cfg.pool_idle_timeout == 4.0 and cfg.pool_max_idle == 1024
    assert cfg.connect_timeout == 2.0 and cfg.upstream_timeout == 30.0
    assert cfg.client_header_timeout == 30.0 and cfg.drain_timeout == 10.0
    assert cfg.access_log is True and cfg.log_level == "INFO"


def test_env_and_flags_flags_win() -> None:
    env = {
        "PROXY_UPSTREAM": "svc:9000",
        "PROXY_POOL_MAX_IDLE": "7",
        "PROXY_ACCESS_LOG": "false",
        "PROXY_LISTEN": ":8001",
        "PROXY_ADMIN_LISTEN": "off",
    }
    cfg = load_config(["--pool-max-idle", "9", "--log-level", "debug"], env)
    assert (cfg.upstream_host, cfg.upstream_port) == ("svc", 9000)
    assert cfg.pool_max_idle == 9 and cfg.access_log is False and cfg.log_level == "DEBUG"
    assert (cfg.listen_host, cfg.listen_port) == ("0.0.0.0", 8001) and cfg.admin_host is None
    assert load_config(["--access-log"], env).access_log is True
    assert load_config(["--no-access-log"], {}).access_log is False
    with pytest.raises(AttributeError):
        cfg.pool_max_idle = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--pool-max-idle", "lots"], {}, "--pool-max-idle / PROXY_POOL_MAX_IDLE"),
        (["--connect-timeout", "0"], {}, "--connect-timeout / PROXY_CONNECT_TIMEOUT"),
        ([], {"PROXY_UPSTREAM_TIMEOUT": "-3"}, "--upstream-timeout / PROXY_UPSTREAM_TIMEOUT"),
        ([], {"PROXY_DRAIN_TIMEOUT": "nan"}, "--drain-timeout / PROXY_DRAIN_TIMEOUT"),
        (["--upstream", "backend"], {}, "--upstream / PROXY_UPSTREAM"),
        (["--listen", "0.0.0.0:99999"], {}, "--listen / PROXY_LISTEN"),
        ([], {"PROXY_ACCESS_LOG": "maybe"}, "--access-log / PROXY_ACCESS_LOG"),
        (["--log-level", "loud"], {}, "--log-level / PROXY_LOG_LEVEL"),
        (["--policy", "fastest"], {}, "--policy / PROXY_POLICY"),
        (["--resolve-interval", "0"], {}, "--resolve-interval / PROXY_RESOLVE_INTERVAL"),
    ],
)
def test_bad_values_exit_2_naming_flag_and_env(
    argv: list[str], env: dict[str, str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        load_config(argv, env)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_cli_process_exit_code_and_help() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", "--pool-idle-timeout", "soon"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 2
    assert "--pool-idle-timeout / PROXY_POOL_IDLE_TIMEOUT" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", "--help"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert (
        proc.returncode == 0
        and "default backend:8001" in proc.stdout
        and "PROXY_DRAIN_TIMEOUT" in proc.stdout
    )


# -- docs drift: README's proxy knob table against the parser -------------------------------------
README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_proxy_rows() -> dict[str, list[str]]:
    """``--flag`` -> the cells of its row in README's "### Proxy" table."""
    section = README.read_text().split("### Proxy (`python -m proxy --help`)", 1)[1].split("\n### ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if line.startswith("| `--"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            for flag in re.findall(r"`(--[a-z0-9-]+)`", cells[0]):
                rows[flag] = cells
    return rows


def _same_default(documented: str, actual: str) -> bool:
    doc = documented.replace("`", "").strip()
    if doc == actual or (("," in doc) and set(doc.split(",")) == set(actual.split(","))):
        return True
    with contextlib.suppress(ValueError):
        return float(doc) == float(actual)
    with contextlib.suppress(ConfigError):
        return _size("--default", doc) == int(actual)
    return False


def test_readme_documents_every_proxy_flag_with_its_env_name_and_default() -> None:
    rows = _readme_proxy_rows()
    flags = {}
    for action in build_parser()._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                flags[flag] = action.help or ""
    assert sorted(set(flags) - set(rows)) == [], "flags missing from README's proxy table"
    assert sorted(set(rows) - set(flags)) == [], "README rows for flags `python -m proxy` does not have"
    for flag, help_ in flags.items():
        documented = re.search(r"\[env (\S+); default (.*)\]$", help_)
        if documented is None:  # --no-access-log: shares --access-log's row
            continue
        env, default = documented.groups()
        _, env_cell, default_cell, *_ = rows[flag]
        assert f"`{env}`" in env_cell, f"{flag}: README names {env_cell}, the parser {env}"
        assert _same_default(default_cell, default), f"{flag}: README says {default_cell}, --help {default}"


def test_compose_passes_the_proxy_knobs_with_the_flags_defaults_and_readme_lists_them() -> None:
    compose = yaml.safe_load((README.parent / "docker-compose.yml").read_text())
    environment = compose["services"]["proxy"]["environment"]
    variables = {}
    env = {}
    for name, value in environment.items():
        # `${PROXY_X:-default}` (the shell or .env may set PROXY_X), or a fixed value.
        match = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", str(value))
        if match:
            variables[match.group(1)] = match.group(2)
        env[name] = match.group(2) if match else str(value)
    assert {"PROXY_POLICY", "PROXY_HASH_ON", "PROXY_WORKERS", "PROXY_DISCOVERY"} <= set(variables)
    # With nothing set in the shell, the service runs with the proxy's own defaults.
    assert load_config([], env) == Config()
    table = README.read_text().split("### Compose variables", 1)[1].split("\n## ", 1)[0]
    documented = [
        re.compile(n.replace("*", "[A-Z0-9_]*")) for n in re.findall(r"`(PROXY_[A-Z0-9_*]+)`", table)
    ]
    missing = [v for v in variables if not any(pattern.fullmatch(v) for pattern in documented)]
    assert missing == [], "Compose variables of the proxy service missing from README's table"


def test_policy_objects_have_no_defaults_of_their_own_and_are_built_from_config() -> None:
    """One source of each default: Config. The knob records take every value as a required
    argument, so a default changed in Config is the default the running proxy uses."""
    import asyncio
    import dataclasses
    import inspect

    from proxy.health import HealthPolicy
    from proxy.outlier import OutlierPolicy
    from proxy.pool import UpstreamGroup
    from proxy.state import ProxyState

    for record in (HealthPolicy, OutlierPolicy):
        defaulted = [
            f.name
            for f in dataclasses.fields(record)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        ]
        assert defaulted == [], f"{record.__name__} declares defaults of its own: {defaulted}"
    group_params = inspect.signature(UpstreamGroup).parameters.values()
    assert all(p.default is inspect.Parameter.empty for p in group_params), "UpstreamGroup: knobs required"
    odd = Config(
        pool_max_idle=7,
        pool_idle_timeout=3.5,
        fail_timeout=0.5,
        ewma_decay=4.0,
        health_path="/ready",
        health_interval=9.0,
        unhealthy_threshold=4,
        outlier_consecutive_5xx=11,
        outlier_max_ejection_percent=30.0,
        max_in_flight_per_upstream=3,
    )
    expected = HealthPolicy("/ready", 9.0, odd.health_timeout, 4, odd.healthy_threshold)
    assert HealthPolicy.from_config(odd) == expected
    assert OutlierPolicy.from_config(odd).consecutive_5xx == 11
    loop = asyncio.new_event_loop()
    try:
        state = ProxyState.from_config(odd, loop, None)
        group = state.group
        knobs = (group.max_idle, group.idle_timeout, group.fail_timeout, group.ewma_decay)
        assert knobs == (7, 3.5, 0.5, 4.0)
        assert group.outlier is not None and group.outlier.policy == OutlierPolicy.from_config(odd)
        assert state.admission is not None and group.on_capacity == state.admission.wake, "wired in state.py"
        assert state.balancer.name == odd.policy
        quiet = Config(outlier_consecutive_5xx=0, outlier_consecutive_failures=0)
        off = ProxyState.from_config(quiet, loop, None)
        assert off.group.outlier is None and off.admission is None and off.group.on_capacity is None
    finally:
        loop.close()
