"""Fixtures that stand the lab up with testcontainers' DockerCompose and always tear it down.

There is no Ryuk here to reap what a crashed run leaves, so the suite cleans up itself: the stack
is removed in a finalizer whatever the tests did, and a run first removes containers and networks
of earlier runs whose pytest process is gone (their project name carries its pid).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

# Ryuk, testcontainers' reaper, is an image that cannot be pulled here: switch it off before import.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import docker
import httpx
import pytest
from testcontainers.compose import DockerCompose

REPO = Path(__file__).resolve().parents[2]
PROJECT_PREFIX = "asgilab-it-"
LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"


# Files that must run after every other test, in this order (a stable sort keeps the rest as is):
# test_shutdown stops and restarts the session lab's proxy (a new host port); the Swarm tests go
# last of all because leaving a swarm breaks the embedded DNS of containers already running on
# Docker 20.10 (measured: a running Compose container's lookup of a peer's name fails with
# "Name or service not known" right after `docker swarm leave --force`), which would take every
# Compose lab still up, the session lab included, down to 0 endpoints.
LAST_FILES = ("test_shutdown.py", "test_distributed_swarm.py", "test_swarm.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run LAST_FILES after every other test, in their order, whatever the file names sort to."""
    rank = {name: i + 1 for i, name in enumerate(LAST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, 0))


def _docker_problem() -> str | None:
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        return f"no usable Docker engine ({exc.__class__.__name__}: {exc}); run ./scripts/provision"
    result = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if result.returncode != 0:
        return "no `docker compose` CLI plugin; run ./scripts/provision"
    return None


def _repo_env() -> dict[str, str]:
    """Variables from the repo's .env (PYTHON_IMAGE from scripts/provision), kept for our env file.

    BACKEND_SERVER from the shell runs every project's backends under that server
    (``BACKEND_SERVER=asgilab ./lab test tests/integration``); a test's own ``env`` still wins.
    """
    env: dict[str, str] = {}
    dotenv = REPO / ".env"
    if dotenv.exists():
        for line in dotenv.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                env[key.strip()] = value.strip()
    for key in ("PYTHON_IMAGE", "BACKEND_SERVER"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def _is_stale(project: str) -> bool:
    """A test project whose pytest process (its pid is in the name) no longer runs."""
    match = re.match(rf"^{PROJECT_PREFIX}(\d+)-", project)
    return bool(match) and not Path(f"/proc/{match.group(1)}").exists()


def _remove_projects(client: docker.DockerClient, wanted: Callable[[str], bool]) -> None:
    """Force-remove the containers, networks and volumes of every Compose project `wanted` picks."""
    label = {"label": LABEL_PROJECT}
    for container in client.containers.list(all=True, filters=label):
        if wanted(container.labels.get(LABEL_PROJECT, "")):
            container.remove(force=True, v=True)
    for network in client.networks.list(filters=label):
        if wanted(network.attrs["Labels"].get(LABEL_PROJECT, "")):
            network.remove()
    for volume in client.volumes.list(filters=label):
        if wanted((volume.attrs.get("Labels") or {}).get(LABEL_PROJECT, "")):
            volume.remove(force=True)


class Lab:
    """A running lab stack under its own Compose project, reachable on ephemeral host ports."""

    def __init__(
        self, compose: DockerCompose, project: str, results_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.compose = compose
        self.env = env or {}  # the project's variables: they beat the shell's (Compose prefers those)
        self.project = project
        self.results_dir = results_dir
        self.docker = docker.from_env()
        self.base_url = ""
        self.admin_url = ""

    # --- compose --------------------------------------------------------------------------
    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*self.compose.docker_compose_command(), *args]
        env = {**os.environ, **self.env}
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            output = f"{result.stdout}\n{result.stderr}"
            raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n{output}")
        return result

    def publish(self) -> None:
        _, port = self.compose.get_service_host_and_port("proxy", 8000)
        self.base_url = f"http://127.0.0.1:{port}"
        _, port = self.compose.get_service_host_and_port("proxy", 8080)
        self.admin_url = f"http://127.0.0.1:{port}"

    def scale(self, replicas: int) -> None:
        """Scale the backend service and wait until its replicas are healthy."""
        self.run("up", "-d", "--wait", "--no-recreate", "--scale", f"backend={replicas}", "backend")

    # --- containers -----------------------------------------------------------------------
    def containers(self, service: str, all: bool = False) -> list[docker.models.containers.Container]:
        filters = {"label": [f"{LABEL_PROJECT}={self.project}", f"{LABEL_SERVICE}={service}"]}
        return self.docker.containers.list(all=all, filters=filters)

    @staticmethod
    def stats(container: docker.models.containers.Container) -> dict:
        """A backend container's own ``/stats`` (read inside it: backends publish no port)."""
        code = "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8001/stats').read().decode())"
        exit_code, output = container.exec_run(["python", "-c", code])
        assert exit_code == 0, output
        return json.loads(output)

    def backend_stats(self) -> dict[str, int]:
        """Requests each running backend counted itself, by its id (the container hostname)."""
        counts: dict[str, int] = {}
        for container in self.containers("backend"):
            stats = self.stats(container)
            counts[stats["backend"]] = stats["requests"]
        return counts

    @staticmethod
    def address(container: docker.models.containers.Container) -> str:
        """The container's ``ip:8001``: the proxy's name for it (endpoint label, metrics ``upstream``)."""
        container.reload()
        (net,) = container.attrs["NetworkSettings"]["Networks"].values()
        return f"{net['IPAddress']}:8001"

    # --- proxy ----------------------------------------------------------------------------
    def endpoints(self) -> list[dict]:
        return httpx.get(f"{self.admin_url}/upstreams", timeout=5).json()["endpoints"]

    def wait_for_endpoints(self, count: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        seen: list[dict] = []
        while time.monotonic() < deadline:
            seen = self.endpoints()
            if len(seen) == count:
                return
            time.sleep(0.2)
        raise AssertionError(f"proxy saw {len(seen)} endpoints, expected {count}: {seen}")


@pytest.fixture(scope="session")
def docker_ready() -> None:
    problem = _docker_problem()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and {problem}", pytrace=False)
    pytest.skip(problem)


@pytest.fixture(scope="session")
def lab(docker_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Build every image, start proxy + 3 backends, and remove everything at the end, pass or fail."""
    results = tmp_path_factory.mktemp("results")  # the loadgen service's /results
    env = {"LOADGEN_DURATION": "5", "LOADGEN_CONCURRENCY": "10", "LOADGEN_RESULTS": str(results)}
    with own_lab(tmp_path_factory, "lab", env=env, build=()) as lab:
        lab.results_dir = results
        yield lab


@pytest.fixture
def lab3(lab: Lab) -> Lab:
    """The lab with exactly 3 healthy backends that the proxy routes to, whatever earlier tests did."""
    lab.scale(3)
    lab.wait_for_endpoints(3)
    return lab


@contextlib.contextmanager
def own_lab(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    *,
    env: dict[str, str] | None = None,
    compose_files: Sequence[str] = (),
    up: Sequence[str] = ("--scale", "backend=3", "proxy", "backend"),
    endpoints: int = 3,
    build: Sequence[str] = ("backend", "proxy"),
) -> Iterator[Lab]:
    """A differently configured lab under its own project (``<prefix><pid>-<name>-<rand>``).

    ``env`` adds or overrides Compose variables, ``compose_files`` are override files (relative to
    the repo) on top of docker-compose.yml, ``up`` ends the ``up -d --wait`` command line, ``build``
    names the services whose images are built first (empty: all). Everything the project started
    is removed at the end, pass or fail: containers, networks and volumes, also those ``down``
    misses (a service started by a test that is not in ``up``).
    """
    _remove_projects(docker.from_env(), _is_stale)
    project = f"{PROJECT_PREFIX}{os.getpid()}-{name}-{uuid.uuid4().hex[:6]}"
    work = tmp_path_factory.mktemp(name)
    values = {
        **_repo_env(),
        "COMPOSE_PROJECT_NAME": project,
        "PROXY_BIND": "127.0.0.1",
        "PROXY_PORT": "0",
        "PROXY_ADMIN_PORT": "0",
        "LOADGEN_DASHBOARD_PORT": "0",
        **(env or {}),
    }
    env_file = work / "lab.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    compose = DockerCompose(
        REPO, compose_file_name=["docker-compose.yml", *compose_files], env_file=str(env_file)
    )
    lab = Lab(compose, project, work, values)
    try:
        lab.run("build", *build, timeout=900)
        lab.run("up", "-d", "--wait", *up)
        lab.publish()
        lab.wait_for_endpoints(endpoints)
        yield lab
    finally:
        keep_logs = os.environ.get("ASGI_LAB_KEEP_LOGS")
        if keep_logs:
            with open(keep_logs, "a") as out:
                out.write(lab.run("logs", "--no-color", "--timestamps", check=False).stdout)
        lab.run("down", "--volumes", "--remove-orphans", "--timeout", "3", check=False)
        _remove_projects(lab.docker, lambda name: name == project)
