"""The Compose loadgen service's live page: published on the host's loopback, fed while the run
goes, ended by the run's own report; report.html lands beside report.json."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from .conftest import REPO, Lab


def _events(port: int) -> list[tuple[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/events")
    resp = conn.getresponse()
    assert resp.status == 200
    out: list[tuple[str, Any]] = []
    name = ""
    while line := resp.readline():
        if line.startswith(b"event: "):
            name = line[7:].strip().decode()
        elif line.startswith(b"data: "):
            out.append((name, json.loads(line[6:])))
    conn.close()
    return out


def test_the_compose_loadgen_publishes_its_live_page(lab3: Lab, tmp_path: Path) -> None:
    cmd = [
        *lab3.compose.docker_compose_command(),
        "run", "--rm", "--no-deps", "--service-ports", "-v", f"{tmp_path}:/out", "loadgen",
        "http://proxy:8000/", "--rate", "100", "--duration", "8", "--results-dir", "/out", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, **lab3.env}
    run = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 90
        binding = None
        while time.monotonic() < deadline and binding is None:
            for c in lab3.containers("loadgen"):
                c.reload()
                bound = (c.attrs["NetworkSettings"]["Ports"] or {}).get("5665/tcp")
                if bound:
                    binding = bound[0]
            time.sleep(0.2)
        assert binding is not None, "the loadgen container never published 5665"
        assert binding["HostIp"] == "127.0.0.1"  # loopback only, whatever the page shows
        events: list[tuple[str, Any]] = []
        while time.monotonic() < deadline and not events:
            try:
                events = _events(int(binding["HostPort"]))
            except (ConnectionError, http.client.HTTPException, OSError):
                time.sleep(0.2)  # published before the process inside listens
        output, _ = run.communicate(timeout=90)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, output
    names = [n for n, _ in events]
    assert names[0] == "meta" and names[-1] == "end" and names.count("second") >= 3
    meta = events[0][1]
    assert meta["url"] == "http://proxy:8000/" and meta["mode"] == "open"
    assert meta["tags"]["policy"] == lab3.env.get("PROXY_POLICY", "round_robin")  # Compose's LOADGEN_TAGS
    live = [d for n, d in events if n == "second"]
    assert any(d["rps"] > 50 and d["backends"] for d in live), live  # 100 req/s through 3 replicas
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    report = json.loads((run_dir / "report.json").read_text())
    end = events[-1][1]
    assert end["summary"]["requests"] == report["requests"] and report["failed"] == 0
    assert (run_dir / "report.html").stat().st_size > 50_000  # uPlot and the data, inlined
