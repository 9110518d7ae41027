"""Endpoint discovery: where the set of backend addresses comes from, as it changes.

Two sources feed an ``UpstreamGroup`` through ``update`` (which drains what leaves):

- ``DnsDiscovery`` (the default): one name, re-resolved on an interval. Docker's embedded DNS
  returns one A record per running replica of a service, so re-resolving ``backend`` every
  second is enough to follow ``docker compose --scale backend=N`` without restarting the proxy.
  NXDOMAIN means "no containers right now" (empty set); any other failure is treated as
  transient and the last known set is kept. On Docker Swarm the same holds for a service with
  ``endpoint_mode: dnsrr``; a service with the default virtual IP answers with that one address,
  and then the proxy follows ``tasks.<name>`` (every task's address) instead, since a proxy that
  balances wants the tasks, not a second balancer (IPVS) in front of them.
- ``DockerDiscovery``: asks the Docker engine (through a read-only socket filter) for the running
  containers of one Compose service and follows its event stream, like Traefik's Docker
  provider. A replica being stopped leaves the set as soon as Docker sends it the signal,
  before DNS would notice, and a replica with a healthcheck joins only once Docker calls it
  healthy. When the proxy itself runs as a Swarm task, the same source reads the Swarm tasks
  API instead (tasks on every node, not only this node's containers; managers only): a task
  counts when Swarm wants it running and says it runs, which, for a task with a healthcheck,
  means healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from proxy.pool import Address, UpstreamGroup

if TYPE_CHECKING:
    from proxy.config import Config

log = logging.getLogger("proxy.discovery")

Resolver = Callable[[str, int], Awaitable[Sequence[Address]]]


class Discovery(Protocol):
    """What the server needs from an endpoint source."""

    async def refresh(self) -> None: ...  # one full answer, before the proxy accepts clients

    def start(self) -> None: ...  # follow changes from now on

    def stale(self) -> None: ...  # a connect failed: the set may be out of date (group.on_connect_failure)

    async def stop(self) -> None: ...


class DiscoveryError(OSError):
    """The source cannot work at all (no Docker socket, no project): the proxy must not start."""


# getaddrinfo errors that mean "this name has no addresses" rather than "DNS is unwell".
_NOT_FOUND = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def make_resolver(loop: asyncio.AbstractEventLoop) -> Resolver:
    async def resolve(host: str, port: int) -> list[Address]:
        infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
        # Sorted so the same DNS answer in a different order is not reported as a change.
        return sorted({(info[4][0], info[4][1]) for info in infos}, key=_sort_key)

    return resolve


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _sort_key(addr: Address) -> tuple[tuple[int, ...] | tuple[str], int]:
    try:
        return tuple(int(p) for p in addr[0].split(".")), addr[1]
    except ValueError:
        return (addr[0],), addr[1]


class DnsDiscovery:
    """Feeds an UpstreamGroup from periodic resolutions of ``host:port``.

    Besides the interval, a failed connect (``UpstreamGroup.mark_failed``) triggers a resolution
    right away (at most one per ``hint_gap`` seconds): a killed replica has usually left Docker's
    DNS already, and waiting up to a full interval lets requests pick an address that no longer
    exists, where a connect hangs until ``--connect-timeout`` instead of being refused.

    Such an early resolution can overlap the periodic one. Answers are applied in the order the
    resolutions *started*: one that finishes after a later-started one was applied is dropped,
    since it may still list a replica that has gone (a slow answer must never bring it back).
    """

    hint_gap = 0.1
    probe_timeout = 1.0  # seconds for a ``tasks.<name>`` lookup; slower means: not Swarm, stop asking

    def __init__(
        self,
        group: UpstreamGroup,
        host: str,
        port: int,
        interval: float,
        resolver: Resolver | None = None,
    ) -> None:
        self.group = group
        self.host = host
        self.port = port
        self.interval = interval
        self.resolver = resolver or make_resolver(group.loop)
        self._task: asyncio.Task[None] | None = None
        self._hinted: asyncio.Task[None] | None = None
        self._last = float("-inf")  # loop time of the last resolution started
        self._started = 0  # resolutions started so far (the number of the newest)
        self._applied = 0  # number of the newest resolution whose answer was applied
        self._warned = False
        # Look behind a single address for Swarm tasks, unless the name is already tasks.* or an IP.
        self._probe = not host.startswith("tasks.") and not _is_ip(host)

    def stale(self) -> None:
        """A connect failed: the last answer may be out of date; resolve again soon."""
        loop = self.group.loop
        if self._task is None or self._hinted is not None or loop.time() - self._last < self.hint_gap:
            return
        self._hinted = loop.create_task(self._refresh_hinted())

    async def _refresh_hinted(self) -> None:
        try:
            await self.refresh()
        except Exception:
            log.exception("endpoint refresh failed")
        finally:
            self._hinted = None

    async def refresh(self) -> None:
        """Resolve once and apply the result (or the failure policy) to the group."""
        self._last = self.group.loop.time()
        self._started += 1
        number = self._started
        try:
            addresses = await self.resolver(self.host, self.port)
            if self._probe and len(addresses) == 1:
                addresses = await self._behind_vip(addresses)
        except socket.gaierror as exc:
            if exc.errno in _NOT_FOUND:
                if self._newest(number):
                    if self.group.live:
                        log.warning("upstream %s:%d not found in DNS: %s", self.host, self.port, exc)
                    self.group.update(())
            else:
                log.warning("resolving %s:%d failed, keeping last endpoints: %s", self.host, self.port, exc)
            return
        except OSError as exc:
            log.warning("resolving %s:%d failed, keeping last endpoints: %s", self.host, self.port, exc)
            return
        if not self._newest(number):
            return
        if not addresses and not self._warned:
            log.warning("upstream %s:%d resolved to no addresses", self.host, self.port)
            self._warned = True
        self.group.update(addresses)

    def _newest(self, number: int) -> bool:
        """Whether resolution ``number``'s answer may be applied: none started later was applied."""
        if number < self._applied:
            log.debug(
                "dropping a DNS answer overtaken by a later resolution (%d < %d)", number, self._applied
            )
            return False
        self._applied = number
        return True

    async def _behind_vip(self, addresses: Sequence[Address]) -> Sequence[Address]:
        """One address may be a Swarm service's virtual IP: if ``tasks.<name>`` lists other
        addresses, follow that name from now on (its answer is every task, whatever the
        service's endpoint mode). Asked again at each resolution while the name has one address
        (a VIP whose tasks are not healthy yet answers NXDOMAIN for tasks.*), so it costs one
        lookup per interval under Compose with one replica, and nothing once decided."""
        name = f"tasks.{self.host}"
        try:
            tasks = await asyncio.wait_for(self.resolver(name, self.port), self.probe_timeout)
        except socket.gaierror:
            return addresses  # not on Swarm, or no task running yet
        except OSError as exc:  # TimeoutError included
            self._probe = False  # a DNS that stalls on unknown names: do not ask it every second
            log.info("not looking up %s any more (%s)", name, exc.__class__.__name__)
            return addresses
        if not tasks or addresses[0] in tasks:
            return addresses  # the name already lists the tasks (dnsrr, or Compose)
        log.info(
            "upstream %s resolves to one address, %s, in front of %d tasks (a Swarm virtual IP): "
            "following %s instead",
            self.host,
            addresses[0][0],
            len(tasks),
            name,
        )
        self.host, self._probe = name, False
        return tasks

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception:  # never let discovery die: the proxy would freeze its endpoint set
                log.exception("endpoint refresh failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        for task in (self._task, self._hinted):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._hinted = None


# --- Docker ---------------------------------------------------------------------------------------

# Docker's JSON (container attrs, events, tasks) as the SDK hands it over. Its shape is the
# engine's, not ours: every read below goes through ``.get`` with a fallback, nothing assumes a key.
Json = Mapping[str, Any]


class DockerContainer(Protocol):
    """What discovery reads of a ``docker.models.containers.Container``."""

    @property
    def id(self) -> str: ...

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def attrs(self) -> Json: ...


class DockerContainers(Protocol):
    def get(self, container_id: str) -> DockerContainer: ...

    def list(self, *, filters: Mapping[str, object]) -> Sequence[DockerContainer]: ...


class DockerEvents(Protocol):
    """The SDK's event stream (``CancellableStream``): decoded events; ``close`` unblocks a read."""

    def __iter__(self) -> Iterator[Json]: ...

    def close(self) -> None: ...


class DockerApi(Protocol):
    def tasks(self, *, filters: Mapping[str, object]) -> Sequence[Json]: ...


class DockerClient(Protocol):
    """The part of ``docker.DockerClient`` discovery uses (tests pass a fake engine of this shape)."""

    @property
    def containers(self) -> DockerContainers: ...

    @property
    def api(self) -> DockerApi: ...

    def ping(self) -> object: ...

    def info(self) -> Json: ...

    def events(self, *, decode: bool, filters: Mapping[str, object]) -> DockerEvents: ...


MAX_BACKOFF_S = 10.0  # longest wait before resubscribing to a broken event stream

LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"
# Labels Swarm puts on a task's container: the proxy finds out from its own that it runs on Swarm.
LABEL_SWARM_SERVICE = "com.docker.swarm.service.name"
LABEL_STACK = "com.docker.stack.namespace"
# Container events that can change the set; healthcheck execs ("exec_start: ...") come every few
# seconds per replica and are ignored rather than answered with a re-list.
_RELEVANT = frozenset(
    {"start", "restart", "unpause", "pause", "kill", "die", "stop", "destroy", "health_status"}
)
# Events after which the container should be listed as running.
_JOINING = frozenset({"start", "restart", "unpause"})
# On Swarm a task with a healthcheck is listed as running only once healthy.
_JOINING_SWARM = _JOINING | {"health_status"}
# Signals in a kill event that mean the container is going away (docker stop: SIGTERM, then KILL).
_STOP_SIGNALS = frozenset({"2", "3", "9", "15", "SIGINT", "SIGQUIT", "SIGKILL", "SIGTERM"})


class DockerDiscovery:
    """Feeds an UpstreamGroup from the running containers of one Compose service.

    The Docker SDK is blocking, so the event stream is read in a thread that hands each new
    address set to the loop with ``call_soon_threadsafe``. Every relevant event triggers a fresh
    listing (the engine is the source of truth, and listing a few containers is cheap), except
    that a ``kill`` event (``docker stop`` sends SIGTERM, ``docker compose --scale`` down too)
    removes the container at once although it still runs: the replica is shutting down
    gracefully, so it gets no new requests while its in-flight ones finish (drain).

    On Swarm (the proxy's own container carries Swarm's labels) the members are the running tasks
    of the stack's service (``<stack>_<service>``) on every node, read from the tasks API (a
    manager's, so the proxy is placed on a manager). Container events only come from this node,
    so besides re-listing on them the tasks are listed every ``interval`` seconds: a task that
    Swarm is about to stop (its desired state is no longer ``running``: scale down, rolling
    update) leaves the set at the next listing, before its container gets the signal.

    ``client`` is a ``docker.DockerClient`` or anything of the ``DockerClient`` shape (tests pass
    a fake); None connects to the engine ``DOCKER_HOST`` or the socket names at the first refresh.
    """

    def __init__(
        self,
        group: UpstreamGroup,
        service: str,
        port: int,
        *,
        interval: float,
        project: str | None = None,
        client: DockerClient | None = None,
        self_id: str | None = None,
        max_backoff: float = MAX_BACKOFF_S,
    ) -> None:
        self.group = group
        self.service = service
        self.port = port
        self.project = project
        self.client = client
        self.self_id = self_id if self_id is not None else socket.gethostname()
        self.max_backoff = max_backoff
        self.interval = interval  # Swarm: seconds between task listings (events are this node's only)
        self.swarm_service: str | None = None  # set when the proxy runs as a Swarm task
        self.networks: set[str] = set()  # the proxy's own networks (to pick the address it can reach)
        self._stopping: set[str] = set()  # containers sent a signal: on their way out
        self._stream: DockerEvents | None = None
        self._thread: threading.Thread | None = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self._last: list[Address] | None = None
        self._numbers = itertools.count(1)  # listings, numbered as they start (next() is atomic)
        self._applied = 0  # number of the newest listing applied

    # -- blocking parts, run outside the loop -----------------------------------------------------
    @property
    def _engine(self) -> DockerClient:
        assert self.client is not None, "refresh() connects first"
        return self.client

    def _connect(self) -> None:
        """Client, project and own networks: once, at the first refresh."""
        if self.client is None:
            try:
                import docker  # the SDK is only needed when this source is chosen

                client: DockerClient = docker.from_env()
                client.ping()
                self.client = client
            except Exception as exc:
                raise DiscoveryError(
                    f"docker discovery: cannot reach the Docker engine ({exc}); in Compose add "
                    "-f compose/docker-discovery.yml (docs/security.md), elsewhere set DOCKER_HOST"
                ) from exc
        own = None
        try:
            own = self._engine.containers.get(self.self_id)
        except Exception:
            log.info("docker discovery: not running in a container known to Docker (%s)", self.self_id)
        if own is not None:
            self.networks = set((own.attrs.get("NetworkSettings") or {}).get("Networks") or {})
            labels = own.labels or {}
            if labels.get(LABEL_SWARM_SERVICE):
                self._connect_swarm(labels)
                return
            if self.project is None:
                self.project = labels.get(LABEL_PROJECT)
        if not self.project:
            raise DiscoveryError(
                "docker discovery: no Compose project: the proxy's container has no "
                f"{LABEL_PROJECT} label; set --docker-project / PROXY_DOCKER_PROJECT"
            )
        log.info(
            "docker discovery: service %r of project %r, port %d, via networks %s",
            self.service,
            self.project,
            self.port,
            sorted(self.networks) or "(any)",
        )

    def _connect_swarm(self, labels: Mapping[str, str]) -> None:
        """The proxy is a Swarm task: follow the tasks of ``<stack>_<service>`` on every node."""
        if self.project is None:
            self.project = labels.get(LABEL_STACK)
        self.swarm_service = f"{self.project}_{self.service}" if self.project else self.service
        swarm = (self._engine.info() or {}).get("Swarm") or {}
        if not swarm.get("ControlAvailable"):
            raise DiscoveryError(
                "docker discovery: the proxy runs as a Swarm task on a node that is not a manager, "
                "and only managers answer the tasks API; place it with the constraint "
                "node.role == manager (swarm/stack.yml does)"
            )
        log.info(
            "docker discovery: Swarm tasks of service %r, port %d, via networks %s, listed every %gs",
            self.swarm_service,
            self.port,
            sorted(self.networks) or "(any)",
            self.interval,
        )

    @property
    def _labels(self) -> list[str]:
        if self.swarm_service is not None:
            return [f"{LABEL_SWARM_SERVICE}={self.swarm_service}"]
        return [f"{LABEL_PROJECT}={self.project}", f"{LABEL_SERVICE}={self.service}"]

    def list_addresses(self) -> list[Address]:
        """The addresses new requests may go to now (blocking: calls the engine)."""
        return self._snapshot()[2]

    def _listing(self) -> tuple[int, list[Address]]:
        number, _, addresses = self._snapshot()
        return number, addresses

    def _snapshot(self) -> tuple[int, set[str], list[Address]]:
        """The listing's number (in the order listings start), the ids of the containers listed
        as running, and the addresses to use now."""
        number = next(self._numbers)  # taken before asking: a slow answer keeps its early number
        if self.swarm_service is not None:
            tasks = self._tasks()
            ids = {_task_container(t) for t in tasks if _task_running(t)}
            return number, ids, self.addresses_of_tasks(tasks)
        containers = self._running()
        return number, {c.id for c in containers}, self.addresses_of(containers)

    def _running(self) -> Sequence[DockerContainer]:
        return self._engine.containers.list(filters={"label": self._labels, "status": "running"})

    def _tasks(self) -> list[Json]:
        filters = {"service": self.swarm_service, "desired-state": "running"}
        return list(self._engine.api.tasks(filters=filters))

    def addresses_of_tasks(self, tasks: Iterable[Json]) -> list[Address]:
        """Addresses of the tasks Swarm wants running and reports running (healthy, if checked)."""
        out = set()
        for task in tasks:
            if task.get("DesiredState") != "running" or not _task_running(task):
                continue
            if _task_container(task) in self._stopping:
                continue
            ip = _pick_task_ip(task.get("NetworksAttachments") or (), self.networks)
            if ip:
                out.add((ip, self.port))
        return sorted(out, key=_sort_key)

    def _list_after(self, action: str, cid: str) -> tuple[int, list[Address]]:
        """List after an event; wait a little for a container the event says is running again.

        Docker 20.10 sends ``unpause`` (and sometimes ``start``) before a listing shows the
        container as running; without a second look it would only come back with the next
        event, seconds later. Retries take at most ~0.75 s and only in that case.
        """
        joining = _JOINING_SWARM if self.swarm_service is not None else _JOINING
        number, ids, addresses = self._snapshot()
        delay = 0.05
        while action in joining and cid not in ids and delay < 0.5 and not self._stop.is_set():
            self._stop.wait(delay)
            delay *= 2
            number, ids, addresses = self._snapshot()
        return number, addresses

    def addresses_of(self, containers: Iterable[DockerContainer]) -> list[Address]:
        out = set()
        for c in containers:
            if c.id in self._stopping:
                continue
            attrs = c.attrs
            state = attrs.get("State") or {}
            if isinstance(state, dict):
                if state.get("Status", "running") != "running":
                    continue
                health = (state.get("Health") or {}).get("Status")
                if health is not None and health != "healthy":
                    continue  # has a healthcheck and Docker does not call it healthy (yet)
            ip = _pick_ip((attrs.get("NetworkSettings") or {}).get("Networks") or {}, self.networks)
            if ip:
                out.add((ip, self.port))
        return sorted(out, key=_sort_key)

    def on_event(self, event: Json) -> tuple[str, str] | None:
        """Apply one engine event to the stopping set; (action, container id) when it matters."""
        action = str(event.get("Action") or event.get("status") or "").split(":", 1)[0]
        if action not in _RELEVANT:
            return None
        cid = event.get("id") or (event.get("Actor") or {}).get("ID") or ""
        if action == "kill":
            signal = str(((event.get("Actor") or {}).get("Attributes") or {}).get("signal", "15"))
            if signal in _STOP_SIGNALS:
                self._stopping.add(cid)
        elif action in ("start", "restart", "unpause"):
            self._stopping.discard(cid)
        elif action == "destroy":
            self._stopping.discard(cid)  # gone for good; forget it
        return action, cid

    def _follow(self) -> None:
        """Thread body: subscribe, list, apply events; reconnect with backoff on errors."""
        backoff = 0.5
        while not self._stop.is_set():
            try:
                # Subscribe before listing, so nothing that happens in between is missed.
                stream = self._engine.events(
                    decode=True, filters={"type": "container", "label": self._labels}
                )
                self._stream = stream
                self._publish(*self._listing())
                backoff = 0.5
                for event in _iterate(stream):
                    if self._stop.is_set():
                        return
                    if (seen := self.on_event(event)) is not None:
                        self._publish(*self._list_after(*seen))
                if not self._stop.is_set():
                    log.warning("docker events stream ended; reconnecting in %gs", backoff)
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning(
                    "docker events stream failed (%s); keeping last endpoints, retry in %gs", exc, backoff
                )
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    def _poll(self) -> None:
        """Thread body on Swarm: list the tasks every interval (other nodes send no events here)."""
        while not self._stop.wait(self.interval):
            try:
                self._publish(*self._listing())
            except Exception as exc:
                log.warning("listing Swarm tasks failed (%s); keeping last endpoints", exc)

    def _publish(self, number: int, addresses: list[Address]) -> None:
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self.group.loop.call_soon_threadsafe(self._apply, number, addresses)

    def _apply(self, number: int, addresses: list[Address]) -> None:
        """Make listing ``number``'s answer the set, unless a listing started later was applied.

        Two threads list (the event follower and, on Swarm, the poller): an answer that took
        longer than a later one may predate a container's stop, and must not bring it back.
        """
        if number < self._applied:
            log.debug(
                "dropping a container listing overtaken by a later one (%d < %d)", number, self._applied
            )
            return
        self._applied = number
        if not addresses and self._last != addresses:
            log.warning("docker discovery: no running (healthy) container of service %r", self.service)
        self._last = addresses
        self.group.update(addresses)

    # -- the Discovery interface ----------------------------------------------------------------
    async def refresh(self) -> None:
        loop = asyncio.get_running_loop()
        if self.client is None or not (self.project or self.swarm_service):
            await loop.run_in_executor(None, self._connect)
        self._apply(*await loop.run_in_executor(None, self._listing))

    def stale(self) -> None:
        """Nothing to do: the engine's events already say when a container goes."""

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._follow, name="docker-discovery", daemon=True)
            self._thread.start()
        if self.swarm_service is not None and self._poller is None:
            self._poller = threading.Thread(target=self._poll, name="swarm-tasks", daemon=True)
            self._poller.start()

    async def stop(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()  # unblocks the thread's read
        for thread in (self._thread, self._poller):
            if thread is not None:
                await asyncio.to_thread(thread.join, 2.0)
        self._thread = self._poller = None


def _iterate(stream: DockerEvents) -> Iterator[Json]:
    yield from stream


def _pick_ip(networks: Json, preferred: set[str]) -> str | None:
    """The container's address on a network the proxy shares, else on its first network."""
    names = sorted(networks)
    for name in [n for n in names if n in preferred] + names:
        ip = (networks[name] or {}).get("IPAddress")
        if ip:
            return str(ip)
    return None


def _task_running(task: Json) -> bool:
    return ((task.get("Status") or {}).get("State")) == "running"


def _task_container(task: Json) -> str:
    return str(((task.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID") or "")


def _pick_task_ip(attachments: Iterable[Json], preferred: set[str]) -> str | None:
    """The task's address on a network the proxy shares, else on its first non-ingress one."""
    found: list[tuple[str, str]] = []
    for attachment in attachments:
        name = str((((attachment.get("Network") or {}).get("Spec")) or {}).get("Name") or "")
        for cidr in attachment.get("Addresses") or ():
            found.append((name, str(cidr).split("/", 1)[0]))
    for name, ip in found:
        if name in preferred:
            return ip
    for name, ip in found:
        if name != "ingress":
            return ip
    return None


def make_discovery(config: Config, group: UpstreamGroup, resolver: Resolver | None = None) -> Discovery:
    """The source ``--discovery`` names, for the configured upstream."""
    if config.discovery == "docker":
        return DockerDiscovery(
            group,
            config.docker_service or config.upstream_host,
            config.upstream_port,
            project=config.docker_project,
            interval=config.resolve_interval,
        )
    return DnsDiscovery(group, config.upstream_host, config.upstream_port, config.resolve_interval, resolver)
