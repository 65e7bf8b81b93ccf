"""Artifacts: files a script publishes with ``##workerpool[createArtifact path='..' name='..']``.

The worker collects each file after the script ends (only from inside the step's working
directory, up to a size cap) and stores it with the step's record, so ``workerpool artifacts``
can list and fetch it from anywhere.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import redis

from workerpool.core import keys

MAX_ARTIFACT_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class Artifact:
    name: str
    path: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "path": self.path, "size": self.size, "sha256": self.sha256}


def collect(client: redis.Redis, step_id: str, workdir: Path, requested: dict[str, str],
            ttl: int, max_bytes: int = MAX_ARTIFACT_BYTES) -> list[str]:
    """Store each requested artifact; return one log line per artifact (stored or refused)."""
    lines: list[str] = []
    if not requested:
        return lines
    root = workdir.resolve()
    for name, relative in requested.items():
        source = (workdir / relative).resolve()
        if not source.is_relative_to(root) or not source.is_file():
            lines.append(f"artifact {name!r}: {relative!r} is not a file in the working "
                         "directory; not collected")
            continue
        size = source.stat().st_size
        if size > max_bytes:
            lines.append(f"artifact {name!r}: {relative!r} is {size} bytes, over the "
                         f"{max_bytes}-byte limit; not collected")
            continue
        data = source.read_bytes()
        meta = Artifact(name, relative, size, hashlib.sha256(data).hexdigest())
        pipe = client.pipeline(transaction=True)
        pipe.hset(keys.step_artifacts(step_id), name, json.dumps(meta.to_json()))
        pipe.set(keys.step_artifact(step_id, name), data, ex=ttl)
        pipe.expire(keys.step_artifacts(step_id), ttl)
        pipe.execute()
        lines.append(f"artifact {name!r} collected ({size} bytes)")
    return lines


def list_artifacts(client: redis.Redis, step_id: str) -> list[Artifact]:
    raw = cast(dict[str, str], client.hgetall(keys.step_artifacts(step_id)))
    return [Artifact(**json.loads(value)) for _, value in sorted(raw.items())]


def read_artifact(url: str, step_id: str, name: str) -> bytes | None:
    """The artifact's bytes (a binary-safe connection of its own), or None if absent."""
    binary = redis.Redis.from_url(url)
    try:
        return cast(bytes | None, binary.get(keys.step_artifact(step_id, name)))
    finally:
        binary.close()
