"""A pool's step tallies, kept by Redis: steps ended by state, their running times as a
histogram, and the age of its oldest Queued step; what ``/metrics`` reads besides the snapshot.

``finish.lua``, the one way a step ends (a worker's end, the reaper's WorkerLost and
LeaseTimeout, a cancel before a worker took it), counts it in the pool's ``ended`` hash and,
for a step that ran, its running time in ``durations``, in the same call: any number of
servers scraped at any time give the same numbers, and a restart loses none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis

from workerpool.core import keys, scripts
from workerpool.core.snapshot import pairs

# Upper bounds (seconds) of the step duration histogram's buckets, fixed: a script step takes
# from a tenth of a second to hours. A bucket is a field "le:<bound>" of ``keys.durations``
# (one past the last bound: "le:+Inf"); changing a bound orphans that bucket's count.
DURATION_BUCKETS = ("0.1", "0.5", "1.0", "5.0", "10.0", "30.0", "60.0", "300.0", "600.0",
                    "1800.0", "3600.0", "10800.0")  # as Prometheus's clients spell a bound
BUCKET_BOUNDS = ",".join(DURATION_BUCKETS)  # finish.lua's ARGV
# Queued steps (the nearest lease deadlines first) whose queued_at is read for the oldest age:
# every one of a pool with fewer; with more, exact as long as its steps share a lease timeout.
OLDEST_SCAN = 1000


@dataclass(frozen=True)
class Tallies:
    """One pool's tallies, as read."""

    ended: dict[str, int] = field(default_factory=dict)  # terminal state -> steps
    buckets: dict[str, int] = field(default_factory=dict)  # bound (or "+Inf") -> steps in it
    duration_sum: float = 0.0
    duration_count: int = 0
    oldest_queued_at: float | None = None  # None: nothing Queued

    def cumulative(self) -> list[tuple[str, int]]:
        """The histogram's buckets as Prometheus counts them: each bound with the steps at or
        under it, ending with "+Inf" (every step counted)."""
        total, found = 0, []
        for bound in (*DURATION_BUCKETS, "+Inf"):
            total += self.buckets.get(bound, 0)
            found.append((bound, total))
        return found

    def oldest_age(self, now: float) -> float:
        """Seconds the oldest Queued step has waited (0 when none waits)."""
        return 0.0 if self.oldest_queued_at is None else max(0.0, now - self.oldest_queued_at)


def parse(ended: list[Any], durations: list[Any], oldest: str) -> Tallies:
    """A pool's tallies from ``tallies.lua``'s flat replies."""
    counts = pairs(durations)
    buckets = {name.removeprefix("le:"): int(value) for name, value in counts.items()
               if name.startswith("le:")}
    return Tallies(ended={state: int(n) for state, n in pairs(ended).items()}, buckets=buckets,
                   duration_sum=float(counts.get("sum", 0)),
                   duration_count=int(counts.get("count", 0)),
                   oldest_queued_at=float(oldest) if oldest else None)


def read(client: redis.Redis, pools: list[str]) -> tuple[dict[str, Tallies], float]:
    """The tallies of *pools* (slugs, ``builtin``) and Redis's clock, in one round trip."""
    args: list[str | int] = [OLDEST_SCAN]
    for pool in pools:
        args += [keys.ended(pool), keys.durations(pool), keys.pending(pool),
                 keys.space(pool) + "step:"]
    reply = scripts.load(client, "tallies")(keys=[], args=args)
    now = float(reply[0][0]) + float(reply[0][1]) / 1e6
    return ({pool: parse(*row) for pool, row in zip(pools, reply[1:], strict=True)}, now)
