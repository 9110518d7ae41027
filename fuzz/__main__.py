"""``python -m fuzz``: run the fuzz targets under atheris (libFuzzer), or replay saved inputs.

    python -m fuzz all [--runs N] [--time S] [--workdir DIR]   every target, one subprocess each
    python -m fuzz run TARGET [--runs N] [--time S] [--workdir DIR]   one target, in this process
    python -m fuzz replay TARGET FILE...                      feed saved inputs once (no atheris)

``--runs``/``--time`` are the whole budget; ``all`` runs the targets one after the other, each
with an even share of what is left (so what the first does not use goes to the next), each
stopping at whichever limit comes first. Every run starts from the committed seeds
(fuzz/seeds/TARGET) plus the working corpus in ``--workdir`` (default results/fuzz), which
keeps what coverage the fuzzer found for the next run; an input that breaks an invariant is
saved there as ``crash-*`` and the exit status is 1. A found bug's input goes into
fuzz/regressions/TARGET/ once fixed: tests/unit/test_fuzz_regressions.py replays them.
Per input: 10 s at most (a hang is a finding) and 1 GiB of RSS for the process (memory bounded).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
# The fast target first: what it leaves of the budget (it usually stops at its share of the
# inputs) goes to the slow one, so a run uses its whole time or input budget.
TARGETS = {"loadgen": "fuzz.loadgen_response", "proxy": "fuzz.proxy_path"}
INSTRUMENT = ["engine", "proxy", "loadgen", "fuzz"]
PER_INPUT_TIMEOUT_S = 10
RSS_LIMIT_MB = 1024
MAX_LEN = 4096  # bytes per input: enough for a pipelined run of requests and one response
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_EXECS = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_RSS = re.compile(r"stat::peak_rss_mb:\s*(\d+)")


def _module(target: str) -> ModuleType:
    import importlib

    return importlib.import_module(TARGETS[target])


def run(target: str, runs: int, seconds: int, workdir: Path) -> None:
    """libFuzzer in this process (it exits the process when done)."""
    import atheris  # type: ignore[import-untyped]

    corpus = workdir / "corpus" / target
    artifacts = workdir / "artifacts" / target
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    with atheris.instrument_imports(include=INSTRUMENT):
        mod = _module(target)
        mod.test_one_input(b"")  # builds the target (imports the code under test) while instrumenting
        mod.test_one_input((HERE / "seeds" / target / "basic").read_bytes())
    args = [
        sys.argv[0],
        str(corpus),
        str(HERE / "seeds" / target),
        f"-dict={HERE / 'http.dict'}",
        f"-artifact_prefix={artifacts}/",
        f"-timeout={PER_INPUT_TIMEOUT_S}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-max_len={MAX_LEN}",
        "-print_final_stats=1",
    ]
    if runs:
        args.append(f"-runs={runs}")
    if seconds:
        args.append(f"-max_total_time={seconds}")
    atheris.Setup(args, mod.test_one_input)
    atheris.Fuzz()


def replay(target: str, files: list[str]) -> int:
    mod = _module(target)
    for name in files:
        mod.test_one_input(Path(name).read_bytes())
        print(f"ok {name}")
    return 0


def run_all(runs: int, seconds: int, workdir: Path, json_path: str | None) -> int:
    """Each target in its own process (libFuzzer owns the process); a summary line per target."""
    results = []
    status = 0
    runs_left, time_left = runs, float(seconds)
    for i, target in enumerate(TARGETS):
        todo = len(TARGETS) - i
        share_runs = runs_left // todo if runs else 0
        share_time = max(1, int(time_left / todo)) if seconds else 0
        cmd = [sys.executable, "-m", "fuzz", "run", target, "--workdir", str(workdir)]
        cmd += ["--runs", str(share_runs), "--time", str(share_time)]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        elapsed = time.monotonic() - t0
        log = workdir / f"{target}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(proc.stderr + proc.stdout)
        done = _DONE.search(proc.stderr)
        execs = _EXECS.search(proc.stderr)
        inputs = int(done.group(1)) if done else int(execs.group(1)) if execs else 0
        runs_left = max(0, runs_left - inputs)
        time_left = max(0.0, time_left - elapsed)
        rss = _RSS.search(proc.stderr)
        crashes = sorted(p.name for p in (workdir / "artifacts" / target).glob("*-*"))
        ok = proc.returncode == 0 and inputs > 0
        results.append(
            {
                "target": target,
                "inputs": inputs,
                "seconds": round(elapsed, 1),
                "rc": proc.returncode,
                "peak_rss_mb": int(rss.group(1)) if rss else None,
                "artifacts": crashes,
            }
        )
        print(
            f"fuzz {target}: {inputs} inputs in {elapsed:.0f}s, peak RSS {rss.group(1) if rss else '?'} MB, "
            f"exit {proc.returncode}, "
            f"{'no findings' if ok else 'FINDINGS (see ' + str(log) + ')'}"
        )
        if not ok:
            status = 1
            tail = "\n".join(proc.stderr.splitlines()[-40:])
            print(tail, file=sys.stderr)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=1) + "\n")
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("all", "run"):
        s = sub.add_parser(name)
        if name == "run":
            s.add_argument("target", choices=sorted(TARGETS))
        s.add_argument("--runs", type=int, default=0, help="inputs in total (0: no limit)")
        s.add_argument("--time", type=int, default=0, help="seconds in total (0: no limit)")
        s.add_argument("--workdir", default=os.environ.get("FUZZ_WORKDIR", "results/fuzz"))
        if name == "all":
            s.add_argument("--json", help="write the per-target figures here")
    r = sub.add_parser("replay")
    r.add_argument("target", choices=sorted(TARGETS))
    r.add_argument("files", nargs="+")
    a = p.parse_args(argv)
    if a.cmd == "replay":
        return replay(a.target, a.files)
    if a.cmd != "replay" and not (a.runs or a.time):
        p.error("give --runs or --time (or both): an unbounded run never reports")
    if a.runs < 0 or a.time < 0:
        p.error("--runs and --time must be >= 0")
    workdir = Path(a.workdir).resolve()
    if a.cmd == "run":
        run(a.target, a.runs, a.time, workdir)
        return 0
    return run_all(a.runs, a.time, workdir, a.json)


if __name__ == "__main__":
    sys.exit(main())
