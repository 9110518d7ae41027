"""Flags, LOADGEN_* env, defaults and validation (exit 2 with exactly one error line)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen.__main__ import main
from loadgen.config import DEFAULT_MAX_BACKLOG, ConfigError, load_config, parse_target
from loadgen.plan import make_plan

REPO = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    cfg = load_config(["http://proxy:8080"], {})
    assert (cfg.concurrency, cfg.duration_s, cfg.timeout_s, cfg.method) == (10, 20.0, 10.0, "GET")
    assert (cfg.headers, cfg.json_path, cfg.results_dir, cfg.quiet) == ((), None, None, False)
    assert (cfg.target.host, cfg.target.port, cfg.target.path, cfg.target.host_header) == (
        "proxy",
        8080,
        "/",
        "proxy:8080",
    )


def test_env_is_used_and_flags_win() -> None:
    env = {
        "LOADGEN_URL": "http://env-host/x?y=1",
        "LOADGEN_CONCURRENCY": "7",
        "LOADGEN_DURATION": "1.5",
        "LOADGEN_TIMEOUT": "3",
        "LOADGEN_METHOD": "post",
        "LOADGEN_HEADER": "X-A: 1\nX-B: two words",
        "LOADGEN_JSON": "/tmp/r.json",
        "LOADGEN_RESULTS_DIR": "/tmp/results",
        "LOADGEN_QUIET": "yes",
    }
    cfg = load_config([], env)
    assert (cfg.url, cfg.concurrency, cfg.duration_s, cfg.timeout_s, cfg.method) == (
        "http://env-host/x?y=1",
        7,
        1.5,
        3.0,
        "POST",
    )
    assert cfg.headers == (("X-A", "1"), ("X-B", "two words"))
    assert (cfg.json_path, cfg.results_dir, cfg.quiet) == ("/tmp/r.json", "/tmp/results", True)
    assert (cfg.target.host_header, cfg.target.port, cfg.target.path) == ("env-host", 80, "/x?y=1")

    cfg = load_config(["http://flag:1/", "-c", "2", "--duration", "9", "--header", "X-C: 3"], env)
    assert (cfg.url, cfg.concurrency, cfg.duration_s) == ("http://flag:1/", 2, 9.0)
    assert cfg.headers == (("X-C", "3"),)  # any --header replaces the env headers


def test_ipv6_target() -> None:
    t = parse_target("http://[::1]:8080/p")
    assert (t.host, t.port, t.host_header) == ("::1", 8080, "[::1]:8080")


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        ([], {}, "URL is required"),
        (["https://proxy/"], {}, "https is not supported"),
        (["ftp://proxy/"], {}, "must start with http://"),
        (["proxy:8080"], {}, "must start with http://"),
        (["http:///path"], {}, "no host"),
        (["http://proxy:99999/"], {}, "bad port"),
        (["http://proxy:abc/"], {}, "bad port"),
        (["http://proxy:0/"], {}, "bad port"),
        (["http://pro xy/"], {}, "whitespace"),
        (["http://u:p@proxy/"], {}, "credentials"),
        (["http://p/", "--concurrency", "0"], {}, "--concurrency must be an integer >= 1"),
        (["http://p/", "-c", "two"], {}, "--concurrency"),
        (["http://p/", "--duration", "0"], {}, "--duration must be a number > 0"),
        (["http://p/", "--duration", "-1"], {}, "--duration"),
        (["http://p/", "--duration", "nan"], {}, "--duration"),
        (["http://p/", "--timeout", "0"], {}, "--timeout"),
        (["http://p/", "--header", "no colon"], {}, "malformed header"),
        (["http://p/", "--header", "Bad Name: x"], {}, "malformed header"),
        (["http://p/", "--header", ": x"], {}, "malformed header"),
        (["http://p/", "--method", "GE T"], {}, "bad method"),
        (["http://p/", "--bogus"], {}, "unrecognized arguments"),
        (["http://p/"], {"LOADGEN_CONCURRENCY": "0"}, "LOADGEN_CONCURRENCY must be"),
        (["http://p/"], {"LOADGEN_HEADER": "nope"}, "LOADGEN_HEADER: malformed header"),
        (["http://p/"], {"LOADGEN_QUIET": "maybe"}, "LOADGEN_QUIET"),
        (["http://p/", "--rate", "0"], {}, "--rate must be a number > 0"),
        (["http://p/", "--rate", "inf"], {}, "--rate"),
        (["http://p/", "--rate", "10", "-c", "5"], {}, "exclude each other"),
        (["http://p/"], {"LOADGEN_RATE": "10", "LOADGEN_CONCURRENCY": "5"}, "exclude each other"),
        (["http://p/", "-c", "5", "--connections", "9"], {}, "--connections is the open-loop pool size"),
        (["http://p/", "--rate", "10", "--connections", "0"], {}, "--connections must be an integer >= 1"),
        (["http://p/", "--rate", "10", "--max-backlog", "-1"], {}, "--max-backlog must be an integer >= 0"),
        (["http://p/"], {"LOADGEN_RATE": "10", "LOADGEN_MAX_BACKLOG": "x"}, "LOADGEN_MAX_BACKLOG must be"),
        (["http://p/", "-c", "5", "--max-backlog", "9"], {}, "--max-backlog bounds the open loop's backlog"),
        (["http://p/", "--workers", "0"], {}, "--workers must be an integer >= 1"),
        (["http://p/", "-c", "2", "--workers", "3"], {}, "--workers 3 needs at least as many"),
        (["http://p/", "--body-size", "-1"], {}, "--body-size must be an integer >= 0"),
        (["http://p/", "--body-size", "99999999999"], {}, "--body-size must be at most"),
        (["http://p/", "--scenario", "x.yaml", "--rate", "5"], {}, "--rate conflicts with --scenario"),
        (["--scenario", "x.yaml", "--duration", "5"], {}, "--duration conflicts with --scenario"),
        (["http://p/", "--scenario", "/nonexistent/x.yaml"], {}, "/nonexistent/x.yaml: no such file"),
        (["--rate", "10"], {}, "URL is required"),
    ],
)
def test_validation(
    argv: list[str], env: dict[str, str], fragment: str, capsys: pytest.CaptureFixture
) -> None:
    if "--scenario" not in argv and "--workers" not in argv:  # those are checked after parsing
        with pytest.raises(ConfigError, match=None) as err:
            load_config(argv, env)
        assert fragment in str(err.value)
    # and through main(): exit 2, one line on stderr, nothing on stdout
    assert main(argv, env) == 2
    out, errout = capsys.readouterr()
    assert out == ""
    assert errout.count("\n") == 1 and errout.startswith("loadgen: error: ") and fragment in errout


@pytest.mark.parametrize(
    "args",
    [["http://proxy:99999/"], ["http://proxy/", "--concurrency", "0"], ["http://proxy/", "-H", "bad"]],
)
def test_cli_subprocess_exit_2_with_one_line(args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADGEN_")}
    proc = subprocess.run(
        [sys.executable, "-m", "loadgen", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("loadgen: error: "), proc.stderr


def test_open_loop_flags_and_env() -> None:
    cfg = load_config(["http://p/", "--rate", "250.5", "--connections", "12", "--workers", "2"], {})
    assert (cfg.mode, cfg.rate, cfg.connections, cfg.workers) == ("open", 250.5, 12, 2)
    env = {"LOADGEN_URL": "http://p/", "LOADGEN_RATE": "100", "LOADGEN_CONCURRENCY": "20"}
    assert load_config(["-c", "3"], env).mode == "closed"  # a flag of one loop beats env of the other
    assert load_config(["--rate", "7"], {**env, "LOADGEN_RATE": ""}).rate == 7.0
    cfg = load_config([], {"LOADGEN_URL": "http://p/", "LOADGEN_RATE": "100", "LOADGEN_CONNECTIONS": "5"})
    assert (cfg.mode, cfg.connections) == ("open", 5)
    # LOADGEN_CONNECTIONS left over in a closed-loop run's environment is ignored, not an error
    assert load_config([], {"LOADGEN_URL": "http://p/", "LOADGEN_CONNECTIONS": "5"}).connections is None
    assert load_config(["http://p/", "--no-live"], {}).quiet
    assert load_config(["http://p/", "--rate", "5"], {}).max_backlog == DEFAULT_MAX_BACKLOG == 10_000
    cfg = load_config(["http://p/", "--rate", "5"], {"LOADGEN_MAX_BACKLOG": "7"})
    assert cfg.max_backlog == 7
    assert (
        load_config(
            ["http://p/", "--rate", "5", "--max-backlog", "0"], {"LOADGEN_MAX_BACKLOG": "7"}
        ).max_backlog
        == 0
    )
    assert make_plan(load_config(["http://p/", "-c", "2"], {"LOADGEN_MAX_BACKLOG": "7"})).max_backlog == 0
    assert load_config(["http://p/"], {"LOADGEN_NO_LIVE": "1"}).quiet


def test_scenario_takes_the_url_from_the_file_and_ignores_load_env(tmp_path: Path) -> None:
    cfg = load_config(["--scenario", "s.yaml"], {"LOADGEN_CONCURRENCY": "20", "LOADGEN_DURATION": "20"})
    assert (cfg.url, cfg.scenario_path, cfg.rate) == (None, "s.yaml", None)


def test_bad_scenario_file_exits_2_with_one_line_naming_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmode: rate\nstages:\n  - {kind: hold, duration: ten, target: 5}\n")
    assert main(["http://p/", "--scenario", str(bad)], {}) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"loadgen: error: {bad}: stages[0].duration")
