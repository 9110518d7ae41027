"""Flags, LOADGEN_* env, defaults and validation (exit 2 with exactly one error line)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen.__main__ import main
from loadgen.config import ConfigError, load_config, parse_target

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
    ],
)
def test_validation(
    argv: list[str], env: dict[str, str], fragment: str, capsys: pytest.CaptureFixture
) -> None:
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
