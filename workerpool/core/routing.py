"""Routing: which queue a step goes to. A pure function of the step and a cluster snapshot."""

from __future__ import annotations

from dataclasses import dataclass

from workerpool.core import keys
from workerpool.core.errors import NoWorker
from workerpool.core.pools import find
from workerpool.core.snapshot import Snapshot
from workerpool.core.steps import LOCATION_SERVER, ScriptStep
from workerpool.core.workers import WorkerInfo


@dataclass(frozen=True)
class Route:
    queue: str
    pool: str  # a pool slug, or "builtin"
    pool_name: str

    @property
    def builtin(self) -> bool:
        return self.pool == keys.BUILTIN_POOL


BUILTIN_ROUTE = Route(keys.BUILTIN_QUEUE, keys.BUILTIN_POOL, "built-in worker")


def route(step: ScriptStep, snapshot: Snapshot) -> Route:
    """Apply the routing rules; raise a Refused error when no queue may take the step."""
    if step.location == LOCATION_SERVER:
        return _check_syntax(step, _builtin(snapshot, "the step runs on the server (--server)"),
                             snapshot)
    if step.pool is not None:
        pool = find(snapshot.pools, step.pool)
    else:
        pool = snapshot.default_pool
        if not snapshot.workers_in(pool.slug):
            return _check_syntax(step, _builtin(
                snapshot, f"the default pool {pool.name!r} has no workers"), snapshot)
    return _check_syntax(step, Route(pool.queue, pool.slug, pool.name), snapshot)


def _builtin(snapshot: Snapshot, why: str) -> Route:
    if not snapshot.builtin_enabled:
        raise NoWorker(
            f"{why} and the built-in worker is disabled, so nothing can run it; start a worker "
            f"in the default pool (`workerpool worker start --pool "
            f"{snapshot.default_pool.slug!r}`), pick a pool with --pool, or "
            "`workerpool builtin-worker enable`")
    return BUILTIN_ROUTE


def _check_syntax(step: ScriptStep, chosen: Route, snapshot: Snapshot) -> Route:
    """Refuse a syntax that no registered worker of the target can run (e.g. no pwsh)."""
    candidates: list[WorkerInfo] = snapshot.workers_in(chosen.pool)
    if candidates and not any(step.syntax in w.syntaxes for w in candidates):
        program = "pwsh" if step.syntax == "powershell" else step.syntax
        raise NoWorker(f"no worker of {chosen.pool_name!r} can run {step.syntax} scripts "
                       f"({program} is not installed on them); install {program} on the "
                       "workers or choose another syntax")
    return chosen
