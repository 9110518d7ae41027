"""Which peers may say who the client is: X-Forwarded-For trust, once for the proxy, asgilab and the backends.

A header is only as true as the peer that sent it. nginx's ``set_real_ip_from`` and Uvicorn's
``--forwarded-allow-ips`` name the proxies whose X-Forwarded-For counts; from anyone else it is
the client's own claim and is ignored. A spec is a comma-separated list of addresses and
networks, ``*`` (every peer: only where no client can reach the server directly) or ``local``:
the networks this host or container is attached to (its directly connected routes, read from
``/proc/net/route`` and ``/proc/net/ipv6_route``) and loopback. ``local`` is the backends'
default in the lab: the proxy is on their networks and a client is not. ``""`` trusts no one.

In a chain (``X-Forwarded-For: a, b, c``, each hop appending the peer it saw), the client is the
rightmost address that is not a trusted proxy, as with nginx's ``real_ip_recursive on``: the
entries left of it were written by the client itself or by proxies nobody vouches for.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from pathlib import Path

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOCAL = "local"
ALL = "*"
_LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def _hex_v4(word: str) -> ipaddress.IPv4Address:
    """An address of /proc/net/route: 8 hex digits in the host's (little-endian) byte order."""
    return ipaddress.IPv4Address(bytes.fromhex(word)[::-1])


def local_networks(proc: Path = Path("/proc/net")) -> list[Network]:
    """Loopback and the directly connected networks of this host or container (no gateway)."""
    found: list[Network] = list(_LOOPBACK)
    try:
        lines = (proc / "route").read_text().splitlines()[1:]
    except OSError:
        lines = []
    for line in lines:
        cols = line.split()
        if len(cols) < 8 or cols[2] != "00000000" or cols[1] == "00000000":
            continue  # via a gateway, or the default route: not a network we are on
        try:
            net = ipaddress.IPv4Network(f"{_hex_v4(cols[1])}/{_hex_v4(cols[7])}", strict=False)
        except ValueError:
            continue
        found.append(net)
    try:
        lines6 = (proc / "ipv6_route").read_text().splitlines()
    except OSError:
        lines6 = []
    for line in lines6:
        cols = line.split()
        if len(cols) < 10 or cols[9] == "lo" or set(cols[4]) != {"0"}:
            continue
        try:
            net6 = ipaddress.IPv6Network(
                f"{ipaddress.IPv6Address(bytes.fromhex(cols[0]))}/{int(cols[1], 16)}"
            )
        except ValueError:
            continue
        if net6.prefixlen and not (net6.is_link_local or net6.is_multicast):
            found.append(net6)
    return list(dict.fromkeys(found))


def parse(spec: str, local: Iterable[Network] | None = None) -> tuple[bool, list[Network]]:
    """``(everyone, networks)`` of a spec; ValueError names the item that is not one.

    ``local``: what ``local`` stands for (default: :func:`local_networks` of this machine).
    """
    everyone = False
    nets: list[Network] = []
    for item in (w.strip() for w in spec.split(",")):
        if not item:
            continue
        if item == ALL:
            everyone = True
        elif item == LOCAL:
            nets.extend(local_networks() if local is None else local)
        else:
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"not an address, a network, '{LOCAL}' or '{ALL}': {item!r}") from None
    return everyone, list(dict.fromkeys(nets))


def expand(spec: str, local: Iterable[Network] | None = None) -> str:
    """The spec with ``local`` replaced by its networks: for servers that only take addresses."""
    everyone, nets = parse(spec, local)
    return ",".join([*([ALL] if everyone else []), *(str(n) for n in nets)])


class TrustedProxies:
    """The peers whose forwarding headers count (module docstring)."""

    __slots__ = ("all", "cache", "networks")

    def __init__(self, spec: str, local: Iterable[Network] | None = None) -> None:
        self.all, self.networks = parse(spec, local)
        self.cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return self.all or bool(self.networks)

    def trusts(self, host: str) -> bool:
        if self.all:
            return True
        ok = self.cache.get(host)
        if ok is None:
            try:
                addr = ipaddress.ip_address(host.split("%")[0])
            except ValueError:
                ok = False
            else:
                mapped = getattr(addr, "ipv4_mapped", None)
                addr = mapped or addr
                ok = any(addr in net for net in self.networks)
            if len(self.cache) < 1024:
                self.cache[host] = ok
        return ok

    def client(self, chain: Sequence[str]) -> str | None:
        """The rightmost entry of an X-Forwarded-For chain that is not a trusted proxy."""
        for entry in reversed(chain):
            entry = entry.strip()
            if entry and not self.trusts(entry):
                return entry
        first = next((e.strip() for e in chain if e.strip()), None)
        return first  # every hop trusted: the leftmost is as far back as anyone vouches
