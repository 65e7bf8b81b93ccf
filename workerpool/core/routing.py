"""Routing: which queue a step goes to. A pure function of the step and what it reads of the
cluster (``routeview.RouteView``: the step's pool and its live workers; or a whole
``snapshot.Snapshot``).

Only live workers count (heartbeating, in any state): a default pool whose workers are all
Offline sends a step to the built-in worker, and an Offline worker's syntaxes refuse nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from workerpool.core import keys
from workerpool.core.errors import NoWorker
from workerpool.core.pools import Pool, find
from workerpool.core.steps import LOCATION_SERVER, ScriptStep
from workerpool.core.workers import OFFLINE, WorkerInfo


class Cluster(Protocol):
    """What routing reads: pools (at least the step's and the default), the built-in worker's
    switch, and a pool's workers."""

    @property
    def pools(self) -> dict[str, Pool]: ...

    @property
    def builtin_enabled(self) -> bool: ...

    @property
    def default_pool(self) -> Pool: ...

    def workers_in(self, pool_slug: str) -> list[WorkerInfo]: ...


@dataclass(frozen=True)
class Route:
    queue: str
    pool: str  # a pool slug, or "builtin"
    pool_name: str

    @property
    def builtin(self) -> bool:
        return self.pool == keys.BUILTIN_POOL


BUILTIN_ROUTE = Route(keys.BUILTIN_QUEUE, keys.BUILTIN_POOL, "built-in worker")


def route(step: ScriptStep, snapshot: Cluster) -> Route:
    """Apply the routing rules; raise a Refused error when no queue may take the step."""
    if step.location == LOCATION_SERVER:
        return _check_syntax(step, _builtin(snapshot, "the step runs on the server (--server)"),
                             snapshot)
    if step.pool is not None:
        pool = find(snapshot.pools, step.pool)
    else:
        pool = snapshot.default_pool
        if not live_in(snapshot, pool.slug):
            return _check_syntax(step, _builtin(
                snapshot, f"the default pool {pool.name!r} has no live workers"), snapshot)
    return _check_syntax(step, Route(pool.queue, pool.slug, pool.name), snapshot)


def live_in(snapshot: Cluster, pool_slug: str) -> list[WorkerInfo]:
    """The workers of *pool_slug* that heartbeat (any state but Offline)."""
    return [w for w in snapshot.workers_in(pool_slug) if w.state != OFFLINE]


def _builtin(snapshot: Cluster, why: str) -> Route:
    if not snapshot.builtin_enabled:
        raise NoWorker(
            f"{why} and the built-in worker is disabled, so nothing can run it; start a worker "
            f"in the default pool (`workerpool worker start --pool "
            f"{snapshot.default_pool.slug!r}`), pick a pool with --pool, or "
            "`workerpool builtin-worker enable`")
    return BUILTIN_ROUTE


def _check_syntax(step: ScriptStep, chosen: Route, snapshot: Cluster) -> Route:
    """Refuse a syntax that no live worker of the target can run (e.g. no pwsh)."""
    candidates = live_in(snapshot, chosen.pool)
    if candidates and not any(step.syntax in w.syntaxes for w in candidates):
        program = "pwsh" if step.syntax == "powershell" else step.syntax
        raise NoWorker(f"no worker of {chosen.pool_name!r} can run {step.syntax} scripts "
                       f"({program} is not installed on them); install {program} on the "
                       "workers or choose another syntax")
    return chosen
