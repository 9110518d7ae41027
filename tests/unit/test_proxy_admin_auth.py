"""Who may change the running proxy through its admin listener (proxy/admin.py, docs/security.md).

Every write (any method but GET/HEAD) needs ``Authorization: Bearer <PROXY_ADMIN_TOKEN>`` when a
token is set, and a loopback client when none is; reads stay open to everyone. Under --workers a
policy switch reaches every worker, carrying the same Authorization.
"""

from __future__ import annotations

import json

from proxy.admin import AdminServer, Reply, Request
from tests.unit.test_proxy_dashboard_admin import two_free_ports
from tests.unit.test_proxy_metrics import http, proxy, run
from tests.unit.upstreams import StatusServer

TOKEN = "s3cret-token-1234"


def put_policy(name: str, extra: str = "") -> bytes:
    body = name.encode()
    return f"PUT /policy HTTP/1.1\r\nHost: a\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body


def test_policy_switch_needs_the_token_when_one_is_set() -> None:
    async def main() -> None:
        async with StatusServer() as up, proxy([up.address], admin_token=TOKEN) as srv:
            assert srv.state is not None
            status, headers, _ = await http(srv.admin_port, put_policy("p2c"))
            assert status == 401 and headers["www-authenticate"].startswith("Bearer")
            status, _, _ = await http(
                srv.admin_port, put_policy("p2c", "Authorization: Bearer nope-nope-nope\r\n")
            )
            assert status == 401
            assert srv.state.balancer.name == "round_robin", "a refused switch changes nothing"
            status, _, body = await http(
                srv.admin_port, put_policy("p2c", f"Authorization: Bearer {TOKEN}\r\n")
            )
            assert status == 200 and json.loads(body)["policy"] == "p2c"
            assert srv.state.balancer.name == "p2c"

    run(main)


def test_reads_stay_open_and_every_write_route_is_guarded() -> None:
    """From a network address with a token set: reads answer, writes (old and new routes) do not."""

    async def main() -> None:
        async with StatusServer() as up, proxy([up.address], admin_token=TOKEN) as srv:
            admin = srv.admin
            assert isinstance(admin, AdminServer)
            called: list[str] = []
            admin.add_route(
                "/later", ("GET", "PUT"), lambda req: called.append(req.method) or Reply.text(200, "ok")
            )
            remote = "10.1.2.3"
            for path in ("/healthz", "/metrics", "/upstreams", "/policy", "/auth", "/later"):
                reply = await admin.respond(Request("GET", path, "", {"host": "a"}, b"", remote))
                assert reply.status == 200, (path, reply.body)
            for method, path, body in (
                ("PUT", "/policy", b"p2c"),
                ("POST", "/policy", b"p2c"),
                ("POST", f"/upstreams/{up.address[0]}:{up.address[1]}/drain", b""),
                ("POST", f"/upstreams/{up.address[0]}:{up.address[1]}/undrain", b""),
                ("PUT", "/later", b""),
            ):
                reply = await admin.respond(Request(method, path, "", {"host": "a"}, body, remote))
                assert reply.status == 401, (method, path, reply.body)
            assert called == ["GET"], "the added write route's handler never ran unauthorized"
            auth = {"host": "a", "authorization": f"Bearer {TOKEN}"}
            reply = await admin.respond(Request("PUT", "/later", "", auth, b"", remote))
            assert reply.status == 200 and called == ["GET", "PUT"]
            # With a token, loopback is no exemption: the token is the only key.
            reply = await admin.respond(Request("PUT", "/policy", "", {"host": "a"}, b"p2c", "127.0.0.1"))
            assert reply.status == 401

    run(main)


def test_without_a_token_writes_are_loopback_only_and_say_so() -> None:
    async def main() -> None:
        async with StatusServer() as up, proxy([up.address]) as srv:
            admin = srv.admin
            assert isinstance(admin, AdminServer) and srv.state is not None
            for peer in ("172.18.0.1", "::ffff:10.0.0.7", ""):
                reply = await admin.respond(Request("POST", "/policy", "name=p2c", {"host": "a"}, b"", peer))
                assert reply.status == 403 and b"PROXY_ADMIN_TOKEN" in reply.body, peer
            assert srv.state.balancer.name == "round_robin"
            # Through the real listener (a loopback peer): allowed.
            status, _, _ = await http(srv.admin_port, put_policy("least_request"))
            assert status == 200 and srv.state.balancer.name == "least_request"

    run(main)


def test_policy_switch_with_the_token_reaches_every_worker() -> None:
    async def main() -> None:
        base = two_free_ports()
        cfg = {"workers": 2, "admin_port": base, "admin_token": TOKEN}
        async with (
            StatusServer() as a,
            proxy([a.address], worker=0, **cfg) as w0,
            proxy([a.address], worker=1, **cfg) as w1,
        ):
            assert w0.state is not None and w1.state is not None
            status, _, _ = await http(base, put_policy("p2c", "Authorization: Bearer wrong-wrong\r\n"))
            assert status == 401
            assert w0.state.balancer.name == w1.state.balancer.name == "round_robin"
            status, _, body = await http(base + 1, put_policy("p2c", f"Authorization: Bearer {TOKEN}\r\n"))
            assert status == 200 and json.loads(body)["workers"] == {"1": "ok", "0": "ok"}
            assert w0.state.balancer.name == w1.state.balancer.name == "p2c"
            # A sibling asked without the token (as a forged forward would be) refuses.
            status, _, _ = await http(
                base + 1,
                b"PUT /policy?name=random&scope=worker HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            )
            assert status == 401 and w1.state.balancer.name == "p2c"

    run(main)
