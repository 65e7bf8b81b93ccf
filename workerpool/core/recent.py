"""A pool's recent steps, newest first, read from its capped index (``keys.recent``) instead
of a scan of its keys: what a console lists, filtered by pool and state.

``lua/enqueue.lua`` adds every new step to its pool's index and trims it to the newest
``keys.RECENT_STEPS``; a step whose record expired (``result_ttl`` after it ended) is skipped
here, and dropped from the index in the same pass.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis

from workerpool.core import keys
from workerpool.core.steps import QUEUED, iso

FIELDS = ("name", "state", "pool", "pool_name", "queued_at", "started_at", "finished_at",
          "worker", "target", "priority", "exit_code")
BATCH = 200  # records read per round trip


@dataclass(frozen=True)
class StepSummary:
    """One step as a list of steps shows it: what, where, in which state, when."""

    id: str
    name: str
    pool: str  # the pool's slug (``builtin``, ``target:<slug>``)
    pool_name: str
    state: str
    queued_at: float
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    target: str | None = None
    priority: str = keys.NORMAL
    exit_code: int | None = None

    @classmethod
    def from_fields(cls, step_id: str, queued_at: float, fields: dict[str, str]) -> StepSummary:
        """The summary of a record's *fields* (``FIELDS``, absent ones left out); *queued_at*
        (the index's score) when the record has none."""
        def number(name: str) -> float | None:
            return float(fields[name]) if fields.get(name) else None

        exit_code = fields.get("exit_code")
        return cls(id=step_id, name=fields.get("name", ""),
                   pool=fields.get("pool") or keys.pool_of(step_id),
                   pool_name=fields.get("pool_name", ""), state=fields.get("state", QUEUED),
                   queued_at=number("queued_at") or queued_at, started_at=number("started_at"),
                   finished_at=number("finished_at"), worker=fields.get("worker") or None,
                   target=fields.get("target") or None,
                   priority=fields.get("priority") or keys.NORMAL,
                   exit_code=int(exit_code) if exit_code else None)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "pool": self.pool,
                "pool_name": self.pool_name, "state": self.state,
                "queued_at": iso(self.queued_at), "started_at": iso(self.started_at),
                "finished_at": iso(self.finished_at), "worker": self.worker,
                "target": self.target, "priority": self.priority, "exit_code": self.exit_code}


def recent_steps(client: redis.Redis, pools: Iterable[str], state: str | None = None,
                 limit: int = 100) -> list[StepSummary]:
    """At most *limit* of the newest steps of *pools* (slugs, ``keys.BUILTIN_POOL``, a
    target's ``target:<slug>``), newest first, only those in *state* if given. Each pool's
    newest *limit* ids are read first, all pools in one round trip; the whole index of each
    only when expired records or the filter left too few. *client* decodes responses, as
    every workerpool connection does."""
    slugs = list(dict.fromkeys(pools))
    if limit <= 0 or not slugs:
        return []
    read: dict[str, StepSummary | None] = {}
    entries, more = _merged(client, slugs, limit)
    found = _walk(client, entries, read, state, limit)
    if len(found) < limit and more:
        found = _walk(client, _merged(client, slugs, None)[0], read, state, limit)
    _forget(client, [step_id for step_id, summary in read.items() if summary is None])
    return found


def _merged(client: redis.Redis, pools: list[str],
            depth: int | None) -> tuple[list[tuple[str, float]], bool]:
    """The newest *depth* (every one: None) (id, queued time) of each of *pools*' indexes,
    merged newest first, in one round trip; and whether an index may hold more."""
    pipe = client.pipeline(transaction=False)
    for pool in pools:
        pipe.zrevrange(keys.recent(pool), 0, -1 if depth is None else depth - 1,
                       withscores=True)
    indexes = cast(list[list[tuple[str, float]]], pipe.execute())
    merged = list(heapq.merge(*indexes, key=lambda entry: -entry[1]))
    return merged, depth is not None and any(len(index) >= depth for index in indexes)


def _walk(client: redis.Redis, entries: list[tuple[str, float]],
          read: dict[str, StepSummary | None], state: str | None,
          limit: int) -> list[StepSummary]:
    """The first *limit* of *entries* whose record is stored (and in *state*), in order; the
    records read in batches, each remembered in *read* (None: expired) for a second walk."""
    found: list[StepSummary] = []
    for start in range(0, len(entries), BATCH):
        batch = entries[start:start + BATCH]
        _read(client, [entry for entry in batch if entry[0] not in read], read)
        found += [summary for step_id, _ in batch if (summary := read[step_id]) is not None
                  and (state is None or summary.state == state)]
        if len(found) >= limit:
            return found[:limit]
    return found


def _read(client: redis.Redis, entries: list[tuple[str, float]],
          read: dict[str, StepSummary | None]) -> None:
    """Read the records of *entries* in one round trip into *read* (None: no record)."""
    if not entries:
        return
    pipe = client.pipeline(transaction=False)
    for step_id, _ in entries:
        pipe.hmget(keys.step(step_id), FIELDS)
    for (step_id, queued_at), values in zip(entries, pipe.execute(), strict=True):
        fields = {name: value for name, value in zip(FIELDS, values, strict=True)
                  if value is not None}
        # No state: the record expired (a stray field written since does not revive it).
        read[step_id] = (StepSummary.from_fields(step_id, queued_at, fields)
                         if fields.get("state") else None)


def _forget(client: redis.Redis, gone: list[str]) -> None:
    """Drop *gone* (ids whose record expired) from their pools' indexes. Best effort: a login
    that may only read the index still gets its list."""
    if not gone:
        return
    pipe = client.pipeline(transaction=False)
    for step_id in gone:
        pipe.zrem(keys.recent(keys.pool_of(step_id)), step_id)
    pipe.execute(raise_on_error=False)
