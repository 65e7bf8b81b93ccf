"""Deployments from the caller's side: submit one to the server, read its state, wait for it.

The server's orchestrator (``workerpool.server.orchestrator``) runs what is submitted here;
both share the stored record (``workerpool.spec.deployment``).
"""

from __future__ import annotations

import functools
import json
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis

from workerpool.core import keys
from workerpool.core.connection import guarded
from workerpool.core.errors import BadInput, NoWorker, WorkerPoolError
from workerpool.core.routeview import read_route
from workerpool.core.routing import route
from workerpool.core.sealing import Keyring, PublicKey, key_to_seal, seal
from workerpool.core.steps import QUEUED, ScriptStep
from workerpool.core.targets import TargetRegistry, matching
from workerpool.spec.deployment import (
    PENDING,
    DeploymentResult,
    StepOutcome,
    process_from_json,
    process_to_json,
    reseal,
    run_from_record,
)
from workerpool.spec.processes import POOL_LOCATIONS, ROLE_LOCATIONS, Process
from workerpool.spec.projectvars import pool_for, variables_for

T = TypeVar("T")


class Deployments:
    """Client side: submit a deployment to the server, read its state (``client.deployments``)."""

    def __init__(self, client: redis.Redis, url: str, keyring: Keyring) -> None:
        self.redis = client
        self.url = url
        self.keyring = keyring
        self.targets = TargetRegistry(client)

    def guard(self, action: Callable[[], T]) -> T:
        return guarded(action, self.url)

    def submit(self, process: Process, environment: str,
               extra: dict[str, str] | None = None) -> str:
        """Check what can be checked before anything runs, then hand it to the server."""
        if not environment.strip():
            raise BadInput("give the environment to deploy to: --environment NAME")
        self._preflight(process, environment, extra or {})
        if not self.guard(lambda: self.redis.exists(keys.SERVER_HEARTBEAT)):
            raise NoWorker("no workerpool server is running to orchestrate the deployment; "
                           "start `workerpool server` (or `workerpool up`)")
        deployment_id = "d" + secrets.token_hex(7)
        sealed, sealed_extra = reseal(process, extra or {}, self._sealer())
        record = {"process": process_to_json(sealed), "environment": environment,
                  "extra": json.dumps(sealed_extra), "state": QUEUED, "name": process.name,
                  "created_at": time.time(), "steps": json.dumps({})}
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.deployment(deployment_id), mapping=record)  # type: ignore[arg-type]
        pipe.zadd(keys.DEPLOYMENTS_ALL, {deployment_id: time.time()})
        pipe.lpush(keys.DEPLOYMENTS_QUEUE, deployment_id)
        self.guard(pipe.execute)
        return deployment_id

    def _sealer(self) -> Callable[[str], str]:
        """Seals a value to the server (the built-in worker's key), which opens the record and
        seals each run again to its pool; the key is read when the first value is sealed."""
        found: list[PublicKey | None] = []

        def seal_one(value: str) -> str:
            if not found:
                stored = self.guard(lambda: self.redis.hget(keys.POOL_KEYS, keys.BUILTIN_POOL))
                public = {keys.BUILTIN_POOL: str(stored)} if stored else {}
                found.append(self.guard(lambda: key_to_seal(self.keyring, self.redis, public,
                                                            keys.BUILTIN_POOL, True)))
            if found[0] is None:
                raise BadInput("sensitive values of a deployment are sealed to the server, which "
                               "has no key yet: it makes one when it starts (workerpool server "
                               "or up)")
            return seal(found[0], value)

        return seal_one

    def _preflight(self, process: Process, environment: str, extra: dict[str, str]) -> None:
        targets = self.targets.list()
        variables, _ = variables_for(process, environment, None, extra)
        checked: set[str] = set()  # each pool is read once, however many steps name it
        for step in process.steps:
            where = f"{process.source}: step {step.name!r}"
            pool = pool_for(step, variables)
            if step.location in POOL_LOCATIONS and pool is not None and pool not in checked:
                try:
                    view = self.guard(functools.partial(read_route, self.redis, pool))
                    route(ScriptStep(script="true", pool=pool), view)
                    checked.add(pool)
                except WorkerPoolError as exc:
                    raise BadInput(f"{where}: field 'pool': {exc}") from None
            if step.location in ROLE_LOCATIONS and not matching(targets, environment,
                                                                step.roles):
                raise BadInput(f"{where}: field 'roles': no target in environment "
                               f"{environment!r} has role(s) {', '.join(step.roles)}; add one "
                               "with `workerpool target add`")

    def result(self, deployment_id: str) -> DeploymentResult:
        record = cast(dict[str, str], self.guard(
            lambda: self.redis.hgetall(keys.deployment(deployment_id))))
        if not record:
            raise BadInput(f"no deployment with id {deployment_id!r}")
        steps_state: dict[str, Any] = json.loads(record.get("steps") or "{}")
        process = process_from_json(record["process"])
        pipe = self.redis.pipeline(transaction=False)
        planned = [(step, steps_state.get(step.name, {})) for step in process.steps]
        for _, info in planned:
            for rid in info.get("runs", []):
                pipe.hgetall(keys.step(rid))
        records = iter(cast(list[dict[str, str]], self.guard(pipe.execute)))
        outcomes = []
        for step, info in planned:
            runs = tuple(run_from_record(rid, info.get("targets", {}).get(rid), next(records))
                         for rid in info.get("runs", []))
            outcomes.append(StepOutcome(step.name, info.get("state", PENDING), runs))
        return DeploymentResult(deployment_id, record.get("state", QUEUED),
                                record.get("environment", ""), record.get("name", ""),
                                tuple(outcomes), record.get("message", ""))

    def list(self, limit: int = 50) -> list[DeploymentResult]:
        ids = cast(list[str], self.redis.zrevrange(keys.DEPLOYMENTS_ALL, 0, limit - 1))
        return [self.result(i) for i in ids if self.redis.exists(keys.deployment(i))]

    def wait(self, deployment_id: str, on_change: Any = None,
             timeout: float | None = None) -> DeploymentResult:
        """Poll until the deployment ends; *on_change* sees each new result."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        while True:
            current = self.result(deployment_id)
            if on_change is not None and current != last:
                on_change(current)
            last = current
            if current.done:
                return current
            if deadline is not None and time.monotonic() > deadline:
                return current
            time.sleep(0.2)
