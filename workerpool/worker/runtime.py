"""A worker's runtime: its heartbeat, reaper, cancel and health threads, and the claim, run and
end of each step it leases (the body of the Celery task)."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis

from workerpool.core import keys, messages, workers
from workerpool.core.connection import AWAY, REDIS_RETRY_SECONDS, connect
from workerpool.core.errors import WorkerPoolError
from workerpool.core.leases import Claim, Leases, lock_ms, reap_every
from workerpool.core.pools import PoolRegistry
from workerpool.core.sealing import Keyring, SealError
from workerpool.core.settings import Settings
from workerpool.core.steps import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCESS,
    TIMED_OUT,
    WORKER_LOST,
)
from workerpool.core.store import StepStore
from workerpool.core.syntaxes import install_helpers
from workerpool.core.variables import Masker, script_environment
from workerpool.core.workers import (
    DRAIN,
    DRAINING,
    FREED,
    HEALTHY,
    STARTING,
    UNHEALTHY,
    Heartbeat,
)
from workerpool.worker import health
from workerpool.worker.identity import Identity
from workerpool.worker.isolation.containment import Containment, clear_users
from workerpool.worker.isolation.users import ScriptUser, ScriptUsers, hand_over
from workerpool.worker.isolation.watchdog import Watchdog
from workerpool.worker.packages.cache import PackageCache
from workerpool.worker.packages.registry import FeedRegistry
from workerpool.worker.step.artifacts import collect
from workerpool.worker.step.execution import STOP_ABORT, STOP_CANCEL, STOP_TIMEOUT, ScriptRun
from workerpool.worker.step.setup import Prepared, StepSetup, system_variables
from workerpool.worker.step.steplog import StepLog
from workerpool.worker.workdirs import make_root, make_workdir, private_dir, remove_workdir

log = logging.getLogger("workerpool.worker")
T = TypeVar("T")

# Seconds an unhealthy worker holds a message it should not have taken before handing it back,
# so its queue gate (which checks several times a second) has stopped consumption by then.
HAND_BACK_DELAY = 0.5
HELD_REASON = ("consumer cancelled by control command; `celery control add_consumer {queue}` "
               "resumes it")



@dataclass(frozen=True)
class Ending:
    state: str
    exit_code: int | None
    message: str


def _nothing() -> None:
    """No acknowledgement to make: Celery acks the message when the task returns."""


def _owned(workdir: Path, user: ScriptUser | None) -> bool:
    """Whether *workdir* was handed to *user* (not if the step ended before its script)."""
    try:
        return os.stat(workdir).st_uid == (os.geteuid() if user is None else user.uid)
    except OSError:
        return False


class Runtime:
    """Per-process worker state shared by the Celery task threads and the background threads."""

    def __init__(self, settings: Settings, url: str, identity: Identity,
                 users: ScriptUsers) -> None:
        self.settings = settings
        self.identity = identity
        self.users = users
        self.redis = connect(url)
        self.store = StepStore(self.redis, settings.result_ttl, Keyring.for_worker(settings))
        self.leases = Leases(self.redis, self.store)
        self.running: dict[str, ScriptRun] = {}
        self._starting = 0  # messages being executed (claimed or not yet), under self.lock
        self.lock = threading.Lock()
        self.ready = False
        self.stopping = threading.Event()
        # Replaced whole (never mutated), so readers in other threads see a consistent pair.
        self.health = health.PASSED
        # Whether the worker consumes its queue now; only the queue gate changes it. The state
        # others see follows this, so Unhealthy means the worker takes nothing.
        self.consuming = True
        # Whether Celery remote control (``celery control cancel_consumer``, Flower) asked the
        # worker to stop consuming; ``add_consumer`` clears it. The queue gate obeys both this
        # and the health check.
        self.held = False
        # Whether the worker's pool is paused (``PoolRegistry.pause``): read from the pool's
        # record at start, on each word on the pool's control channel, and on a claim refused.
        self.paused = False
        # Whether a claim found the pool at its max_running: consumption stops until a step of
        # the pool ends ("freed" on the pool's channel) or, at the latest, the next heartbeat.
        self.capped = False
        # Whether the worker is draining (``workerpool worker drain``, --max-steps, a warm
        # stop): it takes no new step and, once its steps are done, stops (``request_stop``).
        self.draining = False
        self.steps_taken = 0
        self.request_stop: Callable[[], None] = _nothing  # set by the Celery side
        self.pools = PoolRegistry(self.redis)
        self._health_lock = threading.Lock()
        self._beat_lock = threading.Lock()
        # One directory per worker instance; its watchdog removes it when the worker ends.
        self.workdir_root = make_root(identity.name, identity.instance)
        clear_users(users.uids)  # left by a worker whose watchdog died too
        self.watchdog = Watchdog(self.workdir_root, users.uids, users.locks)
        self.containment = Containment(self.workdir_root, settings.step_max_processes)
        self.host = socket.gethostname()
        # The environment every script starts from (read once: os.environ decodes each time).
        self.base_env = dict(os.environ)
        self.support_dir = install_helpers(self.workdir_root / "support")
        private_dir(settings.home)
        self.setup = StepSetup(FeedRegistry(self.redis),
                               PackageCache(settings.home / "package-cache",
                                            settings.package_cache_bytes, self.redis,
                                            identity.pool),
                               private_dir(self.workdir_root / ".staged")
                               if settings.package_spares else None, settings.package_spares,
                               settings)

    # -- background threads -------------------------------------------------------------

    def start_threads(self) -> None:
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        threading.Thread(target=self._control_loop, name="control", daemon=True).start()
        if self.identity.checks_health:
            threading.Thread(target=self._health_loop, name="health", daemon=True).start()

    def beat(self) -> None:
        with self.lock:
            running = len(self.running)
        # Reading the state and writing it are one step, so a beat carrying an older health
        # state never overwrites a newer one.
        with self._beat_lock:
            state, reason = self._state()
            hb = Heartbeat(time=time.time(), state=state, running=running, reason=reason)
            workers.beat(self.redis, self.identity.pool, self.identity.instance, hb,
                         self.settings.heartbeat_ttl)

    def _state(self) -> tuple[str, str]:
        """The state others see, and why it is Unhealthy. It follows ``consuming``, which only
        the queue gate changes, so Unhealthy means the worker takes nothing; a worker that takes
        nothing only because its pool is paused or at its cap is Healthy all the same."""
        status = self.health
        if not self.ready:
            return STARTING, ""
        if self.draining:
            return DRAINING, ""
        if not status.healthy:
            return (HEALTHY, "") if self.consuming else (UNHEALTHY, status.reason)
        if self.held and not self.consuming:
            return UNHEALTHY, HELD_REASON.format(queue=self.identity.queue)
        if self.consuming or self.paused or self.capped:
            return HEALTHY, ""
        return UNHEALTHY, ""  # the gate has not resumed fetching yet

    # -- health ---------------------------------------------------------------------------

    def check_health(self) -> bool:
        """Run the pool's health check now and publish a change at once; True if healthy.

        The pool is re-read each time, so `pool edit --requires` applies without a restart.
        Consumption follows ``self.health`` (the Celery side's queue gate); running steps are
        left to finish.
        """
        if not self.identity.checks_health:
            return True
        with self._health_lock:
            pool = self.pools.by_slug(self.identity.pool)
            env = script_environment({}, {"WORKERPOOL_WORKER_NAME": self.identity.name,
                                          "WORKERPOOL_POOL": self.identity.pool}, self.base_env)
            status = health.PASSED if pool is None else health.check(pool, env,
                                                                      user=self.users.health)
            previous, self.health = self.health, status
        if status != previous:
            if status.healthy:
                log.warning("healthy again: consuming %s", self.identity.queue)
            else:
                log.warning("unhealthy (%s): not consuming %s until healthy; running steps "
                            "finish", status.reason, self.identity.queue)
            self.beat()
        return status.healthy

    def _health_loop(self) -> None:
        while not self.stopping.wait(self.settings.health_interval):
            try:
                self.check_health()
            except redis.RedisError as exc:
                log.warning("could not read the pool for its health check (will retry): %s", exc)
            except Exception:  # a bug here must not stop the health checks
                log.exception("health check loop error")

    def _heartbeat_loop(self) -> None:
        pause = self.settings.heartbeat_interval
        failing = False  # said once per outage, not at each of its four retries an interval
        while not self.stopping.wait(pause):
            pause = self.settings.heartbeat_interval
            self.capped = False  # a "freed" missed while a claim was on its way
            try:
                self._turn()
            except redis.RedisError as exc:
                # The key outlives the last beat by only one more interval: a beat lost to a
                # brief network cut is retried soon, not a whole interval later.
                pause = self.settings.heartbeat_interval / 4
                if not failing:
                    log.warning("heartbeat failed (will retry; said again once it beats): %s",
                                exc)
                failing = True
            except Exception:  # a bug here must not stop the heartbeat
                log.exception("heartbeat loop error")
            else:
                if failing:
                    log.warning("heartbeat: Redis answers again; beating")
                failing = False

    def _turn(self) -> None:
        """One heartbeat turn in one round trip (``workers.beat``): the beat, the try for the
        pool's reaper lock, and the state of the steps running here; then the reap if the lock
        was taken, and the local scripts stopped whose step was cancelled or taken from this
        worker meanwhile."""
        with self.lock:
            ids = list(self.running)
        with self._beat_lock:  # as in beat(): the state read and written in one step
            state, reason = self._state()
            hb = Heartbeat(time=time.time(), state=state, running=len(ids), reason=reason)
            turn = workers.beat(self.redis, self.identity.pool, self.identity.instance, hb,
                                self.settings.heartbeat_ttl,
                                lock_ms=lock_ms(reap_every(self.settings)), steps=ids)
        if turn.locked:
            self.leases.reap_on_schedule(self.settings, [self.identity.pool], held=True)
        for step_id, (state, instance, cancel) in zip(ids, turn.steps, strict=True):
            if state != RUNNING or instance != self.identity.instance:
                self._stop_local(step_id, STOP_ABORT)
            elif cancel:
                self._stop_local(step_id, STOP_CANCEL)

    @property
    def accepting(self) -> bool:
        """Whether the worker takes a new step: healthy, its pool not paused nor at its cap,
        not draining, not held by remote control. The queue gate consumes only while it does."""
        return not self._why_not()

    def _why_not(self) -> str:
        """Why the worker takes no new step; "" if it takes one."""
        return ("draining" if self.draining else "its pool is paused" if self.paused
                else "its pool runs its max_running steps" if self.capped
                else "its consumer is cancelled by control command" if self.held
                else "" if self.health.healthy else f"unhealthy ({self.health.reason})")

    def _control_loop(self) -> None:
        channel = keys.control(self.identity.pool, self.identity.instance)
        pool_channel = keys.pool_control(self.identity.pool)
        while not self.stopping.is_set():
            try:
                pubsub: Any = self.redis.pubsub(  # type: ignore[no-untyped-call, unused-ignore]
                    ignore_subscribe_messages=True)
                pubsub.subscribe(channel, pool_channel)
                self.read_paused()  # a word sent while no one listened is not lost
                for message in pubsub.listen():
                    if message["channel"] == pool_channel and message["data"] == FREED:
                        self.capped = False  # the next claim checks the cap again
                    elif message["channel"] == pool_channel:
                        self.read_paused()  # the record decides, not the word
                    elif message["data"] == DRAIN:
                        self.drain("drain requested")
                    else:
                        self._stop_local(str(message["data"]), STOP_CANCEL)
            except redis.RedisError as exc:
                log.warning("cancel listener lost Redis (will resubscribe): %s", exc)
                self.stopping.wait(1.0)

    def read_paused(self) -> None:
        """Read whether the worker's pool is paused; say so when it changes."""
        pool = self.pools.by_slug(self.identity.pool)
        paused = pool is not None and pool.paused
        if paused != self.paused:
            self.paused = paused
            if paused:
                log.warning("pool paused%s: taking no new step; running steps go on",
                            f" ({pool.paused_reason})" if pool and pool.paused_reason else "")
            else:
                log.warning("pool resumed: consuming %s", self.identity.queue)
            self.beat()

    def drain(self, why: str) -> None:
        """Take no new step, let the running ones end, then stop (exit 0)."""
        if self.draining:
            return
        self.draining = True
        log.warning("draining (%s): taking no new step; %d running step(s) finish first",
                    why, len(self.running))
        self.beat()
        threading.Thread(target=self._stop_when_drained, name="drain", daemon=True).start()

    def _stop_when_drained(self) -> None:
        # Once the queue gate has stopped fetching (a message already on its way is handed
        # back unclaimed), and every step it ran has ended.
        while not self.stopping.wait(0.05):
            with self.lock:
                busy = bool(self.running) or self._starting > 0
            if not self.consuming and not busy:
                self.request_stop()
                return

    def _stop_local(self, step_id: str, reason: str) -> None:
        with self.lock:
            script = self.running.get(step_id)
        if script is not None:
            script.stop(reason)

    def revoke(self, task_ids: Iterable[str]) -> list[tuple[str, str]]:
        """Cancel the steps of this worker's pool among Celery *task_ids*, as ``workerpool
        cancel`` does (Celery's revoke, from Flower or ``celery control revoke``): a Queued
        step ends Cancelled before it runs, a Running one has its process group killed by the
        worker running it. Returns the (task id, label) of those that were Queued."""
        were_queued = []
        for task_id in task_ids:
            step_id = messages.step_of(task_id)
            try:
                if keys.pool_of(step_id) != self.identity.pool:
                    continue  # a broadcast reaches every pool's workers
                if self.leases.cancel(step_id) != QUEUED:
                    continue  # Running: its worker stops it; or ended, or no such step
                record = self.store.record(step_id)  # Cancelled now, its fields kept
                were_queued.append((task_id, messages.label(
                    record.get("name", ""), record.get("pool_name", ""), step_id,
                    target=record.get("target", ""))))
            except ValueError:
                continue  # not a step id
            except redis.RedisError as exc:
                log.warning("could not cancel step %s on revoke: %s", step_id, exc)
        return were_queued

    def abort_running(self) -> None:
        """Stop every local script now; their steps end WorkerLost (or run once more)."""
        with self.lock:
            scripts = list(self.running.values())
        for script in scripts:
            script.stop(STOP_ABORT)

    def begin_shutdown(self) -> None:
        """A warm stop began (SIGTERM, a drain done): it is Draining; running steps get the
        shutdown grace, then are stopped."""
        self.draining = True
        try:
            self.beat()
        except redis.RedisError as exc:
            log.warning("could not publish Draining: %s", exc)
        if self.running:
            log.warning("stopping: %d running step(s) get %gs to finish", len(self.running),
                        self.settings.shutdown_grace)
        timer = threading.Timer(self.settings.shutdown_grace, self.abort_running)
        timer.daemon = True
        timer.start()

    def shutdown(self) -> None:
        """Stop every local script (steps end WorkerLost), deregister, release the watchdog."""
        self.stopping.set()
        self.abort_running()
        deadline = time.monotonic() + self.settings.kill_grace + 5
        while self.running and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            workers.deregister(self.redis, self.identity.pool, self.identity.name,
                               self.identity.instance)
        except redis.RedisError as exc:
            log.warning("could not deregister: %s", exc)
        self.setup.close()  # stops staging package copies before the watchdog removes the root
        self.watchdog.close()
        self.users.close()

    # -- running a step -----------------------------------------------------------------

    def execute(self, step_id: str, attempt: int,
                ack: Callable[[], None] = _nothing) -> Ending | None:
        """The body of the Celery task: claim, run, finish. Never raises; returns how the step
        ended (what Flower is told), or None if this message ran nothing (not this pool's, a
        copy of a step already taken, or handed back).

        *ack* acknowledges the step's message (``celeryapp.StepRequest``). It is called once
        the step's script has started: the step is claimed, so its record, not the message,
        decides what happens to it (a copy delivered again is discarded by the claim; if this
        worker dies, the reaper ends the step or queues it once more). The ack's round trip
        then runs while the script does, out of the way of both the script's start and the
        next fetch. A message whose script never starts (not claimed, handed back, or a
        setup that failed) is acked by Celery when the task returns.
        """
        if not self._ours(step_id):
            return None
        with self.lock:
            self._starting += 1
        try:
            return self._execute(step_id, attempt, ack)
        finally:
            with self.lock:
                self._starting -= 1

    def _execute(self, step_id: str, attempt: int, ack: Callable[[], None]) -> Ending | None:
        if not self.accepting:
            self._hand_back(step_id, attempt, self._why_not())
            return None
        claim = self._claim(step_id, attempt)
        if claim is None:
            return None
        if claim.outcome == "paused":
            # From the record, not the refusal: a resume may already have been heard.
            try:
                self.read_paused()
            except redis.RedisError:
                self.paused = True  # the claim said so; the control loop reads it again
            self._hand_back(step_id, attempt, "its pool is paused")
            return None
        if claim.outcome == "capped":
            self.capped = True  # until a step of the pool ends
            self._hand_back(step_id, attempt, "its pool runs its max_running steps")
            return None
        if claim.outcome != "ok":
            log.warning("discarded message for step %s: %s (state %s)", step_id, claim.outcome,
                        claim.record.get("state"))
            return None
        self.steps_taken += 1
        if self.settings.max_steps and self.steps_taken >= self.settings.max_steps:
            self.drain(f"{self.steps_taken} step(s) taken, --max-steps")
        try:
            return self._run_claimed(step_id, claim.record, ack)
        except Exception as exc:
            log.exception("step %s failed inside the worker", step_id)
            return self._finish(step_id, FAILED, message=f"worker error: {exc}")

    def _ours(self, step_id: object) -> bool:
        """Whether *step_id* names a step of this worker's pool; a message for another pool's
        step (pushed here by hand) is discarded before anything of it is read."""
        try:
            if isinstance(step_id, str) and keys.pool_of(step_id) == self.identity.pool:
                return True
        except ValueError:
            pass
        log.warning("discarded message for step %.100r: not a step of pool %s", step_id,
                    self.identity.pool)
        return False

    def _claim(self, step_id: str, attempt: int) -> Claim | None:
        """Claim the step, retrying while Redis is away: a claim whose reply was lost may have
        been applied, and the retry (same token) then finds it ours, so the step is neither
        left Running with nobody running it nor run twice. None if Redis stayed away."""
        token = os.urandom(8).hex()
        return self._while_redis_away(
            f"claim step {step_id}", "if it stays Running, its lease deadline ends it",
            lambda: self.leases.claim(step_id, attempt, self.identity.name,
                                      self.identity.instance, self.identity.pool, token),
            until_stopping=True)

    def _while_redis_away(self, what: str, if_given_up: str, action: Callable[[], T],
                          until_stopping: bool = False) -> T | None:
        """*action*, tried again every second while Redis is away, for up to
        ``REDIS_RETRY_SECONDS`` (and, *until_stopping*, only until the worker stops); None if
        it never got through."""
        deadline = time.monotonic() + REDIS_RETRY_SECONDS
        while True:
            try:
                return action()
            except AWAY as exc:
                if time.monotonic() > deadline or (until_stopping and self.stopping.is_set()):
                    log.error("gave up trying to %s (%s): %s", what, if_given_up, exc)
                    return None
                log.warning("could not %s yet (will retry): %s", what, exc)
                if until_stopping:
                    self.stopping.wait(1.0)
                else:  # also while stopping: a stopped step's end must still be recorded
                    time.sleep(1.0)
            except redis.RedisError as exc:  # permanent: the same call would fail again
                log.error("could not %s (%s; not retried: %s): %s", what, if_given_up,
                          "Redis refused it" if isinstance(exc, redis.ResponseError)
                          else "an argument Redis cannot take", exc)
                return None

    def _hand_back(self, step_id: str, attempt: int, why: str) -> None:
        """Give back, unclaimed, a step that reached this worker while it is unhealthy.

        The queue gate stops consumption within a fraction of a second of the worker turning
        unhealthy, so only a message already on its way (taken by the Celery consumer before
        the gate cancelled its queue) gets here. It is pushed back at the head of its queue
        rather than rejected through Celery: kombu would requeue it at the tail and altered,
        and the lease reaper removes a message by value.
        """
        self.stopping.wait(HAND_BACK_DELAY)
        try:
            record = self.store.record(step_id)
            queue = record.get("queue", "")
            returned = self.leases.hand_back(step_id, attempt, record)
        except redis.RedisError as exc:
            log.error("unhealthy, could not hand step %s back (it stays queued until its lease "
                      "deadline): %s", step_id, exc)
            return
        if returned:
            log.warning("%s: handed step %s back to %s unclaimed", why, step_id, queue)
        else:
            log.warning("discarded message for step %s: stale (state %s)", step_id,
                        record.get("state"))

    def _run_claimed(self, step_id: str, record: dict[str, str],
                     started: Callable[[], None]) -> Ending:
        if self.identity.pool == keys.BUILTIN_POOL and self.redis.exists(keys.BUILTIN_DISABLED):
            return self._finish(step_id, FAILED, message="refused: the built-in worker is "
                                "disabled, so it runs nothing; `workerpool builtin-worker "
                                "enable` or use a pool")
        try:
            secrets = self.store.keyring.open_map(record.get("secrets", ""), self.identity.pool,
                                                  "this worker")
        except SealError as exc:
            log.error("step %s: %s", step_id, exc)
            return self._finish(step_id, FAILED, message=str(exc))
        variables: dict[str, str] = json.loads(record.get("variables") or "{}")
        steplog = StepLog(self.redis, step_id, Masker(secrets.values()),
                          self.settings.log_max_lines, self.settings.log_max_line_bytes)
        user = self.users.take()
        workdir = make_workdir(self.workdir_root, step_id, record.get("attempt", "0"))
        ending: Ending | None = None
        try:
            try:
                ending = self._setup_and_run(step_id, record, workdir, steplog,
                                             {**variables, **secrets}, started, user)
            finally:
                with self.lock:
                    self.running.pop(step_id, None)
                if ending is None:
                    steplog.close()  # every line is stored before any end marker
            if ending is None:  # queued once more, as another task
                return Ending(WORKER_LOST, None, f"worker {self.identity.name} stopped while "
                              "the step ran; it was queued once more")
            # The last lines go with the end: one round trip.
            return self._finish(step_id, ending.state, exit_code=ending.exit_code,
                                outputs=steplog.outputs, message=steplog.mask(ending.message),
                                lines=steplog.last_lines())
        finally:  # after the end is recorded: the caller need not wait for the removal
            try:
                self.clean_up(step_id, workdir, user, steplog.mask)
            finally:  # whatever the cleanup did, the directory and the user are done with
                if not self.settings.keep_workdirs:
                    remove_workdir(workdir)
                self.users.give_back(user)  # every process of it was killed at the end

    def clean_up(self, step_id: str, workdir: Path, user: ScriptUser | None,
                 mask: Callable[[str], str]) -> None:
        """An exclusive worker, after each step and before it takes the next (its one slot is
        busy until this returns): the pool's cleanup script, as the step's user, in the step's
        working directory. A failure, or a pool that cannot be read, makes the worker
        Unhealthy, so it takes no step until its next health check passes."""
        if not (self.settings.exclusive and self.identity.checks_health):
            return
        with self._health_lock:  # a health check begun earlier cannot overwrite the failure
            status = self._run_cleanup(step_id, workdir, user, mask)
            if not status.healthy:
                self.health = status
        if status.healthy:
            return
        log.warning("unhealthy (%s): not consuming %s until its next health check passes",
                    status.reason, self.identity.queue)
        try:
            self.beat()
        except redis.RedisError as exc:  # the next beat says it
            log.warning("could not publish Unhealthy: %s", exc)

    def _run_cleanup(self, step_id: str, workdir: Path, user: ScriptUser | None,
                     mask: Callable[[str], str]) -> health.Health:
        try:
            pool = self.pools.by_slug(self.identity.pool)
        except redis.RedisError as exc:
            return health.Health(False, f"could not read the pool's cleanup script: {exc}")
        if pool is None or not pool.cleanup_script:
            return health.PASSED
        env = script_environment({}, {"WORKERPOOL_WORKER_NAME": self.identity.name,
                                      "WORKERPOOL_POOL": self.identity.pool,
                                      "WORKERPOOL_STEP_ID": step_id}, self.base_env)
        printed: list[str] = []
        started = time.monotonic()
        status = health.clean_up(pool, env, user, workdir if _owned(workdir, user) else None,
                                 self.settings.cleanup_timeout, printed.append)
        level = logging.INFO if status.healthy else logging.WARNING
        for line in "".join(printed).splitlines():
            log.log(level, "cleanup after step %s: %s", step_id, mask(line))
        log.log(level, "cleanup after step %s %s in %.1fs", step_id,
                "passed" if status.healthy else f"failed ({mask(status.reason)})",
                time.monotonic() - started)
        return status if status.healthy else health.Health(
            False, f"cleanup after step {step_id} failed: {mask(status.reason)}")

    def _setup_and_run(self, step_id: str, record: dict[str, str], workdir: Path,
                       steplog: StepLog, variables: dict[str, str],
                       started: Callable[[], None], user: ScriptUser | None) -> Ending | None:
        """Prepare the working directory, run the script as *user*, collect artifacts; None if
        the step was queued once more instead of ending."""
        variables.update(system_variables(step_id, record, self.identity.name, self.host))
        try:
            prepared = self.setup.prepare(workdir, record, variables, steplog.system)
        except WorkerPoolError as exc:
            return Ending(FAILED, None, str(exc))
        try:
            return self._run_prepared(step_id, record, workdir, steplog, prepared, started, user)
        finally:
            prepared.release()

    def _run_prepared(self, step_id: str, record: dict[str, str], workdir: Path,
                      steplog: StepLog, prepared: Prepared, started: Callable[[], None],
                      user: ScriptUser | None) -> Ending | None:
        if not prepared.syntax.available():
            return Ending(FAILED, None, f"{prepared.syntax.program} is not installed on worker "
                          f"{self.identity.name}; install it or run the step elsewhere")
        argv, extra_env = prepared.syntax.prepare(workdir, prepared.script, self.support_dir)
        hand_over(workdir, user)
        env = script_environment(prepared.variables, {
            **extra_env, **(user.env(workdir) if user else {}), "WORKERPOOL_STEP_ID": step_id,
            "WORKERPOOL_WORKER_NAME": self.identity.name, "WORKERPOOL_POOL": self.identity.pool},
            self.base_env)
        script = ScriptRun(argv, workdir, env, steplog,
                           float(record.get("timeout") or self.settings.step_timeout),
                           self.settings.kill_grace, self.containment, user)
        with self.lock:
            self.running[step_id] = script
        if record.get("cancel"):
            script.stop(STOP_CANCEL)
        outcome = script.run(watch=self.watchdog.tell, started=started)
        for line in collect(self.redis, step_id, workdir, steplog.artifacts,
                            self.settings.result_ttl):
            steplog.system(line)
        return self._ending(step_id, outcome.exit_code, outcome.stopped, record, script.timeout)

    def _ending(self, step_id: str, exit_code: int | None, stopped: str | None,
                record: dict[str, str], timeout: float) -> Ending | None:
        if stopped == STOP_TIMEOUT:
            return Ending(TIMED_OUT, exit_code, f"timed out after {timeout:g}s;"
                          " the script's process group was killed")
        if stopped == STOP_CANCEL:
            return Ending(CANCELLED, exit_code, "cancelled; the script's process group was killed")
        if stopped == STOP_ABORT:
            if self._retry_after_abort(step_id, record):
                return None
            return Ending(WORKER_LOST, exit_code, f"worker {self.identity.name} stopped while "
                          "the step ran; the script's process group was killed")
        if exit_code == 0:
            return Ending(SUCCESS, 0, "")
        return Ending(FAILED, exit_code, f"the script exited with code {exit_code}")

    def _retry_after_abort(self, step_id: str, record: dict[str, str]) -> bool:
        """A step this worker had to stop runs once more elsewhere, if it opted in."""
        try:
            return self.leases.retry(step_id, self.identity.instance, self.identity.name,
                                     record)
        except redis.RedisError as exc:
            log.warning("could not queue step %s once more: %s", step_id, exc)
            return False

    def _finish(self, step_id: str, state: str, exit_code: int | None = None,
                outputs: dict[str, str] | None = None, message: str = "",
                lines: list[dict[str, str]] | None = None) -> Ending:
        """Record the end, retrying while Redis is away so the step is not left Running; the
        ending, for Flower."""
        self._while_redis_away(
            f"record the end of step {step_id}", "it stays Running until its lease deadline",
            lambda: self.store.finish(step_id, state, expected=(RUNNING,),
                                      instance=self.identity.instance, exit_code=exit_code,
                                      outputs=outputs, message=message, lines=lines or ()))
        return Ending(state, exit_code, message)
