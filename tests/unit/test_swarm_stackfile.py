"""swarm/stackfile.py: docker-compose.yml's normalized config reduced to what `docker stack deploy` reads."""

from __future__ import annotations

import importlib.util
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

_spec = importlib.util.spec_from_file_location(
    "swarm_stackfile", Path(__file__).resolve().parents[2] / "swarm" / "stackfile.py"
)
assert _spec is not None and _spec.loader is not None
stackfile: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stackfile)

# The shape `docker compose --profile observe config --format json` prints (abridged).
CONFIG = {
    "name": "asgi-lab",
    "services": {
        "backend": {
            "build": {"context": "/repo", "dockerfile": "backend/Dockerfile"},
            "command": None,
            "entrypoint": None,
            "environment": {"BACKEND_KEEP_ALIVE": "15"},
            "healthcheck": {"test": ["CMD", "true"], "interval": "2s"},
            "image": "asgi-lab/backend:dev",
            "networks": {"default": None},
        },
        "proxy": {
            "attach": False,
            "depends_on": {"backend": {"condition": "service_healthy", "required": True}},
            "image": "asgi-lab/proxy:dev",
            "ports": [{"mode": "ingress", "host_ip": "0.0.0.0", "target": 8000, "published": "8000"}],
            "volumes": [
                {
                    "type": "bind",
                    "source": "/var/run/docker.sock",
                    "target": "/var/run/docker.sock",
                    "read_only": True,
                    "bind": {"create_host_path": True},
                }
            ],
        },
        "loadgen": {"image": "asgi-lab/loadgen:dev", "restart": "no"},
        "prometheus": {
            "profiles": ["observe"],
            "image": "asgi-lab/prometheus:dev",
            "ports": [{"mode": "ingress", "host_ip": "127.0.0.1", "target": 9090, "published": "9090"}],
        },
    },
}


def test_keeps_the_long_running_services_and_only_keys_swarm_reads() -> None:
    stack = stackfile.render(CONFIG)
    assert list(stack) == ["services"], "no name, no version: the CLI's newest schema for both files"
    assert list(stack["services"]) == ["backend", "proxy"], "the one-shot loadgen stays out"
    backend, proxy = stack["services"]["backend"], stack["services"]["proxy"]
    assert backend == {
        "image": "asgi-lab/backend:dev",
        "environment": {"BACKEND_KEEP_ALIVE": "15"},
        "healthcheck": {"test": ["CMD", "true"], "interval": "2s"},
        "networks": ["lab"],
    }
    assert "ports" not in proxy and "depends_on" not in proxy and "attach" not in proxy
    assert proxy["volumes"][0] == {
        "type": "bind",
        "source": "/var/run/docker.sock",
        "target": "/var/run/docker.sock",
        "read_only": True,
    }


def test_a_profiles_services_join_with_host_mode_ports() -> None:
    stack = stackfile.render(CONFIG, ["observe"])
    assert list(stack["services"]) == ["backend", "proxy", "prometheus"]
    prometheus = stack["services"]["prometheus"]
    assert prometheus["ports"] == [{"target": 9090, "mode": "host", "protocol": "tcp", "published": 9090}]
    assert prometheus["networks"] == ["lab"]


def test_refuses_a_config_without_the_core_services(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(stackfile.StackError, match="no proxy service"):
        stackfile.render({"services": {"backend": {"image": "b"}}})
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"services": {}})))
    assert stackfile.main([]) == 2
    assert "error: docker-compose.yml has no backend, proxy service" in capsys.readouterr().err
    assert stackfile.main(["--profile"]) == 2


def test_hardening_reaches_the_stack_tmpfs_as_mounts() -> None:
    """read_only, user and dropped capabilities stay; a tmpfs list becomes tmpfs mounts (a Swarm
    service has no tmpfs list); security_opt, which Swarm services lack, is left out."""
    spec = {
        "image": "asgi-lab/backend:dev",
        "read_only": True,
        "user": "10001:10001",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "tmpfs": ["/tmp", "/run:size=1m"],
    }
    out = stackfile.service(spec, core=True)
    assert out["read_only"] is True and out["user"] == "10001:10001" and out["cap_drop"] == ["ALL"]
    assert "security_opt" not in out and "tmpfs" not in out
    assert out["volumes"] == [{"type": "tmpfs", "target": "/tmp"}, {"type": "tmpfs", "target": "/run"}]


def test_the_real_compose_file_gives_no_service_the_docker_socket() -> None:
    """docker-compose.yml with every override in compose/, as `docker compose config` renders it:
    the socket is mounted into the two socket filters alone, and every service is read-only,
    capability-free (the filters keep SETUID/SETGID to switch users) and no-new-privileges."""
    import shutil
    import subprocess

    if shutil.which("docker") is None:
        pytest.skip("no docker CLI to render docker-compose.yml")
    repo = Path(__file__).resolve().parents[2]
    # The file's own defaults: none of the lab's variables from this shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXY_", "LOADGEN_", "BACKEND_"))}
    profiles = ["--profile", "observe", "--profile", "distributed"]
    files = [arg for f in ["docker-compose.yml", *sorted(p.name for p in (repo / "compose").glob("*.yml"))]
             for arg in ("-f", f if f == "docker-compose.yml" else f"compose/{f}")]  # fmt: skip
    done = subprocess.run(
        ["docker", "compose", *files, *profiles, "config", "--format", "json"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if done.returncode != 0 and "not a docker command" in done.stderr + done.stdout:
        pytest.skip("no `docker compose` plugin")
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    for name, svc in services.items():
        mounts = [v.get("source") for v in svc.get("volumes") or ()]
        holds_socket = any(str(m).endswith("docker.sock") for m in mounts)
        assert holds_socket == (name in ("docker-actions", "docker-reads")), (name, mounts)
        assert svc.get("read_only") is True and svc.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in (svc.get("security_opt") or ()), name
        assert not set(svc.get("cap_add") or ()) - {"SETUID", "SETGID"}, name
    admin = [p for p in services["proxy"]["ports"] if p["target"] == 8080]
    assert admin and all(p["host_ip"] == "127.0.0.1" for p in admin), "admin published on loopback only"
    assert services["proxy"]["environment"]["PROXY_HEALTH_PATH"] == "/health"
    assert len(services) >= 12, sorted(services)  # the base file's 7, docker-reads, 5 replicas
