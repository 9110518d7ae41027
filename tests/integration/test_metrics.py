"""The published admin port's /metrics agrees with what clients and the backends themselves saw."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Lab

P = "asgilab_proxy_"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(lab: Lab) -> Samples:
    r = httpx.get(f"{lab.admin_url}/metrics", timeout=5)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == P + name and want <= lab)


def by_upstream(samples: Samples, name: str, **labels: str) -> dict[str, float]:
    out: dict[str, float] = {}
    want = set(labels.items())
    for (n, lab), v in samples.items():
        if n == P + name and want <= lab:
            up = dict(lab)["upstream"]
            out[up] = out.get(up, 0) + v
    return out


def replica_addresses(lab: Lab) -> dict[str, str]:
    """Each backend container's ``ip:8001`` (the proxy's upstream label) -> its hostname (backend id)."""
    out = {}
    for c in lab.containers("backend"):
        out[lab.address(c)] = c.attrs["Config"]["Hostname"]
    return out


def test_metrics_add_up_to_the_requests_sent(lab3: Lab) -> None:
    n = 90
    replicas = replica_addresses(lab3)
    assert len(replicas) == 3
    before, stats_before = scrape(lab3), lab3.backend_stats()

    with httpx.Client(base_url=lab3.base_url, timeout=10) as client:
        statuses = [client.get("/").status_code for _ in range(n)]
    assert statuses == [200] * n

    after, stats_after = scrape(lab3), lab3.backend_stats()

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("requests_total", code_class="2xx") == n
    assert delta("requests_total") == n
    assert delta("request_duration_seconds_count") == n

    # Per upstream: the labels are the three replicas, the 2xx attempts add up to n, and each
    # replica's share matches what that replica counted itself.
    ok_after = by_upstream(after, "upstream_requests_total", code_class="2xx")
    ok_before = by_upstream(before, "upstream_requests_total", code_class="2xx")
    assert set(ok_after) == set(replicas), f"upstream labels {set(ok_after)}, replicas {set(replicas)}"
    per_upstream = {up: ok_after[up] - ok_before.get(up, 0) for up in ok_after}
    assert sum(per_upstream.values()) == n
    for up, host in replicas.items():
        assert per_upstream[up] == stats_after[host] - stats_before.get(host, 0), (per_upstream, replicas)
        assert per_upstream[up] >= n / 3 - 3, f"round robin should spread evenly: {per_upstream}"
    assert delta("upstream_requests_total", code_class="failed") == 0

    # Nothing left running, and keep-alive did its job: pooled connections idle, mostly reused.
    assert total(after, "in_flight") == 0
    assert sum(by_upstream(after, "upstream_in_flight").values()) == 0
    idle = by_upstream(after, "pool_idle_connections")
    assert sum(idle.values()) > 0, idle
    assert delta("upstream_requests_reused_total") > delta("upstream_connections_opened_total")
    assert by_upstream(after, "upstream_health", state="healthy") == dict.fromkeys(replicas, 1.0)
    assert total(after, "endpoints", state="healthy") == 3
    assert total(after, "balancer_info") == 1


def test_upstreams_lists_every_replica_with_its_counters(lab3: Lab) -> None:
    replicas = replica_addresses(lab3)
    httpx.get(f"{lab3.base_url}/", timeout=10)
    doc = httpx.get(f"{lab3.admin_url}/upstreams", timeout=5).json()
    rows = {row["address"]: row for row in doc["endpoints"]}
    assert set(rows) == set(replicas)
    for row in rows.values():
        assert row["state"] == "healthy" and row["draining"] is False
        assert {"connections_opened", "requests_reused", "reuse_ratio", "failures"} <= set(row)
    # Every attempt so far got a response head, and each replica's connections were counted.
    assert sum(row["responses"]["2xx"] for row in rows.values()) == sum(
        row["requests"] for row in rows.values()
    )
    assert sum(row["connections_opened"] for row in rows.values()) >= 1
