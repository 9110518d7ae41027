"""Safe by default, on real containers (docs/security.md).

One lab of its own (docker discovery through the docker-reads filter, the docker-actions filter
for the load generator, an admin token, LAB_UID/LAB_GID standing for an invoking user who is not
root): no container but the two socket filters holds the Docker socket; the filters let through
what their client needs and refuse a write (a container create asking for the host, an exec);
every container runs as a non-root user with no capabilities, no-new-privileges and a read-only
root; what the load generator writes into a mounted folder belongs to LAB_UID:LAB_GID; the admin
port is published on loopback and its writes need the token; a client's X-Forwarded-For is not
believed.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import Lab, own_lab

TOKEN = "security-test-token"
USER = (4242, 4243)  # the invoking user the lab is told about (./lab sets the caller's ids)
FILTERS = ("docker-actions", "docker-reads")


@pytest.fixture(scope="module")
def sec_lab(docker_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    env = {
        "PROXY_ADMIN_TOKEN": TOKEN,
        "PROXY_ACCESS_LOG": "false",
        "LAB_UID": str(USER[0]),
        "LAB_GID": str(USER[1]),
    }
    with own_lab(
        tmp_path_factory,
        "security",
        env=env,
        compose_files=["compose/docker-discovery.yml"],
        up=("--scale", "backend=2", "proxy", "backend", "docker-actions"),
        endpoints=2,
        build=("backend", "proxy", "loadgen", "docker-actions"),
    ) as lab:
        yield lab


def proc_status(container: object) -> dict[str, str]:
    """Uid, CapEff and NoNewPrivs of the container's main process (PID 1), read inside it."""
    code, out = container.exec_run(["cat", "/proc/1/status"])  # type: ignore[attr-defined]
    assert code == 0, out
    fields = dict(line.split(":", 1) for line in out.decode().splitlines() if ":" in line)
    return {k: fields[k].split()[0] for k in ("Uid", "CapEff", "NoNewPrivs")}


def python_in(container: object, code: str) -> dict:
    """Run ``code`` (which prints one JSON document) with the container's python."""
    exit_code, out = container.exec_run(["python3", "-c", textwrap.dedent(code)])  # type: ignore[attr-defined]
    assert exit_code == 0, out.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


STATUS_OF = """
import json, urllib.request, urllib.error
def status(method, url, body=None):
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:
        return str(e)
"""


def test_only_the_socket_filters_hold_the_socket_and_every_container_is_unprivileged(sec_lab: Lab) -> None:
    containers = sec_lab.docker.containers.list(
        filters={"label": f"com.docker.compose.project={sec_lab.project}"}
    )
    services = {c.labels["com.docker.compose.service"] for c in containers}
    assert {"proxy", "backend", *FILTERS} <= services, services
    for c in containers:
        service = c.labels["com.docker.compose.service"]
        host = c.attrs["HostConfig"]
        sockets = [m for m in c.attrs["Mounts"] if m.get("Source", "").endswith("docker.sock")]
        assert bool(sockets) == (service in FILTERS), f"{service}: docker.sock mounts {sockets}"
        assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"], service
        assert "no-new-privileges:true" in (host["SecurityOpt"] or []), service
        status = proc_status(c)
        assert status["Uid"] != "0", f"{service} runs as root"
        assert int(status["CapEff"], 16) == 0, f"{service} has capabilities {status['CapEff']}"
        assert status["NoNewPrivs"] == "1", service
        code, out = c.exec_run(["sh", "-c", "touch /probe"])
        assert code != 0 and b"Read-only file system" in out, f"{service}: {out!r}"
    proxy = sec_lab.containers("proxy")[0]
    assert not python_in(proxy, "import os, json; print(json.dumps(os.path.exists('/var/run/docker.sock')))")


def test_the_discovery_filter_answers_the_reads_and_refuses_writes(sec_lab: Lab) -> None:
    proxy = sec_lab.containers("proxy")[0]
    backend = sec_lab.containers("backend")[0]
    api = "http://docker-reads:2375/v1.41"
    doc = python_in(
        proxy,
        STATUS_OF
        + f"""
print(json.dumps({{
    "list": status("GET", "{api}/containers/json"),
    "inspect": status("GET", "{api}/containers/{backend.id}/json"),
    "create": status("POST", "{api}/containers/create", b'{{"Image": "asgi-lab/proxy:dev"}}'),
    "exec": status("POST", "{api}/containers/{backend.id}/exec", b'{{"Cmd": ["id"]}}'),
    "kill": status("POST", "{api}/containers/{backend.id}/kill"),
    "images": status("GET", "{api}/images/json"),
}}))
""",
    )
    assert doc == {"list": 200, "inspect": 200, "create": 403, "exec": 403, "kill": 403, "images": 403}, doc
    # Discovery itself works through it: the proxy follows the 2 replicas (own_lab waited for them).
    assert len(sec_lab.endpoints()) == 2
    logs = sec_lab.run("logs", "proxy").stdout
    assert "docker discovery: service 'backend'" in logs
    # A backend is on neither filter's network: it cannot even resolve them.
    urls = ["http://docker-reads:2375/_ping", "http://docker-actions:2375/_ping"]
    reach = python_in(backend, STATUS_OF + f"print(json.dumps([status('GET', u) for u in {urls!r}]))")
    assert all(isinstance(r, str) for r in reach), reach


def test_the_actions_filter_allows_the_scenario_actions_and_refuses_the_rest(sec_lab: Lab) -> None:
    """Through the loadgen service's own DOCKER_HOST: list, inspect and a kill pass (SIGCONT: a
    kill that changes nothing); a privileged create, a bind of /, an exec and even /info do not
    (the scenario actions need none of them)."""
    victim = sec_lab.containers("backend")[0]
    code = f"""
import json, docker
client = docker.from_env()
out = {{"listed": len(client.containers.list())}}
c = client.containers.get("{victim.id}")
c.kill(signal="SIGCONT"); out["killed"] = True
def refused(call):
    try:
        call()
    except docker.errors.APIError as exc:
        return exc.status_code
    return "allowed"
hc = client.api.create_host_config(privileged=True)
out["privileged"] = refused(lambda: client.api.create_container("asgi-lab/backend:dev", host_config=hc))
hc = client.api.create_host_config(binds=["/:/host"])
out["bind"] = refused(lambda: client.api.create_container("asgi-lab/backend:dev", host_config=hc))
out["exec"] = refused(lambda: client.api.exec_create("{victim.id}", "id"))
out["info"] = refused(lambda: client.info())
print(json.dumps(out))
"""
    run = sec_lab.run("run", "--rm", "--no-deps", "-T", "--entrypoint", "python", "loadgen", "-c", code)
    doc = json.loads(run.stdout.strip().splitlines()[-1])
    assert doc["listed"] >= 4 and doc["killed"] is True, doc
    assert (doc["privileged"], doc["bind"], doc["exec"], doc["info"]) == (403, 403, 403, 403), doc
    victim.reload()
    assert victim.status == "running"


def test_results_belong_to_the_invoking_user_and_the_policy_action_carries_the_token(
    sec_lab: Lab, tmp_path: Path
) -> None:
    """A scenario run by the compose service: its policy action reaches the proxy (token read
    from the proxy's container), a 500 ms stop is a stop, and every file it writes is LAB_UID's."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "s.yaml").write_text(
        "name: sec\nurl: http://proxy:8000/\nmode: rate\nstages:\n  - {kind: hold, duration: 3, target: 50}\n"
        "actions:\n  - {at: 1, kind: policy, target: proxy, policy: least_request}\n"
    )
    os.chown(out, *USER)
    os.chmod(out, 0o700)  # only that user may write here
    try:
        run = sec_lab.run(
            "run", "--rm", "--no-deps", "-v", f"{out}:/out", "loadgen",
            "--scenario", "/out/s.yaml", "--results-dir", "/out", "--quiet",
            timeout=120, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        written = [p for p in out.rglob("*") if p.name != "s.yaml"]
        assert any(p.name == "report.json" for p in written), written
        owners = {(p.stat().st_uid, p.stat().st_gid) for p in written}
        assert owners == {USER}, owners
        (report,) = out.glob("*/report.json")
        (action,) = json.loads(report.read_text())["actions"]
        assert action["ok"], action
        assert httpx.get(f"{sec_lab.admin_url}/policy", timeout=5).json()["policy"] == "least_request"
    finally:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        httpx.put(f"{sec_lab.admin_url}/policy", content="round_robin", headers=headers, timeout=5)


def test_admin_is_on_loopback_and_its_writes_need_the_token(sec_lab: Lab) -> None:
    (proxy,) = sec_lab.containers("proxy")
    bindings = proxy.attrs["NetworkSettings"]["Ports"]["8080/tcp"]
    assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}, bindings
    assert httpx.get(f"{sec_lab.admin_url}/upstreams", timeout=5).status_code == 200
    r = httpx.put(f"{sec_lab.admin_url}/policy", content="p2c", timeout=5)
    assert r.status_code == 401, r.text
    r = httpx.put(f"{sec_lab.admin_url}/policy", content="p2c", headers={"Authorization": "Bearer nope-nope"})
    assert r.status_code == 401
    assert httpx.get(f"{sec_lab.admin_url}/policy", timeout=5).json()["policy"] == "round_robin"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.put(f"{sec_lab.admin_url}/policy", content="p2c", headers=auth, timeout=5)
    assert r.status_code == 200 and r.json()["policy"] == "p2c"
    httpx.put(f"{sec_lab.admin_url}/policy", content="round_robin", headers=auth, timeout=5)


def test_a_clients_own_x_forwarded_for_is_not_believed(sec_lab: Lab) -> None:
    doc = httpx.get(f"{sec_lab.base_url}/echo", headers={"X-Forwarded-For": "6.6.6.6"}, timeout=5).json()
    assert doc["client"] != "6.6.6.6", doc
    assert "6.6.6.6" not in doc["headers"].get("x-forwarded-for", ""), doc["headers"]
