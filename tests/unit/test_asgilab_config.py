"""asgilab's configuration: flags, their ASGILAB_* twins, one source of defaults, exit 2 on bad input."""

from __future__ import annotations

import dataclasses

import pytest

from asgilab.config import OPTIONS, Config, build_parser, env_name, load_config


def test_every_flag_has_a_config_field_an_env_twin_and_the_dataclass_default() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(Config)}
    helps = {a.option_strings[0]: a.help for a in build_parser()._actions if a.option_strings}
    for flag in OPTIONS:
        name = flag[2:].replace("-", "_")
        assert name in fields, flag
        assert f"env {env_name(flag)}" in (helps[flag] or ""), flag
    cfg = load_config(["m:app"], env={})
    assert cfg == Config(app="m:app"), "no default lives anywhere but the dataclass"


def test_env_twins_and_flags_win() -> None:
    env = {
        "ASGILAB_PORT": "9001",
        "ASGILAB_LIFESPAN": "off",
        "ASGILAB_ACCESS_LOG": "false",
        "ASGILAB_APP": "a:b",
    }
    cfg = load_config([], env=env)
    assert (cfg.app, cfg.port, cfg.lifespan, cfg.access_log) == ("a:b", 9001, "off", False)
    cfg = load_config(["c:d", "--port", "9002", "--access-log", "--max-body-size", "1m"], env=env)
    assert (cfg.app, cfg.port, cfg.access_log, cfg.max_body_size) == ("c:d", 9002, True, 1024 * 1024)


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["m:app", "--port", "http"], {}, "--port / ASGILAB_PORT: expected a number"),
        (["m:app", "--port", "70000"], {}, "port out of range"),
        (["m:app", "--lifespan", "maybe"], {}, "--lifespan / ASGILAB_LIFESPAN: expected auto, on or off"),
        (
            ["m:app"],
            {"ASGILAB_HEADER_TIMEOUT": "0"},
            "--header-timeout / ASGILAB_HEADER_TIMEOUT: must be > 0",
        ),
        (["m:app", "--forwarded-allow-ips", "not-an-ip"], {}, "not an address or network"),
        (
            ["m:app"],
            {"ASGILAB_CLIENT_SEND_TIMEOUT": "-1"},
            "--client-send-timeout / ASGILAB_CLIENT_SEND_TIMEOUT: must be >= 0",
        ),
        (["m:app", "--workers", "2", "--port", "0"], {}, "needs a fixed --port"),
        (["m:app", "--root-path", "api/"], {}, "--root-path"),
        (["no-colon"], {}, "expected module:attribute"),
        ([], {}, "expected module:attribute"),
        (["m:app", "--no-such-flag"], {}, "unrecognized arguments"),
    ],
)
def test_bad_values_exit_2_with_one_line(
    argv: list[str], env: dict[str, str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        load_config(argv, env=env)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
