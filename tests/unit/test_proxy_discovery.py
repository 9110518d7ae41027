"""DNS discovery with an injected resolver, plus the access-log line format."""

from __future__ import annotations

import asyncio
import io
import json
import socket

from proxy.accesslog import AccessLog
from proxy.discovery import DnsDiscovery, make_resolver
from proxy.pool import UpstreamGroup


class FakeDns:
    def __init__(self) -> None:
        self.answer: list[tuple[str, int]] | BaseException = []
        self.calls = 0

    async def __call__(self, host: str, port: int) -> list[tuple[str, int]]:
        self.calls += 1
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def test_discovery_follows_dns_and_failure_policy() -> None:
    async def main() -> None:
        g = UpstreamGroup("backend:8001", asyncio.get_running_loop())
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
