"""DNS discovery (injected resolver), Docker discovery (fake engine), the access-log line format."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import queue
import socket
import threading
from collections.abc import Callable, Iterable, Iterator

import pytest

from proxy.accesslog import AccessLog
from proxy.config import Config
from proxy.discovery import DiscoveryError, DnsDiscovery, DockerDiscovery, make_discovery, make_resolver
from proxy.pool import UpstreamGroup
from proxy.state import ProxyState, start_feeds


class FakeDns:
    """Answers ``answer`` for the upstream name; ``tasks.*`` (Swarm's task names) from ``tasks``."""

    def __init__(self) -> None:
        self.answer: list[tuple[str, int]] | BaseException = []
        self.tasks: list[tuple[str, int]] | BaseException = socket.gaierror(socket.EAI_NONAME, "not known")
        self.calls = 0  # lookups of names other than tasks.*
        self.names: list[str] = []

    async def __call__(self, host: str, port: int) -> list[tuple[str, int]]:
        self.names.append(host)
        answer = self.tasks if host.startswith("tasks.") else self.answer
        if not host.startswith("tasks."):
            self.calls += 1
        if isinstance(answer, BaseException):
            raise answer
        return answer


def test_discovery_follows_dns_and_failure_policy() -> None:
    async def main() -> None:
        g = UpstreamGroup.from_config(Config(), asyncio.get_running_loop())
        dns = FakeDns()
        d = DnsDiscovery(g, "backend", 8001, 0.01, dns)
        dns.answer = [("10.0.0.1", 8001), ("10.0.0.2", 8001)]
        await d.refresh()
        assert [e.label for e in g.live] == ["10.0.0.1:8001", "10.0.0.2:8001"]
        dns.answer = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        await d.refresh()
        assert len(g.live) == 2, "transient errors keep the last set"
        dns.answer = [("10.0.0.2", 8001), ("10.0.0.3", 8001)]
        d.start()
        await asyncio.sleep(0.05)
        assert [e.label for e in g.live] == ["10.0.0.2:8001", "10.0.0.3:8001"]
        dns.answer = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        await asyncio.sleep(0.05)
        assert g.live == [], "NXDOMAIN: the service has no containers"
        await d.stop()
        calls = dns.calls
        await asyncio.sleep(0.03)
        assert dns.calls == calls

    asyncio.run(main())


def test_real_resolver_accepts_ip_literal() -> None:
    async def main() -> None:
        resolve = make_resolver(asyncio.get_running_loop())
        assert await resolve("127.0.0.1", 8001) == [("127.0.0.1", 8001)]

    asyncio.run(main())


def test_access_log_line_format() -> None:
    out = io.StringIO()
    log = AccessLog(out)
    log.log(b"rid", b"GET", b'/a"b', 200, 5, "10.0.0.1:8001", 0.0123456789, 0.02)
    log.log(b"rid2", b"POST", b"/", 502, 0, None, None, 0.5)
    a, b = (json.loads(line) for line in out.getvalue().splitlines())
    assert list(a) == [
        "time",
        "request_id",
        "method",
        "path",
        "status",
        "bytes",
        "upstream",
        "upstream_time",
        "total_time",
    ]
    assert a["path"] == '/a"b' and a["upstream_time"] == 0.012346 and a["time"].endswith("Z")
    assert b["upstream"] is None and b["upstream_time"] is None and b["status"] == 502


# --- Docker discovery, against a fake engine with the Docker SDK's shape ---------------------------

PROJECT, SERVICE = "lab", "backend"


RESOLVE = Config().resolve_interval  # Swarm task listing interval: --resolve-interval's default


class FakeContainer:
    def __init__(self, cid: str, ip: str, *, service: str = SERVICE, health: str | None = None) -> None:
        self.id = cid
        self.labels = {"com.docker.compose.project": PROJECT, "com.docker.compose.service": service}
        self.status = "running"
        self.health = health
        self.networks = {"lab_default": {"IPAddress": ip}, "other": {"IPAddress": "172.99.0.9"}}

    @property
    def attrs(self) -> dict:
        state: dict = {"Status": self.status}
        if self.health is not None:
            state["Health"] = {"Status": self.health}
        return {"State": state, "NetworkSettings": {"Networks": self.networks}}


class FakeStream:
    """Like docker's CancellableStream: iterate events, close() from another thread ends it."""

    def __init__(self) -> None:
        self.queue: queue.Queue[dict | BaseException | None] = queue.Queue()

    def __iter__(self) -> Iterator[dict]:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.queue.put(None)


class FakeContainers:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    def get(self, cid: str) -> FakeContainer:
        for c in self.engine.all:
            if c.id == cid:
                return c
        raise LookupError(cid)

    def list(self, filters: dict) -> list[FakeContainer]:
        self.engine.lists += 1
        wanted = dict(label.split("=", 1) for label in filters["label"])
        return [
            c
            for c in self.engine.all
            if c.status == filters["status"] and all(c.labels.get(k) == v for k, v in wanted.items())
        ]


class FakeEngine:
    """The three calls DockerDiscovery makes: containers.get/list and events."""

    def __init__(self) -> None:
        proxy = FakeContainer("proxy1", "172.20.0.2", service="proxy")
        proxy.networks = {"lab_default": {"IPAddress": "172.20.0.2"}}
        self.all = [proxy]
        self.containers = FakeContainers(self)
        self.streams: list[FakeStream] = []
        self.fail_next_subscribe = 0
        self.lists = 0

    def events(self, decode: bool, filters: dict) -> FakeStream:
        assert decode and filters["type"] == "container"
        if self.fail_next_subscribe:
            self.fail_next_subscribe -= 1
            raise ConnectionError("engine restarting")
        stream = FakeStream()
        self.streams.append(stream)
        return stream

    def emit(self, action: str, cid: str, **attributes: str) -> None:
        self.streams[-1].queue.put(
            {"Type": "container", "Action": action, "id": cid, "Actor": {"ID": cid, "Attributes": attributes}}
        )


async def wait_for(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def labels(group: UpstreamGroup) -> list[str]:
    return [ep.label for ep in group.live]


def test_docker_discovery_lists_running_healthy_replicas_on_the_shared_network() -> None:
    async def main() -> None:
        engine = FakeEngine()
        engine.all += [
            FakeContainer("b1", "172.20.0.11"),
            FakeContainer("b2", "172.20.0.12", health="healthy"),
            FakeContainer("b3", "172.20.0.13", health="starting"),
            FakeContainer("b4", "172.20.0.14", health="unhealthy"),
            FakeContainer("x1", "172.20.0.21", service="loadgen"),
        ]
        engine.all[-1].status = "exited"
        group = UpstreamGroup.from_config(Config(), asyncio.get_running_loop())
        d = DockerDiscovery(group, SERVICE, 8001, interval=RESOLVE, client=engine, self_id="proxy1")
        await d.refresh()
        assert d.project == PROJECT, "the project comes from the proxy's own container labels"
        assert labels(group) == ["172.20.0.11:8001", "172.20.0.12:8001"]

    asyncio.run(main())


def test_docker_discovery_without_a_project_refuses_to_start() -> None:
    async def main() -> None:
        engine = FakeEngine()
        group = UpstreamGroup.from_config(Config(), asyncio.get_running_loop())
        d = DockerDiscovery(group, SERVICE, 8001, interval=RESOLVE, client=engine, self_id="not-a-container")
        with pytest.raises(DiscoveryError, match="PROXY_DOCKER_PROJECT"):
            await d.refresh()
        d = DockerDiscovery(
            group, SERVICE, 8001, interval=RESOLVE, client=engine, self_id="nope", project=PROJECT
        )
        await d.refresh()  # an explicit project works from outside a container too
        assert labels(group) == []

    asyncio.run(main())


def test_docker_discovery_follows_events_and_drops_a_stopping_replica_at_once() -> None:
    async def main() -> None:
        engine = FakeEngine()
        b1, b2 = FakeContainer("b1", "172.20.0.11"), FakeContainer("b2", "172.20.0.12")
        engine.all += [b1, b2]
        group = UpstreamGroup.from_config(Config(), asyncio.get_running_loop())
        d = DockerDiscovery(group, SERVICE, 8001, interval=RESOLVE, client=engine, self_id="proxy1")
        await d.refresh()
        d.start()
        await wait_for(lambda: len(engine.streams) == 1)
        # Scale up: a new container starts unhealthy-unknown, joins when Docker calls it healthy.
        b3 = FakeContainer("b3", "172.20.0.13", health="starting")
        engine.all.append(b3)
        engine.emit("start", "b3")
        await asyncio.sleep(0.05)
        assert len(group.live) == 2
        b3.health = "healthy"
        engine.emit("health_status: healthy", "b3")
        await wait_for(lambda: len(group.live) == 3)
        # docker stop: SIGTERM arrives while the container still runs; it leaves the set now.
        group.endpoints[("172.20.0.11", 8001)].in_flight = 1
        engine.emit("kill", "b1", signal="15")
        await wait_for(lambda: len(group.live) == 2)
        assert labels(group) == ["172.20.0.12:8001", "172.20.0.13:8001"]
        assert ("172.20.0.11", 8001) in group.endpoints, "draining: its in-flight request finishes"
        # A reload signal is not a stop.
        engine.emit("kill", "b2", signal="SIGHUP")
        await asyncio.sleep(0.05)
        assert len(group.live) == 2
        # Pause (or crash) takes it out; unpause brings it back.
        b2.status = "paused"
        engine.emit("pause", "b2")
        await wait_for(lambda: labels(group) == ["172.20.0.13:8001"])
        b2.status = "running"
        engine.emit("unpause", "b2")
        await wait_for(lambda: len(group.live) == 2)
        # Healthcheck execs are frequent and irrelevant: no re-list for them.
        lists = engine.lists
        engine.emit("exec_start: python -c ...", "b2")
        engine.emit("start", "b2")
        await wait_for(lambda: engine.lists == lists + 1)
        await d.stop()
        assert d._thread is None

    asyncio.run(main())


def test_docker_discovery_reconnects_after_stream_errors_and_resyncs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        engine = FakeEngine()
        engine.all.append(FakeContainer("b1", "172.20.0.11"))
        group = UpstreamGroup.from_config(Config(), asyncio.get_running_loop())
        d = DockerDiscovery(
            group, SERVICE, 8001, interval=RESOLVE, client=engine, self_id="proxy1", max_backoff=0.05
        )
        await d.refresh()
        d.start()
        await wait_for(lambda: len(engine.streams) == 1)
        # The engine goes away: the stream breaks and the first resubscribe fails too.
        engine.fail_next_subscribe = 1
        engine.all.append(FakeContainer("b2", "172.20.0.12"))  # started while we were not listening
        engine.streams[-1].queue.put(ConnectionError("socket closed"))
        await wait_for(lambda: len(engine.streams) == 2, timeout=5)
        await wait_for(lambda: len(group.live) == 2)
        assert labels(group) == ["172.20.0.11:8001", "172.20.0.12:8001"], "a full listing after reconnect"
        await d.stop()

    asyncio.run(main())
    assert "docker events stream failed (socket closed); keeping last endpoints" in caplog.text
    assert "engine restarting" in caplog.text


def test_make_discovery_picks_the_source_from_config() -> None:
    async def main() -> None:
        group = UpstreamGroup.from_config(Config(), asyncio.get_running_loop())
        assert isinstance(make_discovery(Config(), group), DnsDiscovery)
        d = make_discovery(Config(discovery="docker", upstream_host="api", docker_project="p"), group)
        assert isinstance(d, DockerDiscovery) and d.service == "api" and d.project == "p"
        d = make_discovery(Config(discovery="docker", docker_service="web"), group)
        assert isinstance(d, DockerDiscovery) and d.service == "web" and d.port == 8001

    asyncio.run(main())


def test_docker_discovery_looks_again_when_the_listing_lags_behind_an_unpause_event() -> None:
    """Docker 20.10 sends `unpause` before its listing says `running` (seen on this machine)."""

    async def main() -> None:
        engine = FakeEngine()
        b1 = FakeContainer("b1", "172.20.0.11")
        b1.status = "paused"
        engine.all.append(b1)
        group = UpstreamGroup.from_config(Config(), asyncio.get_running_loop())
        d = DockerDiscovery(group, SERVICE, 8001, interval=RESOLVE, client=engine, self_id="proxy1")
        await d.refresh()
        d.start()
        await wait_for(lambda: len(engine.streams) == 1)
        threading.Timer(0.15, setattr, (b1, "status", "running")).start()
        t0 = asyncio.get_running_loop().time()
        engine.emit("unpause", "b1")
        await wait_for(lambda: len(group.live) == 1)
        assert asyncio.get_running_loop().time() - t0 < 0.6
        await d.stop()

    asyncio.run(main())


def test_a_failed_connect_makes_dns_discovery_resolve_at_once_but_not_in_a_storm() -> None:
    async def main() -> None:
        dns = FakeDns()
        dns.answer = [("10.0.0.1", 8001), ("10.0.0.2", 8001)]
        cfg = Config(resolve_interval=60.0, health_interval=0)  # the interval alone would take a minute
        state = ProxyState.from_config(cfg, asyncio.get_running_loop(), None)
        feeds = await start_feeds(state, resolver=dns)  # the wiring the server uses
        g = state.group
        dns.answer = [("10.0.0.2", 8001)]  # 10.0.0.1 was killed and already left DNS
        await asyncio.sleep(DnsDiscovery.hint_gap)
        calls = dns.calls
        for _ in range(20):
            g.mark_failed(g.live[0])
        await asyncio.sleep(0.01)
        assert [e.label for e in g.live] == ["10.0.0.2:8001"], "dropped without waiting for the interval"
        assert dns.calls == calls + 1, "twenty failures in a burst give one resolution"
        await feeds.stop()
        await asyncio.sleep(DnsDiscovery.hint_gap)
        g.mark_failed(g.live[0])
        await asyncio.sleep(0.01)
        assert dns.calls == calls + 1, "a stopped discovery resolves nothing"
        g.close()

    asyncio.run(main())


def test_an_older_dns_answer_that_arrives_late_never_brings_a_dead_replica_back() -> None:
    """#12: an early (hinted) resolution overlapping the periodic one; the periodic one started
    first but its answer, still listing the killed replica, arrives last."""

    async def main() -> None:
        g = UpstreamGroup.from_config(Config(), asyncio.get_running_loop())
        old, new = [("10.0.0.1", 8001), ("10.0.0.2", 8001)], [("10.0.0.2", 8001)]
        g.update(old)
        gate = asyncio.Event()
        answers = [old, new, socket.gaierror(socket.EAI_NONAME, "not known")]
        order: list[str] = []

        async def dns(host: str, port: int) -> list[tuple[str, int]]:
            if host.startswith("tasks."):  # the Swarm probe behind a single address: not Swarm
                raise socket.gaierror(socket.EAI_NONAME, "not known")
            answer = answers.pop(0)
            if answer is old:
                await gate.wait()  # the first (periodic) resolution is slow
            order.append("old" if answer is old else "new" if answer is new else "nxdomain")
            if isinstance(answer, BaseException):
                raise answer
            return answer

        d = DnsDiscovery(g, "backend", 8001, 60.0, dns)
        periodic = asyncio.create_task(d.refresh())
        await asyncio.sleep(0)
        await d.refresh()  # the early one, started second, answers first
        assert labels(g) == ["10.0.0.2:8001"]
        gate.set()
        await periodic
        assert order == ["new", "old"]
        assert labels(g) == ["10.0.0.2:8001"], "the older answer must not win"
        await d.refresh()  # a later NXDOMAIN still applies: it started after the applied answer
        assert labels(g) == []

    asyncio.run(main())


def test_a_late_nxdomain_from_an_older_resolution_does_not_empty_a_newer_set() -> None:
    async def main() -> None:
        g = UpstreamGroup.from_config(Config(), asyncio.get_running_loop())
        gate = asyncio.Event()
        first = True

        async def dns(host: str, port: int) -> list[tuple[str, int]]:
            nonlocal first
            if host.startswith("tasks."):
                raise socket.gaierror(socket.EAI_NONAME, "not known")
            if first:
                first = False
                await gate.wait()
                raise socket.gaierror(socket.EAI_NONAME, "not known")
            return [("10.0.0.3", 8001)]

        d = DnsDiscovery(g, "backend", 8001, 60.0, dns)
        older = asyncio.create_task(d.refresh())
        await asyncio.sleep(0)
        await d.refresh()
        gate.set()
        await older
        assert labels(g) == ["10.0.0.3:8001"]

    asyncio.run(main())


def test_dns_discovery_follows_tasks_when_the_name_is_a_swarm_virtual_ip() -> None:
    """Swarm's default endpoint mode answers the service name with one VIP (IPVS, absent here):
    the proxy must balance the tasks behind it, which ``tasks.<name>`` lists."""

    async def main() -> None:
        g = UpstreamGroup.from_config(Config(), asyncio.get_running_loop())
        dns = FakeDns()
        d = DnsDiscovery(g, "backend", 8001, 60.0, dns)
        dns.answer = [("10.0.1.2", 8001)]  # the VIP; no task healthy yet: tasks.backend is NXDOMAIN
        await d.refresh()
        assert labels(g) == ["10.0.1.2:8001"] and dns.names == ["backend", "tasks.backend"]
        dns.tasks = [("10.0.1.5", 8001), ("10.0.1.6", 8001)]
        await d.refresh()
        assert labels(g) == ["10.0.1.5:8001", "10.0.1.6:8001"]
        assert d.host == "tasks.backend"
        # From now on only tasks.backend is asked, also when the service scales to one task.
        dns.tasks = [("10.0.1.6", 8001)]
        dns.names.clear()
        await d.refresh()
        assert labels(g) == ["10.0.1.6:8001"] and dns.names == ["tasks.backend"]

    asyncio.run(main())


def test_dns_discovery_keeps_a_name_that_already_lists_its_tasks() -> None:
    async def main() -> None:
        g = UpstreamGroup.from_config(Config(), asyncio.get_running_loop())
        dns = FakeDns()
        # dnsrr with one task: backend and tasks.backend give the same address; Compose: NXDOMAIN.
        dns.answer = dns.tasks = [("10.0.1.5", 8001)]
        d = DnsDiscovery(g, "backend", 8001, 60.0, dns)
        await d.refresh()
        assert d.host == "backend" and labels(g) == ["10.0.1.5:8001"]
        dns.answer = [("10.0.1.5", 8001), ("10.0.1.6", 8001)]
        dns.names.clear()
        await d.refresh()
        assert dns.names == ["backend"], "several addresses are no VIP: nothing else to ask"
        # tasks.* named outright, or an IP literal, are never probed.
        for host in ("tasks.backend", "10.0.0.1"):
            dns.names.clear()
            await DnsDiscovery(g, host, 8001, 60.0, dns).refresh()
            assert dns.names == [host]

    asyncio.run(main())


def test_dns_discovery_stops_probing_a_dns_that_stalls_on_tasks_names() -> None:
    async def main() -> None:
        g = UpstreamGroup.from_config(Config(), asyncio.get_running_loop())
        dns = FakeDns()
        dns.answer = [("172.20.0.2", 8001)]

        async def stalling(host: str, port: int) -> list[tuple[str, int]]:
            if host.startswith("tasks."):
                await asyncio.sleep(10)
            return await dns(host, port)

        d = DnsDiscovery(g, "backend", 8001, 60.0, stalling)
        d.probe_timeout = 0.05
        await d.refresh()
        assert labels(g) == ["172.20.0.2:8001"]
        dns.names.clear()
        await d.refresh()
        assert dns.names == ["backend"]

    asyncio.run(main())


# --- Docker discovery on Swarm: the tasks API --------------------------------------------------------

STACK = "lab"


def task(
    tid: str, ip: str, *, state: str = "running", desired: str = "running", net: str = "lab_lab"
) -> dict:
    """A task as the Swarm API lists it (the fields discovery reads)."""
    return {
        "ID": tid,
        "DesiredState": desired,
        "Status": {"State": state, "ContainerStatus": {"ContainerID": f"c-{tid}"}},
        "NetworksAttachments": [
            {"Network": {"Spec": {"Name": "ingress"}}, "Addresses": ["10.0.0.9/24"]},
            {"Network": {"Spec": {"Name": "lab_lab"}}, "Addresses": [f"{ip}/24"]},
        ],
    }


class FakeApi:
    def __init__(self, engine: FakeSwarmEngine) -> None:
        self.engine = engine

    def tasks(self, filters: dict) -> list[dict]:
        self.engine.task_lists.append(filters)
        # The engine filters by service and desired state; discovery must not rely on the latter.
        answer = [copy.deepcopy(t) for t in self.engine.tasks if filters["service"] == f"{STACK}_{SERVICE}"]
        # The poller's next answer can be held back: it is returned once `release` is set.
        if self.engine.hold_next.is_set() and threading.current_thread().name == "swarm-tasks":
            self.engine.hold_next.clear()
            self.engine.holding.set()
            self.engine.release.wait(5)
        return answer


class FakeSwarmEngine(FakeEngine):
    """A Swarm manager: the proxy's container carries Swarm's labels; tasks on several nodes."""

    def __init__(self, manager: bool = True) -> None:
        super().__init__()
        proxy = self.all[0]
        proxy.labels = {
            "com.docker.swarm.service.name": f"{STACK}_proxy",
            "com.docker.stack.namespace": STACK,
        }
        proxy.networks = {"lab_lab": {"IPAddress": "10.0.1.3"}}
        self.manager = manager
        self.tasks: list[dict] = []
        self.task_lists: list[dict] = []
        self.api = FakeApi(self)
        self.hold_next, self.holding, self.release = threading.Event(), threading.Event(), threading.Event()

    def info(self) -> dict:
        return {"Swarm": {"LocalNodeState": "active", "ControlAvailable": self.manager}}

    def events(self, decode: bool, filters: dict) -> FakeStream:
        assert filters["label"] == [f"com.docker.swarm.service.name={STACK}_{SERVICE}"]
        return super().events(decode, filters)


def test_swarm_discovery_lists_the_running_tasks_of_the_stacks_service_on_the_shared_network() -> None:
    async def main() -> None:
        engine = FakeSwarmEngine()
        engine.tasks = [
            task("t1", "10.0.1.5"),
            task("t2", "10.0.1.6"),
            task("t3", "10.0.1.7", state="starting"),  # healthcheck not passed yet
            task("t4", "10.0.1.8", desired="shutdown"),  # Swarm is stopping it (scale down, update)
            task("t5", "10.0.1.9", state="failed"),
        ]
        group = UpstreamGroup.from_config(Config(), asyncio.get_running_loop())
        d = DockerDiscovery(group, SERVICE, 8001, interval=RESOLVE, client=engine, self_id="proxy1")
        await d.refresh()
        assert d.swarm_service == "lab_backend", "the stack comes from the proxy's own labels"
        assert engine.task_lists[-1] == {"service": "lab_backend", "desired-state": "running"}
        assert labels(group) == ["10.0.1.5:8001", "10.0.1.6:8001"], "the stack network's address, not ingress"

    asyncio.run(main())


def test_swarm_discovery_refuses_a_worker_node() -> None:
    async def main() -> None:
        group = UpstreamGroup.from_config(Config(), asyncio.get_running_loop())
        d = DockerDiscovery(
            group, SERVICE, 8001, interval=RESOLVE, client=FakeSwarmEngine(manager=False), self_id="proxy1"
        )
        with pytest.raises(DiscoveryError, match=r"node\.role == manager"):
            await d.refresh()

    asyncio.run(main())


def test_swarm_discovery_follows_tasks_of_other_nodes_by_listing_and_local_kills_by_events() -> None:
    async def main() -> None:
        engine = FakeSwarmEngine()
        engine.tasks = [task("t1", "10.0.1.5"), task("t2", "10.0.1.6")]
        group = UpstreamGroup.from_config(Config(), asyncio.get_running_loop())
        d = DockerDiscovery(group, SERVICE, 8001, client=engine, self_id="proxy1", interval=0.02)
        await d.refresh()
        d.start()
        await wait_for(lambda: len(engine.streams) == 1)
        # A task scheduled on another node: no event reaches this engine, the next listing has it.
        engine.tasks.append(task("t3", "10.0.1.7"))
        await wait_for(lambda: len(group.live) == 3)
        # Swarm decides to stop t1 (desired state first): it leaves before its container is signalled.
        engine.tasks[0]["DesiredState"] = "shutdown"
        await wait_for(lambda: labels(group) == ["10.0.1.6:8001", "10.0.1.7:8001"])
        # A local container killed (docker kill, docker stop): out at once, though its task still runs.
        engine.emit("kill", "c-t2", signal="9")
        await wait_for(lambda: labels(group) == ["10.0.1.7:8001"])
        await d.stop()
        assert d._thread is None and d._poller is None
        lists = len(engine.task_lists)
        await asyncio.sleep(0.1)
        assert len(engine.task_lists) == lists, "no listing after stop"

    asyncio.run(main())


def test_swarm_discovery_waits_for_a_task_that_turns_healthy() -> None:
    """The health_status event comes before the manager reports the task as running."""

    async def main() -> None:
        engine = FakeSwarmEngine()
        t1 = task("t1", "10.0.1.5", state="starting")
        engine.tasks = [t1]
        group = UpstreamGroup.from_config(Config(), asyncio.get_running_loop())
        d = DockerDiscovery(group, SERVICE, 8001, client=engine, self_id="proxy1", interval=60)
        await d.refresh()
        d.start()
        await wait_for(lambda: len(engine.streams) == 1)
        assert labels(group) == []
        threading.Timer(0.15, t1["Status"].__setitem__, ("State", "running")).start()
        engine.emit("health_status: healthy", "c-t1")
        await wait_for(lambda: labels(group) == ["10.0.1.5:8001"], timeout=0.7)
        await d.stop()

    asyncio.run(main())


def test_a_slow_swarm_listing_never_brings_back_a_task_a_later_listing_dropped() -> None:
    """The poller's listing started before t1 was stopped but answers after the event thread's
    newer listing was applied: its (older) answer is dropped, t1 does not come back."""

    async def main() -> None:
        engine = FakeSwarmEngine()
        engine.tasks = [task("t1", "10.0.1.5"), task("t2", "10.0.1.6")]
        group = UpstreamGroup.from_config(Config(), asyncio.get_running_loop())
        d = DockerDiscovery(group, SERVICE, 8001, client=engine, self_id="proxy1", interval=0.02)
        await d.refresh()
        applied: list[list[str]] = []
        update = group.update

        def recording(addresses: Iterable[tuple[str, int]]) -> bool:
            wanted = list(addresses)
            applied.append([f"{h}:{p}" for h, p in wanted])
            return update(wanted)

        group.update = recording  # type: ignore[method-assign]
        d.start()
        await wait_for(lambda: len(engine.streams) == 1)
        engine.hold_next.set()  # the poller's next listing (t1 and t2) is held back
        await asyncio.to_thread(engine.holding.wait, 5)
        engine.tasks[0]["DesiredState"] = "shutdown"  # Swarm stopped t1 (it was a local task)...
        engine.tasks[0]["Status"]["State"] = "complete"
        engine.emit("die", "c-t1")  # ...and its container's die event makes the event thread list
        await wait_for(lambda: labels(group) == ["10.0.1.6:8001"])
        seen = len(applied)
        engine.release.set()  # the held, older answer arrives now
        await wait_for(lambda: len(applied) >= seen + 3)  # the poller's next listings were applied
        await d.stop()
        assert labels(group) == ["10.0.1.6:8001"]
        assert all(a == ["10.0.1.6:8001"] for a in applied[seen:]), applied

    asyncio.run(main())
