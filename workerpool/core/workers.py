"""Worker records: who is registered in which pool; Starting, Healthy, Unhealthy or Offline.

A worker is Offline once its heartbeat key expires: ``Settings.heartbeat_ttl``, two heartbeat
intervals after its last heartbeat (see docs/health.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from workerpool.core import keys, scripts
from workerpool.core.errors import BadInput

STARTING = "Starting"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
DRAINING = "Draining"  # takes no new step; stops once its steps end
DRAIN = "drain"  # the word on a worker instance's control channel that drains it
FREED = "freed"  # the word on a capped pool's channel: one of its steps ended
OFFLINE = "Offline"
# A worker's name is part of its Celery hostname (name@host) and of its directory of working
# directories, so it is kept to characters that mean nothing to either.
_WORKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def validate_worker_name(name: str) -> str:
    """*name* if it can name a worker, else BadInput saying what a worker name may hold."""
    if not _WORKER_NAME.fullmatch(name):
        raise BadInput(f"worker name {name[:120]!r} must be 1-100 letters, digits, '.', '_' or "
                       "'-', starting with a letter or digit (e.g. database-worker-01)")
    return name


@dataclass(frozen=True)
class Heartbeat:
    time: float
    state: str = HEALTHY
    running: int = 0
    reason: str = ""

    def to_json(self) -> str:
        return json.dumps({"time": self.time, "state": self.state, "running": self.running,
                           "reason": self.reason})

    @classmethod
    def from_json(cls, raw: str) -> Heartbeat:
        data = json.loads(raw)
        return cls(time=float(data["time"]), state=data.get("state", HEALTHY),
                   running=int(data.get("running", 0)), reason=data.get("reason", ""))


@dataclass(frozen=True)
class WorkerInfo:
    """A registered worker and, if it is online, its last heartbeat."""

    name: str
    pool: str
    instance: str
    host: str = ""
    pid: int = 0
    concurrency: int = 1
    started_at: float = 0.0
    syntaxes: tuple[str, ...] = ()
    heartbeat: Heartbeat | None = field(default=None, compare=False)

    @property
    def state(self) -> str:
        return OFFLINE if self.heartbeat is None else self.heartbeat.state

    @property
    def online_healthy(self) -> bool:
        return self.state == HEALTHY

    def record_json(self) -> str:
        return json.dumps({"name": self.name, "pool": self.pool, "instance": self.instance,
                           "host": self.host, "pid": self.pid, "concurrency": self.concurrency,
                           "started_at": self.started_at, "syntaxes": list(self.syntaxes)})

    @classmethod
    def from_record(cls, raw: str, heartbeat: str | None) -> WorkerInfo:
        data: dict[str, Any] = json.loads(raw)
        return cls(name=data["name"], pool=data["pool"], instance=data["instance"],
                   host=data.get("host", ""), pid=int(data.get("pid", 0)),
                   concurrency=int(data.get("concurrency", 1)),
                   started_at=float(data.get("started_at", 0.0)),
                   syntaxes=tuple(data.get("syntaxes", ())),
                   heartbeat=Heartbeat.from_json(heartbeat) if heartbeat else None)

    def to_json(self) -> dict[str, object]:
        hb = self.heartbeat
        return {"name": self.name, "pool": self.pool, "state": self.state,
                "reason": hb.reason if hb else "", "concurrency": self.concurrency,
                "running": hb.running if hb else 0,
                "last_heartbeat": hb.time if hb else None, "host": self.host, "pid": self.pid,
                "started_at": self.started_at, "syntaxes": list(self.syntaxes)}


def register(client: redis.Redis, info: WorkerInfo, beat: Heartbeat, name: str | None,
             name_prefix: str, ttl: float) -> str | None:
    """Record *info* in its pool's space under *name*, or under the lowest free
    ``<name_prefix>NN``, with its first heartbeat (expiring after *ttl* seconds) and its
    entry in the pool's live index; the name taken, or None when *name* is held by a live
    worker of the pool."""
    taken = scripts.load(client, "register")(
        keys=[keys.workers(info.pool), keys.live(info.pool), keys.states(info.pool)],
        args=[name or "", name_prefix, info.record_json(), keys.heartbeat_prefix(info.pool),
              beat.to_json(), int(ttl * 1000), info.instance])
    return str(taken) if taken else None


@dataclass(frozen=True)
class Turn:
    """What a heartbeat turn read: whether it took the pool's reaper lock, and for each step
    asked about its (state, holding instance, cancel flag), "" where absent."""

    locked: bool = False
    steps: tuple[tuple[str, str, str], ...] = ()


def beat(client: redis.Redis, pool: str, instance: str, heartbeat: Heartbeat, ttl: float,
         lock_ms: int = 0, steps: Sequence[str] = ()) -> Turn:
    """Write *instance*'s heartbeat, expiring after *ttl* seconds, and its entry in its pool's
    live index (``keys.live``, ``keys.states``): one round trip. A worker's heartbeat turn
    also tries, in that same call, the pool's reaper lock for *lock_ms* (``keys.reaper``;
    0: no try) and reads the *steps* (ids) it runs."""
    names = [keys.heartbeat(pool, instance), keys.live(pool), keys.states(pool)]
    if lock_ms:
        names.append(keys.reaper(pool))
    locked, rows = scripts.load(client, "beat")(
        keys=names, args=[heartbeat.to_json(), int(ttl * 1000), instance, heartbeat.state,
                          lock_ms or "", *(keys.step(s) for s in steps)])
    return Turn(bool(locked), tuple((str(a), str(b), str(c)) for a, b, c in rows))


def deregister(client: redis.Redis, pool: str, name: str, instance: str) -> None:
    """Remove a worker's heartbeat and live index entry, and its record if no other instance
    took the name since."""
    scripts.load(client, "deregister")(
        keys=[keys.workers(pool), keys.heartbeat(pool, instance), keys.live(pool),
              keys.states(pool)],
        args=[name, instance])
