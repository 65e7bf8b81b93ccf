"""Deployment targets: named machines in an environment with roles, each with its own agent.

A target's agent is the same worker software registered differently (as the seed says of a
Tentacle): it consumes the target's own queue ``workerpool.target.<slug>`` instead of a pool's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import cast

import redis

from workerpool.core import keys
from workerpool.core.errors import BadInput, PoolConflict
from workerpool.core.pools import slugify, validate_name


@dataclass(frozen=True)
class Target:
    name: str
    environment: str
    roles: tuple[str, ...]

    @property
    def slug(self) -> str:
        return slugify(self.name)

    @property
    def queue(self) -> str:
        return keys.target_queue(self.slug)

    @property
    def pool_key(self) -> str:
        """What a target agent registers as its pool, and a target run's step records."""
        return keys.TARGET_POOL_PREFIX + self.slug

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "slug": self.slug, "environment": self.environment,
                "roles": list(self.roles), "queue": self.queue}


def matching(targets: list[Target], environment: str,
             roles: tuple[str, ...]) -> list[Target]:
    """Targets in *environment* that have any of *roles* (case-insensitive), sorted by name."""
    wanted = {r.lower() for r in roles}
    return sorted((t for t in targets if t.environment.lower() == environment.lower()
                   and wanted & {r.lower() for r in t.roles}), key=lambda t: t.name.lower())


class TargetRegistry:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def add(self, name: str, environment: str, roles: tuple[str, ...]) -> Target:
        name = validate_name(name)
        if not environment.strip():
            raise BadInput("a target needs --environment (e.g. --environment Production)")
        if not roles or not all(r.strip() for r in roles):
            raise BadInput("a target needs at least one --role (e.g. --role web)")
        target = Target(name, environment.strip(), tuple(r.strip() for r in roles))
        record = json.dumps({"name": target.name, "environment": target.environment,
                             "roles": list(target.roles)})
        if not self.redis.hsetnx(keys.TARGETS, target.slug, record):
            raise PoolConflict(f"a target named {name!r} already exists")
        return target

    def list(self) -> list[Target]:
        raw = cast(dict[str, str], self.redis.hgetall(keys.TARGETS))
        targets = [json.loads(v) for v in raw.values()]
        return sorted((Target(t["name"], t["environment"], tuple(t["roles"]))
                       for t in targets), key=lambda t: t.name.lower())

    def get(self, ident: str) -> Target:
        for target in self.list():
            if ident.lower() in (target.name.lower(), target.slug):
                return target
        raise BadInput(f"no target named {ident!r}; add it with `workerpool target add {ident!r}"
                       " --environment ENV --role ROLE`")

    def remove(self, ident: str) -> Target:
        target = self.get(ident)
        self.redis.hdel(keys.TARGETS, target.slug)
        return target
