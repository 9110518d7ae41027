"""./lab exports LAB_UID/LAB_GID, the user docker-compose.yml runs the load generator as, so that
results/ belongs to whoever ran ./lab (under sudo: the user who ran sudo). docs/security.md."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

LAB = Path(__file__).resolve().parents[2] / "lab"


def ids(env: dict[str, str]) -> str:
    """LAB_UID:LAB_GID after ./lab's own export line, in a shell with exactly ``env``."""
    (line,) = [ln for ln in LAB.read_text().splitlines() if ln.startswith("export LAB_UID=")]
    script = f'{line}\necho "$LAB_UID:$LAB_GID"'
    return subprocess.run(
        ["bash", "-c", script],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_lab_runs_the_load_generator_as_the_invoking_user() -> None:
    assert ids({}) == f"{os.getuid()}:{os.getgid()}"
    assert ids({"SUDO_UID": "1234", "SUDO_GID": "5678"}) == "1234:5678", "under sudo: the caller"
    assert ids({"LAB_UID": "42", "LAB_GID": "43", "SUDO_UID": "1234"}) == "42:43", "set by hand wins"


def test_compose_uses_those_ids_for_every_loadgen_service_that_writes_results() -> None:
    compose = (LAB.parent / "docker-compose.yml").read_text()
    assert compose.count('user: "${LAB_UID:-10001}:${LAB_GID:-10001}"') == 2  # loadgen, coordinator
    assert 'user: "${LAB_UID:-10001}:${LAB_GID:-10001}"' in (LAB.parent / "swarm" / "loadgen.yml").read_text()
