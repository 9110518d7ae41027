"""`python -m backend --server`: validation, and the command line each of the five servers gets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.__main__ import build_parser, parse_args, settings
from backend.servers import (
    DEFAULT_SERVER,
    FORWARDED_TARGET,
    SERVERS,
    Settings,
    command,
    forwarded_env,
    parse_server,
)
from engine import trust

REPO = Path(__file__).resolve().parents[2]


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_uvicorn_is_the_default_and_the_env_picks_another(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BACKEND_SERVER", raising=False)
    assert DEFAULT_SERVER == "uvicorn" and parse_args([]).server == "uvicorn"
    monkeypatch.setenv("BACKEND_SERVER", "Granian")
    assert parse_args([]).server == "granian"
    assert parse_args(["--server", "asgilab"]).server == "asgilab"  # the flag wins


def test_a_bad_server_is_one_line_and_exit_2() -> None:
    env = {**os.environ, "BACKEND_SERVER": "nginx"}
    result = subprocess.run(
        [sys.executable, "-m", "backend"], cwd=REPO, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "BACKEND_SERVER" in lines[0] and "nginx" in lines[0]
    assert all(name in lines[0] for name in SERVERS), "the message lists the choices"


@pytest.mark.parametrize(
    ("env", "value"),
    [("BACKEND_WORKERS", "0"), ("BACKEND_GRACEFUL_TIMEOUT", "0"), ("BACKEND_WORKERS", "two")],
)
def test_bad_numbers_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SystemExit) as exc:
        parse_args([])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert env in err and len(err.strip().splitlines()) == 1


def test_parse_server_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="uvicorn, asgilab, granian, hypercorn, gunicorn"):
        parse_server("daphne")


@pytest.mark.parametrize("server", SERVERS)
def test_every_server_gets_the_same_port_workers_and_target(server: str) -> None:
    s = Settings(app="pkg.mod:app", host="127.0.0.9", port=8123, workers=3, keep_alive=17)
    cmd = command(server, s, python="py")  # type: ignore[arg-type]
    assert cmd[:3] == ["py", "-m", server]
    joined = " ".join(cmd)
    assert "8123" in joined and "127.0.0.9" in joined
    assert _flag(cmd, "--workers") == "3"
    # The app is the last argument, or for servers without a proxy-headers option the wrapper.
    assert cmd[-1] in ("pkg.mod:app", FORWARDED_TARGET) or "pkg.mod:app" in cmd
    assert "17" in joined or "17000" in joined, "the keep-alive reaches every server"


def test_granian_and_hypercorn_get_the_forwarded_wrapper_only_when_asked() -> None:
    s = Settings(app="pkg.mod:app", forwarded_allow_ips="10.0.0.0/8")
    for server in ("granian", "hypercorn"):
        cmd = command(server, s)  # type: ignore[arg-type]
        assert cmd[-1] == FORWARDED_TARGET
        assert forwarded_env(server, s) == {  # type: ignore[arg-type]
            "BACKEND_WRAPPED_APP": "pkg.mod:app",
            "BACKEND_FORWARDED_ALLOW_IPS": "10.0.0.0/8",
        }
        bare = Settings(app="pkg.mod:app", forwarded_allow_ips=None)
        assert command(server, bare)[-1] == "pkg.mod:app"  # type: ignore[arg-type]
        assert forwarded_env(server, bare) == {}  # type: ignore[arg-type]
    assert forwarded_env("uvicorn", s) == {}
    assert _flag(command("uvicorn", s), "--forwarded-allow-ips") == "10.0.0.0/8"
    assert "--no-proxy-headers" in command("uvicorn", Settings(forwarded_allow_ips=None))


def test_granian_keep_alive_is_its_header_read_timeout_in_ms_capped_at_60s() -> None:
    assert _flag(command("granian", Settings(keep_alive=15)), "--http1-header-read-timeout") == "15000"
    assert _flag(command("granian", Settings(keep_alive=900)), "--http1-header-read-timeout") == "60000"


def test_uvicorn_runs_httptools_and_uvloop_and_gunicorn_the_uvicorn_worker() -> None:
    cmd = command("uvicorn", Settings())
    assert _flag(cmd, "--loop") == "uvloop" and _flag(cmd, "--http") == "httptools"
    cmd = command("gunicorn", Settings())
    assert _flag(cmd, "--worker-class") == "uvicorn_worker.UvicornWorker"


def test_main_settings_follow_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BACKEND_KEEP_ALIVE", raising=False)
    args = parse_args(["--port", "9001", "--workers", "2", "--keep-alive", "20", "--access-log"])
    assert settings(args) == Settings(port=9001, workers=2, keep_alive=20, access_log=True)


@pytest.mark.parametrize("server", ["uvicorn", "granian", "hypercorn", "gunicorn"])
def test_each_installed_server_accepts_its_command_line(server: str) -> None:
    """The flags are the servers' real ones: each parses its command line (``--help`` appended)."""
    cmd = command(server, Settings(app="backend.app:app"))  # type: ignore[arg-type]
    result = subprocess.run([*cmd[:3], "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in (arg for arg in cmd[3:] if arg.startswith("--")):
        assert flag in result.stdout, f"{server} has no {flag}"


def test_readme_backend_table_lists_every_flag_with_its_variable() -> None:
    section = (REPO / "README.md").read_text().split("### Backend (`python -m backend --help`)", 1)[1]
    rows = {
        line.split("|")[1].strip().strip("`"): line.split("|")[2].strip().strip("`")
        for line in section.split("\n### ", 1)[0].splitlines()
        if line.startswith("| `--")
    }
    flags = {
        action.option_strings[0]: (action.help or "").rsplit("env ", 1)[-1].rstrip(")")
        for action in build_parser()._actions
        if action.option_strings[0] != "-h"
    }
    assert set(rows) == set(flags), "README's backend table and the parser's flags differ"
    for flag, env in flags.items():
        assert rows[flag] == env, f"{flag}: README names {rows[flag]}, the parser {env}"


def test_asgilab_accepts_its_command_line() -> None:
    """asgilab's own parser and validation take the flags backend.servers gives it."""
    from asgilab import config

    s = Settings(app="backend.app:app", port=8123, workers=2, keep_alive=17, graceful_timeout=7)
    cfg = config.load_config(command("asgilab", s)[3:], env={})
    assert (cfg.app, cfg.port, cfg.workers, cfg.keep_alive) == ("backend.app:app", 8123, 2, 17)
    assert (cfg.graceful_timeout, cfg.proxy_headers) == (7, True)
    # The default, `local`, reaches the server as this machine's networks (engine/trust.py).
    assert cfg.forwarded_allow_ips == trust.expand("local") and "127.0.0.0/8" in cfg.forwarded_allow_ips
    assert cfg.access_log is False
    bare = config.load_config(command("asgilab", Settings(forwarded_allow_ips=None))[3:], env={})
    assert bare.proxy_headers is False
