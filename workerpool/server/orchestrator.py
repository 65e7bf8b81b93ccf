"""The deployment orchestrator (in ``workerpool server`` and ``up``): it runs the deployments
clients submit, a process's steps in order against an environment's targets.

It only plans and enqueues; every script runs on a pool worker, a target's agent, or the
built-in worker. Its state lives in Redis and each run has a deterministic step id
(deployment, step, target, attempt), enqueued only if absent, so a restarted server resumes a
deployment without running any step twice.

Redis going away (a restart, a failover, a network cut) stops nothing for good: the loop that
takes deployments, and each deployment's own thread, say it in one line, wait with a backoff and
carry on once Redis answers, each deployment resuming from its stored record as a restarted
server would. Only that loop writes the server's heartbeat, so ``deploy`` refuses while no
orchestrator takes deployments.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import redis

from workerpool.core import keys
from workerpool.core.connection import AWAY
from workerpool.core.leadership import Fenced, FencedWrites, Lease, holder, node_id
from workerpool.core.leases import Leases
from workerpool.core.routeview import RouteView, read_route
from workerpool.core.routing import Route, route
from workerpool.core.sealing import SealError, key_to_seal
from workerpool.core.settings import Settings
from workerpool.core.steps import (
    FAILED,
    LOCATION_SERVER,
    LOCATION_WORKER,
    RUNNING,
    SUCCESS,
    TERMINAL,
    ScriptStep,
)
from workerpool.core.store import StepStore
from workerpool.core.targets import Target, TargetRegistry, matching
from workerpool.spec.deployment import (
    PENDING,
    SKIPPED,
    process_from_json,
    reseal,
    run_id,
)
from workerpool.spec.processes import ROLE_LOCATIONS, Process, ProcessStep
from workerpool.spec.projectvars import Scope, pool_for, variables_for

log = logging.getLogger("workerpool.orchestrator")
T = TypeVar("T")

# Seconds the server's heartbeat outlives its last beat, at least: while it is there, `deploy`
# hands deployments to the server (and refuses without one).
SERVER_TTL_FLOOR = 5.0
SAVE_PERIOD = 0.2  # seconds a deployment's stored list of runs may lag behind its dispatches
RUN_FIELDS = ("state", "outputs")  # what the orchestrator reads of a run that ended
ENDED = (SUCCESS, FAILED)  # a deployment's states once it ended
MISSING = ""  # a run in flight whose record is gone (``_finished``)


class _Outage:
    """One outage of Redis as one component sees it: a WARNING line when it starts and one when
    Redis answers again (not one per retry, and no traceback), and the pause before the next
    try, doubling from a quarter heartbeat interval up to one interval."""

    def __init__(self, who: str, settings: Settings, quiet: bool = False) -> None:
        self.who = who
        self.quiet = quiet  # the caller says it
        self.first = settings.heartbeat_interval / 4
        self.most = settings.heartbeat_interval
        self.pause = 0.0  # 0: Redis answers

    def failed(self, exc: redis.RedisError) -> float:
        """Note a failed call; the seconds to wait before the next."""
        if self.pause:
            self.pause = min(self.pause * 2, self.most)
            return self.pause
        self.pause = self.first
        if not self.quiet:
            what = ("Redis is unreachable" if isinstance(exc, AWAY)
                    else "Redis refused a call")
            log.warning("%s: %s (will retry): %s", self.who, what, _line(exc))
        return self.pause

    def over(self) -> None:
        """Note a call that went through."""
        if self.pause and not self.quiet:
            log.warning("%s: Redis answers again; carrying on", self.who)
        self.pause = 0.0


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass
class _Deployment:
    """A deployment while the orchestrator runs it."""

    id: str
    process: Process
    environment: str
    extra: dict[str, str]  # variables given at submission (`--var`), over the process's
    steps: dict[str, Any]  # per step: state, runs, targets, outputs (saved in the record)
    token: int  # the fencing token its server led under when it started running it
    outputs: dict[str, str] = field(default_factory=dict)  # earlier steps' output variables

    def done_key(self, pool: str) -> str:
        """The list the ends of the deployment's runs in *pool* are pushed onto."""
        return keys.done(pool, self.id)

    def pools(self) -> set[str]:
        """The pools the deployment's runs were sent to."""
        return {keys.pool_of(rid) for info in self.steps.values() for rid in info["runs"]}


@dataclass
class _Planned:
    index: int  # of the step in its process
    target: Target | None
    attempt: int


class _Routes:
    """What routing one step's runs reads, each part once for the step, when a first run goes
    there (not once per run, and never the whole cluster): per pool named (or the default
    pool, or the server) its ``RouteView``; per target agent its public keys, all sealing a
    target's run needs (it goes to the target's own queue)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self.views: dict[tuple[str | None, bool], RouteView] = {}
        self.target_keys: dict[str, dict[str, str]] = {}

    def view(self, pool: str | None, server: bool) -> RouteView:
        """What routing a run of *pool* (None: the default pool), or on the *server*, needs."""
        wanted = (pool, server)
        if wanted not in self.views:
            self.views[wanted] = read_route(self.redis, pool, server=server)
        return self.views[wanted]

    def public_keys(self, target_pool: str) -> dict[str, str]:
        """The public keys of a target agent's pool (``target:<slug>``), as a view's are."""
        if target_pool not in self.target_keys:
            stored = cast(str | None, self.redis.hget(keys.POOL_KEYS, target_pool))
            self.target_keys[target_pool] = {target_pool: stored} if stored else {}
        return self.target_keys[target_pool]


class Orchestrator:
    """Runs up to *cap* deployments at once; resumes the ones a previous server left."""

    def __init__(self, store: StepStore, settings: Settings, cap: int = 5) -> None:
        self.store = store
        self.redis = store.redis
        self.settings = settings
        self.leases = Leases(store.redis, store)
        self.cap = cap
        self.targets = TargetRegistry(store.redis)
        self.slots = threading.Semaphore(cap)
        self.keyring = store.keyring
        self.stopping = threading.Event()  # serve's *stop*: deployment threads see it too
        self.ready = threading.Event()  # set at serve's first beat
        # The lease's call also beats: written only by ``serve``, once per turn of its loop,
        # the key lapses within ``SERVER_TTL_FLOOR`` seconds of the loop stopping or losing Redis.
        self.lease = Lease(store.redis, node_id(), settings.server_lease,
                           max(settings.heartbeat_ttl, SERVER_TTL_FLOOR))
        self.writes = FencedWrites(store.redis)
        self.token = 0  # the fencing token this node leads under; 0 while it stands by
        self.standing = False  # said that it stands by (once per time it does)
        self.running: dict[str, int] = {}  # deployment -> token a thread of this node runs it
        # under

    def serve(self, stop: threading.Event) -> None:
        """Take deployments until *stop* is set, while this node leads: first the ones left
        active (by a previous server, or the leader this node took over from), then the queued
        ones, at most ``cap`` at once. A node that does not hold the lease stands by, trying
        for it every quarter lease, and takes it once it lapsed (core/leadership.py).

        Beat at each turn of the loop, in the lease's own call, leading or standing by (a
        standby takes a deployment within twice the lease interval of the leader stopping), and
        only then: while Redis is away or refuses the loop's calls, nothing beats (the key
        lapses and ``deploy`` refuses); the loop says so in one line, waits with a backoff and tries
        again. Any other error ends the loop, and the heartbeat. Stopped, the node gives the
        lease up, so a standby need not wait for it to lapse."""
        self.stopping = stop
        outage = _Outage("orchestrator", self.settings)
        left: list[str] | None = None  # active deployments to resume once leading
        turn = min(0.5, self.settings.server_lease / 6)  # two waits per turn, 3 turns a lease
        try:
            while not stop.is_set():
                try:
                    leading = self._lead()  # and beat: `deploy` is accepted
                    self.ready.set()
                    if not leading:
                        left = None
                        outage.over()
                        stop.wait(self.settings.server_lease / 4)
                        continue
                    if left is None:
                        left = sorted(cast(set[str],
                                           self.redis.smembers(keys.DEPLOYMENTS_ACTIVE)))
                    if self.slots.acquire(timeout=turn):  # else every slot runs a deployment
                        self._take(left, turn)
                    outage.over()
                except Fenced:
                    left = None  # the lease went to another node: stand by
                except redis.RedisError as exc:
                    # Read the active set again once Redis answers: a deployment taken by a
                    # call whose reply was lost is there, and no thread runs it.
                    left = None
                    stop.wait(outage.failed(exc))
        finally:
            if self.token:
                with contextlib.suppress(redis.RedisError):
                    self.lease.resign(self.token)
                self.token = 0

    def _lead(self) -> bool:
        """Renew this node's lease, or take it if it lapsed; whether this node leads. A new
        token (a takeover, or this node's own lease lapsed meanwhile) ends every deployment
        thread started under the old one, at its next write or wait."""
        token = self.lease.hold(self.token)
        if token != self.token or not (token or self.standing):
            if self.token:
                log.warning("this server lost the lease (fencing token %d); its deployments "
                            "are left to the server that leads now", self.token)
            if token:
                log.warning("this server leads (node %s, fencing token %d)", self.lease.node,
                            token)
            else:
                led = holder(self.redis)
                log.warning("this server stands by (node %s): %s leads", self.lease.node,
                            f"{led[0]} (fencing token {led[1]})" if led else "another node")
            self.token = token
            self.standing = not token
        return bool(token)

    def _take(self, left: list[str], turn: float) -> None:
        """With a slot held: start the next deployment left active, or the next queued one
        (waiting up to *turn* seconds for one); the slot is given back if none is started.
        A queued deployment is moved into the active set under the fence, atomically, so a
        server that stops in between loses none and a stale one takes none."""
        token = self.token
        while left and self.running.get(left[0]) == token:  # its thread carries on
            left.pop(0)
        try:
            if left:
                deployment_id: str | None = left.pop(0)
            else:
                # Block until one is queued without taking it (a rotation of the list onto
                # itself, left to left, changes nothing); then take it, fenced.
                waited = self.redis.blmove(  # Redis takes a fraction of a second here
                    keys.DEPLOYMENTS_QUEUE, keys.DEPLOYMENTS_QUEUE, turn,  # type: ignore[arg-type]
                    "LEFT", "LEFT")
                deployment_id = self.writes.take(token) if waited is not None else None
        except BaseException:
            self.slots.release()
            raise
        if deployment_id is None:
            self.slots.release()
        else:
            self._start(deployment_id, token)

    def _start(self, deployment_id: str, token: int) -> None:
        """Run a deployment in a thread of its own, holding a slot (taken by the caller), under
        fencing *token*."""

        def body() -> None:
            try:
                self._run_through_outages(deployment_id, token)
            except Fenced:
                log.warning("deployment %s: left to the server that leads now (this server's "
                            "fencing token %d is stale)", deployment_id, token)
            except Exception as exc:  # a bug must end the deployment, not leave it Running
                log.exception("deployment %s failed in the orchestrator", deployment_id)
                with contextlib.suppress(Fenced):
                    self._until_answered(f"deployment {deployment_id}", functools.partial(
                        self._end, deployment_id, token, FAILED,
                        f"orchestrator error: {exc}"))
            finally:
                if self.running.get(deployment_id) == token:
                    del self.running[deployment_id]
                self.slots.release()

        self.running[deployment_id] = token
        threading.Thread(target=body, name=f"deploy-{deployment_id}", daemon=True).start()

    def _run_through_outages(self, deployment_id: str, token: int) -> None:
        """``run``, and again each time Redis goes away under it, once Redis answers: a run
        resumes from the stored record as a restarted server's does (step ids are
        deterministic and enqueued only if absent, so no step is enqueued twice, and a step
        that ended meanwhile is found ended). Returns without ending the deployment if the
        orchestrator stops while Redis is away: it stays active, for the next server."""
        who = f"deployment {deployment_id}"
        while True:
            try:
                self.run(deployment_id, token)
                return
            except AWAY as exc:
                log.warning("%s: Redis is unreachable; resuming it once Redis answers: %s",
                            who, _line(exc))
            if self._until_answered(who, self.redis.ping, quiet=True) is None:
                return
            log.warning("%s: resumed", who)

    def _until_answered(self, who: str, action: Callable[[], T], quiet: bool = False
                        ) -> T | None:
        """*action*, tried again with a backoff while Redis is away, until the orchestrator
        stops (None then)."""
        outage = _Outage(who, self.settings, quiet)
        while True:
            try:
                result = action()
            except AWAY as exc:
                if self.stopping.wait(outage.failed(exc)):
                    log.warning("%s: left for the next server (the orchestrator stopped "
                                "while Redis was away)", who)
                    return None
                continue
            outage.over()
            return result

    def run(self, deployment_id: str, token: int) -> None:
        """Run (or resume) a deployment to its end, every write fenced by *token*."""
        record = cast(dict[str, str], self.redis.hgetall(keys.deployment(deployment_id)))
        if record.get("state") in ENDED:  # ended, and the reply was lost with Redis
            self.writes.write(token, deployment_id, active="-")
            return
        environment = record["environment"]
        try:
            process, extra = reseal(process_from_json(record["process"]),
                                    json.loads(record.get("extra") or "{}"),
                                    lambda value: self.keyring.open(value, keys.BUILTIN_POOL,
                                                                    "the server"))
        except SealError as exc:
            log.error("deployment %s: %s", deployment_id, exc)
            self._end(deployment_id, token, FAILED, str(exc))
            return
        deployment = _Deployment(deployment_id, process, environment, extra,
                                 json.loads(record.get("steps") or "{}"), token)
        # In the active set (resumed by the next server) and Running, in one fenced write.
        self.writes.write(token, deployment_id, {"state": RUNNING}, active="+")
        failed = False
        for index, step in enumerate(process.steps):
            info = deployment.steps.setdefault(step.name, {"state": PENDING, "runs": [],
                                                           "targets": {}})
            if info["state"] in (SUCCESS, FAILED, SKIPPED):
                failed |= info["state"] == FAILED
                deployment.outputs.update(info.get("outputs", {}))
                continue
            if (step.condition == "success" and failed) or \
                    (step.condition == "failure" and not failed):
                info["state"] = SKIPPED
                self._save(deployment)
                continue
            info["state"] = RUNNING
            self._save(deployment)
            ok, step_outputs = self._run_step(deployment, index, step)
            info["state"] = SUCCESS if ok else FAILED
            info["outputs"] = step_outputs
            deployment.outputs.update(step_outputs)
            failed |= not ok
            self._save(deployment)
        self._end(deployment_id, token, FAILED if failed else SUCCESS, "", deployment.pools())

    def _save(self, deployment: _Deployment) -> None:
        self.writes.write(deployment.token, deployment.id,
                          {"steps": json.dumps(deployment.steps)})

    def _end(self, deployment_id: str, token: int, state: str, message: str,
             pools: Iterable[str] = ()) -> None:
        # A run that ends later still pushes onto a done list deleted here; it expires then.
        self.writes.write(token, deployment_id,
                          {"state": state, "finished_at": time.time(), "message": message},
                          active="-", delete=[keys.done(pool, deployment_id) for pool in pools])

    def _run_step(self, deployment: _Deployment, index: int,
                  step: ProcessStep) -> tuple[bool, dict[str, str]]:
        """Run every run of one step (one per matching target, or one), at most
        ``max_parallelism`` at once, retrying failed ones; (all succeeded, their outputs)."""
        info = deployment.steps[step.name]
        targets: list[Target | None] = (
            list(matching(self.targets.list(), deployment.environment, step.roles))
            if step.location in ROLE_LOCATIONS else [None])
        queue = [_Planned(index, t, 0) for t in targets]
        in_flight: dict[str, _Planned] = {}
        ok = True
        step_outputs: dict[str, str] = {}
        routes = _Routes(self.redis)  # one routing read per pool the runs go to, not per run
        unsaved, next_save = False, 0.0
        while queue or in_flight:
            while queue and len(in_flight) < step.max_parallelism:
                planned = queue.pop(0)
                rid = self._dispatch(deployment, planned, step, routes)
                in_flight[rid] = planned
                if rid not in info["runs"]:
                    info["runs"].append(rid)
                    info["targets"][rid] = planned.target.name if planned.target else None
                    unsaved = True
            # The list of runs is for display only (run ids are deterministic, so a resumed
            # deployment finds its runs without it): written at most every SAVE_PERIOD, not
            # once per run, which would rewrite a list as long as the step's targets each time.
            wait = self.settings.heartbeat_interval
            if unsaved:
                now = time.monotonic()
                if now >= next_save:
                    self._save(deployment)
                    unsaved, next_save = False, now + SAVE_PERIOD
                else:  # not below 10 ms: Redis would read a timeout under 1 ms as none
                    wait = min(wait, max(next_save - now, 0.01))
            if self.token != deployment.token:  # this node lost the lease: stop here
                raise Fenced(f"fencing token {deployment.token} is stale")
            for rid, state, record in self._finished(in_flight, deployment, wait):
                planned = in_flight.pop(rid)
                if state == MISSING:  # lost with a Redis master that failed over: again
                    queue.insert(0, planned)
                elif state == SUCCESS:
                    step_outputs.update(self._outputs(step, planned, record))
                elif planned.attempt < step.retries:
                    queue.insert(0, _Planned(index, planned.target, planned.attempt + 1))
                else:
                    ok = False
        return ok, step_outputs

    def _finished(self, in_flight: dict[str, _Planned], deployment: _Deployment,
                  timeout: float) -> list[tuple[str, str, dict[str, str]]]:
        """Block until a run ends (finish pushes its id onto its pool's list) and check the ids
        pushed; after *timeout* seconds, reap and check every run in flight (a run may have
        ended while no one listened, or its record may be gone: enqueued on a Redis master
        that failed over before a replica had it, it is returned as MISSING, to enqueue
        again). Each check reads only a run's state and outputs."""
        done_keys = sorted({deployment.done_key(keys.pool_of(rid)) for rid in in_flight})
        popped = cast(tuple[str, str] | None, self.redis.blpop(done_keys, timeout=timeout))
        pipe = self.redis.pipeline(transaction=False)
        if popped is None:
            self.leases.reap_on_schedule(self.settings, {keys.pool_of(r) for r in in_flight})
            candidates = list(in_flight)
        else:  # the first ended run is read with the ids pushed since: one round trip
            candidates = [popped[1]]
            for done_key in done_keys:
                pipe.lpop(done_key, len(in_flight))
        for rid in candidates:
            pipe.hmget(keys.step(rid), RUN_FIELDS)
        replies: list[Any] = pipe.execute()
        if popped is not None:
            pushed = [rid for _ in done_keys for rid in cast(list[str] | None,
                                                             replies.pop(0)) or []]
            more = [rid for rid in dict.fromkeys(pushed) if rid in in_flight and rid != popped[1]]
            if more:
                pipe = self.redis.pipeline(transaction=False)
                for rid in more:
                    pipe.hmget(keys.step(rid), RUN_FIELDS)
                candidates += more
                replies += pipe.execute()
        records = [dict(zip(RUN_FIELDS, reply, strict=True)) for reply in replies]
        return [(rid, cast(str, rec["state"] or MISSING), cast(dict[str, str], rec))
                for rid, rec in zip(candidates, records, strict=True)
                if rid in in_flight and (rec["state"] in TERMINAL or
                                         (popped is None and rec["state"] is None))]

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

    def _dispatch(self, deployment: _Deployment, planned: _Planned, step: ProcessStep,
                  routes: _Routes) -> str:
        """Enqueue one run (unless a server before this one did) and return its id: its pool's,
        and otherwise the same each time (deployment, step, target, attempt)."""
        target, environment = planned.target, deployment.environment
        scoped = Scope(target.name, target.environment, target.roles) if target else None
        values, sensitive = variables_for(deployment.process, environment, scoped,
                                          deployment.extra)
        values.update(step.variables)
        values.update({"Environment.Name": environment, "Deployment.Id": deployment.id,
                       "Project.Name": deployment.process.name, "Step.Name": step.name,
                       "Step.Attempt": str(planned.attempt)})
        if target is not None:
            values.update({"Machine.Name": target.name, "Machine.Roles": ",".join(target.roles),
                           "Machine.Environment": target.environment})
        values.update(deployment.outputs)
        secret = {k: v for k, v in values.items() if k in sensitive}
        secret.update(step.sensitive_variables)
        plain = {k: v for k, v in values.items() if k not in secret}
        script_step = ScriptStep(
            script=step.script or "", syntax=step.syntax, name=step.name,
            pool=pool_for(step, values) if step.location != "server" else None,
            location=LOCATION_SERVER if step.location == "server" else LOCATION_WORKER,
            variables=plain, sensitive_variables=secret, timeout=step.timeout,
            packages=step.packages, script_path=step.script_file, substitute=step.substitute,
            structured=step.structured, priority=step.priority)
        chosen, public_keys = self._route(script_step, step, target, routes)
        rid = keys.step_id(chosen.pool, run_id(deployment.id, planned.index, target,
                                               planned.attempt))
        sealing = key_to_seal(self.keyring, self.redis, public_keys, chosen.pool,
                              bool(secret))
        self.store.enqueue(
            script_step.validate(), chosen, self.settings.lease_timeout,
            self.settings.step_timeout, step_id=rid, notify=deployment.done_key(chosen.pool),
            target=target.name if target else "", sealing=sealing, fence=deployment.token)
        return rid

    @staticmethod
    def _route(script_step: ScriptStep, step: ProcessStep, target: Target | None,
               routes: _Routes) -> tuple[Route, Mapping[str, str]]:
        """The run's route, and the public keys read with it (its pool's, for sealing)."""
        if step.location == "target":
            assert target is not None
            return (Route(target.queue, target.pool_key, f"target {target.name}"),
                    routes.public_keys(target.pool_key))
        view = routes.view(script_step.pool, server=script_step.location == LOCATION_SERVER)
        return route(script_step, view), view.public_keys
