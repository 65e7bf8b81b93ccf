"""Leases: the atomic claim that starts a step, and the reaper that ends lost or overdue ones.

A worker leases a step by consuming its message and then claiming the step record; the claim
only succeeds while the step is Queued at the message's attempt, so a step never runs twice at
once, whatever Redis redelivers. Any process may run the reaper; its transitions are atomic.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from workerpool.core import keys, messages
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

BATCH = 1000  # step records read, or queue entries listed, per round trip when re-queuing

# KEYS: step, running, pending. ARGV: attempt, worker name, instance, now, worker's pool, step
# id, claim token. The token (new for each delivery) makes a retried claim safe: if the first
# call was applied but its reply lost with the connection, the retry finds its own token.
CLAIM = """
local st = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'pool', 'claim')
if not st[1] then return {'gone', ''} end
if st[1] == 'Running' and st[4] == ARGV[7] then return {'ok', redis.call('HGETALL', KEYS[1])} end
if st[1] ~= 'Queued' or st[2] ~= ARGV[1] then return {'stale', st[1]} end
if st[3] ~= ARGV[5] then return {'wrong-pool', st[3]} end
redis.call('HSET', KEYS[1], 'state', 'Running', 'worker', ARGV[2], 'instance', ARGV[3],
           'started_at', ARGV[4], 'claim', ARGV[7])
redis.call('ZREM', KEYS[3], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[6])
return {'ok', redis.call('HGETALL', KEYS[1])}
"""

# KEYS: running. ARGV: heartbeat key prefix, step key prefix.
# Running steps whose worker instance no longer heartbeats.
LOST = """
local lost = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local f = redis.call('HMGET', ARGV[2] .. id, 'instance', 'worker', 'retry', 'attempt', 'queue',
                       'name', 'pool_name', 'lease_timeout', 'target')
  if f[1] and redis.call('EXISTS', ARGV[1] .. f[1]) == 0 then
    lost[#lost + 1] = {id, f[1], f[2] or '', f[3] or '0', f[4] or '0', f[5] or '', f[6] or '',
                       f[7] or '', f[8] or '0', f[9] or ''}
  elseif not f[1] then
    redis.call('ZREM', KEYS[1], id)
  end
end
return lost
"""

# KEYS: step, running, pending, queue, log. ARGV: dead instance, now, deadline, message,
# note, step id. Puts a lost step back in its queue once, if it opted in.
REQUEUE = """
local st = redis.call('HMGET', KEYS[1], 'state', 'instance', 'retry', 'attempt')
if st[1] ~= 'Running' or st[2] ~= ARGV[1] or st[3] ~= '1' or st[4] ~= '0' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'Queued', 'attempt', '1', 'deadline', ARGV[3])
redis.call('HDEL', KEYS[1], 'worker', 'instance', 'started_at')
redis.call('ZREM', KEYS[2], ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[6])
redis.call('LPUSH', KEYS[4], ARGV[4])
redis.call('XADD', KEYS[5], '*', 't', ARGV[2], 's', 'system', 'x', ARGV[5])
return 1
"""

# KEYS: step. Marks a running step for cancellation; reports where it is.
CANCEL = """
local st = redis.call('HMGET', KEYS[1], 'state', 'instance')
if not st[1] then return {'gone', ''} end
if st[1] == 'Running' then redis.call('HSET', KEYS[1], 'cancel', '1') end
return {st[1], st[2] or ''}
"""


@dataclass(frozen=True)
class Claim:
    outcome: str  # ok | stale | gone | wrong-pool
    record: dict[str, str]


class Leases:
    """Claiming, cancelling and reaping steps."""

    def __init__(self, client: redis.Redis, store: StepStore) -> None:
        self.redis = client
        self.store = store
        self._claim = client.register_script(CLAIM)
        self._lost = client.register_script(LOST)
        self._requeue = client.register_script(REQUEUE)
        self._cancel = client.register_script(CANCEL)

    def claim(self, step_id: str, attempt: int, worker: str, instance: str, pool: str,
              token: str) -> Claim:
        """Take a Queued step for this worker. Calling again with the same *token* (after a
        connection error left the outcome unknown) returns "ok" if the first call took it."""
        reply = self._claim(keys=[keys.step(step_id), keys.RUNNING, keys.PENDING],
                            args=[attempt, worker, instance, time.time(), pool, step_id, token])
        outcome, payload = reply[0], reply[1]
        if outcome != "ok":
            return Claim(outcome, {"state": str(payload)})
        return Claim("ok", pairs(payload))

    def cancel(self, step_id: str) -> str:
        """Ask for *step_id* to stop; returns the state it was in when asked."""
        state, instance = self._cancel(keys=[keys.step(step_id)])
        if state == QUEUED:
            record = self.store.record(step_id)
            if self.store.finish(step_id, CANCELLED, expected=(QUEUED,),
                                 message="cancelled before a worker took it"):
                self._drop_message(step_id, record)
        elif state == RUNNING and instance:
            self.redis.publish(keys.control(instance), step_id)
        return str(state)

    def reap(self, every: float = 0.0, restart_grace: float = 0.0) -> int:
        """End steps whose worker stopped heartbeating and steps past their lease deadline.

        With *every* > 0, at most one process in the cluster reaps per that many seconds (a
        lock with that expiry), so workers and waiting clients do not all scan every lease.
        For *restart_grace* seconds after Redis starts, no worker is judged lost: heartbeat
        keys lapse while Redis is down, and live workers need a moment to beat again."""
        if every > 0 and not self.redis.set(keys.REAPER_LOCK, "1", nx=True,
                                            px=max(1, int(every * 1000))):
            return 0
        lost = 0
        server: dict[str, Any] = self.redis.info("server") if restart_grace > 0 else {}
        if not server or float(server["uptime_in_seconds"]) >= restart_grace:
            lost = self._reap_lost()
        if server and self.redis.set(keys.requeue_check(str(server["run_id"])), "1", nx=True,
                                     ex=86400):
            self._requeue_missing()  # once per Redis run, by whoever reaps first
        return lost + self._reap_overdue()

    def _requeue_missing(self) -> int:
        """Once after Redis starts: push again the message of every Queued step whose message
        is not in its queue. Around a restart a message can be popped with its reply lost, or
        held by a worker whose connection then died (kombu would only restore it after the
        visibility timeout). A duplicate is harmless: only one claim can succeed."""
        fields = ("state", "attempt", "queue", "name", "pool_name", "target")
        expected: dict[str, list[str]] = {}  # queue -> the messages its Queued steps need
        ids = cast(list[str], self.redis.zrange(keys.PENDING, 0, -1))
        for start in range(0, len(ids), BATCH):  # pipelined: one round trip per batch
            pipe = self.redis.pipeline(transaction=False)
            for step_id in ids[start:start + BATCH]:
                pipe.hmget(keys.step(step_id), fields)
            for step_id, values in zip(ids[start:start + BATCH], pipe.execute(), strict=True):
                record = {k: v for k, v in zip(fields, values, strict=True) if v is not None}
                if record.get("state") == QUEUED:
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

    def _reap_lost(self) -> int:
        ended = 0
        rows = self._lost(keys=[keys.RUNNING], args=[keys.PREFIX + "hb:", keys.PREFIX + "step:"])
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
        return bool(self._requeue(
            keys=[keys.step(step_id), keys.RUNNING, keys.PENDING, queue, keys.step_log(step_id)],
            args=[instance, now, deadline, messages.for_record(step_id, 1, record), note,
                  step_id]))

    def _reap_overdue(self) -> int:
        ended = 0
        overdue = cast(list[str], self.redis.zrangebyscore(keys.PENDING, "-inf", time.time()))
        for step_id in overdue:
            record = self.store.record(step_id)
            if not record:
                self.redis.zrem(keys.PENDING, step_id)
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
