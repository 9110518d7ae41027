"""The dashboard through a real admin listener: page and assets, the /events stream, drain and
undrain with their protection, and two in-process workers seen (and drained) as one proxy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

from proxy.admin import AdminServer, Request
from proxy.outlier import eject
from tests.unit.test_proxy_metrics import get_many, http, proxy, read_response, run
from tests.unit.upstreams import StatusServer


class HoldingServer(StatusServer):
    """Answers at once, except ``/hold``, which waits until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__(body=b"held")
        self.release = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                self.paths[path] += 1
                if path == "/hold":
                    await self.release.wait()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: a\r\n{extra}\r\n".encode()


def post(path: str, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n{extra}\r\n".encode()


def label(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


def two_free_ports() -> int:
    """A port p with p and p + 1 both free (worker i serves admin on the admin port + i)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as s2, contextlib.suppress(OSError):
            s2.bind(("127.0.0.1", port + 1))
            return port
    raise RuntimeError("no two consecutive free ports")


async def read_events(port: int, n: int) -> tuple[dict[str, str], list[dict]]:
    """Open /events, read its headers and the first ``n`` snapshots."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(get("/events"))
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)
        }
        assert head[0].startswith("HTTP/1.1 200")
        snaps: list[dict] = []
        while len(snaps) < n:
            block = (await reader.readuntil(b"\n\n")).decode()
            for line in block.splitlines():
                if line.startswith("data: "):
                    snaps.append(json.loads(line[6:]))
        return headers, snaps
    finally:
        writer.close()


# -- page, assets, stream -----------------------------------------------------------------------
def test_dashboard_page_and_assets_are_served() -> None:
    async def main() -> None:
        async with StatusServer() as up, proxy([up.address]) as srv:
            status, headers, body = await http(srv.admin_port, get("/dashboard"))
            assert status == 200 and headers["content-type"].startswith("text/html")
            assert b'src="/static/uPlot.iife.min.js"' in body and b"/static/dashboard.js" in body
            for name, kind in (("uPlot.iife.min.js", "javascript"), ("dashboard.js", "javascript")):
                status, headers, body = await http(srv.admin_port, get(f"/static/{name}"))
                assert status == 200 and kind in headers["content-type"] and len(body) > 1000
            status, _, _ = await http(srv.admin_port, get("/static/../admin.py"))
            assert status == 404

    run(main)


def test_events_stream_replays_history_then_sends_a_snapshot_a_second() -> None:
    async def main() -> None:
        async with StatusServer() as a, StatusServer() as b, proxy([a.address, b.address]) as srv:
            assert srv.admin is not None and srv.admin.live is not None
            await get_many(srv.port, ["/"] * 10)
            await asyncio.sleep(2.2)  # two ticks in the ring
            headers, snaps = await read_events(srv.admin_port, 3)  # 2 replayed + 1 live
            assert headers["content-type"] == "text/event-stream" and headers["cache-control"] == "no-cache"
            times = [s["t"] for s in snaps]
            assert times == sorted(times) and len(set(times)) == 3
            last = snaps[-1]
            assert {r["addr"] for r in last["replicas"]} == {label(a.address), label(b.address)}
            assert sum(r["responses"]["2xx"] for r in last["replicas"]) == 10
            status, _, body = await http(srv.admin_port, get("/events/latest"))
            assert status == 200 and json.loads(body)["t"] >= last["t"]
            await asyncio.sleep(0.1)
            assert not srv.admin.live.viewers, "a viewer that hung up is forgotten"

    run(main)


# -- drain --------------------------------------------------------------------------------------
def test_drain_stops_new_requests_but_lets_in_flight_ones_finish() -> None:
    async def main() -> None:
        async with HoldingServer() as a, StatusServer() as b, proxy([a.address, b.address]) as srv:
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            writer.write(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")  # round robin: the first goes to a
            while not a.paths["/hold"]:
                await asyncio.sleep(0.01)
            status, _, body = await http(srv.admin_port, post(f"/upstreams/{label(a.address)}/drain"))
            assert status == 200, body
            doc = json.loads(body)
            assert doc["drained"] is True and doc["workers"] == {"0": "drained"}
            assert await get_many(srv.port, ["/"] * 6) == [200] * 6
            assert a.paths["/"] == 0 and b.paths["/"] == 6
            a.release.set()
            assert (await read_response(reader))[0] == 200  # the held request finished
            writer.close()
            status, _, body = await http(srv.admin_port, get("/upstreams"))
            row = next(r for r in json.loads(body)["endpoints"] if r["address"] == label(a.address))
            assert row["drained"] is True and row["state"] == "draining"
            status, _, _ = await http(srv.admin_port, post(f"/upstreams/{label(a.address)}/undrain"))
            assert status == 200
            await get_many(srv.port, ["/"] * 4)
            assert a.paths["/"] == 2

    run(main)


def test_draining_every_replica_leaves_nothing_to_pick_even_in_panic_mode() -> None:
    async def main() -> None:
        async with StatusServer() as a, StatusServer() as b, proxy([a.address, b.address]) as srv:
            assert srv.state is not None
            eject(srv.state.group.live[1], 30)  # b ejected, a drained: panic would pick both
            await http(srv.admin_port, post(f"/upstreams/{label(a.address)}/drain"))
            assert await get_many(srv.port, ["/"] * 3) == [200] * 3
            assert a.paths["/"] == 0
            await http(srv.admin_port, post(f"/upstreams/{label(b.address)}/drain"))
            assert await get_many(srv.port, ["/"]) == [502]
            status, _, body = await http(srv.admin_port, post("/upstreams/10.9.9.9:1/drain"))
            assert status == 404 and b"unknown endpoint" in body
            status, headers, _ = await http(srv.admin_port, get(f"/upstreams/{label(a.address)}/drain"))
            assert status == 405 and headers["allow"] == "POST"

    run(main)


def test_drain_needs_the_token_when_one_is_set_and_loopback_otherwise() -> None:
    async def main() -> None:
        async with StatusServer() as up, proxy([up.address], admin_token="s3cret-token") as srv:
            path = f"/upstreams/{label(up.address)}/drain"
            status, headers, _ = await http(srv.admin_port, post(path))
            assert status == 401 and headers["www-authenticate"].startswith("Bearer")
            status, _, _ = await http(srv.admin_port, post(path, "Authorization: Bearer wrong-token\r\n"))
            assert status == 401
            status, _, _ = await http(srv.admin_port, post(path, "Authorization: Bearer s3cret-token\r\n"))
            assert status == 200
            # Another origin's page cannot use a local browser to drain, token or not.
            extra = "Authorization: Bearer s3cret-token\r\nOrigin: http://evil.example\r\n"
            status, _, body = await http(srv.admin_port, post(path, extra))
            assert status == 403 and b"origin" in body
            status, _, _ = await http(
                srv.admin_port, post(path, "Origin: http://a\r\nAuthorization: Bearer s3cret-token\r\n")
            )
            assert status == 200

    run(main)


def test_without_a_token_only_loopback_clients_may_drain() -> None:
    async def main() -> None:
        async with StatusServer() as up, proxy([up.address]) as srv:
            admin = srv.admin
            assert isinstance(admin, AdminServer)
            path = f"/upstreams/{label(up.address)}/drain"
            for peer, expected in (
                ("10.1.2.3", 403),
                ("::ffff:192.168.0.1", 403),
                ("127.0.0.1", 200),
                ("::1", 200),
            ):
                reply = await admin.respond(Request("POST", path, "", {"host": "a"}, b"", peer))
                assert reply.status == expected, (peer, reply.body)
            # PUT /policy is a write like drain: refused from the network, allowed on loopback.
            reply = await admin.respond(Request("PUT", "/policy", "", {"host": "a"}, b"p2c", "10.1.2.3"))
            assert reply.status == 403 and b"PUT /policy" in reply.body
            assert srv.state is not None and srv.state.balancer.name == "round_robin"
            reply = await admin.respond(Request("PUT", "/policy", "", {"host": "a"}, b"p2c", "127.0.0.1"))
            assert reply.status == 200 and srv.state.balancer.name == "p2c"

    run(main)


# -- two workers, one view ----------------------------------------------------------------------
def test_two_workers_are_shown_summed_and_drained_together() -> None:
    async def main() -> None:
        base = two_free_ports()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            listen = s.getsockname()[1]
        cfg = {"workers": 2, "admin_port": base, "listen_port": listen}
        async with (
            StatusServer() as a,
            StatusServer() as b,
            proxy([a.address, b.address], worker=0, **cfg) as w0,
            proxy([a.address, b.address], worker=1, **cfg) as w1,
        ):
            assert w0.admin_port == base and w1.admin_port == base + 1
            await get_many(w0.port, ["/"] * 4)  # the kernel picks the worker: count per worker below
            assert w0.state is not None and w1.state is not None
            served = sum(sum(ep.responses) for st in (w0.state, w1.state) for ep in st.group.live)
            assert served == 4
            # Only worker 0 serves the live view.
            status, _, _ = await http(w1.admin_port, get("/dashboard"))
            assert status == 404
            await asyncio.sleep(2.2)  # worker 1 started after worker 0's first tick
            status, _, body = await http(base, get("/events/latest"))
            snap = json.loads(body)
            assert snap["workers"] == 2 and snap["reporting"] == 2
            assert sum(r["responses"]["2xx"] for r in snap["replicas"]) == 4
            status, _, body = await http(base, post(f"/upstreams/{label(a.address)}/drain"))
            assert status == 200 and json.loads(body)["workers"] == {"0": "drained", "1": "drained"}
            assert all(
                ep.drain for st in (w0.state, w1.state) for ep in st.group.live if ep.address == a.address
            )
            status, _, body = await http(
                base, b"PUT /policy?workers=all HTTP/1.1\r\nContent-Length: 3\r\n\r\np2c"
            )
            assert status == 200 and json.loads(body)["workers"] == {"0": "ok", "1": "ok"}
            assert w0.state.balancer.name == w1.state.balancer.name == "p2c"
            status, _, body = await http(
                base, b"PUT /policy HTTP/1.1\r\nContent-Length: 11\r\n\r\nround_robin"
            )
            # Plain PUT /policy (the load generator's policy action) reaches every worker too.
            assert status == 200 and json.loads(body)["workers"] == {"0": "ok", "1": "ok"}
            assert w0.state.balancer.name == w1.state.balancer.name == "round_robin"

    run(main)


def test_a_change_in_the_endpoint_set_is_sent_before_the_next_full_second() -> None:
    async def main() -> None:
        async with StatusServer() as a, StatusServer() as b, proxy([a.address, b.address]) as srv:
            assert srv.state is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.admin_port)
            try:
                writer.write(get("/events"))
                await reader.readuntil(b"\r\n\r\n")

                async def next_snapshot() -> dict:
                    while True:
                        block = (await reader.readuntil(b"\n\n")).decode()
                        if block.startswith("data: "):
                            return json.loads(block[6:])

                await next_snapshot()
                await asyncio.sleep(0.3)  # well inside the second
                srv.state.group.update([b.address])  # a left discovery (idle: removed at once)
                snap = await next_snapshot()
                assert [r["addr"] for r in snap["replicas"]] == [label(b.address)]
                assert [e["kind"] for e in snap["events"]] == ["left"]
                assert snap["interval"] < 1.0, "the change was sent early, not at the next full second"
            finally:
                writer.close()

    run(main)
