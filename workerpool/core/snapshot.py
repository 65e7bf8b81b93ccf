"""One consistent read of pools, workers and the built-in worker: routing's and status's input."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

import redis

from workerpool.core import keys, scripts
from workerpool.core.pools import DEFAULT_POOL_NAME, Pool, ordered, pools_from_hash, slugify
from workerpool.core.workers import WorkerInfo


@dataclass(frozen=True)
class Lease:
    step_id: str
    worker: str
    pool: str
    started_at: float
    step_name: str

    def to_json(self) -> dict[str, object]:
        return {"step_id": self.step_id, "worker": self.worker, "pool": self.pool,
                "started_at": self.started_at, "step_name": self.step_name}


@dataclass(frozen=True)
class Snapshot:
    pools: dict[str, Pool]
    builtin_enabled: bool
    workers: tuple[WorkerInfo, ...]
    queue_depths: dict[str, int]
    leases: tuple[Lease, ...]
    public_keys: dict[str, str] = field(default_factory=dict)  # pool -> its keys' JSON
    # pool -> (malformed messages its workers dropped, its dead letters); with detail only
    faults: dict[str, tuple[int, int]] = field(default_factory=dict)

    def workers_in(self, pool_slug: str) -> list[WorkerInfo]:
        return list(self._by_pool.get(pool_slug, ()))

    @functools.cached_property
    def _by_pool(self) -> dict[str, list[WorkerInfo]]:
        """Workers grouped by pool once: `status` lists 200 pools of 1,000 workers."""
        grouped: dict[str, list[WorkerInfo]] = {}
        for worker in self.workers:
            grouped.setdefault(worker.pool, []).append(worker)
        return grouped

    @property
    def default_pool(self) -> Pool:
        return next(p for p in self.pools.values() if p.is_default)


def pairs(flat: list[Any]) -> dict[str, str]:
    """A Redis flat reply ``[k1, v1, k2, v2, ...]`` as a dict."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def read_snapshot(client: redis.Redis, detail: bool = False) -> Snapshot:
    """Everything routing or status needs, in one round trip (creating the default pool if new)."""
    default_slug = slugify(DEFAULT_POOL_NAME)
    reply = scripts.load(client, "snapshot")(
        keys=[],
        args=[default_slug, json.dumps({"name": DEFAULT_POOL_NAME, "description": ""}),
              "1" if detail else "0", keys.POOL_QUEUE_PREFIX, keys.SPACE_PREFIX,
              keys.TARGET_POOL_PREFIX, keys.POOLS, keys.DEFAULT_POOL, keys.BUILTIN_DISABLED,
              keys.TARGETS, keys.BUILTIN_QUEUE, keys.POOL_KEYS, keys.dead("")])
    raw_pools, default, disabled, records, beats, depths, raw_leases, public, faults = reply
    pools = pools_from_hash(pairs(raw_pools), default)
    workers = tuple(sorted((WorkerInfo.from_record(rec, beat or None)
                            for rec, beat in zip(records, beats, strict=True)),
                           key=lambda w: (w.pool, w.name)))
    depth_map: dict[str, int] = {}
    if detail:
        slugs = [raw_pools[i] for i in range(0, len(raw_pools), 2)] + [keys.BUILTIN_POOL]
        depth_map = dict(zip(slugs, (int(d) for d in depths), strict=True))
    leases = tuple(Lease(step_id=str(r[0]), worker=str(r[1]), pool=str(r[2]),
                         started_at=float(r[3] or 0), step_name=str(r[4])) for r in raw_leases)
    return Snapshot(pools=pools, builtin_enabled=not disabled, workers=workers,
                    queue_depths=depth_map, leases=leases, public_keys=pairs(public),
                    faults={str(f[0]): (int(f[1]), int(f[2])) for f in faults})


def _worker_json(worker: WorkerInfo, leases: list[Lease]) -> dict[str, object]:
    return {**worker.to_json(), "leases": [le.step_id for le in leases if le.worker == worker.name]}


def status_view(snap: Snapshot) -> dict[str, object]:
    """Pools (default first, then by name) with queue depth, running leases and workers, the
    built-in worker, and all leases: ``status --json`` and the pools page's ``/api/pools``."""
    pools = ordered(snap.pools.values())

    def section(slug: str) -> dict[str, object]:
        leases = [le for le in snap.leases if le.pool == slug]
        dropped, dead = snap.faults.get(slug, (0, 0))
        return {"queued": snap.queue_depths.get(slug, 0), "running": len(leases),
                "dropped_messages": dropped, "dead_letters": dead,
                "workers": [_worker_json(w, leases) for w in snap.workers_in(slug)],
                "leases": [le.to_json() for le in leases]}

    return {"pools": [{**p.to_json(), **section(p.slug)} for p in pools],
            "builtin_worker": {"enabled": snap.builtin_enabled, "queue": keys.BUILTIN_QUEUE,
                               **section(keys.BUILTIN_POOL)},
            "leases": [le.to_json() for le in snap.leases]}


def all_pools(client: redis.Redis) -> list[str]:
    """Every pool key: the pools' slugs, ``builtin``, and ``target:<slug>`` of every target
    (what the server's reaper reaps)."""
    pipe = client.pipeline(transaction=False)
    pipe.hkeys(keys.POOLS)
    pipe.hkeys(keys.TARGETS)
    pools, targets = pipe.execute()
    return [*pools, keys.BUILTIN_POOL, *(keys.TARGET_POOL_PREFIX + slug for slug in targets)]
