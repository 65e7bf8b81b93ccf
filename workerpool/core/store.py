"""Step records in Redis: enqueue in one round trip, read results and logs, finish atomically."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any, cast

import redis

from workerpool.core import keys, messages
from workerpool.core.routing import Route
from workerpool.core.sealing import Keyring
from workerpool.core.steps import QUEUED, LogEntry, ScriptStep, StepResult

# KEYS: step, log, running, pending. ARGV: instance ('' = any holder), expected states (",A,B,"),
# new state, exit code or '', outputs JSON or '', now, message, ttl seconds, step id, then the
# script's last log lines as (time, stream, text) triples.
# The one way a step reaches a terminal state: stored, logged, lease released, end marked. The
# last lines are stored whatever the state (as a separate flush would), so they are never lost.
FINISH = """
local st = redis.call('HMGET', KEYS[1], 'state', 'instance', 'notify')
if not st[1] then return 0 end
if st[1] == ARGV[3] and ARGV[1] ~= '' and st[2] == ARGV[1] then return 1 end  -- a retry of ours
for i = 10, #ARGV, 3 do
  redis.call('XADD', KEYS[2], '*', 't', ARGV[i], 's', ARGV[i + 1], 'x', ARGV[i + 2])
end
if not string.find(ARGV[2], ',' .. st[1] .. ',', 1, true) then return 0 end
if ARGV[1] ~= '' and st[2] ~= ARGV[1] then return 0 end
local fields = {'state', ARGV[3], 'finished_at', ARGV[6], 'message', ARGV[7]}
if ARGV[4] ~= '' then fields[#fields + 1] = 'exit_code'; fields[#fields + 1] = ARGV[4] end
if ARGV[5] ~= '' then fields[#fields + 1] = 'outputs'; fields[#fields + 1] = ARGV[5] end
redis.call('HSET', KEYS[1], unpack(fields))
if ARGV[7] ~= '' then
  redis.call('XADD', KEYS[2], '*', 't', ARGV[6], 's', 'system', 'x', ARGV[7])
end
redis.call('XADD', KEYS[2], '*', 'end', ARGV[3])
local notify = st[3]
if notify then
  redis.call('LPUSH', notify, ARGV[9])
  redis.call('EXPIRE', notify, ARGV[8])
end
redis.call('ZREM', KEYS[3], ARGV[9])
redis.call('ZREM', KEYS[4], ARGV[9])
redis.call('EXPIRE', KEYS[1], ARGV[8])
redis.call('EXPIRE', KEYS[2], ARGV[8])
return 1
"""


# KEYS: step, pending, queue. ARGV: deadline, step id, message, then the record's fields.
ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[3])
return 1
"""


def new_step_id() -> str:
    import secrets

    return secrets.token_hex(8)


class StepStore:
    """All reads and writes of step records; connections are passed in, never created here."""

    def __init__(self, client: redis.Redis, result_ttl: int = 7 * 24 * 3600,
                 keyring: Keyring | None = None) -> None:
        self.redis = client
        self.result_ttl = result_ttl
        self.keyring = keyring or Keyring(None, "WORKERPOOL_SECRET_KEY")
        self._finish = client.register_script(FINISH)
        self._enqueue = client.register_script(ENQUEUE)

    def enqueue(self, step: ScriptStep, route: Route, lease_timeout: float,
                step_timeout: float, *, step_id: str | None = None, notify: str = "",
                target: str = "") -> str:
        """Store the step and push its message onto the route's queue, atomically and in one
        round trip. With an explicit *step_id* that already exists, nothing is written."""
        step_id = step_id or new_step_id()
        now = time.time()
        deadline = now + lease_timeout
        record: dict[str, str | int | float] = {
            "name": step.name, "syntax": step.syntax, "location": step.location,
            "pool": route.pool, "pool_name": route.pool_name, "queue": route.queue,
            "state": QUEUED, "attempt": 0, "retry": int(step.retry_on_worker_lost),
            "script": step.script, "variables": json.dumps(step.variables),
            "secrets": self.keyring.seal_map(step.sensitive_variables),
            "timeout": step.timeout or step_timeout, "lease_timeout": lease_timeout,
            "queued_at": now, "deadline": deadline, "target": target,
            **step.to_record(),
        }
        if notify:
            record["notify"] = notify
        label = messages.label(step.name, route.pool_name, step_id, target=target)
        fields = [item for pair in record.items() for item in pair]
        self._enqueue(keys=[keys.step(step_id), keys.PENDING, route.queue],
                      args=[deadline, step_id, messages.build(step_id, 0, route.queue, label),
                            *fields])
        return step_id

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
        done = self._finish(
            keys=[keys.step(step_id), keys.step_log(step_id), keys.RUNNING, keys.PENDING],
            args=[instance, "," + ",".join(expected) + ",", state,
                  "" if exit_code is None else exit_code,
                  "" if outputs is None else json.dumps(outputs), time.time(), message,
                  self.result_ttl, step_id,
                  *(value for line in lines for value in (line["t"], line["s"], line["x"]))])
        return bool(done)


def _entry(fields: dict[str, str]) -> LogEntry | None:
    if "end" in fields:
        return None
    return LogEntry(time=float(fields["t"]), stream=fields["s"], text=fields["x"])
