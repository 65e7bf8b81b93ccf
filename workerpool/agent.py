"""The worker process: registers in a pool, heartbeats, reaps, and runs the steps it leases."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis

from workerpool import keys
from workerpool.artifacts import collect
from workerpool.connection import connect
from workerpool.errors import WorkerConflict, WorkerPoolError
from workerpool.execution import STOP_ABORT, STOP_CANCEL, STOP_TIMEOUT, ScriptProcess
from workerpool.leases import Leases
from workerpool.packages import FeedRegistry, PackageCache
from workerpool.pools import worker_type
from workerpool.settings import Settings
from workerpool.steplog import StepLog
from workerpool.steps import CANCELLED, FAILED, RUNNING, SUCCESS, TIMED_OUT, WORKER_LOST
from workerpool.stepsetup import Prepared, StepSetup, system_variables
from workerpool.store import StepStore
from workerpool.syntaxes import available_syntaxes, install_helpers
from workerpool.variables import Masker, script_environment
from workerpool.workers import DEREGISTER, HEALTHY, REGISTER, Heartbeat, WorkerInfo

log = logging.getLogger("workerpool.worker")


@dataclass(frozen=True)
class Ending:
    state: str
    exit_code: int | None
    message: str


@dataclass(frozen=True)
class Identity:
    name: str
    pool: str  # pool slug, or "builtin"
    pool_name: str
    instance: str
    concurrency: int

    @property
    def queue(self) -> str:
        if self.pool == keys.BUILTIN_POOL:
            return keys.BUILTIN_QUEUE
        if self.pool.startswith(keys.TARGET_POOL_PREFIX):
            return keys.target_queue(self.pool.removeprefix(keys.TARGET_POOL_PREFIX))
        return keys.pool_queue(self.pool)


def register(client: redis.Redis, settings: Settings, pool: str, pool_name: str,
             name: str | None, concurrency: int) -> Identity:
    """Reserve a worker name (``<type>-worker-NN`` unless given) and write the first heartbeat."""
    instance = uuid.uuid4().hex
    info = WorkerInfo(name="", pool=pool, instance=instance, host=socket.gethostname(),
                      pid=os.getpid(), concurrency=concurrency, started_at=time.time(),
                      syntaxes=available_syntaxes())
    beat = Heartbeat(time=time.time(), state="Starting")
    taken = client.eval(REGISTER, 1, keys.WORKERS, name or "", f"{worker_type(pool)}-worker-",
                        info.record_json(), keys.PREFIX + "hb:", beat.to_json(),
                        int(settings.heartbeat_ttl * 1000), instance)
    if not taken:
        raise WorkerConflict(f"a worker named {name!r} is already online; pick another --name "
                             "or stop that worker first")
    return Identity(str(taken), pool, pool_name, instance, concurrency)


class Watchdog:
    """The child that kills this worker's script groups if the worker dies without doing so."""

    def __init__(self, root: Path) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "workerpool.watchdog", str(root)],
                                      stdin=subprocess.PIPE, start_new_session=True, text=True)
        self._lock = threading.Lock()

    def tell(self, sign: str, pgid: int) -> None:
        assert self._proc.stdin is not None
        with self._lock:
            self._proc.stdin.write(f"{sign} {pgid}\n")
            self._proc.stdin.flush()

    def close(self) -> None:
        assert self._proc.stdin is not None
        with self._lock:
            self._proc.stdin.close()
        self._proc.wait()


class Runtime:
    """Per-process worker state shared by the Celery task threads and the background threads."""

    def __init__(self, settings: Settings, url: str, identity: Identity) -> None:
        self.settings = settings
        self.identity = identity
        self.redis = connect(url)
        self.store = StepStore(self.redis, settings.result_ttl)
        self.leases = Leases(self.redis, self.store)
        self.running: dict[str, ScriptProcess] = {}
        self.lock = threading.Lock()
        self.ready = False
        self.stopping = threading.Event()
        # One directory per worker instance; its watchdog removes it when the worker ends.
        self.workdir_root = (Path(tempfile.gettempdir()) / "workerpool" /
                             f"{identity.name}-{identity.instance[:8]}")
        self.workdir_root.mkdir(parents=True, exist_ok=True)
        self.watchdog = Watchdog(self.workdir_root)
        self.host = socket.gethostname()
        self.support_dir = install_helpers(self.workdir_root / "support")
        self.setup = StepSetup(FeedRegistry(self.redis),
                               PackageCache(settings.home / "package-cache",
                                            settings.package_cache_bytes, self.redis))

    # -- background threads -------------------------------------------------------------

    def start_threads(self) -> None:
        threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True).start()
        threading.Thread(target=self._control_loop, name="control", daemon=True).start()

    def beat(self) -> None:
        with self.lock:
            running = len(self.running)
        state = HEALTHY if self.ready else "Starting"
        hb = Heartbeat(time=time.time(), state=state, running=running)
        self.redis.set(keys.heartbeat(self.identity.instance), hb.to_json(),
                       px=int(self.settings.heartbeat_ttl * 1000))

    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(self.settings.heartbeat_interval):
            try:
                self.beat()
                self.leases.reap(self.settings.heartbeat_interval / 4)
                self._check_leases()
            except redis.RedisError as exc:
                log.warning("heartbeat failed (will retry): %s", exc)
            except Exception:  # a bug here must not stop the heartbeat
                log.exception("heartbeat loop error")

    def _check_leases(self) -> None:
        """Stop local scripts whose step was cancelled or taken from this worker meanwhile."""
        with self.lock:
            ids = list(self.running)
        if not ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for step_id in ids:
            pipe.hmget(keys.step(step_id), "state", "instance", "cancel")
        for step_id, (state, instance, cancel) in zip(ids, pipe.execute(), strict=True):
            if state != RUNNING or instance != self.identity.instance:
                self._stop_local(step_id, STOP_ABORT)
            elif cancel:
                self._stop_local(step_id, STOP_CANCEL)

    def _control_loop(self) -> None:
        channel = keys.control(self.identity.instance)
        while not self.stopping.is_set():
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(channel)
                for message in pubsub.listen():
                    self._stop_local(str(message["data"]), STOP_CANCEL)
            except redis.RedisError as exc:
                log.warning("cancel listener lost Redis (will resubscribe): %s", exc)
                self.stopping.wait(1.0)

    def _stop_local(self, step_id: str, reason: str) -> None:
        with self.lock:
            process = self.running.get(step_id)
        if process is not None:
            process.stop(reason)

    def abort_running(self) -> None:
        """Stop every local script now; their steps end WorkerLost (or run once more)."""
        with self.lock:
            processes = list(self.running.values())
        for process in processes:
            process.stop(STOP_ABORT)

    def begin_shutdown(self) -> None:
        """A warm stop began: running steps get the shutdown grace, then are stopped."""
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
            self.redis.eval(DEREGISTER, 2, keys.WORKERS, keys.heartbeat(self.identity.instance),
                            self.identity.name, self.identity.instance)
        except redis.RedisError as exc:
            log.warning("could not deregister: %s", exc)
        self.watchdog.close()

    # -- running a step -----------------------------------------------------------------

    def execute(self, step_id: str, attempt: int) -> None:
        """The body of the Celery task: claim, run, finish. Never raises."""
        try:
            claim = self.leases.claim(step_id, attempt, self.identity.name,
                                      self.identity.instance, self.identity.pool)
        except redis.RedisError as exc:
            log.error("could not claim step %s (it stays queued until its lease deadline): %s",
                      step_id, exc)
            return
        if claim.outcome != "ok":
            log.warning("discarded message for step %s: %s (state %s)", step_id, claim.outcome,
                        claim.record.get("state"))
            return
        try:
            self._run_claimed(step_id, claim.record)
        except Exception as exc:
            log.exception("step %s failed inside the worker", step_id)
            self._finish(step_id, FAILED, message=f"worker error: {exc}")

    def _run_claimed(self, step_id: str, record: dict[str, str]) -> None:
        if self.identity.pool == keys.BUILTIN_POOL and self.redis.exists(keys.BUILTIN_DISABLED):
            self._finish(step_id, FAILED, message="refused: the built-in worker is disabled, so "
                         "it runs nothing; `workerpool builtin-worker enable` or use a pool")
            return
        secrets: dict[str, str] = json.loads(record.get("secrets") or "{}")
        variables: dict[str, str] = json.loads(record.get("variables") or "{}")
        steplog = StepLog(self.redis, step_id, Masker(secrets.values()),
                          self.settings.log_max_lines, self.settings.log_max_line_bytes)
        workdir = Path(tempfile.mkdtemp(prefix=f"{step_id}-", dir=self.workdir_root))
        try:
            try:
                ending = self._setup_and_run(step_id, record, workdir, steplog,
                                             {**variables, **secrets})
            finally:
                with self.lock:
                    self.running.pop(step_id, None)
                steplog.close()  # every line is stored before the end marker
            if ending is not None:
                self._finish(step_id, ending.state, exit_code=ending.exit_code,
                             outputs=steplog.outputs, message=steplog.mask(ending.message))
        finally:  # after the end is recorded: the caller need not wait for the removal
            if not self.settings.keep_workdirs:
                shutil.rmtree(workdir, ignore_errors=True)

    def _setup_and_run(self, step_id: str, record: dict[str, str], workdir: Path,
                       steplog: StepLog, variables: dict[str, str]) -> Ending | None:
        """Prepare the working directory, run the script, collect artifacts; None if the step
        was queued once more instead of ending."""
        variables.update(system_variables(step_id, record, self.identity.name, self.host))
        try:
            prepared = self.setup.prepare(workdir, record, variables, steplog.system)
        except WorkerPoolError as exc:
            return Ending(FAILED, None, str(exc))
        try:
            return self._run_prepared(step_id, record, workdir, steplog, prepared)
        finally:
            prepared.release()

    def _run_prepared(self, step_id: str, record: dict[str, str], workdir: Path,
                      steplog: StepLog, prepared: Prepared) -> Ending | None:
        if not prepared.syntax.available():
            return Ending(FAILED, None, f"{prepared.syntax.program} is not installed on worker "
                          f"{self.identity.name}; install it or run the step elsewhere")
        argv, extra_env = prepared.syntax.prepare(workdir, prepared.script, self.support_dir)
        env = script_environment(prepared.variables, {
            **extra_env, "WORKERPOOL_STEP_ID": step_id,
            "WORKERPOOL_WORKER_NAME": self.identity.name, "WORKERPOOL_POOL": self.identity.pool})
        process = ScriptProcess(argv, workdir, env, steplog,
                                float(record.get("timeout") or self.settings.step_timeout),
                                self.settings.kill_grace)
        with self.lock:
            self.running[step_id] = process
        if record.get("cancel"):
            process.stop(STOP_CANCEL)
        outcome = process.run(watch=self.watchdog.tell)
        for line in collect(self.redis, step_id, workdir, steplog.artifacts,
                            self.settings.result_ttl):
            steplog.system(line)
        return self._ending(step_id, outcome.exit_code, outcome.stopped, record)

    def _ending(self, step_id: str, exit_code: int | None, stopped: str | None,
                record: dict[str, str]) -> Ending | None:
        if stopped == STOP_TIMEOUT:
            return Ending(TIMED_OUT, exit_code, f"timed out after {float(record['timeout']):g}s;"
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
                outputs: dict[str, str] | None = None, message: str = "") -> None:
        """Record the end, retrying while Redis is away so the step is not left Running."""
        deadline = time.monotonic() + 300
        while True:
            try:
                self.store.finish(step_id, state, expected=(RUNNING,),
                                  instance=self.identity.instance, exit_code=exit_code,
                                  outputs=outputs, message=message)
                return
            except redis.RedisError as exc:
                if time.monotonic() > deadline:
                    log.error("gave up recording the end of step %s: %s", step_id, exc)
                    return
                log.warning("could not record the end of step %s yet: %s", step_id, exc)
                time.sleep(1.0)
