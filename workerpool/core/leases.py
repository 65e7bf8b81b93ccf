"""Leases: the atomic claim that starts a step, and the reaper that ends lost or overdue ones.

A worker leases a step by consuming its message and then claiming the step record; the claim
only succeeds while the step is Queued at the message's attempt, so a step never runs twice at
once, whatever Redis redelivers. Any process may run the reaper; its transitions are atomic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis

from workerpool.core import keys, messages, scripts
from workerpool.core.settings import Settings
from workerpool.core.snapshot import pairs
from workerpool.core.steps import (
    CANCELLED,
    LEASE_TIMEOUT,
    QUEUED,
    RUNNING,
    WORKER_LOST,
)
from workerpool.core.store import StepStore

log = logging.getLogger(__name__)

# Seconds a client's clock (which stamps a step's queued_at) may run ahead of Redis's and a
# step enqueued just before a restart still be checked for a lost message.
RESTART_CLOCK_SKEW = 10.0
BATCH = 1000  # step records read, or queue entries listed, per round trip when re-queuing






@dataclass(frozen=True)
class Claim:
    outcome: str  # ok | stale | gone | wrong-pool
    record: dict[str, str]


class Leases:
    """Claiming, cancelling and reaping steps."""

    def __init__(self, client: redis.Redis, store: StepStore) -> None:
        self.redis = client
        self.store = store
        self._claim = scripts.load(client, "claim")
        self._lost = scripts.load(client, "lost")
        self._requeue = scripts.load(client, "requeue")
        self._cancel = scripts.load(client, "cancel")
        self._hand_back = scripts.load(client, "hand_back")

    def claim(self, step_id: str, attempt: int, worker: str, instance: str, pool: str,
              token: str) -> Claim:
        """Take a Queued step for this worker. Calling again with the same *token* (after a
        connection error left the outcome unknown) returns "ok" if the first call took it."""
        reply = self._claim(keys=[keys.step(step_id), keys.running(pool), keys.pending(pool)],
                            args=[attempt, worker, instance, time.time(), pool, step_id, token])
        outcome, payload = reply[0], reply[1]
        if outcome != "ok":
            return Claim(outcome, {"state": str(payload)})
        return Claim("ok", pairs(payload))

    def hand_back(self, step_id: str, attempt: int, record: dict[str, str]) -> bool:
        """Put the message of a step that reached a worker which must not run it back at the
        head of its queue, unclaimed; False if the step no longer waits for that message."""
        return bool(self._hand_back(
            keys=[keys.step(step_id), record.get("queue", "")],
            args=[str(attempt), messages.for_record(step_id, attempt, record)]))

    def cancel(self, step_id: str) -> str:
        """Ask for *step_id* to stop; returns the state it was in when asked."""
        state, instance = self._cancel(keys=[keys.step(step_id)])
        if state == QUEUED:
            record = self.store.record(step_id)
            if self.store.finish(step_id, CANCELLED, expected=(QUEUED,),
                                 message="cancelled before a worker took it"):
                self._drop_message(step_id, record)
        elif state == RUNNING and instance:
            self.redis.publish(keys.control(keys.pool_of(step_id), instance), step_id)
        return str(state)

    def reap_on_schedule(self, settings: Settings, pools: Iterable[str]) -> int:
        """``reap`` as every component runs it: at most once per quarter heartbeat interval
        across the cluster, judging no worker lost for two heartbeat TTLs after Redis starts."""
        return self.reap(pools, settings.heartbeat_interval / 4, 2 * settings.heartbeat_ttl)

    def reap(self, pools: Iterable[str], every: float = 0.0, restart_grace: float = 0.0) -> int:
        """End the steps of *pools* whose worker stopped heartbeating and those past their
        lease deadline.

        With *every* > 0, at most one process in the cluster reaps a pool per that many
        seconds (a lock with that expiry), so workers and waiting clients do not all scan every
        lease. For *restart_grace* seconds after Redis starts, no worker is judged lost:
        heartbeat keys lapse while Redis is down, and live workers need a moment to beat
        again."""
        locked = self._locked(list(pools), every)
        if not locked:
            return 0  # the usual answer, in one round trip: others reaped them just now
        server: dict[str, Any] = self.redis.info("server") if restart_grace > 0 else {}
        ended = 0
        for pool in locked:
            if not server or float(server["uptime_in_seconds"]) >= restart_grace:
                ended += self._reap_lost(pool)
            if server and self.redis.set(keys.requeue_check(pool, str(server["run_id"])), "1",
                                         nx=True, ex=86400):
                seconds, micros = self.redis.time()
                started = seconds + micros / 1e6 - float(server["uptime_in_seconds"])
                self._requeue_missing(pool, started)  # once per Redis run and pool
            ended += self._reap_overdue(pool)
        return ended

    def _locked(self, pools: list[str], every: float) -> list[str]:
        """Those of *pools* whose reaper lock this call took (all of them when *every* is 0),
        asked for in one round trip."""
        if every <= 0 or not pools:
            return pools
        pipe = self.redis.pipeline(transaction=False)
        for pool in pools:
            pipe.set(keys.reaper(pool), "1", nx=True, px=max(1, int(every * 1000)))
        return [pool for pool, taken in zip(pools, pipe.execute(), strict=True) if taken]

    def _requeue_missing(self, pool: str, restarted_at: float) -> int:
        """Once after Redis starts (at *restarted_at*): push again the message of every Queued
        step enqueued before then whose message is not in its queue. Around a restart a message
        can be popped with its reply lost, or held by a worker whose connection then died
        (kombu would only restore it after the visibility timeout). A step enqueued since
        cannot have lost its message to the restart, and its message may be on its way to a
        worker right now (popped, not yet claimed): pushing it again would run its task twice
        (the claim would discard the copy, but Flower would show it). A duplicate is otherwise
        harmless: only one claim can succeed."""
        fields = ("state", "attempt", "queue", "name", "pool_name", "target", "queued_at")
        before = restarted_at + RESTART_CLOCK_SKEW
        expected: dict[str, list[str]] = {}  # queue -> the messages its Queued steps need
        ids = cast(list[str], self.redis.zrange(keys.pending(pool), 0, -1))
        for start in range(0, len(ids), BATCH):  # pipelined: one round trip per batch
            pipe = self.redis.pipeline(transaction=False)
            for step_id in ids[start:start + BATCH]:
                pipe.hmget(keys.step(step_id), fields)
            for step_id, values in zip(ids[start:start + BATCH], pipe.execute(), strict=True):
                record = {k: v for k, v in zip(fields, values, strict=True) if v is not None}
                if (record.get("state") == QUEUED
                        and float(record.get("queued_at") or 0) <= before):
                    message = messages.for_record(step_id, int(record.get("attempt", 0)), record)
                    expected.setdefault(record.get("queue", ""), []).append(message)
        pushed = 0
        for queue, wanted in expected.items():
            present = self._queue_contents(queue)
            missing = [m for m in wanted if m not in present]
            for start in range(0, len(missing), BATCH):
                self.redis.rpush(queue, *missing[start:start + BATCH])  # the consuming end
            pushed += len(missing)
        if pushed:
            log.warning("re-queued %d step(s) whose message was lost with a Redis restart",
                        pushed)
        return pushed

    def _queue_contents(self, queue: str) -> set[str]:
        """Every message in *queue*, read in slices (one pass, never a reply of the whole list)."""
        present: set[str] = set()
        start = 0
        while True:
            chunk = cast(list[str], self.redis.lrange(queue, start, start + BATCH - 1))
            present.update(chunk)
            if len(chunk) < BATCH:
                return present
            start += BATCH

    def _reap_lost(self, pool: str) -> int:
        ended = 0
        rows = self._lost(keys=[keys.running(pool)],
                          args=[keys.heartbeat_prefix(pool), keys.space(pool) + "step:"])
        for row in rows:
            step_id, instance, worker, retry, attempt, queue, name, pool_name, lease, target = row
            record = {"retry": retry, "attempt": attempt, "queue": queue, "name": name,
                      "pool_name": pool_name, "lease_timeout": lease, "target": target}
            if self.retry(step_id, instance, worker, record):
                ended += 1
                continue
            ended += self.store.finish(
                step_id, WORKER_LOST, expected=(RUNNING,), instance=instance,
                message=f"worker {worker} stopped heartbeating while running the step; "
                        "the step was not run again (opt in with retry on worker loss)")
        return ended

    def retry(self, step_id: str, instance: str, worker: str, record: dict[str, str]) -> bool:
        """Queue a step whose worker was lost once more, if it opted in and has not yet."""
        if record.get("retry") != "1" or record.get("attempt") != "0":
            return False
        now = time.time()
        queue = record.get("queue", "")
        note = f"worker {worker} was lost while running the step; queued once more"
        deadline = now + float(record.get("lease_timeout") or 0)
        pool = keys.pool_of(step_id)
        return bool(self._requeue(
            keys=[keys.step(step_id), keys.running(pool), keys.pending(pool), queue,
                  keys.step_log(step_id)],
            args=[instance, now, deadline, messages.for_record(step_id, 1, record), note,
                  step_id]))

    def _reap_overdue(self, pool: str) -> int:
        ended = 0
        overdue = cast(list[str], self.redis.zrangebyscore(keys.pending(pool), "-inf",
                                                            time.time()))
        for step_id in overdue:
            record = self.store.record(step_id)
            if not record:
                self.redis.zrem(keys.pending(pool), step_id)
                continue
            pool = record.get("pool_name", "")
            waited = float(record.get("lease_timeout", 0))
            if self.store.finish(
                    step_id, LEASE_TIMEOUT, expected=(QUEUED,),
                    message=f"no worker of pool {pool!r} leased the step within {waited:g}s; "
                            f"check its workers with `workerpool worker list --pool "
                            f"{record.get('pool', '')!r}`"):
                ended += 1
                self._drop_message(step_id, record)
        return ended

    def _drop_message(self, step_id: str, record: dict[str, str]) -> None:
        """Remove a step that will never run from its queue, so queue depth stays honest."""
        attempt = int(record.get("attempt", 0))
        self.redis.lrem(record.get("queue", ""), 1,
                        messages.for_record(step_id, attempt, record))
