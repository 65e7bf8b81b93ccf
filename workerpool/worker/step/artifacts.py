"""Collecting a step's artifacts after its script ends: only files inside the step's working
directory, up to a size cap, stored with the step's record."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import redis

from workerpool.core import keys
from workerpool.core.artifacts import MAX_ARTIFACT_BYTES, Artifact


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
