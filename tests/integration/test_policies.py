"""Load-balancing policies against real containers: three replicas, one of them slowed down.

The stack is its own Compose project (base file + ``compose/slow-replica.yml``): two ``backend``
replicas and a ``backend-slow`` replica answering every request ``SLOW_MS`` late, all behind the
DNS name ``backend``. Under a steady closed-loop load from the host (``CONCURRENCY`` clients
sending back to back), the test switches the policy through the admin API and counts which
replica answered (``X-Backend-Id``). Round robin hands the slow replica a third of the requests
whatever it does with them; peak EWMA should notice its latency and send it far fewer.
The measured shares are printed (run with ``-s``) and quoted in docs/proxy.md.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from .conftest import Lab, own_lab

SLOW_MS = 100
CONCURRENCY = 8
PHASE_S = 4.0
ADMIN_TOKEN = "policy-test-token"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
POLICIES = ("round_robin", "random", "least_request", "p2c", "peak_ewma", "consistent_hash")


@pytest.fixture(scope="module")
def slow_lab(docker_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """proxy + 2 normal backends + 1 slowed backend, removed at the end whatever happened."""
    with own_lab(
        tmp_path_factory,
        "policy",
        env={
            "EXTRA_DELAY_MS": str(SLOW_MS),
            "PROXY_POLICY": "round_robin",
            "PROXY_HASH_ON": "header:X-User",
            "PROXY_ACCESS_LOG": "false",
            "PROXY_ADMIN_TOKEN": ADMIN_TOKEN,  # PUT /policy from the host is an admin write
        },
        compose_files=["compose/slow-replica.yml"],
        up=("--scale", "backend=2", "proxy", "backend", "backend-slow"),
    ) as lab:
        yield lab


@dataclass
class Phase:
    policy: str
    seconds: float
    by_backend: Counter[str] = field(default_factory=Counter)
    by_user: dict[str, Counter[str]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.by_backend.values())

    def share(self, backend: str) -> float:
        return self.by_backend[backend] / self.total

    def stickiness(self) -> float:
        """Share of requests that went to their user's most frequent backend."""
        top = sum(c.most_common(1)[0][1] for c in self.by_user.values() if c)
        return top / max(1, sum(sum(c.values()) for c in self.by_user.values()))

    def line(self, slow: str) -> str:
        lat = sorted(self.latencies)
        p50 = lat[len(lat) // 2] * 1000
        p99 = lat[int(len(lat) * 0.99)] * 1000
        return (
            f"{self.policy:16s} slow share {self.share(slow):6.1%}  requests {self.total:5d} "
            f"({self.total / self.seconds:4.0f}/s)  p50 {p50:5.1f} ms  p99 {p99:5.1f} ms"
        )


def switch(lab: Lab, policy: str) -> None:
    r = httpx.put(f"{lab.admin_url}/policy", content=policy, headers=AUTH, timeout=5)
    assert r.status_code == 200, r.text
    assert r.json()["policy"] == policy
    shown = httpx.get(f"{lab.admin_url}/upstreams", timeout=5).json()["policy"]
    assert shown == policy, f"/upstreams shows {shown!r} after switching to {policy!r}"


def load(lab: Lab, policy: str, seconds: float = PHASE_S, concurrency: int = CONCURRENCY) -> Phase:
    """`concurrency` clients GET / back to back for `seconds`; client i sends X-User: user-i."""
    phase = Phase(policy, seconds)
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        user = f"user-{i}"
        seen: Counter[str] = Counter()
        lat: list[float] = []
        errors: list[str] = []
        with httpx.Client(base_url=lab.base_url, timeout=10, headers={"X-User": user}) as c:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    r = c.get("/")
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                    continue
                lat.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(f"status {r.status_code}")
                    continue
                seen[r.headers["x-backend-id"]] += 1
        with lock:
            phase.by_backend.update(seen)
            phase.by_user[user] = seen
            phase.latencies += lat
            phase.errors += errors

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 30)
    return phase


def test_peak_ewma_sends_the_slow_replica_far_less_than_round_robin(slow_lab: Lab) -> None:
    (slow_container,) = slow_lab.containers("backend-slow")
    slow = slow_container.attrs["Config"]["Hostname"]
    ids = {c.attrs["Config"]["Hostname"] for c in slow_lab.containers("backend")} | {slow}
    assert len(ids) == 3

    phases: dict[str, Phase] = {}
    for policy in POLICIES:
        switch(slow_lab, policy)
        phases[policy] = load(slow_lab, policy)
    print(f"\nshares of the replica slowed by {SLOW_MS} ms, {CONCURRENCY} clients, {PHASE_S:g} s each:")
    for phase in phases.values():
        print(phase.line(slow))
    print(f"consistent_hash stickiness (X-User -> one replica): {phases['consistent_hash'].stickiness():.1%}")

    for phase in phases.values():
        assert not phase.errors, f"{phase.policy}: {phase.errors[:5]}"
        assert set(phase.by_backend) <= ids
    rr, ewma = phases["round_robin"], phases["peak_ewma"]
    assert set(rr.by_backend) == ids and 0.30 < rr.share(slow) < 0.37, rr.by_backend
    assert ewma.share(slow) < rr.share(slow) / 2, (
        f"peak_ewma {ewma.by_backend} vs round_robin {rr.by_backend}"
    )
    assert ewma.total > rr.total, "avoiding the slow replica must also raise throughput"
    # Load-aware policies see the slow replica's requests pile up and send it less than a third.
    for name in ("least_request", "p2c"):
        assert phases[name].share(slow) < rr.share(slow), phases[name].by_backend
    assert 0.2 < phases["random"].share(slow) < 0.45, phases["random"].by_backend


def test_one_client_at_a_time_only_peak_ewma_sees_the_slow_replica(slow_lab: Lab) -> None:
    """With one request in flight at a time every replica holds 0 or 1 requests: in-flight counts
    tie, so least_request degrades to round robin and p2c to random. Only latency tells them apart."""
    (slow_container,) = slow_lab.containers("backend-slow")
    slow = slow_container.attrs["Config"]["Hostname"]
    phases = {}
    for policy in ("least_request", "p2c", "peak_ewma"):
        switch(slow_lab, policy)
        phases[policy] = load(slow_lab, policy, seconds=3.0, concurrency=1)
    print("\none client, sequential requests:")
    for phase in phases.values():
        print(phase.line(slow))
    assert all(not phase.errors for phase in phases.values())
    assert 0.30 < phases["least_request"].share(slow) < 0.37, phases["least_request"].by_backend
    assert phases["p2c"].share(slow) > 0.2, phases["p2c"].by_backend
    assert phases["peak_ewma"].share(slow) < 0.1, phases["peak_ewma"].by_backend


def test_consistent_hash_pins_each_user_to_one_replica(slow_lab: Lab) -> None:
    switch(slow_lab, "consistent_hash")
    users = [f"user-{i}" for i in range(12)]
    homes: dict[str, set[str]] = {}
    with httpx.Client(base_url=slow_lab.base_url, timeout=10) as c:
        for _ in range(3):
            for user in users:
                r = c.get("/", headers={"X-User": user})
                assert r.status_code == 200
                homes.setdefault(user, set()).add(r.headers["x-backend-id"])
        keyless = Counter(c.get("/").headers["x-backend-id"] for _ in range(30))
    assert all(len(h) == 1 for h in homes.values()), f"a user moved between replicas: {homes}"
    assert len(set().union(*homes.values())) > 1, "12 users should not all hash to one replica"
    assert len(keyless) == 3, f"requests without X-User go round robin: {keyless}"


def test_unknown_policy_is_refused_and_nothing_changes(slow_lab: Lab) -> None:
    switch(slow_lab, "p2c")
    r = httpx.put(f"{slow_lab.admin_url}/policy", content="fastest", headers=AUTH, timeout=5)
    assert r.status_code == 400 and "unknown policy 'fastest'" in r.text and "peak_ewma" in r.text
    assert httpx.get(f"{slow_lab.admin_url}/upstreams", timeout=5).json()["policy"] == "p2c"
