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


_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[?-])((?:[^{}]|\{[^{}]*\})*))?\}")


class Unset(Exception):
    """A required ``${VAR:?message}`` is not set: ``docker compose`` stops with *message*."""


def interpolated(value: Any, env: dict[str, str]) -> Any:
    """*value* (a service, or any part of one) as ``docker compose`` sees it with *env* as the
    .env file: ``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}`` and ``$$``."""
    if isinstance(value, dict):
        return {k: interpolated(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolated(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, word = match.groups()
        found = env.get(name)
        empty = not found if operator and operator.startswith(":") else found is None
        if operator and operator.endswith("?") and empty:
            raise Unset(f"required variable {name} is missing a value: {word}")
        if operator and operator.endswith("-") and empty:
            return interpolated(word, env)  # type: ignore[no-any-return]
        return found or ""

    return _VARIABLE.sub(one, value)


def header_commands() -> list[list[str]]:
    """The workerpool arguments of the ``docker compose run --rm server ...`` lines in the
    comment at the top of docker-compose.yml, without the shell redirections."""
    found = []
    for line in COMPOSE.read_text().splitlines():
        if not line.startswith("#"):
            break
        command = line.lstrip("# ").split("#")[0]
        if command.startswith("docker compose run --rm server "):
            words = shlex.split(command)
            found.append([w for w in words[5:] if w not in (">", ">>", ".env")])
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
