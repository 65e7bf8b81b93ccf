"""The one Celery app factory, and the entry point that runs a pool worker on it."""

from __future__ import annotations

import gc
import logging
import socket
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery, bootsteps
from celery.exceptions import SecurityWarning
from celery.signals import worker_ready, worker_shutting_down
from celery.utils.functional import noop
from celery.worker.consumer import Consumer
from celery.worker.consumer.events import Events
from celery.worker.consumer.tasks import Tasks
from celery.worker.request import Request
from kombu.asynchronous import get_event_loop

from workerpool.core import keys
from workerpool.core.connection import connect, guarded, resolve_url, tls_options, without_query
from workerpool.core.messages import TASK_NAME
from workerpool.core.pools import find
from workerpool.core.sealing import Keyring
from workerpool.core.settings import Settings
from workerpool.core.snapshot import read_snapshot
from workerpool.core.targets import TargetRegistry
from workerpool.core.workers import validate_worker_name
from workerpool.worker.celery.transport import NAME as TRANSPORT
from workerpool.worker.isolation.containment import require_pids_cgroup
from workerpool.worker.runtime import Runtime, register


def make_app(url: str, visibility_timeout: float = Settings.visibility_timeout,
             transport: str | None = TRANSPORT) -> Celery:
    """A Celery app for workerpool's queues: JSON only, late ack (a step's message is acked
    earlier, once its script starts: see ``StepRequest``), no prefetch, no results.

    *transport* is workerpool's kombu Redis transport (``transport.py``), or ``None`` for
    kombu's stock one (the bench's plain Celery baseline).
    """
    # TLS options reach kombu as parsed by workerpool, not from the URL: kombu would otherwise
    # default a bare rediss:// to no certificate check, and read its options differently.
    tls = tls_options(url)
    app = Celery("workerpool", broker=without_query(url) if tls else url, set_as_current=False)
    app.conf.update(
        broker_transport=transport,
        broker_use_ssl=tls or False,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        # A worker acks a step's message once the step's script starts (``StepRequest``), so
        # a running step is never redelivered; a message fetched by a worker that died before
        # that is, after this long, and the claim discards the copy of a claimed step.
        broker_transport_options={"visibility_timeout": visibility_timeout},
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_create_missing_queues=True,
        # Flower shows steps from their workers' task events. It turns events on by broadcast,
        # but only every 5 s, so a worker that just started would run its first steps unseen.
        worker_send_task_events=True,
    )
    return app


class StepRequest(Request):
    """Celery's request for a step's message, which the task may acknowledge early.

    ``Runtime.execute`` acks the message once the claimed step's script starts (the ack is a
    callback the event loop runs while the script does), so the ack Celery makes when the task
    returns (``acks_late``) finds it done: it then only wakes the event loop, which fetches the
    next message at once, as the ack's own wakeup would have.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _requests[self.task_id] = self  # for the task, which Celery hands only the task id

    def acknowledge(self) -> None:
        if not self.acknowledged:
            super().acknowledge()
        elif (hub := get_event_loop()) is not None:
            hub.call_soon(noop)  # a callback that only wakes the event loop


# Requests of the messages received and not yet run, by task id; a request Celery drops
# (a revoked task) leaves with it.
_requests: weakref.WeakValueDictionary[str, StepRequest] = weakref.WeakValueDictionary()


def bind(app: Celery, runtime: Runtime) -> None:
    """Register the step task, a thin shell around ``Runtime.execute``."""

    @app.task(name=TASK_NAME, acks_late=True, ignore_result=True, Request=StepRequest,
              bind=True)
    def run_step(task: Any, step_id: str, attempt: int = 0) -> None:
        request = _requests.pop(task.request.id, None)
        runtime.execute(step_id, attempt, noop if request is None else request.acknowledge)


log = logging.getLogger("workerpool.worker")

# Seconds a worker gathers task events before publishing them together (as Celery's one
# "task-multi" message): Flower sees a step's events at most this much later.
EVENT_FLUSH_DELAY = 0.05


class BatchingConsumer(Consumer):
    """Celery's consumer, publishing buffered task events once per ``EVENT_FLUSH_DELAY``.

    Stock Celery publishes the event buffer at the next turn of its event loop, so a busy
    worker publishes a message or more per step (three events each): about a quarter of its
    consumer thread. Gathered for 50 ms, many steps' events go in one message; an idle worker
    publishes (and wakes for) nothing.
    """

    _flush_pending = False
    hub: Any  # Celery's, untyped in its stubs
    timer: Any
    _flush_events: Callable[[], None]

    def on_send_event_buffered(self) -> Any:
        """An event was buffered (in any thread): publish the buffer in 50 ms, unless a
        publish is already due. The loop's own thread sets the timer (``call_soon`` wakes it)."""
        if self.hub is not None and not self._flush_pending:
            self._flush_pending = True
            self.hub.call_soon(self._schedule_flush)

    def _schedule_flush(self) -> None:
        self.timer.call_after(EVENT_FLUSH_DELAY, self._flush_later)

    def _flush_later(self) -> None:
        self._flush_pending = False  # first: an event buffered from now on schedules another
        self._flush_events()

    def shutdown(self) -> Any:
        """Publish what is gathered before Celery closes the dispatcher (which would drop it)."""
        try:
            self._flush_events()
        except Exception as exc:  # the broker may be gone: the steps' records are what counts
            log.warning("could not publish the last task events: %s", exc)
        return super().shutdown()


class EventFlush(bootsteps.StartStopStep):
    """Runs with the consumer's other steps at each (re)start: a publish scheduled before a lost
    connection went with the old timer, so the next buffered event must schedule one again
    (the events buffered meanwhile are published by Celery's own events step)."""

    requires = (Events,)

    def start(self, parent: Any) -> None:
        parent._flush_pending = False


def batch_events(app: Celery) -> None:
    """Make *app*'s workers gather task events (``BatchingConsumer``, ``EventFlush``)."""
    app.conf.worker_consumer = f"{__name__}:BatchingConsumer"
    app.steps["consumer"].add(EventFlush)


# Seconds between the queue gate's looks at the runtime's health: how soon after a change the
# worker stops (or resumes) consuming.
GATE_PERIOD = 0.2
RESTART_DELAY = 1.0  # seconds before a worker whose Celery side failed consumes again


def fetching(consumer: Any) -> bool:
    """Whether the consumer's channel has a BRPOP in flight: cancelling a queue stops the next
    one, not one Redis already holds, which still delivers a message pushed meanwhile."""
    return bool(getattr(consumer.task_consumer.channel, "_in_poll", False))


def queue_gate(runtime: Runtime) -> type[bootsteps.StartStopStep]:
    """A consumer bootstep that consumes the worker's queue only while its runtime is healthy.

    It runs in the consumer's own thread (Celery's event loop), where ``cancel_task_queue`` and
    ``add_task_queue`` are safe to call; the health thread only sets ``runtime.health``. It first
    runs after the task consumer is made and before the loop's first fetch, so a worker that
    starts unhealthy takes nothing; after a reconnection it runs again. It resumes only what it
    cancelled itself.
    """
    queue = runtime.identity.queue
    cancelled = False  # by the gate: a consumer an operator cancels (Flower) stays cancelled

    def reconcile(consumer: Any) -> None:
        nonlocal cancelled
        # Whether the queue is listed, not whether a fetch is active: at the first look the
        # event loop has not started consuming yet, and would start with every listed queue.
        listed = any(q.name == queue for q in consumer.task_consumer.queues)
        if not runtime.health.healthy and listed:
            consumer.cancel_task_queue(queue)
            cancelled, listed = True, False
        elif runtime.health.healthy and cancelled:
            cancelled = False
            if not listed:
                consumer.add_task_queue(queue)
                listed = True
        if runtime.consuming != listed:
            if not listed and fetching(consumer):
                return  # a BRPOP sent before the cancel may still take a message; look again
            # Publish only now: Unhealthy is seen once nothing more is fetched (the BRPOP in
            # flight has returned, within kombu's 1 s BRPOP timeout), Healthy once fetching
            # resumed.
            runtime.consuming = listed
            try:
                runtime.beat()
            except redis.RedisError as exc:
                log.warning("could not publish the worker's state yet: %s", exc)

    class QueueGate(bootsteps.StartStopStep):
        requires = (Tasks,)
        entry: Any = None

        def start(self, parent: Any) -> None:
            reconcile(parent)
            self.entry = parent.timer.call_repeatedly(GATE_PERIOD, reconcile, (parent,))

        def stop(self, parent: Any) -> None:
            if self.entry is not None:
                parent.timer.cancel(self.entry)
                self.entry = None

    return QueueGate


def serve(settings: Settings, pool: str | None, name: str | None, concurrency: int,
          loglevel: str = "WARNING", target: str | None = None) -> int:
    """Run a worker for *pool* (``None``: the built-in worker), or a target's agent, until it is
    told to stop. Everything that can be refused is checked before anything registers."""
    if name is not None:
        validate_worker_name(name)
    require_pids_cgroup(settings.step_max_processes)
    Keyring.load(settings).check()
    url = resolve_url(settings)
    client = connect(url)
    if target is not None:
        found_target = guarded(lambda: TargetRegistry(client).get(target), url)
        slug, pool_name = found_target.pool_key, f"target {found_target.name}"
        name = name or found_target.slug
    elif pool is None:
        slug, pool_name = keys.BUILTIN_POOL, "built-in worker"
    else:
        found = find(guarded(lambda: read_snapshot(client), url).pools, pool)
        slug, pool_name = found.slug, found.name
    identity = guarded(lambda: register(client, settings, slug, name, concurrency), url)
    runtime = Runtime(settings, url, identity)
    app = make_app(url, settings.visibility_timeout)
    batch_events(app)
    bind(app, runtime)
    if identity.checks_health:
        app.steps["consumer"].add(queue_gate(runtime))
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def on_ready(**_: Any) -> None:
        # Everything made so far (Celery, kombu and workerpool, some 50,000 objects) lives as
        # long as the worker: out of the collector's sight, a full collection no longer takes
        # ~12 ms, a pause that would land on some step every few hundred.
        gc.freeze()
        runtime.ready = True
        runtime.beat()
        status = runtime.health
        if status.healthy:
            print(f"{identity.name} is consuming {identity.queue} ({pool_name})", flush=True)
        else:
            print(f"{identity.name} is Unhealthy ({status.reason}); it consumes {identity.queue} "
                  f"({pool_name}) once its health check passes", flush=True)

    stop_requested: list[bool] = []

    def on_shutting_down(**_: Any) -> None:
        stop_requested.append(True)
        runtime.begin_shutdown()

    worker_ready.connect(on_ready, weak=False)
    worker_shutting_down.connect(on_shutting_down, weak=False)
    # Containers commonly run workers as root; the script runs in its own process group.
    warnings.filterwarnings("ignore", category=SecurityWarning)
    try:
        runtime.start_threads()  # heartbeats go on while the first health check runs
        guarded(runtime.check_health, url)  # before the queue gate's first look
        while True:
            worker = app.Worker(hostname=f"{identity.name}@{socket.gethostname()}",
                                queues=[identity.queue], concurrency=concurrency,
                                pool_cls="threads", without_mingle=True, without_gossip=True,
                                loglevel=loglevel, quiet=True, no_color=True)
            worker.start()
            if stop_requested or not worker.exitcode:
                break
            # Celery gives up on some broker failures (a reconnect racing kombu's restore of
            # unacknowledged messages raises inside kombu); the registration, heartbeats and
            # running steps are ours and go on, so start consuming again.
            log.error("the Celery worker stopped unexpectedly (exit code %s); starting it again",
                      worker.exitcode)
            runtime.stopping.wait(RESTART_DELAY)
    finally:
        runtime.shutdown()
    return int(worker.exitcode or 0)
