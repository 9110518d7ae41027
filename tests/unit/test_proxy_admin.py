"""The admin listener: route table, methods, request bodies, /upstreams contents, /metrics headers."""

from __future__ import annotations

import json

from prometheus_client import CONTENT_TYPE_LATEST

from proxy.admin import Reply, Request
from tests.unit.test_proxy_metrics import get_many, http, proxy, run
from tests.unit.upstreams import StatusServer


def req(method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    return f"{method} {path} HTTP/1.1\r\nHost: a\r\n{length}{extra}\r\n".encode() + body


def test_unknown_path_404_lists_routes_and_wrong_method_405() -> None:
    async def main() -> None:
        async with StatusServer() as up, proxy([up.address]) as srv:
            status, _, body = await http(srv.admin_port, req("GET", "/nope"))
            assert status == 404
            for route in ("GET /healthz", "GET /metrics", "GET /upstreams"):
                assert route.encode() in body
            status, headers, body = await http(srv.admin_port, req("POST", "/metrics", b"{}"))
            assert status == 405 and headers["allow"] == "GET, HEAD"
            assert b"POST" in body
            status, _, _ = await http(srv.admin_port, b"garbage\r\n\r\n")
            assert status == 400

    run(main)


def test_metrics_content_type_and_head() -> None:
    async def main() -> None:
        async with StatusServer() as up, proxy([up.address]) as srv:
            status, headers, body = await http(srv.admin_port, req("GET", "/metrics?x=1"))
            assert status == 200 and headers["content-type"] == CONTENT_TYPE_LATEST
            assert b"asgilab_proxy_requests_total" in body
            status, headers, body = await http(srv.admin_port, req("HEAD", "/metrics"))
            assert status == 200 and int(headers["content-length"]) > 0 and body == b""

    run(main)


def test_upstreams_shows_every_replica_with_counters() -> None:
    async def main() -> None:
        async with StatusServer() as a, StatusServer() as b, proxy([a.address, b.address]) as srv:
            await get_many(srv.port, ["/", "/", "/status/500", "/"])
            assert srv.state is not None
            group = srv.state.group
            gone = group.live[0]
            gone.in_flight += 1  # a request still running on it when discovery drops it
            group.update([b.address])
            status, headers, body = await http(srv.admin_port, req("GET", "/upstreams"))
            assert status == 200 and headers["content-type"] == "application/json"
            doc = json.loads(body)
            rows = {row["address"]: row for row in doc["endpoints"]}
            assert set(rows) == {f"{h}:{p}" for h, p in (a.address, b.address)}
            assert rows[gone.label]["draining"] is True and rows[gone.label]["state"] == "draining"
            served = {f"{h}:{p}": u.requests for (h, p), u in ((a.address, a), (b.address, b))}
            for label, row in rows.items():
                answered = sum(row["responses"][cls] for cls in ("2xx", "5xx"))
                assert answered == row["requests"] == served[label] == 2
                assert row["connections_opened"] == 1 and row["requests_reused"] == 1
                assert row["mean_latency_ms"] is not None  # ms resolution: uvloop loop.time()
            assert sum(row["responses"]["5xx"] for row in rows.values()) == 1
            gone.release()

    run(main)


def test_added_route_reads_json_body() -> None:
    async def main() -> None:
        async with StatusServer() as up, proxy([up.address]) as srv:
            assert srv.admin is not None

            def echo(r: Request) -> Reply:
                doc = r.json()
                if not isinstance(doc, dict):
                    raise ValueError("expected a JSON object")
                return Reply.json({"got": doc, "method": r.method, "query": r.query})

            srv.admin.add_route("/echo", ("PUT", "POST"), echo)
            status, _, body = await http(srv.admin_port, req("PUT", "/echo?dry=1", b'{"policy": "p2c"}'))
            assert status == 200
            assert json.loads(body) == {"got": {"policy": "p2c"}, "method": "PUT", "query": "dry=1"}
            status, _, body = await http(srv.admin_port, req("POST", "/echo", b"not json"))
            assert status == 400 and body.startswith(b"bad request:")
            status, _, body = await http(srv.admin_port, req("POST", "/echo", b"[1]"))
            assert (status, body) == (400, b"bad request: expected a JSON object\n")
            status, _, _ = await http(srv.admin_port, req("POST", "/echo", b"x" * (64 * 1024 + 1)))
            assert status == 413
            chunked = req("POST", "/echo", extra="Transfer-Encoding: chunked\r\n") + b"2\r\n{}\r\n0\r\n\r\n"
            status, _, _ = await http(srv.admin_port, chunked)
            assert status == 411
            status, _, _ = await http(srv.admin_port, req("GET", "/echo"))
            assert status == 405

    run(main)
