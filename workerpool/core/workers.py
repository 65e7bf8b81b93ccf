"""Worker records: who is registered in which pool; Starting, Healthy, Unhealthy or Offline.

A worker is Offline once its heartbeat key expires: ``Settings.heartbeat_ttl``, two heartbeat
intervals after its last heartbeat (see docs/health.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from workerpool.core.errors import BadInput

STARTING = "Starting"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
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


# KEYS: workers. ARGV: explicit name or '', name prefix, record JSON (name filled in by the
# script), heartbeat key prefix, heartbeat JSON, heartbeat ttl ms, instance.
# Takes the explicit name unless a live worker holds it; otherwise the lowest free or offline
# <prefix>NN. Returns the name, or '' when the explicit name is held by a live worker.
REGISTER = """
local function live(name)
  local raw = redis.call('HGET', KEYS[1], name)
  if not raw then return false end
  return redis.call('EXISTS', ARGV[4] .. cjson.decode(raw)['instance']) == 1
end
local name = ARGV[1]
if name ~= '' then
  if live(name) then return '' end
else
  local n = 1
  repeat
    name = ARGV[2] .. string.format('%02d', n)
    n = n + 1
  until not live(name)
end
local rec = cjson.decode(ARGV[3])
rec['name'] = name
redis.call('HSET', KEYS[1], name, cjson.encode(rec))
redis.call('SET', ARGV[4] .. ARGV[7], ARGV[5], 'PX', ARGV[6])
return name
"""

# KEYS: workers, heartbeat key. ARGV: name, instance. Removes the record only if still ours.
DEREGISTER = """
redis.call('DEL', KEYS[2])
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw and cjson.decode(raw)['instance'] == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
"""
