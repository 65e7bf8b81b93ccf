"""Step records in Redis: enqueue in one round trip, read results and logs, finish atomically."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any, cast

import redis

from workerpool.core import keys, messages, scripts, tallies
from workerpool.core.errors import RedisUnavailable
from workerpool.core.leadership import FENCED, Fenced
from workerpool.core.routing import Route
from workerpool.core.sealing import Keyring, PublicKey
from workerpool.core.steps import QUEUED, LogEntry, ScriptStep, StepResult

ENQUEUE_BATCH = 1000  # enqueue_many's calls per round trip

# Record fields left out when they would hold this value: every reader of a step record takes
# an absent one for it (``record.get(name) or default``, a Lua ``or ''``), and a million queued
# steps are a million records, each kept by Redis in its compact encoding. "secrets" is always
# written, empty or sealed.
DEFAULTED = {"variables": "{}", "target": "", "notify": "", "packages": "[]",
             "script_path": "", "substitute": "[]", "structured": "[]"}


def new_step_id(pool: str) -> str:
    """A new step id of *pool*: its keys live in the pool's space (``keys.step``)."""
    import secrets

    return keys.step_id(pool, secrets.token_hex(8))


class StepStore:
    """All reads and writes of step records; connections are passed in, never created here."""

    def __init__(self, client: redis.Redis, result_ttl: int = 7 * 24 * 3600,
                 keyring: Keyring | None = None, wait_replicas: int = 0,
                 wait_timeout: float = 5.0, recent_cap: int = keys.RECENT_STEPS) -> None:
        """With *wait_replicas*, an enqueue returns only once that many replicas hold the
        step (WAIT, at most *wait_timeout* seconds), so a failover cannot lose it. Each pool's
        recent index (``keys.recent``) keeps its newest *recent_cap* steps."""
        self.redis = client
        self.recent_cap = recent_cap
        self.result_ttl = result_ttl
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self.keyring = keyring or Keyring()
        self._finish = scripts.load(client, "finish")
        self._enqueue = scripts.load(client, "enqueue")

    def enqueue(self, step: ScriptStep, route: Route, lease_timeout: float,
                step_timeout: float, *, step_id: str | None = None, notify: str = "",
                target: str = "", sealing: PublicKey | None = None, fence: int = 0) -> str:
        """Store the step and push its message onto the route's queue, atomically and in one
        round trip, its sensitive variables sealed to *sealing* (the route's pool's public
        key). With an explicit *step_id* (of the route's pool) that already exists, nothing is
        written. With a server's *fence* token, nothing is written unless it is the newest
        (``Fenced``; core/leadership.py)."""
        step_id = step_id or new_step_id(route.pool)
        if keys.pool_of(step_id) != route.pool:
            raise ValueError(f"step id {step_id} is not of pool {route.pool}")
        names, args = self._enqueue_call(step, route, lease_timeout, step_timeout, step_id,
                                         notify=notify, target=target, sealing=sealing,
                                         fence=fence)
        if not self.wait_replicas:
            written = self._enqueue(keys=names, args=args)
        else:
            pipe = self.redis.pipeline(transaction=False)  # WAIT counts its connection's writes
            self._enqueue(keys=names, args=args, client=pipe)
            written = self._replicated(pipe, step_id)[0]
        if written == FENCED:
            raise Fenced(f"step {step_id} not enqueued: fencing token {fence} is stale")
        return step_id

    def enqueue_many(self, step: ScriptStep, route: Route, count: int, lease_timeout: float,
                     step_timeout: float, *, target: str = "", sealing: PublicKey | None = None,
                     batch: int = ENQUEUE_BATCH) -> list[str]:
        """Enqueue *count* copies of *step* under new ids, each exactly as ``enqueue`` stores
        it (its own record, sealed secrets and message, each step atomic), the calls sent
        *batch* to a round trip; the new ids, in order."""
        ids: list[str] = []
        for start in range(0, count, batch):
            pipe = self.redis.pipeline(transaction=False)
            for _ in range(min(batch, count - start)):
                step_id = new_step_id(route.pool)
                names, args = self._enqueue_call(step, route, lease_timeout, step_timeout,
                                                 step_id, target=target, sealing=sealing)
                self._enqueue(keys=names, args=args, client=pipe)
                ids.append(step_id)
            if self.wait_replicas:
                self._replicated(pipe, ids[-1])
            else:
                pipe.execute()
        return ids

    def _replicated(self, pipe: Any, step_id: str) -> list[Any]:
        """Send *pipe*'s enqueues and a WAIT for ``wait_replicas``; RedisUnavailable (exit 3)
        if fewer replicas had them in time: they are on the master, a failover may lose them."""
        pipe.wait(self.wait_replicas, int(self.wait_timeout * 1000))
        replies: list[Any] = pipe.execute()
        acked = int(replies[-1])
        if acked < self.wait_replicas:
            raise RedisUnavailable(
                f"step {step_id} is stored on the Redis master, but only {acked} of the "
                f"{self.wait_replicas} replicas WORKERPOOL_REDIS_WAIT_REPLICAS asks for had it "
                f"within {self.wait_timeout:g}s; a failover now may lose it: check the "
                "replicas, then look the step up before running it again")
        return replies

    def _enqueue_call(self, step: ScriptStep, route: Route, lease_timeout: float,
                      step_timeout: float, step_id: str, *, notify: str = "", target: str = "",
                      sealing: PublicKey | None = None, fence: int = 0
                      ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of ``lua/enqueue.lua`` for *step* as *step_id*: its record
        without the fields that would hold what their readers take for absent (DEFAULTED),
        its place in the pool's recent index, and the server's *fence* token (0: a client's
        enqueue, not fenced)."""
        now = time.time()
        deadline = now + lease_timeout
        record: dict[str, str | int | float] = {
            "name": step.name, "syntax": step.syntax, "location": step.location,
            "pool": route.pool, "pool_name": route.pool_name, "queue": route.queue,
            "state": QUEUED, "attempt": 0, "retry": int(step.retry_on_worker_lost),
            "script": step.script, "variables": json.dumps(step.variables),
            "secrets": self.keyring.seal_map(step.sensitive_variables, sealing),
            "timeout": step.timeout or step_timeout, "lease_timeout": lease_timeout,
            "queued_at": now, "deadline": deadline, "target": target, "notify": notify,
            **step.to_record(),
        }
        fields = [item for name, value in record.items() if DEFAULTED.get(name) != value
                  for item in (name, value)]
        label = messages.label(step.name, route.pool_name, step_id, target=target)
        fenced = [keys.SERVER_FENCE] if fence else []  # a runner's login may not name it
        return ([keys.step(step_id), keys.pending(route.pool),
                 keys.priority_list(route.queue, step.priority), keys.recent(route.pool),
                 *fenced],
                [deadline, step_id, messages.build(step_id, 0, route.queue, label, step.priority),
                 fence or "", now, self.recent_cap, *fields])

    def record(self, step_id: str) -> dict[str, str]:
        return cast(dict[str, str], self.redis.hgetall(keys.step(step_id)))

    def result(self, step_id: str) -> StepResult:
        return StepResult.from_record(step_id, self.record(step_id), tuple(self.log(step_id)))

    def log(self, step_id: str) -> list[LogEntry]:
        return [entry for _, entry in self.read_log(step_id, "0-0", block_ms=None) if entry]

    def read_log(self, step_id: str, after: str,
                 block_ms: int | None) -> list[tuple[str, LogEntry | None]]:
        """Entries after stream id *after*; ``None`` in place of an entry marks the step's end."""
        rows: list[tuple[str, dict[str, str]]]
        if block_ms is None:
            start = f"({after}" if after != "0-0" else "-"
            rows = cast(Any, self.redis.xrange(keys.step_log(step_id), min=start, max="+"))
        else:
            reply: Any = self.redis.xread({keys.step_log(step_id): after}, block=block_ms)
            rows = reply[0][1] if reply else []
        return [(entry_id, _entry(fields)) for entry_id, fields in rows]

    def follow(self, step_id: str, block_ms: int) -> Iterator[tuple[str, LogEntry | None]]:
        """Yield log entries as they arrive; yields ("", None) after each idle *block_ms*."""
        after = "0-0"
        while True:
            rows = self.read_log(step_id, after, block_ms)
            if not rows:
                yield "", None
            for entry_id, entry in rows:
                after = entry_id
                yield entry_id, entry

    def finish(self, step_id: str, state: str, *, expected: tuple[str, ...], instance: str = "",
               exit_code: int | None = None, outputs: dict[str, str] | None = None,
               message: str = "", lines: Sequence[dict[str, str]] = ()) -> bool:
        """Move the step to terminal *state* if it is in one of *expected*; True if it moved.
        *lines* (log entries ``{t, s, x}`` not yet written) are stored first, in the same call."""
        pool = keys.pool_of(step_id)
        done = self._finish(
            keys=[keys.step(step_id), keys.step_log(step_id), keys.running(pool),
                  keys.pending(pool), keys.ended(pool), keys.durations(pool)],
            args=[instance, "," + ",".join(expected) + ",", state,
                  "" if exit_code is None else exit_code,
                  "" if outputs is None else json.dumps(outputs), time.time(), message,
                  self.result_ttl, step_id, keys.POOLS, pool, keys.pool_control(pool),
                  tallies.BUCKET_BOUNDS,
                  *(value for line in lines for value in (line["t"], line["s"], line["x"]))])
        return bool(done)


def _entry(fields: dict[str, str]) -> LogEntry | None:
    if "end" in fields:
        return None
    return LogEntry(time=float(fields["t"]), stream=fields["s"], text=fields["x"])
