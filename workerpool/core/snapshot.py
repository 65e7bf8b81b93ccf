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

# kombu's hash of a pool's unacknowledged messages, as a key's end in the pool's space
UNACKED_SUFFIX = keys.kombu_keys("")["unacked_key"].removeprefix(keys.space(""))


@dataclass(frozen=True)
class Lease:
    step_id: str
    worker: str
    pool: str
    started_at: float
    step_name: str

    @classmethod
    def from_row(cls, row: list[Any]) -> Lease:
        """A lease as snapshot.lua and overview.lua return it: id, worker, pool, start, name."""
        return cls(step_id=str(row[0]), worker=str(row[1]), pool=str(row[2]),
                   started_at=float(row[3] or 0), step_name=str(row[4]))

    def to_json(self) -> dict[str, object]:
        return {"step_id": self.step_id, "worker": self.worker, "pool": self.pool,
                "started_at": self.started_at, "step_name": self.step_name}


def without_message(records: int, messages: int, held: int) -> int:
    """How many of a pool's *records* Queued steps have no message: neither among the
    *messages* in its queue nor among those its workers *held* (kombu's unacked hash). A lower
    bound, from counts alone: a held message of a step already claimed hides a missing one."""
    return max(0, records - messages - held)


@dataclass(frozen=True)
class QueueCounts:
    """A pool's waiting work: its Queued step records, the messages in its Celery queue, and
    the messages its workers hold, not yet acknowledged."""

    records: int
    messages: int
    held: int

    @property
    def without_message(self) -> int:
        return without_message(self.records, self.messages, self.held)


@dataclass(frozen=True)
class Snapshot:
    pools: dict[str, Pool]
    builtin_enabled: bool
    workers: tuple[WorkerInfo, ...]
    leases: tuple[Lease, ...]
    public_keys: dict[str, str] = field(default_factory=dict)  # pool -> its keys' JSON
    # pool -> (malformed messages its workers dropped, its dead letters); with detail only
    faults: dict[str, tuple[int, int]] = field(default_factory=dict)
    queued: dict[str, QueueCounts] = field(default_factory=dict)  # with detail only

    def counts(self, pool_slug: str) -> QueueCounts:
        """What waits in *pool_slug* (``builtin`` for the built-in worker)."""
        return self.queued.get(pool_slug, QueueCounts(0, 0, 0))

    def workers_in(self, pool_slug: str) -> list[WorkerInfo]:
        return list(self._by_pool.get(pool_slug, ()))

    @functools.cached_property
    def _by_pool(self) -> dict[str, list[WorkerInfo]]:
        """Workers grouped by pool once: `status` lists 200 pools of 1,000 workers."""
        grouped: dict[str, list[WorkerInfo]] = {}
        for worker in self.workers:
            grouped.setdefault(worker.pool, []).append(worker)
        return grouped

    def running_in(self, pool_slug: str) -> int:
        """The steps running in *pool_slug*: its leases."""
        return self._running.get(pool_slug, 0)

    @functools.cached_property
    def _running(self) -> dict[str, int]:
        """Leases counted by pool once, as workers are grouped."""
        counted: dict[str, int] = {}
        for lease in self.leases:
            counted[lease.pool] = counted.get(lease.pool, 0) + 1
        return counted

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
              keys.TARGETS, keys.BUILTIN_QUEUE, keys.POOL_KEYS, keys.dead(""),
              UNACKED_SUFFIX, keys.priority_list("", "high"), keys.priority_list("", "low")])
    raw_pools, default, disabled, records, beats, depths, raw_leases, public, faults = reply
    pools = pools_from_hash(pairs(raw_pools), default)
    workers = tuple(sorted((WorkerInfo.from_record(rec, beat or None)
                            for rec, beat in zip(records, beats, strict=True)),
                           key=lambda w: (w.pool, w.name)))
    queued: dict[str, QueueCounts] = {}
    if detail:
        slugs = [raw_pools[i] for i in range(0, len(raw_pools), 2)] + [keys.BUILTIN_POOL]
        queued = {slug: QueueCounts(records=int(c[1]), messages=int(c[0]), held=int(c[2]))
                  for slug, c in zip(slugs, depths, strict=True)}
    leases = tuple(Lease.from_row(r) for r in raw_leases)
    return Snapshot(pools=pools, builtin_enabled=not disabled, workers=workers,
                    leases=leases, public_keys=pairs(public),
                    faults={str(f[0]): (int(f[1]), int(f[2])) for f in faults}, queued=queued)


def worker_json(worker: WorkerInfo, leases: list[Lease]) -> dict[str, object]:
    return {**worker.to_json(), "leases": [le.step_id for le in leases if le.worker == worker.name]}


def status_view(snap: Snapshot) -> dict[str, object]:
    """Pools (default first, then by name) with their Queued steps (and how many of them have
    no message), running leases and workers, the built-in worker, and all leases: ``status
    --json`` and the pools page's ``/api/pools``."""
    pools = ordered(snap.pools.values())

    def section(slug: str) -> dict[str, object]:
        leases = [le for le in snap.leases if le.pool == slug]
        dropped, dead = snap.faults.get(slug, (0, 0))
        counts = snap.counts(slug)
        return {"queued": counts.records, "without_message": counts.without_message,
                "running": len(leases), "dropped_messages": dropped, "dead_letters": dead,
                "workers": [worker_json(w, leases) for w in snap.workers_in(slug)],
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
