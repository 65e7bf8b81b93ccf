"""Deployments: a process's steps run in order against an environment's targets.

The orchestrator (in ``workerpool server``) only plans and enqueues; every script runs on a
pool worker, a target's agent, or the built-in worker. Its state lives in Redis and each run
has a deterministic step id (deployment, step, target, attempt), enqueued only if absent, so a
restarted server resumes a deployment without running any step twice.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

from workerpool.client.client import Client
from workerpool.core import keys
from workerpool.core.errors import BadInput, NoWorker, WorkerPoolError
from workerpool.core.packageref import PackageRef
from workerpool.core.routing import Route, route
from workerpool.core.sealing import SealError
from workerpool.core.snapshot import Snapshot
from workerpool.core.steps import (
    FAILED,
    LOCATION_SERVER,
    LOCATION_WORKER,
    QUEUED,
    RUNNING,
    SUCCESS,
    TERMINAL,
    ScriptStep,
)
from workerpool.core.targets import TargetInfo, TargetRegistry, matching
from workerpool.spec.processes import (
    POOL_LOCATIONS,
    ROLE_LOCATIONS,
    Process,
    ProcessStep,
    ProjectVariable,
)
from workerpool.spec.projectvars import Target, pool_for, variables_for

log = logging.getLogger("workerpool.orchestrator")

SKIPPED, PENDING = "Skipped", "Pending"  # a deployment step's states beyond a step's own
SAVE_PERIOD = 0.2  # seconds a deployment's stored list of runs may lag behind its dispatches
RUN_FIELDS = ("state", "outputs")  # what the orchestrator reads of a run that ended


# -- the process as stored in a deployment record ------------------------------------------

def process_to_json(process: Process) -> str:
    return json.dumps(asdict(process), default=str)


def reseal(process: Process, extra: dict[str, str], change: Callable[[str], str]
           ) -> tuple[Process, dict[str, str]]:
    """*process* and *extra* with *change* applied to every sensitive value: sealing them
    before the deployment record is stored, opening them in the server that runs it."""
    secret = {v.name.casefold() for v in process.variables if v.sensitive}
    variables = tuple(replace(v, value=change(v.value)) if v.sensitive else v
                      for v in process.variables)
    # A template's parameters became the step's variables when the file was loaded; they are
    # not kept (a sensitive one may have been overridden by a plain variable of the same name).
    steps = [replace(step, parameters={},
                     sensitive_variables={k: change(v)
                                          for k, v in step.sensitive_variables.items()})
             for step in process.steps]
    extra = {k: change(v) if k.strip().casefold() in secret else v for k, v in extra.items()}
    return replace(process, variables=variables, steps=tuple(steps)), extra


def process_from_json(raw: str) -> Process:
    data = json.loads(raw)
    steps = []
    for s in data["steps"]:
        s["packages"] = tuple(PackageRef(**p) for p in s["packages"])
        for field in ("roles", "substitute", "structured"):
            s[field] = tuple(s[field])
        steps.append(ProcessStep(**s))
    variables = tuple(ProjectVariable(**{**v, **{k: tuple(v[k]) for k in
                                                 ("environments", "roles", "targets")}})
                      for v in data["variables"])
    return Process(name=data["name"], source=data["source"], steps=tuple(steps),
                   variables=variables)


# -- results -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    id: str
    target: str | None
    pool: str
    worker: str | None
    state: str
    exit_code: int | None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class StepOutcome:
    name: str
    state: str
    runs: tuple[Run, ...]

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "state": self.state, "runs": [r.to_json() for r in self.runs]}


@dataclass(frozen=True)
class DeploymentResult:
    id: str
    state: str
    environment: str
    process: str
    steps: tuple[StepOutcome, ...]
    message: str = ""

    @property
    def done(self) -> bool:
        return self.state in (SUCCESS, FAILED)

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "state": self.state, "environment": self.environment,
                "message": self.message, "steps": [s.to_json() for s in self.steps]}


def _run(rid: str, target: str | None, rec: dict[str, str]) -> Run:
    code = rec.get("exit_code")
    return Run(rid, target, rec.get("pool", ""), rec.get("worker") or None,
               rec.get("state", "Expired"), int(code) if code else None)


def run_id(deployment_id: str, index: int, target: TargetInfo | None, attempt: int) -> str:
    return f"{deployment_id}.{index}.{target.slug if target else '-'}.{attempt}"


# -- submitting and reading ----------------------------------------------------------------

class Deployments:
    """Client side: submit a deployment to the server, read its state (``client.deployments``)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.redis = client.redis
        self.targets = TargetRegistry(client.redis)

    def submit(self, process: Process, environment: str,
               extra: dict[str, str] | None = None) -> str:
        """Check what can be checked before anything runs, then hand it to the server."""
        if not environment.strip():
            raise BadInput("give the environment to deploy to: --environment NAME")
        self._preflight(process, environment, extra or {})
        if not self.client.guard(lambda: self.redis.exists(keys.SERVER_HEARTBEAT)):
            raise NoWorker("no workerpool server is running to orchestrate the deployment; "
                           "start `workerpool server` (or `workerpool up`)")
        deployment_id = "d" + secrets.token_hex(7)
        keyring = self.client.store.keyring
        sealed, sealed_extra = reseal(process, extra or {}, keyring.seal)
        record = {"process": process_to_json(sealed), "environment": environment,
                  "extra": json.dumps(sealed_extra), "state": QUEUED, "name": process.name,
                  "created_at": time.time(), "steps": json.dumps({})}
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.deployment(deployment_id), mapping=record)  # type: ignore[arg-type]
        pipe.zadd(keys.DEPLOYMENTS_ALL, {deployment_id: time.time()})
        pipe.lpush(keys.DEPLOYMENTS_QUEUE, deployment_id)
        self.client.guard(pipe.execute)
        return deployment_id

    def _preflight(self, process: Process, environment: str, extra: dict[str, str]) -> None:
        snapshot = self.client.snapshot()
        targets = self.targets.list()
        variables, _ = variables_for(process, environment, None, extra)
        for step in process.steps:
            where = f"{process.source}: step {step.name!r}"
            pool = pool_for(step, variables)
            if step.location in POOL_LOCATIONS and pool is not None:
                try:
                    route(ScriptStep(script="true", pool=pool), snapshot)
                except WorkerPoolError as exc:
                    raise BadInput(f"{where}: field 'pool': {exc}") from None
            if step.location in ROLE_LOCATIONS and not matching(targets, environment,
                                                                step.roles):
                raise BadInput(f"{where}: field 'roles': no target in environment "
                               f"{environment!r} has role(s) {', '.join(step.roles)}; add one "
                               "with `workerpool target add`")

    def result(self, deployment_id: str) -> DeploymentResult:
        record = cast(dict[str, str], self.client.guard(
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
        records = iter(cast(list[dict[str, str]], self.client.guard(pipe.execute)))
        outcomes = []
        for step, info in planned:
            runs = tuple(_run(rid, info.get("targets", {}).get(rid), next(records))
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


# -- the orchestrator ----------------------------------------------------------------------

@dataclass
class _Planned:
    id: str
    target: TargetInfo | None
    attempt: int


class Orchestrator:
    """Runs up to *cap* deployments at once; resumes the ones a previous server left."""

    def __init__(self, client: Client, cap: int = 5) -> None:
        self.client = client
        self.redis = client.redis
        self.cap = cap
        self.targets = TargetRegistry(client.redis)
        self.slots = threading.Semaphore(cap)
        self.keyring = client.store.keyring

    def serve(self, stop: threading.Event) -> None:
        for deployment_id in sorted(cast(set[str], self.redis.smembers(keys.DEPLOYMENTS_ACTIVE))):
            self._start(deployment_id)
        while not stop.is_set():
            self.redis.set(keys.SERVER_HEARTBEAT, time.time(),
                           px=int(self.client.settings.heartbeat_ttl * 1000))
            if not self.slots.acquire(timeout=0.5):
                continue
            popped = cast(tuple[str, str] | None,
                          self.redis.brpop([keys.DEPLOYMENTS_QUEUE], timeout=1))
            if popped is None:
                self.slots.release()
                continue
            self.redis.sadd(keys.DEPLOYMENTS_ACTIVE, popped[1])
            self._start(popped[1], acquired=True)

    def _start(self, deployment_id: str, acquired: bool = False) -> None:
        if not acquired:
            self.slots.acquire()

        def body() -> None:
            try:
                self.run(deployment_id)
            except Exception as exc:  # a bug must end the deployment, not leave it Running
                log.exception("deployment %s failed in the orchestrator", deployment_id)
                self._end(deployment_id, FAILED, f"orchestrator error: {exc}")
            finally:
                self.slots.release()

        threading.Thread(target=body, name=f"deploy-{deployment_id}", daemon=True).start()

    def run(self, deployment_id: str) -> None:
        record = cast(dict[str, str], self.redis.hgetall(keys.deployment(deployment_id)))
        environment = record["environment"]
        try:
            process, extra = reseal(process_from_json(record["process"]),
                                    json.loads(record.get("extra") or "{}"),
                                    lambda value: self.keyring.open(value, "the server"))
        except SealError as exc:
            log.error("deployment %s: %s", deployment_id, exc)
            self._end(deployment_id, FAILED, str(exc))
            return
        steps_state: dict[str, Any] = json.loads(record.get("steps") or "{}")
        self.redis.hset(keys.deployment(deployment_id), "state", RUNNING)
        outputs: dict[str, str] = {}
        failed = False
        for index, step in enumerate(process.steps):
            info = steps_state.setdefault(step.name, {"state": PENDING, "runs": [],
                                                      "targets": {}})
            if info["state"] in (SUCCESS, FAILED, SKIPPED):
                failed |= info["state"] == FAILED
                outputs.update(info.get("outputs", {}))
                continue
            if (step.condition == "success" and failed) or \
                    (step.condition == "failure" and not failed):
                info["state"] = SKIPPED
                self._save(deployment_id, steps_state)
                continue
            info["state"] = RUNNING
            self._save(deployment_id, steps_state)
            ok, step_outputs = self._run_step(deployment_id, index, step, process, environment,
                                              extra, outputs, info, steps_state)
            info["state"] = SUCCESS if ok else FAILED
            info["outputs"] = step_outputs
            outputs.update(step_outputs)
            failed |= not ok
            self._save(deployment_id, steps_state)
        self._end(deployment_id, FAILED if failed else SUCCESS, "")

    def _save(self, deployment_id: str, steps_state: dict[str, Any]) -> None:
        self.redis.hset(keys.deployment(deployment_id), "steps", json.dumps(steps_state))

    def _end(self, deployment_id: str, state: str, message: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.deployment(deployment_id),
                  mapping={"state": state, "finished_at": time.time(), "message": message})
        pipe.srem(keys.DEPLOYMENTS_ACTIVE, deployment_id)
        pipe.delete(keys.deployment_done(deployment_id))
        pipe.execute()

    def _run_step(self, deployment_id: str, index: int, step: ProcessStep, process: Process,
                  environment: str, extra: dict[str, str], outputs: dict[str, str],
                  info: dict[str, Any], steps_state: dict[str, Any]
                  ) -> tuple[bool, dict[str, str]]:
        targets: list[TargetInfo | None] = (
            list(matching(self.targets.list(), environment, step.roles))
            if step.location in ROLE_LOCATIONS else [None])
        queue = [_Planned(run_id(deployment_id, index, t, 0), t, 0) for t in targets]
        in_flight: dict[str, _Planned] = {}
        ok = True
        step_outputs: dict[str, str] = {}
        done_key = keys.deployment_done(deployment_id)
        snapshot = self.client.snapshot()  # one routing read per step, not per run
        unsaved, next_save = False, 0.0
        while queue or in_flight:
            while queue and len(in_flight) < step.max_parallelism:
                planned = queue.pop(0)
                self._dispatch(deployment_id, planned, step, process, environment, extra,
                               outputs, done_key, snapshot)
                in_flight[planned.id] = planned
                if planned.id not in info["runs"]:
                    info["runs"].append(planned.id)
                    info["targets"][planned.id] = planned.target.name if planned.target else None
                    unsaved = True
            # The list of runs is for display only (run ids are deterministic, so a resumed
            # deployment finds its runs without it): written at most every SAVE_PERIOD, not
            # once per run, which would rewrite a list as long as the step's targets each time.
            wait = self.client.settings.heartbeat_interval
            if unsaved:
                now = time.monotonic()
                if now >= next_save:
                    self._save(deployment_id, steps_state)
                    unsaved, next_save = False, now + SAVE_PERIOD
                else:  # not below 10 ms: Redis would read a timeout under 1 ms as none
                    wait = min(wait, max(next_save - now, 0.01))
            for rid, state, record in self._finished(in_flight, done_key, wait):
                planned = in_flight.pop(rid)
                if state == SUCCESS:
                    step_outputs.update(self._outputs(step, planned, record))
                elif planned.attempt < step.retries:
                    attempt = planned.attempt + 1
                    queue.insert(0, _Planned(run_id(deployment_id, index, planned.target,
                                                    attempt), planned.target, attempt))
                else:
                    ok = False
        return ok, step_outputs

    def _finished(self, in_flight: dict[str, _Planned], done_key: str,
                  timeout: float) -> list[tuple[str, str, dict[str, str]]]:
        """Block until a run ends (finish pushes its id) and check the ids pushed; after
        *timeout* seconds, reap and check every run in flight (a run may have ended while no
        one listened). Each check reads only a run's state and outputs."""
        popped = cast(tuple[str, str] | None, self.redis.blpop([done_key], timeout=timeout))
        pipe = self.redis.pipeline(transaction=False)
        if popped is None:
            self.client.reap()
            candidates = list(in_flight)
        else:  # the first ended run is read with the ids pushed since: one round trip
            candidates = [popped[1]]
            pipe.lpop(done_key, len(in_flight))
        for rid in candidates:
            pipe.hmget(keys.step(rid), RUN_FIELDS)
        replies: list[Any] = pipe.execute()
        if popped is not None:
            pushed = cast(list[str] | None, replies.pop(0)) or []
            more = [rid for rid in dict.fromkeys(pushed) if rid in in_flight and rid != popped[1]]
            if more:
                pipe = self.redis.pipeline(transaction=False)
                for rid in more:
                    pipe.hmget(keys.step(rid), RUN_FIELDS)
                candidates += more
                replies += pipe.execute()
        records = [dict(zip(RUN_FIELDS, reply, strict=True)) for reply in replies]
        return [(rid, cast(str, rec["state"]), cast(dict[str, str], rec))
                for rid, rec in zip(candidates, records, strict=True)
                if rid in in_flight and rec["state"] in TERMINAL]

    @staticmethod
    def _outputs(step: ProcessStep, planned: _Planned,
                 record: dict[str, str]) -> dict[str, str]:
        produced: dict[str, str] = json.loads(record.get("outputs") or "{}")
        result = {}
        for name, value in produced.items():
            result[f"Action[{step.name}].Output.{name}"] = value
            if planned.target is not None:
                result[f"Action[{step.name}].Output[{planned.target.name}].{name}"] = value
        return result

    def _dispatch(self, deployment_id: str, planned: _Planned, step: ProcessStep,
                  process: Process, environment: str, extra: dict[str, str],
                  outputs: dict[str, str], done_key: str, snapshot: Snapshot) -> None:
        target = planned.target
        scoped = Target(target.name, target.environment, target.roles) if target else None
        values, sensitive = variables_for(process, environment, scoped, extra)
        values.update(step.variables)
        values.update({"Environment.Name": environment, "Deployment.Id": deployment_id,
                       "Project.Name": process.name, "Step.Name": step.name,
                       "Step.Attempt": str(planned.attempt)})
        if target is not None:
            values.update({"Machine.Name": target.name, "Machine.Roles": ",".join(target.roles),
                           "Machine.Environment": target.environment})
        values.update(outputs)
        secret = {k: v for k, v in values.items() if k in sensitive}
        secret.update(step.sensitive_variables)
        plain = {k: v for k, v in values.items() if k not in secret}
        script_step = ScriptStep(
            script=step.script or "", syntax=step.syntax, name=step.name,
            pool=pool_for(step, values) if step.location != "server" else None,
            location=LOCATION_SERVER if step.location == "server" else LOCATION_WORKER,
            variables=plain, sensitive_variables=secret, timeout=step.timeout,
            packages=step.packages, script_path=step.script_file, substitute=step.substitute,
            structured=step.structured)
        chosen = self._route(script_step, step, target, snapshot)
        self.client.store.enqueue(
            script_step.validate(), chosen, self.client.settings.lease_timeout,
            self.client.settings.step_timeout, step_id=planned.id, notify=done_key,
            target=target.name if target else "")

    @staticmethod
    def _route(script_step: ScriptStep, step: ProcessStep, target: TargetInfo | None,
               snapshot: Snapshot) -> Route:
        if step.location == "target":
            assert target is not None
            return Route(target.queue, target.pool_key, f"target {target.name}")
        return route(script_step, snapshot)
