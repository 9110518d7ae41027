"""A one-node Swarm and lab stacks on it, for tests (test_swarm.py, and the distributed loadgen's).

The swarm: the engine is made a one-node swarm if it is in none, and left again at the end only if
a test session made it and no session still uses it. Sessions that run at the same time (two
pytest processes on one engine) coordinate through a lock file: each registers its pid while it
uses the swarm; the one that ends last leaves it, if a test created it, and if no service is left
on it (``./lab swarm up`` of a user counts: its stack keeps the swarm). A swarm that tests did not
create is never left.

A stack: ``docker-compose.yml`` rendered by ``swarm/stackfile.py`` + ``swarm/stack.yml`` (+ files
the caller adds, e.g. ``swarm/loadgen.yml``), under its own stack name
(``asgilab-it-<pid>-<name>-<rand>``), the proxy on free host ports, with images tagged for this
stack alone (``asgi-lab/<svc>:it-<stack>``) so that another session rebuilding ``:dev`` meanwhile
cannot change what Swarm starts for a new task. Removed at the end, pass or fail, and stale
stacks of dead sessions first.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
STACK_PREFIX = "asgilab-it-"
LABEL_STACK = "com.docker.stack.namespace"
LABEL_SERVICE = "com.docker.swarm.service.name"
STATE = Path(os.environ.get("ASGI_LAB_SWARM_STATE", "/tmp/asgi-lab-swarm"))  # shared by sessions


def _load_stackfile() -> Any:
    """swarm/stackfile.py (a script run by ./lab swarm up with the host's python3, not a package)."""
    spec = importlib.util.spec_from_file_location("asgilab_swarm_stackfile", REPO / "swarm" / "stackfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stackfile = _load_stackfile()


def docker(*args: str, timeout: float = 120, check: bool = True, env: Mapping[str, str] | None = None) -> str:
    result = subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def free_port() -> int:
    """A port nothing listens on now (Swarm publishes fixed host ports; there is no ephemeral one)."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


# --- the swarm ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _holders() -> list[Path]:
    """Sessions registered as using the swarm whose process still runs (dead ones are forgotten)."""
    alive = []
    for path in STATE.glob("holder-*"):
        if Path(f"/proc/{path.name.removeprefix('holder-')}").exists():
            alive.append(path)
        else:
            path.unlink(missing_ok=True)
    return alive


def _node() -> tuple[str, str, bool]:
    state, node, manager = (
        docker("info", "--format", "{{.Swarm.LocalNodeState}}|{{.Swarm.NodeID}}|{{.Swarm.ControlAvailable}}")
        .strip()
        .split("|")
    )
    return state, node, manager == "true"


_users = 0  # one_node_swarm() blocks open in this process (two test modules may nest them)
_users_lock = threading.Lock()


@contextlib.contextmanager
def one_node_swarm() -> Iterator[str]:
    """This engine as a swarm manager for the duration; yields the node id."""
    global _users
    me = STATE / f"holder-{os.getpid()}"
    with _users_lock, _locked():
        state, node, manager = _node()
        if state == "inactive":
            if not docker("network", "ls", "-q", "--filter", "name=^docker_gwbridge$").strip():
                (STATE / "gwbridge").write_text("")  # swarm init creates it; leaving does not remove it
            docker("swarm", "init", "--advertise-addr", "127.0.0.1")
            state, node, manager = _node()
            (STATE / "created").write_text(node)  # tests made it: the last session leaves it
        if state != "active" or not manager:
            raise AssertionError(
                f"the engine's swarm state is {state!r} (manager: {manager}); need a manager"
            )
        me.write_text(node)
        _users += 1
    try:
        yield node
    finally:
        with _users_lock, _locked():
            _users -= 1
            if _users == 0:
                me.unlink(missing_ok=True)
                created = STATE / "created"
                if created.exists() and not _holders():
                    state, node, _ = _node()
                    if state != "active" or created.read_text() != node:
                        created.unlink()  # someone else left or replaced it meanwhile
                    elif not docker("service", "ls", "-q").strip():
                        docker("swarm", "leave", "--force")
                        created.unlink()
                        if (STATE / "gwbridge").exists():
                            docker("network", "rm", "docker_gwbridge", check=False)
                            (STATE / "gwbridge").unlink()


# --- stacks -------------------------------------------------------------------------------------


def _is_stale(stack: str) -> bool:
    match = re.match(rf"^{STACK_PREFIX}(\d+)-", stack)
    return bool(match) and not Path(f"/proc/{match.group(1)}").exists()


def remove_stack(name: str, timeout: float = 90) -> None:
    """``docker stack rm`` and wait until its containers and networks are gone (rm is asynchronous)."""
    docker("stack", "rm", name, check=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = docker("ps", "-aq", "--filter", f"label={LABEL_STACK}={name}", check=False).split()
        nets = docker("network", "ls", "-q", "--filter", f"label={LABEL_STACK}={name}", check=False).split()
        if not left and not nets:
            return
        if not docker("stack", "ls", "--format", "{{.Name}}", check=False).split().count(name):
            for net in nets:  # the services are gone; a network can linger a moment longer
                docker("network", "rm", net, check=False)
        time.sleep(1)
    raise AssertionError(f"stack {name} still has containers or networks after {timeout:.0f}s")


def remove_stale_stacks() -> None:
    for name in docker("stack", "ls", "--format", "{{.Name}}", check=False).split():
        if _is_stale(name):
            remove_stack(name)
    for image in docker("images", "--format", "{{.Repository}}:{{.Tag}}", check=False).split():
        tag = image.rpartition(":")[2]
        if tag.startswith(f"it-{STACK_PREFIX}") and _is_stale(tag.removeprefix("it-")):
            docker("rmi", image, check=False)


class Stack:
    """A lab stack deployed under its own name; what tests ask of it."""

    def __init__(self, name: str, proxy_port: int, admin_port: int) -> None:
        self.name = name
        self.base_url = f"http://127.0.0.1:{proxy_port}"
        self.admin_url = f"http://127.0.0.1:{admin_port}"
        self.tags: list[str] = []
        # What lab_stack deployed: the `-c FILE` arguments and the stack variables, so that a test
        # can deploy the same stack again with one more file (docker stack deploy updates it).
        self.files: list[str] = []
        self.variables: dict[str, str] = {}

    def service(self, short: str) -> str:
        return f"{self.name}_{short}"

    def logs(self, service: str, since: str = "5m") -> str:
        """The service's log lines (the proxy logs to stderr, its access log to stdout)."""
        cmd = ["docker", "service", "logs", "--since", since, self.service(service)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return result.stdout + result.stderr

    def scale(self, replicas: int, service: str = "backend") -> None:
        """Scale and wait until Swarm says every task runs (for a checked service: is healthy)."""
        docker("service", "scale", "--detach=false", f"{self.service(service)}={replicas}", timeout=180)

    def update(self, *args: str, service: str = "backend") -> None:
        docker("service", "update", "--detach=false", *args, self.service(service), timeout=300)

    def tasks(self, service: str = "backend") -> list[dict[str, Any]]:
        """The service's tasks that Swarm wants running, with their container id and address."""
        ids = docker(
            "service", "ps", "-q", "--no-trunc", "--filter", "desired-state=running", self.service(service)
        ).split()
        if not ids:
            return []
        out = []
        for t in json.loads(docker("inspect", *ids)):
            status = t.get("Status") or {}
            addresses = [
                a.split("/")[0]
                for att in t.get("NetworksAttachments") or ()
                if att["Network"]["Spec"]["Name"] == f"{self.name}_lab"
                for a in att.get("Addresses") or ()
            ]
            out.append(
                {
                    "id": t["ID"],
                    "state": status.get("State"),
                    "container": (status.get("ContainerStatus") or {}).get("ContainerID", ""),
                    "address": addresses[0] if addresses else None,
                    "node": t.get("NodeID"),
                }
            )
        return out

    def running(self, service: str = "backend") -> list[dict[str, Any]]:
        return [t for t in self.tasks(service) if t["state"] == "running"]

    def backend_ids(self) -> set[str]:
        """The ids the running backends answer with (X-Backend-Id: the container's hostname)."""
        return {t["container"][:12] for t in self.running()}

    def endpoints(self) -> list[str]:
        r = httpx.get(f"{self.admin_url}/upstreams", timeout=5)
        return sorted(e["address"] for e in r.json()["endpoints"] if not e.get("draining"))

    def wait_until(self, what: str, check: Any, timeout: float = 60, every: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
            except (httpx.HTTPError, AssertionError) as exc:
                last = exc
            else:
                if last:
                    return last
            time.sleep(every)
        raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")

    def wait_for_proxy(self, endpoints: int, timeout: float = 90) -> None:
        """The proxy answers and routes to exactly ``endpoints`` backends."""

        def ready() -> bool:
            return (
                httpx.get(f"{self.base_url}/", timeout=3).status_code == 200
                and len(self.endpoints()) == endpoints
            )

        self.wait_until(f"proxy on {self.base_url} with {endpoints} endpoints", ready, timeout)


def _tag_images(images: Sequence[str], tag: str) -> dict[str, str]:
    """Give each local image a tag of this stack's own: ``{image: tagged}``."""
    made = {}
    for image in dict.fromkeys(images):
        own = f"{image.rpartition(':')[0] if ':' in image else image}:{tag}"
        docker("tag", image, own)
        made[image] = own
    return made


@contextlib.contextmanager
def lab_stack(
    tmp_dir: Path,
    name: str,
    *,
    backends: int = 3,
    env: Mapping[str, str] | None = None,
    files: Sequence[str] = (),
    build: Sequence[str] = ("backend", "proxy"),
    profiles: Sequence[str] = (),
) -> Iterator[Stack]:
    """Deploy the lab as a stack on a one-node swarm; yield it once the proxy routes to every backend.

    ``env``: Compose variables (e.g. ``PROXY_DISCOVERY=docker``) for rendering docker-compose.yml,
    and stack variables for the ``files`` (extra stack files after swarm/stack.yml, relative to the
    repo). ``build``: the Compose services to build (empty: all); each one's image is tagged for
    this stack, and the extra files see that tag as ``${LAB_IMAGE_TAG}``
    (``image: asgi-lab/loadgen:${LAB_IMAGE_TAG:-dev}``).
    """
    if build and "docker-actions" not in build:
        build = (*build, "docker-actions")  # the socket filter's image (swarm/stack.yml: docker-reads)
    with one_node_swarm():
        remove_stale_stacks()
        stack = f"{STACK_PREFIX}{os.getpid()}-{name}-{uuid.uuid4().hex[:6]}"
        variables = {
            "SWARM_BACKENDS": str(backends),
            "SWARM_PROXY_PORT": str(free_port()),
            "SWARM_ADMIN_PORT": str(free_port()),
            "LAB_IMAGE_TAG": f"it-{stack}",
            **(env or {}),
        }
        lab = Stack(stack, int(variables["SWARM_PROXY_PORT"]), int(variables["SWARM_ADMIN_PORT"]))
        tagged: dict[str, str] = {}
        try:
            profile_args = [arg for p in profiles for arg in ("--profile", p)]
            docker("compose", *profile_args, "build", *build, timeout=900, env=variables)
            config = json.loads(docker("compose", *profile_args, "config", "--format", "json", env=variables))
            built = [spec["image"] for svc, spec in config["services"].items() if not build or svc in build]
            tagged = _tag_images(built, variables["LAB_IMAGE_TAG"])
            lab.tags = list(tagged.values())
            rendered = stackfile.render(config, profiles)
            for spec in rendered["services"].values():
                spec["image"] = tagged.get(spec["image"], spec["image"])
            path = tmp_dir / f"{stack}.json"
            path.write_text(json.dumps(rendered))
            args = ["-c", str(path), "-c", "swarm/stack.yml"]
            for extra in files:
                args += ["-c", extra]
            lab.files, lab.variables = args, variables
            docker("stack", "deploy", "--detach=false", *args, stack, timeout=300, env=variables)
            lab.wait_for_proxy(backends)
            yield lab
        finally:
            keep_logs = os.environ.get("ASGI_LAB_KEEP_LOGS")
            if keep_logs:
                with open(keep_logs, "a") as out:
                    for svc in docker(
                        "stack", "services", "--format", "{{.Name}}", stack, check=False
                    ).split():
                        out.write(docker("service", "logs", "--timestamps", svc, check=False))
            remove_stack(stack)
            for tag in lab.tags:
                docker("rmi", tag, check=False)
