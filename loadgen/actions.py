"""Timed container actions of a scenario, performed through the Docker Engine API (Docker SDK).

Why the SDK and not the ``docker`` CLI: the load generator usually runs in its own container, where
there is no Docker CLI, only the engine's API (through the docker-actions socket filter, below).
The same code then works on the host.

Containers are found by the labels Compose puts on them, ``com.docker.compose.project`` and
``com.docker.compose.service``, and a replica by ``com.docker.compose.container-number`` (the
``N`` of ``<project>-backend-N``). One-off containers (``docker compose run``, like the load
generator itself) are never targets. The project is, in order: the ``project`` argument,
``COMPOSE_PROJECT_NAME``, or the project label of the container we run in (its hostname is its id).

Where the engine is: ``DOCKER_HOST`` when set (in Compose, ``tcp://docker-actions:2375``, a
socket filter that lets through exactly the engine calls listed in docs/security.md: these
actions' own), else the local socket.

``stop``, ``restart`` and ``scale``'s removals take a grace period (``timeout``). The engine's
stop call counts it in whole seconds, so a sub-second one (``"500ms"``) is done here: the
container's stop signal, then SIGKILL if it still runs when the grace period ends (Docker would
have made 0.5 s an immediate SIGKILL).

``policy`` sends ``PUT /policy`` to the proxy's admin listener with ``Authorization: Bearer``
and the admin token: ``PROXY_ADMIN_TOKEN`` in this process's environment, else the one in the
proxy container's (reading it needs the same Docker access the actions already have). The proxy
applies it in every ``--workers`` worker (proxy/admin.py).

``scale`` is the one action Compose does not expose through the engine: ``docker compose up
--scale`` is client-side logic. Doing it here with the SDK alone, so that it also works from
inside the loadgen container, means doing what Compose does: keep the lowest-numbered replicas,
start the kept ones that are stopped, stop and remove the extras (highest numbers first), and
create missing ones as clones of an existing replica: same image id (not the tag, which a rebuild
may have moved), command, environment, labels (with the next container number), healthcheck,
host config, and the same networks with the service name as a DNS alias, which is how the
proxy's DNS discovery finds them. Compose recognises the clones as its own afterwards
(``docker compose ps`` lists them, ``down`` removes them). Scaling does not wait for health:
neither does ``docker compose up --scale`` without ``--wait``, and the proxy decides for itself.

:meth:`ActionRunner.run` blocks (a ``stop`` waits for its grace period): call it in a thread
(``loop.run_in_executor``), never on the event loop that is sending load. It never raises: a
failure is ``{"ok": False, "detail": why}`` in the report, because an action that could not be
done is a result of the experiment, not a reason to lose the measurements.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from loadgen.scenario import Action

LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"
LABEL_NUMBER = "com.docker.compose.container-number"
LABEL_ONEOFF = "com.docker.compose.oneoff"
DEFAULT_STOP_TIMEOUT_S = 10.0  # Docker's and Compose's default grace period
TOKEN_ENV = "PROXY_ADMIN_TOKEN"  # the proxy's admin token (proxy/config.py --admin-token)
POLL_S = 0.05  # how often a sub-second stop looks whether the container has exited


ALIVE = ("running", "paused", "restarting")


class ActionError(RuntimeError):
    """Actions cannot be done at all (no Docker, no project): the CLI reports it and exits 2."""


def _number(container: Any) -> int:
    try:
        return int(container.labels.get(LABEL_NUMBER, "0"))
    except ValueError:
        return 0


def _label(container: Any) -> str:
    """``backend:2 (asgi-lab-backend-2)``: the scenario's name for it and Docker's."""
    return f"{container.labels.get(LABEL_SERVICE, '?')}:{_number(container)} ({container.name})"


class ActionRunner:
    """Performs scenario actions (:class:`~loadgen.scenario.Action`) on one Compose project's containers.

    Construction connects to the engine and settles the project, and raises :class:`ActionError`
    with a clear message when either fails, so a misconfigured run stops before it starts instead
    of discovering at t=10 s that the socket is not mounted.
    """

    def __init__(
        self,
        project: str | None = None,
        *,
        client: Any = None,
        rng: random.Random | None = None,
        admin_token: str | None = None,
        clock: Any = time.monotonic,
        sleep: Any = time.sleep,
    ) -> None:
        """``admin_token``: for ``policy``; None reads it as the module docstring says.
        ``clock``/``sleep``: the sub-second stop's time source (tests pass a fake one)."""
        if client is None:
            import docker  # imported here: a run without actions does not need the SDK

            try:
                client = docker.from_env()
                client.ping()
            except Exception as exc:
                raise ActionError(
                    "scenario actions need the Docker engine, which did not answer "
                    f"({exc.__class__.__name__}: {exc}); in Compose the docker-actions socket filter "
                    "must be running (docker compose up -d docker-actions), elsewhere set DOCKER_HOST"
                ) from None
        self.client = client
        self.project = project or detect_project(client)
        me = _own_container(client)
        self._in_container = me is not None
        # Our own networks: a container on several (the proxy on docker-reads too) is reached on
        # one we share with it.
        self._networks = set(((me.attrs.get("NetworkSettings") or {}).get("Networks") or {}) if me else ())
        self._rng = rng or random.Random()
        self._token = admin_token if admin_token is not None else os.environ.get(TOKEN_ENV, "").strip()
        self._clock = clock
        self._sleep = sleep

    # -- public ---------------------------------------------------------------------------------

    def check(self, actions: Iterable[Action]) -> None:
        """Raise :class:`ActionError` if an action's service has no container in the project.

        Only services are checked, not replica numbers: ``backend:4`` may legitimately appear
        after a ``scale`` earlier in the same scenario.
        """
        for action in actions:
            if not self.containers(action.service, all=True):
                raise ActionError(
                    f"{action.kind} at {action.at_s:g} s: no container of service "
                    f"{action.service!r} in Compose project {self.project!r}"
                )

    def run(self, action: Action) -> dict[str, Any]:
        """Do one action now; ``{"kind", "target", "ok", "detail"}``, never an exception."""
        started = time.perf_counter()
        try:
            ok, detail = getattr(self, f"_do_{action.kind}")(action)
        except Exception as exc:  # the engine's errors, a container gone meanwhile, ...
            ok, detail = False, f"{exc.__class__.__name__}: {exc}"
        took = time.perf_counter() - started
        return {"kind": action.kind, "target": action.target, "ok": ok, "detail": f"{detail} ({took:.2f} s)"}

    def containers(self, service: str, all: bool = False) -> list[Any]:
        """The service's containers (not one-offs), by container number."""
        filters = {"label": [f"{LABEL_PROJECT}={self.project}", f"{LABEL_SERVICE}={service}"]}
        found = [
            c
            for c in self.client.containers.list(all=all, filters=filters)
            if c.labels.get(LABEL_ONEOFF, "False") != "True"
        ]
        return sorted(found, key=_number)

    # -- selection ------------------------------------------------------------------------------

    def _select(self, action: Action, states: tuple[str, ...]) -> tuple[list[Any], str]:
        """Containers the action applies to, or ([], why not)."""
        every = self.containers(action.service, all=True)
        if not every:
            return [], f"no container of service {action.service!r} in project {self.project!r}"
        sel = action.selector
        if sel == "all":
            chosen = [c for c in every if c.status in states]
            return chosen, "" if chosen else f"no {action.service} container is {' or '.join(states)}"
        if sel == "random":
            eligible = [c for c in every if c.status in states]
            if not eligible:
                return [], f"no {action.service} container is {' or '.join(states)}"
            return [self._rng.choice(eligible)], ""
        match = [c for c in every if str(_number(c)) == sel]
        if not match:
            numbers = ", ".join(str(_number(c)) for c in every)
            return [], f"no container {action.target} in project {self.project!r} (replicas: {numbers})"
        if match[0].status not in states:
            return [], f"{_label(match[0])} is {match[0].status}, not {' or '.join(states)}"
        return match, ""

    def _each(self, action: Action, states: tuple[str, ...], verb: str, do: Any) -> tuple[bool, str]:
        chosen, why = self._select(action, states)
        if not chosen:
            return False, why
        for container in chosen:
            do(container)
        return True, f"{verb} " + ", ".join(_label(c) for c in chosen)

    # -- the kinds ------------------------------------------------------------------------------

    def _stop(self, container: Any, timeout: float) -> None:
        """Stop with ``timeout`` seconds of grace, sub-second ones included (module docstring)."""
        if timeout == int(timeout):
            container.stop(timeout=int(timeout))
            return
        if container.status == "paused":
            container.unpause()  # a frozen process cannot handle its stop signal
        container.kill(signal=(container.attrs.get("Config") or {}).get("StopSignal") or "SIGTERM")
        deadline = self._clock() + timeout
        while True:
            container.reload()
            if container.status not in ALIVE:
                return
            left = deadline - self._clock()
            if left <= 0:
                break
            self._sleep(min(POLL_S, left))
        container.kill(signal="SIGKILL")

    def _do_stop(self, action: Action) -> tuple[bool, str]:
        timeout = float(action.args.get("timeout", DEFAULT_STOP_TIMEOUT_S))
        return self._each(action, ("running", "paused"), "stopped", lambda c: self._stop(c, timeout))

    def _do_kill(self, action: Action) -> tuple[bool, str]:
        sig = action.args.get("signal", "SIGKILL")
        return self._each(action, ("running",), f"killed ({sig})", lambda c: c.kill(signal=sig))

    def _do_pause(self, action: Action) -> tuple[bool, str]:
        return self._each(action, ("running",), "paused", lambda c: c.pause())

    def _do_unpause(self, action: Action) -> tuple[bool, str]:
        return self._each(action, ("paused",), "unpaused", lambda c: c.unpause())

    def _do_restart(self, action: Action) -> tuple[bool, str]:
        timeout = float(action.args.get("timeout", DEFAULT_STOP_TIMEOUT_S))
        states = ("running", "paused", "exited", "created")
        return self._each(action, states, "restarted", lambda c: self._restart(c, timeout))

    def _restart(self, container: Any, timeout: float) -> None:
        if timeout == int(timeout):
            container.restart(timeout=int(timeout))
            return
        if container.status in ALIVE:
            self._stop(container, timeout)
        container.start()

    def _do_policy(self, action: Action) -> tuple[bool, str]:
        """``PUT /policy`` on each of the service's running containers' admin listener."""
        chosen, why = self._select(action, ("running",))
        if not chosen:
            return False, why
        port = int(action.args.get("admin_port", 8080))
        policy = action.args["policy"]
        done = []
        for container in chosen:
            url = self._admin_url(container, port) + "/policy"
            headers = {"Content-Type": "text/plain"}
            token = self._token or _env_of(container, TOKEN_ENV)
            if token:
                headers["Authorization"] = f"Bearer {token}"
            request = urllib.request.Request(url, data=policy.encode(), method="PUT", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    doc = json.loads(response.read() or b"{}")
            except urllib.error.HTTPError as exc:
                body = exc.read().decode("utf-8", "replace").strip()
                return False, f"{url}: {exc.code} {body}"
            except (OSError, ValueError) as exc:
                return False, f"{url}: {exc}"
            done.append(f"{_label(container)}: {doc.get('previous', '?')} -> {doc.get('policy', policy)}")
        return True, "policy " + ", ".join(done)

    def _admin_url(self, container: Any, port: int) -> str:
        """Where we reach ``container:port``: its network address when we run in a container of
        the project (the loadgen service), else the host port it is published on (the host)."""
        container.reload()
        settings = container.attrs["NetworkSettings"]
        if not self._in_container:
            for binding in (settings.get("Ports") or {}).get(f"{port}/tcp") or ():
                host = binding.get("HostIp") or "127.0.0.1"
                host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
                host = f"[{host}]" if ":" in host else host
                return f"http://{host}:{binding['HostPort']}"
        networks = settings.get("Networks") or {}
        shared = [name for name in networks if name in self._networks]
        for name in [*shared, *(n for n in networks if n not in shared)]:
            if networks[name].get("IPAddress"):
                return f"http://{networks[name]['IPAddress']}:{port}"
        raise RuntimeError(f"{_label(container)} has neither a published port {port} nor a network address")

    def _do_scale(self, action: Action) -> tuple[bool, str]:
        want = int(action.args["replicas"])
        service = action.service
        every = self.containers(service, all=True)
        if not every:
            return False, f"no container of service {service!r} in project {self.project!r} to clone"
        plan = plan_scale(every, want)
        template = next((c for c in every if c.status == "running"), every[0])
        running = sum(c.status in ALIVE for c in every)
        done: list[str] = []
        timeout = float(action.args.get("timeout", DEFAULT_STOP_TIMEOUT_S))
        for c in plan.remove:
            if c.status in ALIVE:
                self._stop(c, timeout)  # SIGTERM first, like compose: the replica may drain
            c.remove(v=True)
            done.append(f"removed {_label(c)}")
        for c in plan.start:
            c.start()
            done.append(f"started {_label(c)}")
        for number in plan.create:
            done.append(f"created {_label(self._clone(template, number))}")
        detail = f"{service}: {running} running -> {want}"
        return True, detail + (": " + ", ".join(done) if done else ", nothing to do")

    def _clone(self, template: Any, number: int) -> Any:
        """A new replica configured like ``template`` (see the module docstring), started."""
        api = self.client.api
        template.reload()
        attrs = template.attrs
        cfg = attrs["Config"]
        service = cfg["Labels"][LABEL_SERVICE]
        labels = dict(cfg["Labels"])
        labels[LABEL_NUMBER] = str(number)
        name = f"{self.project}-{service}-{number}"
        networks = attrs["NetworkSettings"]["Networks"] or {}
        host_config = dict(attrs["HostConfig"])
        primary = host_config.get("NetworkMode") or next(iter(networks), None)
        aliases = [service, name]
        networking_config = (
            {"EndpointsConfig": {primary: {"Aliases": aliases}}} if primary in networks else None
        )
        # The replica's image by id, so a rebuild that moved the tag meanwhile changes nothing;
        # by tag when the tag still points there, so `docker compose ps` shows it as usual.
        image = attrs["Image"]
        try:
            if self.client.images.get(cfg["Image"]).id == image:
                image = cfg["Image"]
        except Exception:
            pass
        created = api.create_container(
            image=image,
            command=cfg.get("Cmd"),
            entrypoint=cfg.get("Entrypoint"),
            environment=cfg.get("Env"),
            labels=labels,
            name=name,
            user=cfg.get("User") or None,
            working_dir=cfg.get("WorkingDir") or None,
            ports=cfg.get("ExposedPorts") or None,
            healthcheck=cfg.get("Healthcheck"),
            stop_signal=cfg.get("StopSignal"),
            stop_timeout=cfg.get("StopTimeout"),
            host_config=host_config,
            networking_config=networking_config,
        )
        container_id = created["Id"]
        for net in networks:
            if net != primary:
                api.connect_container_to_network(container_id, net, aliases=aliases)
        api.start(container_id)
        return self.client.containers.get(container_id)


def _env_of(container: Any, name: str) -> str:
    """``name``'s value in the container's configured environment ("" when it has none)."""
    for item in (container.attrs.get("Config") or {}).get("Env") or ():
        key, _, value = str(item).partition("=")
        if key == name:
            return value.strip()
    return ""


@dataclass
class ScalePlan:
    remove: list[Any]  # highest container numbers first
    start: list[Any]  # kept replicas that are stopped
    create: list[int]  # container numbers of the new replicas


def plan_scale(containers: Sequence[Any], want: int) -> ScalePlan:
    """What ``scale`` to ``want`` does with a service's ``containers`` (``.status``, ``.labels``).

    Like ``docker compose up --scale``: running (or paused) replicas are kept before stopped
    ones, lower numbers before higher; the rest are removed; kept stopped ones are started; new
    ones get numbers after the highest in use, so a number never names two containers in a run.
    """
    ordered = sorted(containers, key=lambda c: (c.status not in ALIVE, _number(c)))
    keep, extra = ordered[:want], ordered[want:]
    highest = max((_number(c) for c in containers), default=0)
    return ScalePlan(
        remove=sorted(extra, key=_number, reverse=True),
        start=[c for c in keep if c.status not in ALIVE],
        create=list(range(highest + 1, highest + 1 + want - len(keep))),
    )


def detect_project(client: Any) -> str:
    """The Compose project to act on: ``COMPOSE_PROJECT_NAME``, else our own container's label."""
    env = os.environ.get("COMPOSE_PROJECT_NAME", "").strip()
    if env:
        return env
    me = _own_container(client)
    project = me.labels.get(LABEL_PROJECT) if me is not None else None
    if project:
        return project
    # No guessing, even with one candidate: a kill in the wrong project is not undone. Listing
    # what runs here makes the fix a copy-paste.
    try:
        found = sorted(
            {c.labels.get(LABEL_PROJECT) for c in client.containers.list(filters={"label": LABEL_PROJECT})}
        )
    except Exception:
        found = []
    running = f" (Compose projects running here: {', '.join(found)})" if found else ""
    raise ActionError(
        "scenario actions need to know the Compose project: set COMPOSE_PROJECT_NAME, e.g. "
        f"COMPOSE_PROJECT_NAME=asgi-lab, or run the load generator as the compose service{running}"
    )


def _own_container(client: Any) -> Any:
    """The container this process runs in (Docker makes the hostname its short id), or None.

    Only trusted when its Compose label is there: a host whose name happens to match a container
    id prefix is not inside it.
    """
    try:
        me = client.containers.get(socket.gethostname())
    except Exception:
        return None
    return me if me.labels.get(LABEL_PROJECT) else None
