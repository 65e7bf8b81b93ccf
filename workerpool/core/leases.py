"""Leases: the atomic claim that starts a step, and the reaper that ends lost or overdue ones.

A worker leases a step by consuming its message and then claiming the step record; the claim
only succeeds while the step is Queued at the message's attempt, so a step never runs twice at
once, whatever Redis redelivers. Any process may run the reaper; its transitions are atomic.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.commands.core import Script

from workerpool.core import events, keys, messages, scripts
from workerpool.core.settings import Settings
from workerpool.core.snapshot import QueueCounts, pairs
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
# A Queued step's record field set while its message is missing: "<attempt> <Redis time>" of
# the first reap that found the message neither in the queue nor held by a worker.
MISSING_SINCE = "missing_since"
NOTE_LIFETIME = 10  # graces after which a note of a missing message no longer counts
# What a Queued step's record tells of the message it waits for.
WAITING_FIELDS = ("state", "attempt", "queue", "name", "pool_name", "target", "queued_at",
                  "priority", MISSING_SINCE)


@dataclass(frozen=True)
class Claim:
    outcome: str  # ok | stale | gone | wrong-pool | paused
    record: dict[str, str]


@dataclass(frozen=True)
class Waiting:
    """A Queued step and the message it waits for."""

    step_id: str
    attempt: int
    queue: str
    message: str  # as enqueued (``messages.for_record``)
    queued_at: float
    missing_since: str = ""  # the record's MISSING_SINCE, if set
    priority: str = keys.NORMAL

    @classmethod
    def from_record(cls, step_id: str, record: dict[str, str]) -> Waiting:
        """The step as its record (WAITING_FIELDS) tells it."""
        attempt = int(record.get("attempt") or 0)
        return cls(step_id=step_id, attempt=attempt, queue=record.get("queue", ""),
                   message=messages.for_record(step_id, attempt, record),
                   queued_at=float(record.get("queued_at") or 0),
                   missing_since=record.get(MISSING_SINCE, ""),
                   priority=record.get("priority") or keys.NORMAL)

    @property
    def list(self) -> str:
        """The list of its queue its message is pushed onto (``keys.priority_list``)."""
        return keys.priority_list(self.queue, self.priority)

    @property
    def task_id(self) -> str:
        return messages.task_id(self.step_id, self.attempt)

    def missing_for(self, now: float) -> float | None:
        """Seconds since a reap first found this attempt's message missing, None if none did."""
        attempt, _, since = self.missing_since.partition(" ")
        try:
            return now - float(since) if attempt == str(self.attempt) else None
        except ValueError:
            return None


@dataclass(frozen=True)
class Verdict:
    """What a reap does with the Queued steps it looked at: push their message again, note
    their message as missing since now, or drop that note."""

    push: list[Waiting]
    note: list[Waiting]
    unnote: list[Waiting]


@dataclass(frozen=True)
class Survey:
    """What a reap learns of a pool in its one pipelined read."""

    counts: QueueCounts
    overdue: list[str]  # Queued steps past their lease deadline
    restart_check: bool  # this reap checks the pool for messages lost in a Redis restart
    paused: bool = False  # the pool is paused: its steps do not run out their lease timeout
    aged: int = 0  # steps this reap moved up to the high-priority list (``age.lua``)
    lost: list[list[str]] | None = None  # ``lost.lua``'s rows, when workers are judged


def _paused(record: str | None) -> bool:
    """Whether a pool's stored record (``core.pools``) says it is paused."""
    data = _json(record) if record else None
    return isinstance(data, dict) and bool(data.get("paused"))


def task_id_of(entry: str) -> str | None:
    """The Celery task id of a queue entry, None for one that is no task message."""
    return _task_of(_json(entry))


def held_task_id(value: str) -> str | None:
    """The Celery task id of a value of kombu's unacked hash: ``[message, exchange, routing
    key]`` as JSON (kombu's Redis ``QoS.append``), None for anything else."""
    held = _json(value)
    return _task_of(held[0]) if isinstance(held, list) and held else None


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _task_of(message: object) -> str | None:
    headers = message.get("headers") if isinstance(message, dict) else None
    task = headers.get("id") if isinstance(headers, dict) else None
    return task if isinstance(task, str) else None


def without_messages(waiting: Iterable[Waiting], present: set[str]) -> list[Waiting]:
    """The steps of *waiting* whose message is not among the task ids *present* (in the queue,
    or held by a worker)."""
    return [w for w in waiting if w.task_id not in present]


def judge(waiting: Iterable[Waiting], present: set[str], now: float, grace: float) -> Verdict:
    """Push again the message of a step found missing by an earlier reap at least *grace*
    seconds ago (and at most NOTE_LIFETIME graces) and missing still; note one found missing
    for the first time, or after a note that went stale. A message popped by a worker is in
    neither place for a moment, so one look is never enough; a stale note (a look that found a
    message in flight, and no reap since) must not make it so."""
    push: list[Waiting] = []
    note: list[Waiting] = []
    unnote: list[Waiting] = []
    for step in waiting:
        age = step.missing_for(now)
        if step.task_id in present:
            if step.missing_since:
                unnote.append(step)
        elif age is None or not 0 <= age < NOTE_LIFETIME * grace:
            note.append(step)
        elif age >= grace:
            push.append(step)
    return Verdict(push=push, note=note, unnote=unnote + push)


def _evalsha(pipe: Any, calls: dict[int, Callable[[], Any]], script: Script,
             names: list[str], args: list[Any]) -> None:
    """Queue *script* on *pipe* as a bare EVALSHA (no SCRIPT EXISTS first), noting in *calls*
    at its reply's index how to send it again should Redis have lost it."""
    calls[len(pipe)] = functools.partial(script, keys=names, args=args)
    pipe.evalsha(script.sha, len(names), *names, *args)


def reap_every(settings: Settings) -> float:
    """How often, at most, the cluster reaps one pool: a quarter heartbeat interval."""
    return settings.heartbeat_interval / 4


def lock_ms(every: float) -> int:
    """The expiry of a pool's reaper lock that lets one reap through per *every* seconds."""
    return max(1, int(every * 1000))


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
        self._age = scripts.load(client, "age")
        self._loaded_for = ""  # the Redis run (run_id) the survey's scripts were loaded in
        self._other_redis_at = -math.inf  # monotonic time a reap found another run_id than the last

    def claim(self, step_id: str, attempt: int, worker: str, instance: str, pool: str,
              token: str) -> Claim:
        """Take a Queued step for this worker. Calling again with the same *token* (after a
        connection error left the outcome unknown) returns "ok" if the first call took it."""
        reply = self._claim(keys=[keys.step(step_id), keys.running(pool), keys.pending(pool)],
                            args=[attempt, worker, instance, time.time(), pool, step_id, token,
                                  keys.POOLS])
        outcome, payload = reply[0], reply[1]
        if outcome != "ok":
            return Claim(outcome, {"state": str(payload)})
        return Claim("ok", pairs(payload))

    def hand_back(self, step_id: str, attempt: int, record: dict[str, str]) -> bool:
        """Put the message of a step that reached a worker which must not run it back at the
        head of its queue, unclaimed; False if the step no longer waits for that message."""
        return bool(self._hand_back(
            keys=[keys.step(step_id),
                  keys.priority_list(record.get("queue", ""), record.get("priority", ""))],
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

    def reap_on_schedule(self, settings: Settings, pools: Iterable[str],
                         held: bool = False) -> int:
        """``reap`` as every component runs it: at most once per quarter heartbeat interval
        across the cluster, judging no worker lost for two heartbeat TTLs after Redis starts,
        and pushing again a message missing for a heartbeat interval (a worker records a
        message it popped as held within milliseconds). The pool is reaped at least once per
        interval while a worker of it, ``server`` or ``up`` runs, so a purged or lost message
        is pushed again within three intervals: found missing, confirmed, pushed. *held*: the
        caller took the pools' locks (``lock_ms(reap_every(settings))``) itself, as a
        worker's heartbeat does in the same call."""
        every = 0.0 if held else reap_every(settings)
        return self.reap(pools, every, 2 * settings.heartbeat_ttl,
                         message_grace=settings.heartbeat_interval,
                         aging=settings.priority_aging)

    def reap(self, pools: Iterable[str], every: float = 0.0, restart_grace: float = 0.0,
             message_grace: float | None = None, aging: float | None = None) -> int:
        """End the steps of *pools* whose worker stopped heartbeating and those past their
        lease deadline; with *message_grace*, push again the message of a Queued step that has
        been without one (purged, or lost) for that many seconds; with *aging*, move a step
        that has waited that many seconds in the normal or low list to the end of the high one
        (so none waits behind newer steps for ever).

        With *every* > 0, at most one process in the cluster reaps a pool per that many
        seconds (a lock with that expiry), so workers and waiting clients do not all scan every
        lease. For *restart_grace* seconds after Redis starts, no worker is judged lost:
        heartbeat keys lapse while Redis is down, and live workers need a moment to beat
        again. The same holds for *restart_grace* seconds after this reaper first finds another
        Redis run than at its last reap: a replica Sentinel promoted (long up, so its uptime
        says nothing) or a restart."""
        locked = self._locked(list(pools), every)
        if not locked:
            return 0  # the usual answer, in one round trip: others reaped them just now
        server: dict[str, Any] = self.redis.info("server")
        now = time.monotonic()
        if self._loaded_for and str(server["run_id"]) != self._loaded_for:
            self._other_redis_at = now  # failed over, or restarted
        self._load_scripts(str(server["run_id"]))
        ended = 0
        judge = (float(server["uptime_in_seconds"]) >= restart_grace
                 and now - self._other_redis_at >= restart_grace)
        surveys = self._survey(locked, str(server["run_id"]) if restart_grace > 0 else "",
                               aging, judge=judge)
        for pool, survey in zip(locked, surveys, strict=True):
            if survey.aged:
                log.info("%d step(s) of pool %s waited %gs and moved up to high priority",
                         survey.aged, pool, aging)
            if survey.lost is not None:
                ended += self._end_lost(pool, survey.lost)
            if survey.restart_check:
                seconds, micros = self.redis.time()
                started = seconds + micros / 1e6 - float(server["uptime_in_seconds"])
                self._requeue_missing(pool, started)  # once per Redis run and pool
            if not survey.paused:
                ended += self._reap_overdue(pool, survey.overdue)
            if (message_grace is not None and not survey.restart_check
                    and survey.counts.without_message):
                self._push_missing(pool, message_grace)
        return ended

    def _load_scripts(self, run_id: str) -> None:
        """Load the scripts a survey sends by EVALSHA, once per Redis run (*run_id*): a
        pipeline of script objects would ask SCRIPT EXISTS at every reap."""
        if run_id != self._loaded_for:
            pipe = self.redis.pipeline(transaction=False)
            for script in (self._age, self._lost):
                pipe.script_load(script.script)
            pipe.execute()
            self._loaded_for = run_id

    def _survey(self, pools: list[str], run_id: str, aging: float | None = None,
                judge: bool = False) -> list[Survey]:
        """For each of *pools*, in one round trip for all: its restart check (taken once per
        Redis run, when *run_id* is given), the counts that tell a Queued step without a
        message, the steps past their lease deadline, with *aging* the steps moved up, and
        if it is to *judge* workers, its running steps whose worker is lost (``lost.lua``)."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        calls: dict[int, Callable[[], Any]] = {}  # reply index -> the script call, to resend
        for pool in pools:
            if run_id:
                pipe.set(keys.requeue_check(pool, run_id), "1", nx=True, ex=86400)
            self._count(pipe, pool)
            pipe.zrangebyscore(keys.pending(pool), "-inf", now)
            pipe.hget(keys.POOLS, pool)
            if aging is not None:
                _evalsha(pipe, calls, self._age, list(keys.priority_lists(keys.queue_of(pool))),
                         [now, aging, keys.space(pool) + "step:"])
            if judge:
                _evalsha(pipe, calls, self._lost,
                         [keys.running(pool), keys.live(pool), keys.states(pool)],
                         [keys.heartbeat_prefix(pool), keys.space(pool) + "step:"])
        done = pipe.execute(raise_on_error=False)
        for index, reply in enumerate(done):
            if isinstance(reply, redis.exceptions.NoScriptError) and index in calls:
                done[index] = calls[index]()  # flushed since loaded: sent again, loaded first
            elif isinstance(reply, Exception):
                raise reply
        replies = iter(done)
        return [Survey(restart_check=bool(next(replies)) if run_id else False,
                       counts=self._counted(replies), overdue=next(replies),
                       paused=_paused(next(replies)),
                       aged=int(next(replies)) if aging is not None else 0,
                       lost=next(replies) if judge else None) for _ in pools]

    @staticmethod
    def _count(pipe: Any, pool: str) -> None:
        """Ask *pipe* for *pool*'s Queued records, queue length (its three lists) and held
        messages."""
        pipe.zcard(keys.pending(pool))
        for name in keys.priority_lists(keys.queue_of(pool)):
            pipe.llen(name)
        pipe.hlen(keys.kombu_keys(pool)["unacked_key"])

    @staticmethod
    def _counted(replies: Iterator[Any]) -> QueueCounts:
        records = int(next(replies))
        queued = sum(int(next(replies)) for _ in keys.PRIORITIES)
        return QueueCounts(records=records, messages=queued, held=int(next(replies)))

    def _push_missing(self, pool: str, grace: float) -> int:
        """Push again the message of each Queued step of *pool* that has been neither in its
        queue nor held by a worker (purged with ``celery purge``, or lost) for *grace* seconds.
        Called when the counts say one is missing; they are taken once more first, as a
        message just popped by a worker is in neither place for a moment."""
        pipe = self.redis.pipeline(transaction=False)
        self._count(pipe, pool)
        if not self._counted(iter(pipe.execute())).without_message:
            return 0  # it was on its way to a worker
        return self.push_lost(pool, grace)

    def push_lost(self, pool: str, grace: float) -> int:
        """Look at every Queued step of *pool* (``judge``): note the messages missing, push
        again those a reap found missing *grace* seconds ago or more; how many it pushed. The
        queue and the held messages are read before the records, so a step claimed (its
        message acked) meanwhile is no longer Queued, instead of looking unsent."""
        queue = keys.queue_of(pool)
        present = {t for t in map(task_id_of, self._queue_contents(queue)) if t}
        held = cast(list[str], self.redis.hvals(keys.kombu_keys(pool)["unacked_key"]))
        present.update(t for t in map(held_task_id, held) if t)
        waiting = [w for w in self._waiting(pool) if w.queue == queue]
        seconds, micros = self.redis.time()  # one clock for every reaper's notes
        now = seconds + micros / 1e6
        verdict = judge(waiting, present, now, grace)
        pipe = self.redis.pipeline(transaction=False)
        for step in verdict.note:
            pipe.hset(keys.step(step.step_id), MISSING_SINCE, f"{step.attempt} {now}")
        for step in verdict.unnote:
            pipe.hdel(keys.step(step.step_id), MISSING_SINCE)
        _push_front(pipe, verdict.push)
        pipe.execute()
        if verdict.push:
            log.warning("pushed again the message of %d Queued step(s) of pool %s: it was "
                        "neither in queue %s nor held by a worker for %gs (purged or lost)",
                        len(verdict.push), pool, queue, grace)
        return len(verdict.push)

    def _waiting(self, pool: str) -> list[Waiting]:
        """Every Queued step of *pool* with its message, records read in batches (one round
        trip each); an id left in ``pending`` without a record is dropped from it."""
        ids = cast(list[str], self.redis.zrange(keys.pending(pool), 0, -1))
        waiting: list[Waiting] = []
        gone: list[str] = []
        for start in range(0, len(ids), BATCH):
            pipe = self.redis.pipeline(transaction=False)
            for step_id in ids[start:start + BATCH]:
                pipe.hmget(keys.step(step_id), WAITING_FIELDS)
            for step_id, values in zip(ids[start:start + BATCH], pipe.execute(), strict=True):
                record = {k: v for k, v in zip(WAITING_FIELDS, values, strict=True)
                          if v is not None}
                if not record:
                    gone.append(step_id)
                elif record.get("state") == QUEUED:
                    waiting.append(Waiting.from_record(step_id, record))
        if gone:
            self.redis.zrem(keys.pending(pool), *gone)
        return waiting

    def _locked(self, pools: list[str], every: float) -> list[str]:
        """Those of *pools* whose reaper lock this call took (all of them when *every* is 0),
        asked for in one round trip."""
        if every <= 0 or not pools:
            return pools
        pipe = self.redis.pipeline(transaction=False)
        for pool in pools:
            pipe.set(keys.reaper(pool), "1", nx=True, px=lock_ms(every))
        return [pool for pool, taken in zip(pools, pipe.execute(), strict=True) if taken]

    def _requeue_missing(self, pool: str, restarted_at: float) -> int:
        """Once after Redis starts (at *restarted_at*): push again the message of every Queued
        step enqueued before then whose message is not in its queue. Around a restart a message
        can be popped with its reply lost, or held by a worker whose connection then died
        (kombu would only restore it after the visibility timeout). A step enqueued since
        cannot have lost its message to the restart, and its message may be on its way to a
        worker right now (popped, not yet claimed): pushing it again would run its task twice
        (the claim would discard the copy, but Flower would show it). A duplicate is otherwise
        harmless: only one claim can succeed. Messages held by workers are not looked at:
        their holder may have gone with the restart."""
        expected: dict[str, list[Waiting]] = {}  # queue -> its Queued steps
        for waiting in self._waiting(pool):
            expected.setdefault(waiting.queue, []).append(waiting)
        pushed = 0
        for queue, wanted in expected.items():
            present = {t for t in map(task_id_of, self._queue_contents(queue)) if t}
            missing = [w for w in without_messages(wanted, present)
                       if w.queued_at <= restarted_at + RESTART_CLOCK_SKEW]
            pipe = self.redis.pipeline(transaction=False)
            _push_front(pipe, missing)
            pipe.execute()
            pushed += len(missing)
        if pushed:
            log.warning("re-queued %d step(s) whose message was lost with a Redis restart",
                        pushed)
        return pushed

    def _queue_contents(self, queue: str) -> list[str]:
        """Every entry of *queue*'s three lists, read in slices (never a reply of a whole
        list)."""
        present: list[str] = []
        for name in keys.priority_lists(queue):
            start = 0
            while True:
                chunk = cast(list[str], self.redis.lrange(name, start, start + BATCH - 1))
                present.extend(chunk)
                if len(chunk) < BATCH:
                    break
                start += BATCH
        return present

    def _end_lost(self, pool: str, rows: list[list[str]]) -> int:
        """End (or queue once more) the running steps ``lost.lua`` found without a live
        worker."""
        ended = 0
        for row in rows:
            (step_id, instance, worker, retry, attempt, queue, name, pool_name, lease, target,
             priority) = row
            record = {"retry": retry, "attempt": attempt, "queue": queue, "name": name,
                      "pool_name": pool_name, "lease_timeout": lease, "target": target,
                      "priority": priority}
            if self.retry(step_id, instance, worker, record):
                ended += 1
                self._tell_flower(step_id, record, WORKER_LOST, worker, f"worker {worker} "
                                  "stopped heartbeating while running the step; it was queued "
                                  "once more", pool)
                continue
            message = (f"worker {worker} stopped heartbeating while running the step; the step "
                       "was not run again (opt in with retry on worker loss)")
            if self.store.finish(step_id, WORKER_LOST, expected=(RUNNING,), instance=instance,
                                 message=message):
                ended += 1
                self._tell_flower(step_id, record, WORKER_LOST, worker, message, pool)
        return ended

    def _tell_flower(self, step_id: str, record: dict[str, str], state: str, worker: str,
                     message: str, pool: str) -> None:
        """Publish the ``task-failed`` event of a step the reaper ended (``events.py``): no
        worker is left to, and Flower would show it STARTED (or not at all) for ever. As the
        lost worker's Celery name, if it had one; a lost event is only a stale Flower."""
        hostname = events.reaper_hostname()
        try:
            if worker:
                raw = self.redis.hget(keys.workers(pool), worker)
                host = json.loads(raw).get("host", "") if raw else ""
                hostname = f"{worker}@{host}" if host else hostname
            routing_key, event = events.task_failed(
                messages.task_id(step_id, int(record.get("attempt") or 0)),
                f"{state}: exit code none, worker {worker or 'none'}; {message}", hostname,
                name=messages.TASK_NAME, routing_key=record.get("queue", ""),
                args=messages.label(record.get("name", ""), record.get("pool_name", ""),
                                    step_id, target=record.get("target", "")))
            events.publish(self.redis, routing_key, event)
        except (redis.RedisError, ValueError, AttributeError) as exc:
            log.info("could not tell Flower that step %s ended %s: %s", step_id, state, exc)

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
            keys=[keys.step(step_id), keys.running(pool), keys.pending(pool),
                  keys.priority_list(queue, record.get("priority", "")), keys.step_log(step_id)],
            args=[instance, now, deadline, messages.for_record(step_id, 1, record), note,
                  step_id]))

    def _reap_overdue(self, pool: str, overdue: list[str]) -> int:
        ended = 0
        for step_id in overdue:
            record = self.store.record(step_id)
            if not record:
                self.redis.zrem(keys.pending(pool), step_id)
                continue
            name = record.get("pool_name", "")
            waited = float(record.get("lease_timeout", 0))
            message = (f"no worker of pool {name!r} leased the step within {waited:g}s; "
                       f"check its workers with `workerpool worker list --pool "
                       f"{record.get('pool', '')!r}`")
            if self.store.finish(step_id, LEASE_TIMEOUT, expected=(QUEUED,), message=message):
                ended += 1
                self._drop_message(step_id, record)
                self._tell_flower(step_id, record, LEASE_TIMEOUT, "", message, pool)
        return ended

    def _drop_message(self, step_id: str, record: dict[str, str]) -> None:
        """Remove a step that will never run from its queue, so queue depth stays honest: from
        any of its lists, as aging may have moved it to the high one."""
        message = messages.for_record(step_id, int(record.get("attempt", 0)), record)
        pipe = self.redis.pipeline(transaction=False)
        for name in keys.priority_lists(record.get("queue", "")):
            pipe.lrem(name, 1, message)
        pipe.execute()


def _push_front(pipe: Any, steps: list[Waiting]) -> None:
    """Queue on *pipe* the messages of *steps* at the consuming end of their lists: taken
    next, before newer steps of their priority."""
    by_list: dict[str, list[str]] = {}
    for step in steps:
        by_list.setdefault(step.list, []).append(step.message)
    for name, entries in by_list.items():
        for start in range(0, len(entries), BATCH):
            pipe.rpush(name, *entries[start:start + BATCH])
