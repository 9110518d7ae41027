"""The short fuzz run of CI: both targets under atheris (libFuzzer) for about 50 s in all.

``python -m fuzz all --time 50`` runs each target in its own process from the committed seeds;
any crash, unhandled exception, hang (10 s per input) or RSS over 1 GiB fails it. The long run
is ``./lab fuzz`` (docs/conformance.md). Under CI=true a missing atheris is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _atheris() -> bool:
    try:
        import atheris  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise
        return False
    return True


@pytest.mark.timeout(240)
def test_short_fuzz_run_finds_nothing(tmp_path: Path) -> None:
    if not _atheris():
        pytest.skip("atheris is not installed (pip install -r requirements-dev.txt)")
    out = tmp_path / "fuzz.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fuzz", "all", "--time", "50", "--workdir", str(tmp_path), "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    figures = {r["target"]: r for r in json.loads(out.read_text())}
    assert set(figures) == {"proxy", "loadgen"}
    for name, r in figures.items():
        # Some thousands of inputs at least, even on a loaded 2-core machine (a stuck target runs few).
        assert r["inputs"] >= 1000, (name, r)
        assert r["artifacts"] == [], (name, r)
        assert r["peak_rss_mb"] is not None and r["peak_rss_mb"] < 512, (name, r)  # memory bounded
