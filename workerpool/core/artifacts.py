"""Artifacts: files a script publishes with ``##workerpool[createArtifact path='..' name='..']``,
stored with the step's record (``worker/step/artifacts.py`` collects them), listed and read
back here by ``workerpool artifacts`` from anywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import cast

import redis

from workerpool.core import keys
from workerpool.core.connection import connect

MAX_ARTIFACT_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class Artifact:
    name: str
    path: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "path": self.path, "size": self.size, "sha256": self.sha256}


def list_artifacts(client: redis.Redis, step_id: str) -> list[Artifact]:
    raw = cast(dict[str, str], client.hgetall(keys.step_artifacts(step_id)))
    return [Artifact(**json.loads(value)) for _, value in sorted(raw.items())]


def read_artifact(url: str, step_id: str, name: str) -> bytes | None:
    """The artifact's bytes (a binary-safe connection of its own), or None if absent."""
    binary = connect(url, decode=False)
    try:
        return cast(bytes | None, binary.get(keys.step_artifact(step_id, name)))
    finally:
        binary.close()
