"""The suite's leftover cleanup removes what a dead run left and nothing of a live or foreign one.

Networks stand in for whole projects (the sweep judges a project by the owner labels on any of
its containers and networks, and removes all of them): one owned by a process of ours that has
ended, one owned by this pytest process, one owned from another pid namespace (a run in another
container sharing the engine, whose pid means nothing in our /proc), and the same but older than
ASGI_LAB_STALE_AFTER.
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator

import docker
import pytest

from .conftest import (
    LABEL_OWNER_NS,
    LABEL_OWNER_PID,
    LABEL_OWNER_START,
    LABEL_PROJECT,
    PROJECT_PREFIX,
    _start_time,
    is_stale,
    owner_labels,
    sweep_stale,
)

pytestmark = pytest.mark.integration


def _ended_process_labels() -> dict[str, str]:
    """Owner labels of a process of ours that ran and has ended (its pid is free again)."""
    child = subprocess.Popen(["sleep", "30"])
    start = _start_time(child.pid)
    child.kill()
    child.wait()
    return {**owner_labels(), LABEL_OWNER_PID: str(child.pid), LABEL_OWNER_START: start or ""}


@pytest.fixture
def projects(docker_ready: None) -> Iterator[dict[str, str]]:
    """Four labelled networks, each a project; removed at the end whatever the sweep did."""
    client = docker.from_env()
    tag = uuid.uuid4().hex[:6]
    foreign = {**owner_labels(), LABEL_OWNER_NS: "another-boot/pid:[1]", LABEL_OWNER_PID: "1"}
    owners = {
        "dead": _ended_process_labels(),
        "alive": owner_labels(),
        "foreign": foreign,
    }
    names = {kind: f"{PROJECT_PREFIX}sweep{kind}-{tag}" for kind in owners}
    networks = [
        client.networks.create(f"{names[kind]}_default", labels={LABEL_PROJECT: names[kind], **labels})
        for kind, labels in owners.items()
    ]
    try:
        yield names
    finally:
        for network in networks:
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()


def test_sweep_removes_a_dead_owners_project_and_keeps_a_live_and_a_foreign_one(
    projects: dict[str, str],
) -> None:
    removed = sweep_stale(docker.from_env())
    assert projects["dead"] in removed
    assert projects["alive"] not in removed, "this run's own project"
    assert projects["foreign"] not in removed, "a project owned from another pid namespace, young"
    left = {n.name for n in docker.from_env().networks.list()}
    assert f"{projects['dead']}_default" not in left
    assert {f"{projects['alive']}_default", f"{projects['foreign']}_default"} <= left


def test_a_foreign_or_unlabelled_project_is_stale_only_when_old() -> None:
    foreign = {**owner_labels(), LABEL_OWNER_NS: "another-boot/pid:[1]"}
    assert not is_stale(foreign, age_s=60)
    assert is_stale(foreign, age_s=7 * 3600)
    assert not is_stale({}, age_s=60) and is_stale({}, age_s=7 * 3600)
    # Our own namespace: the age does not matter, only whether the owner still runs.
    assert not is_stale(owner_labels(), age_s=7 * 3600)
