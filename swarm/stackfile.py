"""docker-compose.yml, as `docker stack deploy` takes it: the lab's long-running services, Swarm's keys.

`docker stack deploy` reads Compose files with the Docker CLI's own (v3) schema, which refuses keys
that `docker compose` knows (`attach`, `depends_on` conditions, `profiles`, top-level `name`) and
ignores `build:`. Rather than keep a second copy of every service's image, environment and
healthcheck for Swarm, this script takes `docker compose config --format json` (variables already
substituted, the observe profile's services included when they exist), keeps the services the
stack runs and, of each, only what a Swarm service means the same way; swarm/stack.yml, deployed
as the second file, adds replicas, endpoint mode, ports, networks and the update policy.

Standard library only: `./lab swarm up` runs it with the host's python3.

    docker compose --profile observe config --format json \
        | python3 swarm/stackfile.py --profile observe > stack.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any

# Services the stack always runs. The one-shot loadgen stays out: on Swarm a finished task is
# restarted or counted as failed (the distributed workers have their own file, swarm/loadgen.yml).
CORE = ("backend", "proxy")
# Compose profiles whose services `./lab swarm up` deploys too, when docker-compose.yml has any.
PROFILES = ("observe",)
# Keys that mean the same to a Swarm service as to a Compose container. Everything else is dropped:
# build (stack deploy ignores it: build first), attach, depends_on (Swarm has no start order; the
# proxy waits for endpoints itself), ports and networks (swarm/stack.yml sets them), restart
# (Swarm's restart_policy), container_name (tasks are named by Swarm), profiles, security_opt
# (Swarm services have none: no-new-privileges is Compose-only, docs/security.md).
KEEP = (
    "image",
    "command",
    "entrypoint",
    "environment",
    "healthcheck",
    "volumes",
    "stop_grace_period",
    "stop_signal",
    "user",
    "read_only",
    "working_dir",
    "labels",
    "ulimits",
    "sysctls",
    "cap_add",
    "cap_drop",
    "tmpfs",
    "hostname",
    "extra_hosts",
    "configs",
    "secrets",
)
TOP_LEVEL = ("volumes", "configs", "secrets")


class StackError(ValueError):
    """The Compose configuration cannot become a stack (a core service is missing)."""


def wanted(services: Mapping[str, Any], profiles: Iterable[str] = ()) -> list[str]:
    """The services of the stack: the core ones and those of the given profiles, in file order."""
    missing = [name for name in CORE if name not in services]
    if missing:
        raise StackError(f"docker-compose.yml has no {', '.join(missing)} service")
    chosen = set(profiles)
    return [
        name
        for name, spec in services.items()
        if name in CORE or chosen.intersection(spec.get("profiles") or ())
    ]


def service(spec: Mapping[str, Any], core: bool = False) -> dict[str, Any]:
    """One Compose service reduced to what Swarm reads; nulls (`command: null`) left out.

    Every service joins the stack's overlay network ``lab`` (Compose's ``default``). The core
    services get their ports from swarm/stack.yml; another service (a profile's) keeps its
    Compose ports, published in host mode (the routing mesh needs IPVS) and on every interface
    (Swarm has no host_ip).
    """
    out = {key: spec[key] for key in KEEP if spec.get(key) is not None}
    if "image" not in out:
        raise StackError("every stack service needs an image: (stack deploy cannot build)")
    out["networks"] = ["lab"]
    if not core and spec.get("ports"):
        out["ports"] = [_host_port(port) for port in spec["ports"]]
    if "volumes" in out:
        # Compose's normalized form carries `bind: {create_host_path: true}`, unknown to the v3 schema.
        out["volumes"] = [
            {k: v for k, v in volume.items() if k != "bind"} if isinstance(volume, dict) else volume
            for volume in out["volumes"]
        ]
    if "tmpfs" in out:
        # A Swarm service has no tmpfs list, only mounts: each becomes a tmpfs mount.
        paths = [out.pop("tmpfs")] if isinstance(spec["tmpfs"], str) else out.pop("tmpfs")
        out["volumes"] = [
            *out.get("volumes", []),
            *({"type": "tmpfs", "target": str(path).split(":", 1)[0]} for path in paths),
        ]
    return out


def _host_port(port: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"target": int(port["target"]), "mode": "host"}
    out["protocol"] = port.get("protocol") or "tcp"
    if port.get("published"):
        out["published"] = int(port["published"])
    return out


def render(config: Mapping[str, Any], profiles: Iterable[str] = ()) -> dict[str, Any]:
    """The stack file's content (JSON is YAML, which `docker stack deploy -c` reads)."""
    services = config.get("services") or {}
    stack: dict[str, Any] = {}  # no version: the CLI takes its newest schema, as for swarm/stack.yml
    names = wanted(services, profiles)
    stack["services"] = {name: service(services[name], core=name in CORE) for name in names}
    for key in TOP_LEVEL:
        if config.get(key):
            stack[key] = config[key]
    return stack


def main(argv: list[str]) -> int:
    """``[--profile NAME]...``: the profiles whose services join (the same as given to compose)."""
    flags, profiles = argv[0::2], argv[1::2]
    if len(flags) != len(profiles) or any(flag != "--profile" for flag in flags):
        print("usage: python3 swarm/stackfile.py [--profile NAME]... < compose-config.json", file=sys.stderr)
        return 2
    try:
        print(json.dumps(render(json.load(sys.stdin), profiles), indent=2))
    except (StackError, json.JSONDecodeError) as exc:
        print(f"swarm/stackfile.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
