"""What `status` and `pool list` show, read in one call that grows with the pools and the running
steps, never with the workers: each pool's workers are counted by state from its live index
(``keys.live``, ``keys.states``), not read one by one."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis

from workerpool.core import keys, scripts
from workerpool.core.pools import DEFAULT_POOL_NAME, Pool, pools_from_hash, slugify
from workerpool.core.snapshot import UNACKED_SUFFIX, Lease, QueueCounts, pairs, worker_json
from workerpool.core.workers import HEALTHY, OFFLINE, WorkerInfo

# The order a pool's worker states are shown in.
STATE_ORDER = ("Healthy", "Starting", "Unhealthy", "Draining", OFFLINE)


@dataclass(frozen=True)
class WorkerCounts:
    """A pool's registered workers, and the live ones among them by state."""

    registered: int
    live: dict[str, int] = field(default_factory=dict)

    @property
    def offline(self) -> int:
        return max(0, self.registered - sum(self.live.values()))

    @property
    def healthy(self) -> int:
        return self.live.get(HEALTHY, 0)

    def by_state(self) -> list[tuple[str, int]]:
        """(state, count) for every state with a worker, in ``STATE_ORDER`` (others after)."""
        counts = {**self.live, OFFLINE: self.offline}
        shown = [(s, counts.pop(s)) for s in STATE_ORDER if counts.get(s)]
        return shown + sorted((s, n) for s, n in counts.items() if n and s not in STATE_ORDER)


@dataclass(frozen=True)
class Section:
    """One pool's (the built-in worker's, a target agent's) workers, waiting work and leases."""

    workers: WorkerCounts
    queued: QueueCounts
    dropped: int
    dead: int
    leases: tuple[Lease, ...]
    members: tuple[WorkerInfo, ...] = ()  # one by one, only when one pool was read


IDLE = QueueCounts(0, 0, 0)
EMPTY = Section(WorkerCounts(0), IDLE, 0, 0, ())


@dataclass(frozen=True)
class Overview:
    pools: dict[str, Pool]
    builtin_enabled: bool
    sections: dict[str, Section]  # pool slug, ``builtin`` or ``target:<slug>`` -> its section

    # With every pool read, a pool with neither Queued nor running steps shows 0 messages,
    # held, dropped and dead letters: only the one pool asked for (or a busy one) reads them.

    def section(self, slug: str) -> Section:
        return self.sections.get(slug, EMPTY)

    @property
    def leases(self) -> tuple[Lease, ...]:
        return tuple(lease for s in self.sections.values() for lease in s.leases)


def read_overview(client: redis.Redis, only: str = "") -> Overview:
    """Every pool (or *only* the pool with that slug, or ``builtin``), counted, in one round
    trip; the default pool is created if new, as routing does."""
    default_slug = slugify(DEFAULT_POOL_NAME)
    reply = scripts.load(client, "overview")(
        keys=[],
        args=[default_slug, json.dumps({"name": DEFAULT_POOL_NAME, "description": ""}), only,
              keys.POOL_QUEUE_PREFIX, keys.SPACE_PREFIX, keys.TARGET_POOL_PREFIX, keys.POOLS,
              keys.DEFAULT_POOL, keys.BUILTIN_DISABLED, keys.TARGETS, keys.BUILTIN_QUEUE,
              keys.dead(""), UNACKED_SUFFIX, keys.priority_list("", "high"),
              keys.priority_list("", "low")])
    raw_pools, default, disabled, raw_sections = reply
    sections = {str(s[0]): _section(s) for s in raw_sections}
    return Overview(pools=pools_from_hash(pairs(raw_pools), default),
                    builtin_enabled=not disabled, sections=sections)


def _section(raw: list[Any]) -> Section:
    _, registered, states, messages, records, held, dropped, dead, leases, members = raw
    live = dict(zip(states[::2], map(int, states[1::2]), strict=True))  # state, count pairs
    counts = WorkerCounts(int(registered), live)
    if not (leases or members or messages or records or held or dropped or dead):
        return Section(counts, IDLE, 0, 0, ())  # most pools: nothing more to decode
    return Section(
        workers=counts,
        queued=QueueCounts(records=int(records), messages=int(messages), held=int(held)),
        dropped=int(dropped), dead=int(dead),
        leases=tuple(Lease.from_row(r) for r in leases),
        members=tuple(sorted((WorkerInfo.from_record(rec, beat or None) for rec, beat in members),
                             key=lambda w: w.name)))


def pool_view(pool: Pool | None, overview: Overview, slug: str) -> dict[str, object]:
    """``status --pool NAME --json``: the pool (or, for ``builtin``, the built-in worker) with
    its counts, its workers one by one and its leases, as ``status --json`` shows each pool."""
    section = overview.section(slug)
    head: dict[str, object] = pool.to_json() if pool is not None else {
        "enabled": overview.builtin_enabled, "queue": keys.BUILTIN_QUEUE}
    return {**head, "queued": section.queued.records,
            "without_message": section.queued.without_message, "running": len(section.leases),
            "dropped_messages": section.dropped, "dead_letters": section.dead,
            "workers": [worker_json(w, list(section.leases)) for w in section.members],
            "leases": [le.to_json() for le in section.leases]}
