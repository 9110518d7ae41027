"""The lab with its backends under asgilab, the repo's own ASGI server, seen through the proxy.

One Compose project for the module (``BACKEND_SERVER=asgilab``, 3 replicas) runs the checks a
backend server can fail: the split, what /echo saw (headers, client, body), chunked and large
responses, uploads, a WebSocket through the proxy's tunnel, SIGTERM while a request is in
flight, and the keep-alive race. For the race the project is configured the wrong way round on
purpose: the proxy keeps idle connections 30 s, asgilab closes them after 2 s, so the pool holds
connections the server has closed, and a request must never be sent on one of them.

A second, smaller project runs one replica of each of the five servers behind the proxy
(compose/five-servers.yml) and checks that each answers GET / naming itself.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import websockets

from backend.servers import SERVERS

from . import checks
from .conftest import Lab, own_lab, wait_until
from .traffic import BackgroundGet

SERVER = "asgilab"
KEEP_ALIVE = 2  # asgilab's, seconds
POOL_IDLE = 30  # the proxy's, seconds: longer than the server's, so the race is there to lose


@pytest.fixture(scope="module")
def asgilab_lab(docker_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    env = {
        "BACKEND_SERVER": SERVER,
        "BACKEND_KEEP_ALIVE": str(KEEP_ALIVE),
        "PROXY_POOL_IDLE_TIMEOUT": str(POOL_IDLE),
        "PROXY_ACCESS_LOG": "false",
    }
    with own_lab(tmp_path_factory, "asgilab", env=env) as lab:
        yield lab


@pytest.fixture
def lab(asgilab_lab: Lab) -> Lab:
    """The project with 3 healthy asgilab replicas routed to, whatever earlier tests did."""
    asgilab_lab.scale(3)
    asgilab_lab.wait_for_endpoints(3)
    return asgilab_lab


def test_every_replica_runs_asgilab_and_the_split_is_even(lab: Lab) -> None:
    replies = checks.even_split(lab, 60)
    assert {r.json()["server"] for r in replies} == {SERVER}


def test_echo_sees_the_forwarded_client_headers_in_order_and_query(lab: Lab) -> None:
    with httpx.Client(base_url=lab.base_url, timeout=10) as client:
        r = client.get("/echo?a=1&b=%20x", headers=[("X-Dup", "one"), ("X-Dup", "two")])
    assert r.status_code == 200
    seen = r.json()
    headers = seen["headers"]
    # asgilab's --proxy-headers took the client from the X-Forwarded-For the proxy appended.
    assert seen["client"] == headers["x-forwarded-for"].split(",")[-1].strip()
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-dup"] == "one, two", "duplicate headers arrive, in order"
    assert seen["query"] == "a=1&b=%20x" and seen["path"] == "/echo"
    assert headers["x-request-id"] == r.headers["x-request-id"]


def test_posted_bodies_arrive_whole_fixed_length_and_chunked(lab: Lab) -> None:
    checks.fixed_length_upload(lab.base_url)
    checks.chunked_upload(lab.base_url)


def test_chunked_stream_and_large_download_arrive_whole(lab: Lab) -> None:
    checks.chunked_stream(lab.base_url)
    checks.large_download(lab.base_url)
    checks.statuses_pass_through(lab.base_url)


def test_websocket_echo_through_the_proxy(lab: Lab) -> None:
    url = lab.base_url.replace("http://", "ws://") + "/ws"

    async def talk() -> tuple[object, object, str | None]:
        async with websockets.connect(url, open_timeout=10) as ws:
            await ws.send("hello")
            text = await asyncio.wait_for(ws.recv(), 10)
            await ws.send(b"\x00\x01" * 40_000)  # 80 kB: more than one read on each side
            data = await asyncio.wait_for(ws.recv(), 10)
            return text, data, ws.response.headers.get("x-backend-id")

    text, data, backend = asyncio.run(talk())
    assert text == "hello"
    assert data == b"\x00\x01" * 40_000
    assert backend, "the backend's accept headers reach the client"


def test_sigterm_lets_the_request_in_flight_finish_then_exits_zero(lab: Lab) -> None:
    client = BackgroundGet(f"{lab.base_url}/delay/1500", timeout=20)
    deadline = time.monotonic() + 10
    busy: list[dict] = []
    while not busy:
        assert time.monotonic() < deadline, "the slow request never reached a backend"
        busy = [e for e in lab.endpoints() if e["in_flight"] > 0]
        time.sleep(0.05)
    (victim,) = [c for c in lab.containers("backend") if Lab.address(c) == busy[0]["address"]]
    victim.stop(timeout=10)  # SIGTERM, SIGKILL after 10 s
    reply = client.result(timeout=20)
    victim.reload()
    assert isinstance(reply, httpx.Response), reply
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-backend-id"] == victim.attrs["Config"]["Hostname"]
    assert victim.attrs["State"]["ExitCode"] == 0, victim.logs()[-2000:]


def test_keep_alive_race_pooled_connections_the_server_closed_are_never_used(lab: Lab) -> None:
    """Fill the proxy's pools, idle past asgilab's keep-alive, then POST (never retried)."""

    def post(i: int) -> int:
        return httpx.post(f"{lab.base_url}/echo", content=b"x" * i, timeout=10).status_code

    with ThreadPoolExecutor(12) as pool:
        assert set(pool.map(post, range(36))) == {200}
        assert sum(e["idle_connections"] for e in lab.endpoints()) > 0, "the proxy pooled connections"
        # asgilab closes its idle connections (a FIN the proxy notices), well before the pool would.
        wait_until(
            lambda: sum(e["idle_connections"] for e in lab.endpoints()) == 0,
            POOL_IDLE / 2,
            "asgilab's keep-alive timeout to empty the proxy's pools",
        )
        assert list(pool.map(post, range(36))) == [200] * 36


@pytest.fixture(scope="module")
def five_lab(docker_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    others = [f"backend-{s}" for s in SERVERS if s != "uvicorn"]
    with own_lab(
        tmp_path_factory,
        "five",
        env={"BACKEND_SERVER": "uvicorn", "PROXY_ACCESS_LOG": "false"},
        compose_files=["compose/five-servers.yml"],
        up=("--scale", "backend=1", "proxy", "backend", *others),
        endpoints=len(SERVERS),
    ) as lab:
        yield lab


def test_each_of_the_five_servers_answers_through_the_proxy_naming_itself(five_lab: Lab) -> None:
    with httpx.Client(base_url=five_lab.base_url, timeout=10) as client:
        replies = [client.get("/") for _ in range(4 * len(SERVERS))]
        posted = [client.post("/echo", content=b"z" * 1000) for _ in range(len(SERVERS))]
    assert all(r.status_code == 200 for r in replies + posted)
    servers = Counter(r.json()["server"] for r in replies)
    assert set(servers) == set(SERVERS), servers
    assert {r.json()["body"]["length"] for r in posted} == {1000}
