"""X-Forwarded-For is believed only from configured proxies, on both sides (engine/trust.py).

The proxy keeps a client's chain only when the client is in --forwarded-allow-ips (none by
default: it is the edge); the backends believe the header only from their trusted peers
(``local`` by default: the networks the replica is on, where the proxy is).
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from backend.app import app as backend_app
from engine import trust
from proxy.config import load_config
from proxy.headers import rewrite_request
from tests.unit.harness import FakeUpstream, fetch, get, proxy, run

REPO = Path(__file__).resolve().parents[2]


def xff_sent(client_ip: bytes, headers: list[tuple[bytes, bytes]], spec: str | None) -> bytes:
    """The X-Forwarded-For line of the upstream head the proxy builds for this request."""
    trusted = trust.TrustedProxies(spec) if spec is not None else None
    req = rewrite_request(b"GET", b"/", [(b"Host", b"h"), *headers], client_ip, trusted=trusted)
    (line,) = [ln for ln in req.head.split(b"\r\n") if ln.lower().startswith(b"x-forwarded-for:")]
    return line.split(b":", 1)[1].strip()


def test_proxy_drops_a_chain_from_an_untrusted_client_and_keeps_a_trusted_proxys() -> None:
    spoof = [(b"X-Forwarded-For", b"6.6.6.6")]
    assert xff_sent(b"203.0.113.9", spoof, None) == b"203.0.113.9"
    assert xff_sent(b"203.0.113.9", spoof, "10.0.0.0/8") == b"203.0.113.9"
    assert xff_sent(b"10.1.2.3", spoof, "10.0.0.0/8") == b"6.6.6.6, 10.1.2.3"
    two = [(b"X-Forwarded-For", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2")]
    assert xff_sent(b"10.1.2.3", two, "10.0.0.0/8") == b"1.1.1.1, 2.2.2.2, 10.1.2.3"
    assert xff_sent(b"::ffff:10.1.2.3", spoof, "10.0.0.0/8") == b"6.6.6.6, ::ffff:10.1.2.3"
    assert xff_sent(b"192.0.2.1", [], "*") == b"192.0.2.1"


def test_through_a_real_proxy_the_backend_never_sees_the_clients_claim() -> None:
    async def main() -> None:
        async with FakeUpstream() as up, proxy(up.port) as srv:
            await fetch(srv.port, get("/", "X-Forwarded-For: 6.6.6.6\r\n"))
            assert up.requests[0].get("X-Forwarded-For") == "127.0.0.1"
        async with FakeUpstream() as up, proxy(up.port, forwarded_allow_ips="127.0.0.1") as srv:
            await fetch(srv.port, get("/", "X-Forwarded-For: 6.6.6.6\r\n"))
            assert up.requests[0].get("X-Forwarded-For") == "6.6.6.6, 127.0.0.1"

    run(main)


def test_proxy_flag_is_validated_with_a_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert load_config([], env={}).forwarded_allow_ips == ""
    cfg = load_config(["--forwarded-allow-ips", "10.0.0.0/8, local"], env={})
    assert cfg.forwarded_allow_ips == "10.0.0.0/8, local"
    assert load_config([], env={"PROXY_FORWARDED_ALLOW_IPS": "*"}).forwarded_allow_ips == "*"
    with pytest.raises(SystemExit) as info:
        load_config(["--forwarded-allow-ips", "10.0.0.0/8,nope"], env={})
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "--forwarded-allow-ips / PROXY_FORWARDED_ALLOW_IPS" in err and "'nope'" in err


def test_the_client_is_the_rightmost_entry_no_trusted_proxy_wrote() -> None:
    t = trust.TrustedProxies("10.0.0.0/8, 192.168.1.1")
    assert t.client(["6.6.6.6", "198.51.100.7", "10.0.0.2"]) == "198.51.100.7"
    assert t.client(["6.6.6.6", " 198.51.100.7 ", "192.168.1.1", "10.9.9.9"]) == "198.51.100.7"
    assert t.client(["10.0.0.1", "10.0.0.2"]) == "10.0.0.1", "all trusted: as far back as vouched"
    assert not trust.TrustedProxies("") and not t.trusts("not-an-ip")
    with pytest.raises(ValueError, match=r"'example\.com'"):
        trust.parse("10.0.0.0/8,example.com")


def test_local_means_loopback_and_the_directly_connected_networks(tmp_path: Path) -> None:
    # /proc/net/route of a container on 172.18.0.0/16 (default route via 172.18.0.1) and a second
    # network 10.5.0.0/24; addresses and masks are little-endian hex.
    (tmp_path / "route").write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t010012AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "eth0\t000012AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
        "eth1\t0000050A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        "eth1\t0000000B\t0100050A\t0003\t0\t0\t0\t000000FF\t0\t0\t0\n"
    )
    nets = trust.local_networks(tmp_path)
    assert [str(n) for n in nets] == ["127.0.0.0/8", "::1/128", "172.18.0.0/16", "10.5.0.0/24"]
    assert (
        trust.expand("local, 192.0.2.1", nets) == "127.0.0.0/8,::1/128,172.18.0.0/16,10.5.0.0/24,192.0.2.1/32"
    )
    t = trust.TrustedProxies("local", nets)
    assert t.trusts("172.18.0.5") and not t.trusts("11.0.0.1"), "a gatewayed route is not ours"


def test_this_machines_local_networks_hold_its_own_addresses() -> None:
    nets = trust.local_networks()
    assert ipaddress.ip_address("127.0.0.1") in nets[0]


def echo_client(trusted: str) -> TestClient:
    """backend /echo behind the middleware backend.forwarded and Uvicorn apply, from peer 10.9.0.2."""
    wrapped = ProxyHeadersMiddleware(backend_app, trusted_hosts=trust.expand(trusted))
    return TestClient(wrapped, client=("10.9.0.2", 5000))


def test_backend_believes_x_forwarded_for_only_from_its_trusted_peers() -> None:
    spoof = {"X-Forwarded-For": "6.6.6.6"}
    assert echo_client("10.9.0.0/24").get("/echo", headers=spoof).json()["client"].startswith("6.6.6.6")
    untrusted = echo_client("172.18.0.0/16").get("/echo", headers=spoof).json()["client"]
    assert untrusted.startswith("10.9.0.2"), untrusted


def test_backend_default_is_local_not_everyone() -> None:
    code = "from backend.servers import Settings; print(Settings().forwarded_allow_ips)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "local"
