"""Fixtures that stand the lab up with testcontainers' DockerCompose and always tear it down.

There is no Ryuk here to reap what a crashed run leaves, so the suite cleans up itself: the stack
is removed in a finalizer whatever the tests did, and a run first removes the containers, networks
and volumes of earlier runs that are gone. Which runs are gone is an owner check, not a guess from
a name: every container and network a test project creates carries labels naming its owner (the
pytest process's pid, that process's start time, and the kernel and pid namespace it runs in). A
project whose owner ran in this pid namespace and no longer runs (no such pid, or a pid reused by a
later process) is stale; a project owned from elsewhere (another machine or container sharing the
engine, where our /proc says nothing) is left alone until it is older than ASGI_LAB_STALE_AFTER
seconds (default 6 hours), and so is a test project without owner labels.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

# Ryuk, testcontainers' reaper, is an image that cannot be pulled here: switch it off before import.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import docker
import httpx
import pytest
import yaml
from testcontainers.compose import DockerCompose

REPO = Path(__file__).resolve().parents[2]
PROJECT_PREFIX = "asgilab-it-"
LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"
# The owner of a test project (see the module's docstring), on its containers and default network.
LABEL_OWNER_PID = "io.asgi-lab.it.owner-pid"
LABEL_OWNER_START = "io.asgi-lab.it.owner-start"  # /proc/<pid>/stat's start time, in clock ticks
LABEL_OWNER_NS = "io.asgi-lab.it.owner-ns"  # boot id and pid namespace: where that pid means that process
LABEL_IMAGE_TAG = "io.asgi-lab.it.image-tag"  # the project's own image tag, when it built its own
STALE_AFTER_S = float(os.environ.get("ASGI_LAB_STALE_AFTER", 6 * 3600))


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


def wait_until(condition: Callable[[], object], timeout: float, what: str, every: float = 0.02) -> float:
    """Poll ``condition`` until it is true; the seconds it took. Fails naming ``what`` at ``timeout``.

    For ordering a test's steps by what happened (a counter rose, a replica left the endpoints)
    rather than by a sleep that guesses how long it takes on a loaded machine.
    """
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"after {timeout:g} s still waiting for: {what}")
        time.sleep(every)
    return time.monotonic() - started


def free_port() -> int:
    """A host port free at this moment (for a fixed published port that survives a restart)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def _start_time(pid: int | str) -> str | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _namespace() -> str:
    """This kernel boot and pid namespace: where a (pid, start time) pair names one process."""
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{boot}/{os.readlink('/proc/self/ns/pid')}"


def owner_labels() -> dict[str, str]:
    """The labels that name this pytest process as the owner of what it creates."""
    pid = os.getpid()
    start = _start_time(pid) or ""
    return {LABEL_OWNER_PID: str(pid), LABEL_OWNER_START: start, LABEL_OWNER_NS: _namespace()}


def is_stale(labels: dict[str, str], age_s: float) -> bool:
    """Whether a test project's owner is gone (see the module's docstring for the rule)."""
    if labels.get(LABEL_OWNER_NS) == _namespace() and labels.get(LABEL_OWNER_PID):
        return _start_time(labels[LABEL_OWNER_PID]) != labels.get(LABEL_OWNER_START)
    return age_s > STALE_AFTER_S  # owned from elsewhere, or by a run that labelled nothing


def _age_s(created: str) -> float:
    """Seconds since an engine timestamp ("2026-12-01T12:00:00.123456789Z" or with an offset)."""
    try:
        at = datetime.strptime(created[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return 0.0  # unreadable: treat as new, never remove on a guess
    return (datetime.now(UTC) - at).total_seconds()


def _stale_projects(client: docker.DockerClient) -> set[str]:
    """Test projects (by our prefix) whose owner is gone: each judged once, by all its resources."""
    labels: dict[str, dict[str, str]] = {}
    age: dict[str, float] = {}
    label = {"label": LABEL_PROJECT}
    containers = client.containers.list(all=True, filters=label)
    found = [(c.labels, c.attrs.get("Created", "")) for c in containers]
    networks = client.networks.list(filters=label)
    found += [(n.attrs["Labels"] or {}, n.attrs.get("Created", "")) for n in networks]
    for resource_labels, created in found:
        project = resource_labels.get(LABEL_PROJECT, "")
        if not project.startswith(PROJECT_PREFIX):
            continue
        labels.setdefault(project, {}).update(resource_labels)
        age[project] = max(age.get(project, 0.0), _age_s(created))
    return {project for project in labels if is_stale(labels[project], age[project])}


def sweep_stale(client: docker.DockerClient) -> set[str]:
    """Remove every test project whose owner is gone (what a killed run left); their names."""
    stale = _stale_projects(client)
    _remove_projects(client, lambda project: project in stale)
    return stale


def _remove_projects(client: docker.DockerClient, wanted: Callable[[str], bool]) -> None:
    """Force-remove the containers, networks, volumes and own image tags of the projects `wanted` picks."""
    label = {"label": LABEL_PROJECT}
    tags: set[str] = set()
    for container in client.containers.list(all=True, filters=label):
        if wanted(container.labels.get(LABEL_PROJECT, "")):
            if container.labels.get(LABEL_IMAGE_TAG):
                tags.add(container.labels[LABEL_IMAGE_TAG])
            container.remove(force=True, v=True)
    for network in client.networks.list(filters=label):
        if wanted(network.attrs["Labels"].get(LABEL_PROJECT, "")):
            network.remove()
    for volume in client.volumes.list(filters=label):
        if wanted((volume.attrs.get("Labels") or {}).get(LABEL_PROJECT, "")):
            volume.remove(force=True)
    for tag in tags:
        _untag(client, tag)


def _untag(client: docker.DockerClient, tag: str) -> None:
    """Remove every ``asgi-lab/<service>:<tag>`` (the image itself stays while :dev names it)."""
    for image in client.images.list(name="asgi-lab/*"):
        for name in image.tags:
            if name.endswith(f":{tag}"):
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(name, noprune=False)


def _owner_override(files: Sequence[str], path: Path, image_tag: str | None) -> None:
    """Write a Compose override file: owner labels on every service and the default network.

    With ``image_tag``, every ``asgi-lab/<name>:dev`` image of the files is built and run as
    ``asgi-lab/<name>:<image_tag>`` instead: a project of its own images, which another session
    rebuilding the shared ``:dev`` tags from a changing tree cannot swap under a long test.
    """
    labels = owner_labels()
    if image_tag:
        labels[LABEL_IMAGE_TAG] = image_tag
    services: dict[str, dict[str, object]] = {}
    for name in files:
        spec = yaml.safe_load((REPO / name).read_text()) or {}
        for service, body in (spec.get("services") or {}).items():
            entry = services.setdefault(service, {"labels": dict(labels)})
            image = (body or {}).get("image", "")
            if image_tag and image.startswith("asgi-lab/") and image.endswith(":dev"):
                entry["image"] = f"{image.rsplit(':', 1)[0]}:{image_tag}"
    override = {"services": services, "networks": {"default": {"labels": dict(labels)}}}
    path.write_text(yaml.safe_dump(override, sort_keys=True))


class LoadgenRun:
    """A load generator started in the background, its output in a file.

    A file, not a pipe: a test that samples the lab while the run goes on reads nothing until the
    end, and a full pipe would stall Compose's relay of the container's output after the container
    itself had finished (seen: a soak's runs done, ``docker compose run`` never exiting).
    """

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "w") as out:
            self.process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def wait(self, timeout: float) -> str:
        """Wait for the end (killed at ``timeout``); the output. Fails unless it exited 0."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"the load generator ran over {timeout:g} s:\n{self.output()}") from None
        finally:
            self.stop()
        assert self.process.returncode == 0, f"loadgen exited {self.process.returncode}:\n{self.output()}"
        return self.output()


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

    @staticmethod
    def usage(container: docker.models.containers.Container) -> tuple[int, int]:
        """(RSS bytes, open descriptors) summed over the container's processes, read from the host.

        The engine runs on this host, so the processes are in our /proc (``docker top`` gives their
        host PIDs); reading them there costs nothing inside the container under test.
        """
        rss = fds = 0
        top = container.top(ps_args="-o pid")
        for (pid,) in top["Processes"]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                fds += len(os.listdir(f"/proc/{pid}/fd"))
            except (FileNotFoundError, ProcessLookupError):
                continue  # the process ended between top and the read
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
        return rss, fds

    def loadgen(self, out: Path, *args: str, entrypoint: str | None = None) -> LoadgenRun:
        """Start ``docker compose run`` of the loadgen service with ``out`` mounted at ``/out``.

        No live page, no results folder (each run would spend seconds drawing plots): a test asks
        for ``--json /out/...`` and reads that. Its output goes to a file in ``out``.
        """
        cmd = [
            *self.compose.docker_compose_command(), "run", "--rm", "--no-deps", "-T",
            "-e", "LOADGEN_DASHBOARD=", "-e", "LOADGEN_RESULTS_DIR=", "-v", f"{out}:/out",
            *(("--entrypoint", entrypoint) if entrypoint else ()), "loadgen", *args,
        ]  # fmt: skip
        return LoadgenRun(cmd, {**os.environ, **self.env}, out / f"loadgen-{uuid.uuid4().hex[:6]}.log")

    # --- proxy ----------------------------------------------------------------------------
    def endpoints(self) -> list[dict]:
        return httpx.get(f"{self.admin_url}/upstreams", timeout=5).json()["endpoints"]

    def wait_for_endpoints(self, count: int, timeout: float = 15) -> None:
        seen: list[dict] = []

        def counted() -> bool:
            seen[:] = self.endpoints()
            return len(seen) == count

        try:
            wait_until(counted, timeout, f"{count} endpoints", every=0.2)
        except AssertionError:
            raise AssertionError(f"proxy saw {len(seen)} endpoints, expected {count}: {seen}") from None


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
    own_images: bool = False,
) -> Iterator[Lab]:
    """A differently configured lab under its own project (``<prefix><name>-<rand>``, owner labels).

    ``env`` adds or overrides Compose variables, ``compose_files`` are override files (relative to
    the repo, or absolute) on top of docker-compose.yml, ``up`` ends the ``up -d --wait`` command
    line, ``build`` names the services whose images are built first (empty: all). Everything the
    project started is removed at the end, pass or fail: containers, networks and volumes, also
    those ``down`` misses (a service started by a test that is not in ``up``). ``own_images``
    builds and runs images tagged for this project only (removed at the end): for tests long
    enough that a concurrent rebuild of the shared ``:dev`` tags could change what they run.
    """
    sweep_stale(docker.from_env())
    suffix = uuid.uuid4().hex[:8]
    project = f"{PROJECT_PREFIX}{name}-{suffix}"
    work = tmp_path_factory.mktemp(name)
    files = ["docker-compose.yml", *compose_files]
    override = work / "owner.yml"
    _owner_override(files, override, f"it-{suffix}" if own_images else None)
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
    compose = DockerCompose(REPO, compose_file_name=[*files, str(override)], env_file=str(env_file))
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
        if own_images:
            _untag(lab.docker, f"it-{suffix}")
