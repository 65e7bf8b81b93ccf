"""Reading the deployment files (docker-compose.yml, deploy/Dockerfile) as the tests check them."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from conftest import REPO
from ruamel.yaml import YAML

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"

SEED_POOLS = {"Kubernetes Worker Pool", "Azure Worker Pool", "Database Worker Pool"}
WORKERS = {"kubernetes-worker": "Kubernetes Worker Pool", "azure-worker": "Azure Worker Pool",
           "database-worker": "Database Worker Pool"}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load(COMPOSE.read_text())
    return data


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) pairs, with continuation lines joined and comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1].strip())
            for ln in joined.splitlines() if ln.strip()]


def as_argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def image_entrypoint() -> list[str]:
    found = [json.loads(rest) for kind, rest in dockerfile_instructions() if kind == "ENTRYPOINT"]
    assert found, "deploy/Dockerfile has no ENTRYPOINT"
    return [str(part) for part in found[-1]]


def service_argv(service: dict[str, Any]) -> list[str]:
    entrypoint = as_argv(service.get("entrypoint")) or image_entrypoint()
    return [*entrypoint, *as_argv(service.get("command"))]


def seconds(value: str) -> float:
    """``30``, ``30s``, ``1m``, ``1min``, ``1m30s`` -> seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value.strip())
    assert parts, f"not a duration: {value!r}"
    return sum(float(number) * units[unit] for number, unit in parts)
