"""The Python API: ``Client`` enqueues steps and manages pools; it never imports worker code."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import redis

from workerpool.core import keys
from workerpool.core.connection import connect, guarded, resolve_url
from workerpool.core.errors import BadInput, StepWaitTimeout, UnknownStep
from workerpool.core.leases import Leases
from workerpool.core.pools import PoolRegistry, find
from workerpool.core.routeview import read_route
from workerpool.core.routing import route
from workerpool.core.sealing import Keyring, key_to_seal
from workerpool.core.settings import Settings
from workerpool.core.snapshot import Snapshot, all_pools, read_snapshot
from workerpool.core.steps import (
    LOCATION_SERVER,
    TERMINAL,
    LogEntry,
    ScriptStep,
    StepResult,
    check_step,
)
from workerpool.core.store import StepStore
from workerpool.core.workers import DRAIN, OFFLINE, WorkerInfo

if TYPE_CHECKING:
    from workerpool.client.deployments import Deployments
    from workerpool.spec.deployment import DeploymentResult
    from workerpool.spec.processes import Process

DRAIN_POLL = 0.2  # seconds between looks while waiting for a draining worker to stop
P = ParamSpec("P")
T = TypeVar("T")


class Client:
    """Entry point for Python callers: ``Client.from_env()`` or ``Client(redis_url=...)``."""

    def __init__(self, redis_url: str | None = None, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        if redis_url is not None:
            self.settings = self.settings.with_redis_url(redis_url)
        self.url = resolve_url(self.settings)
        self.redis: redis.Redis = connect(self.url, self.settings)
        self.store = StepStore(self.redis, self.settings.result_ttl,
                               Keyring.load(self.settings), self.settings.redis_wait_replicas,
                               self.settings.redis_wait_timeout)
        self.leases = Leases(self.redis, self.store)
        self.pools = PoolRegistry(self.redis)
        self.workers = WorkerDirectory(self)
        self.builtin = BuiltinWorker(self)

    @classmethod
    def from_env(cls) -> Client:
        return cls()

    def guard(self, action: Callable[[], T]) -> T:
        """Run *action*, reporting Redis outages as RedisUnavailable."""
        return guarded(action, self.url)

    def snapshot(self, detail: bool = False) -> Snapshot:
        return self.guard(lambda: read_snapshot(self.redis, detail))

    def run(self, step: ScriptStep) -> StepHandle:
        """Validate, route and enqueue *step*: two Redis round trips."""
        step = check_step(step)
        view = self.guard(lambda: read_route(self.redis, step.pool,
                                             server=step.location == LOCATION_SERVER))
        chosen = route(step, view)
        lease_timeout = step.lease_timeout or self.settings.lease_timeout
        sealing = self.guard(lambda: key_to_seal(self.store.keyring, self.redis,
                                                 view.public_keys, chosen.pool,
                                                 bool(step.sensitive_variables)))
        step_id = self.guard(lambda: self.store.enqueue(
            step, chosen, lease_timeout, self.settings.step_timeout, sealing=sealing))
        return StepHandle(self, step_id)

    def step(self, step_id: str) -> StepHandle:
        """A handle on an existing step; UnknownStep if no record is stored."""
        try:
            record = keys.step(step_id)
        except ValueError:
            raise UnknownStep(f"{step_id!r} is not a step id; ids look like "
                              "database-worker-pool~3f2a9c1d0e4b5a6f (from `workerpool run`)"
                              ) from None
        if not self.guard(lambda: self.redis.exists(record)):
            raise UnknownStep(f"no step with id {step_id!r} (it never existed or its record "
                              "expired)")
        return StepHandle(self, step_id)

    def deploy(self, process: Process | str | Path, environment: str,
               variables: dict[str, str] | None = None, wait: bool = True,
               timeout: float | None = None) -> DeploymentResult:
        """Submit a deployment process (a loaded ``Process`` or a YAML path) to the server and,
        by default, wait for it; the result is what ``deploy --json`` prints."""
        from workerpool.spec.processes import Process, load_process

        if isinstance(process, (str, Path)):
            process = load_process(Path(process))
        elif not isinstance(process, Process):
            raise BadInput(f"deploy() takes a Process or the path of a process file, not "
                           f"{type(process).__name__}")
        deployment_id = self.deployments.submit(process, environment, variables)
        if not wait:
            return self.deployments.result(deployment_id)
        return self.deployments.wait(deployment_id, timeout=timeout)

    @functools.cached_property
    def deployments(self) -> Deployments:
        """Submit and read deployments (loaded on first use: ``run`` never needs it)."""
        from workerpool.client.deployments import Deployments

        return Deployments(self.redis, self.url, self.store.keyring)

    def reap(self, pools: Iterable[str] | None = None) -> int:
        """End lost and overdue steps of *pools* (default: every pool)."""
        return self.guard(lambda: self.leases.reap_on_schedule(
            self.settings, all_pools(self.redis) if pools is None else pools))

    def close(self) -> None:
        self.redis.close()


def _guarded(method: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        handle = args[0]
        assert isinstance(handle, StepHandle)
        return handle.client.guard(lambda: method(*args, **kwargs))
    return wrapper


class StepHandle:
    """A step that has been enqueued: wait for it, read or follow its log, cancel it."""

    def __init__(self, client: Client, step_id: str) -> None:
        self.client = client
        self.id = step_id
        self.followed_to_end = False

    def __repr__(self) -> str:
        return f"StepHandle({self.id!r})"

    @_guarded
    def result(self) -> StepResult:
        """The step as it is now (not waiting)."""
        return self.client.store.result(self.id)

    @_guarded
    def logs(self) -> list[LogEntry]:
        return self.client.store.log(self.id)

    @_guarded
    def cancel(self) -> str:
        return self.client.leases.cancel(self.id)

    def follow(self, timeout: float | None = None) -> Iterator[LogEntry]:
        """Yield log entries as the step writes them, until it ends (or *timeout* passes).
        ``followed_to_end`` tells afterwards whether the end marker was read."""
        self.followed_to_end = False
        deadline = None if timeout is None else time.monotonic() + timeout
        tick_ms = max(50, int(self.client.settings.heartbeat_interval * 500))
        entries = self.client.store.follow(self.id, tick_ms)
        while True:
            entry_id, entry = self.client.guard(lambda: next(entries))
            if entry is not None:
                yield entry
            elif entry_id:
                self.followed_to_end = True
                return  # the end marker
            elif self._ended_without_marker():
                return
            if deadline is not None and time.monotonic() > deadline:
                raise StepWaitTimeout(f"step {self.id} is still running after {timeout:g}s")

    def _ended_without_marker(self) -> bool:
        """On an idle tick: reap lost or overdue steps, then report whether this one ended."""
        self.client.reap([keys.pool_of(self.id)])
        state = self.client.guard(lambda: self.client.redis.hget(keys.step(self.id), "state"))
        return state is None or state in TERMINAL

    def wait(self, timeout: float | None = None,
             on_log: Callable[[LogEntry], None] | None = None) -> StepResult:
        """Block until the step ends; *on_log* sees each log line as it arrives."""
        entries = []
        for entry in self.follow(timeout):
            entries.append(entry)
            if on_log is not None:
                on_log(entry)
        if not self.followed_to_end:
            return self.result()
        # The whole log was read on the way; only the record is left to fetch.
        record = self.client.guard(lambda: self.client.store.record(self.id))
        return StepResult.from_record(self.id, record, tuple(entries))


class WorkerDirectory:
    """Read access to registered workers (``client.workers``)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def list(self, pool: str | None = None) -> list[WorkerInfo]:
        snap = self.client.snapshot()
        if pool is None:
            return list(snap.workers)
        slug = keys.BUILTIN_POOL if pool == keys.BUILTIN_POOL else find(snap.pools, pool).slug
        return snap.workers_in(slug)

    def drain(self, name: str) -> WorkerInfo:
        """Tell worker *name* to drain: it takes no new step, finishes what it runs,
        deregisters and exits 0 (``wait_gone`` waits for that). BadInput (exit 2) for a name
        no worker has, or an Offline worker."""
        found = [w for w in self.list() if w.name == name]
        if not found:
            raise BadInput(f"no worker named {name!r}; `workerpool worker list` shows them")
        worker = found[0]
        if worker.state == OFFLINE:
            raise BadInput(f"worker {name!r} is Offline: there is nothing to drain (it will "
                           "not take steps unless it starts again)")
        self.client.redis.publish(keys.control(worker.pool, worker.instance), DRAIN)
        return worker

    def wait_gone(self, worker: WorkerInfo, timeout: float | None = None) -> None:
        """Wait until *worker* has deregistered (or stopped heartbeating); StepWaitTimeout
        (exit 1) if it still runs after *timeout* seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:  # its record and heartbeat, not the whole cluster's snapshot
            pipe = self.client.redis.pipeline(transaction=False)
            pipe.hget(keys.workers(worker.pool), worker.name)
            pipe.get(keys.heartbeat(worker.pool, worker.instance))
            raw, beat = self.client.guard(pipe.execute)
            now = WorkerInfo.from_record(raw, beat) if raw else None
            if now is None or now.instance != worker.instance or now.state == OFFLINE:
                return
            if deadline is not None and time.monotonic() > deadline:
                running = now.heartbeat.running if now.heartbeat else 0
                raise StepWaitTimeout(f"worker {worker.name} is still draining after "
                                      f"{timeout:g}s ({running} step(s) running); it stops "
                                      "once they end")
            time.sleep(DRAIN_POLL)


class BuiltinWorker:
    """Enable, disable and inspect the built-in worker (``client.builtin``)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def enable(self) -> None:
        self.client.guard(lambda: self.client.redis.delete(keys.BUILTIN_DISABLED))

    def disable(self) -> None:
        self.client.guard(lambda: self.client.redis.set(keys.BUILTIN_DISABLED, "1"))

    def enabled(self) -> bool:
        return not self.client.guard(lambda: self.client.redis.exists(keys.BUILTIN_DISABLED))
