"""The one Celery app factory, and the step task: a thin shell around ``Runtime.execute``."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.exceptions import Ignore, Terminated
from celery.utils.functional import noop
from celery.worker.request import Request
from kombu.asynchronous import get_event_loop

from workerpool.core import keys
from workerpool.core.connection import tls_options, without_query
from workerpool.core.messages import TASK_NAME
from workerpool.core.sentinel import is_sentinel, sentinel_kwargs
from workerpool.core.settings import Settings
from workerpool.core.steps import CANCELLED, SUCCESS
from workerpool.worker.celery import control
from workerpool.worker.celery.transport import NAME as TRANSPORT
from workerpool.worker.celery.transport import SENTINEL_NAME as SENTINEL_TRANSPORT

if TYPE_CHECKING:  # Flower builds the app without any worker code
    from workerpool.worker.runtime import Ending, Runtime


def make_app(url: str, visibility_timeout: float = Settings.visibility_timeout,
             transport: str | None = TRANSPORT, pool: str | None = None,
             settings: Settings | None = None) -> Celery:
    """A Celery app for workerpool's queues: JSON only, late ack (a step's message is acked
    earlier, once its script starts: see ``StepRequest``), no prefetch, no results. A worker
    of *pool* keeps kombu's unacknowledged messages in the pool's space (``keys.kombu_keys``),
    where its credentials reach.

    *transport* is workerpool's kombu Redis transport (``transport.py``), or ``None`` for
    kombu's stock one (the bench's plain Celery baseline). A ``sentinel://`` URL takes the
    Sentinel variant of either, on the master *settings* (by default the environment's) name.
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
        broker_transport_options={"visibility_timeout": visibility_timeout,
                                  **(_pool_options(pool) if pool is not None else {})},
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_create_missing_queues=True,
        # Flower shows steps from their workers' task events. It turns events on by broadcast,
        # but only every 5 s, so a worker that just started would run its first steps unseen.
        worker_send_task_events=True,
    )
    if is_sentinel(url):
        _use_sentinel(app, transport, settings or Settings.from_env())
    return app


def _use_sentinel(app: Celery, transport: str | None, settings: Settings) -> None:
    """kombu's Sentinel support: the broker URL stays Celery's ``sentinel://h1;sentinel://h2``
    form, the transport asks the sentinels for the master at each (re)connection."""
    app.conf.broker_transport = SENTINEL_TRANSPORT if transport == TRANSPORT else (
        transport or "sentinel")
    app.conf.broker_transport_options.update(
        master_name=settings.redis_sentinel_master, sentinel_kwargs=sentinel_kwargs(settings))
    app.conf.broker_failover_strategy = _StayOnSentinels


class _StayOnSentinels:
    """kombu's failover strategy for a ``sentinel://h1;sentinel://h2`` URL: never switch URLs.

    kombu reads the ``;`` parts as alternative brokers, and on a connection error switches to
    the next one, re-reading its scheme as the transport: kombu's stock Sentinel transport,
    not workerpool's, whose keys a pool's credentials do not reach (a consumer then died on
    its first call after a failover). The Sentinel transport already asks every sentinel for
    the master at each connection, so there is nothing to switch to. kombu switches only while
    its cycle is truthy; this one, never."""

    def __init__(self, alternatives: list[str]) -> None:
        self.first = alternatives[0]

    def __iter__(self) -> _StayOnSentinels:
        return self

    def __next__(self) -> str:  # kombu skips the first entry once, at the start
        return self.first

    def __bool__(self) -> bool:
        return False


def _pool_options(pool: str) -> dict[str, object]:
    """kombu's keys for a worker of *pool*: its unacknowledged messages in the pool's space,
    and its queue's three lists (``keys.priority_lists``), asked in this order by each BRPOP,
    so it takes the oldest step of the highest priority first; the worker's credentials name
    exactly these."""
    return {**keys.kombu_keys(pool), "priority_steps": list(keys.PRIORITY_STEPS)}


def worker_app(url: str, settings: Settings, pool: str, worker: str) -> Celery:
    """The app of *worker* of *pool*. Its channel checks each entry of the pool's queue before
    Celery unpacks it (``poison.py``). It takes Celery's remote control, from an admin's
    login only (``control.py``)."""
    app = make_app(url, settings.visibility_timeout, pool=pool, settings=settings)
    app.conf.broker_transport_options.update(step_pool=pool, step_worker=worker)
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

    def send_event(self, type: str, **fields: Any) -> None:
        """Celery's, with the queue on ``task-started``: a step's message is pushed by
        workerpool, not sent by Celery, so no ``task-sent`` event carries it to Flower."""
        if type == "task-started":
            info = self.delivery_info or {}
            fields.setdefault("exchange", info.get("exchange", ""))
            fields.setdefault("routing_key", info.get("routing_key"))
        super().send_event(type, **fields)

    def acknowledge(self) -> None:
        if not self.acknowledged:
            super().acknowledge()
        elif (hub := get_event_loop()) is not None:
            hub.call_soon(noop)  # a callback that only wakes the event loop


# Requests of the messages received and not yet run, by task id; a request Celery drops
# (a revoked task) leaves with it.
_requests: weakref.WeakValueDictionary[str, StepRequest] = weakref.WeakValueDictionary()


class StepEnded(Exception):
    """A step that ended other than Success (Failed, TimedOut, WorkerLost): Celery reports the
    task as FAILURE, with this text, which names the workerpool state, exit code and worker."""


def report(ending: Ending | None, worker: str) -> dict[str, object]:
    """What Celery, and so Flower, is told of a step's task: Success is its result (state, exit
    code, worker); a Cancelled step is a terminated task (REVOKED); any other end raises
    ``StepEnded`` (FAILURE). A message that ran nothing (a copy of a step already taken, or
    handed back) is ignored: its task sends no end event, so it cannot overwrite the state of
    the task that ran the step. Never a variable value: the message is the step's own end
    message, masked."""
    if ending is None:
        raise Ignore()
    exit_code = "none" if ending.exit_code is None else ending.exit_code
    text = f"{ending.state}: exit code {exit_code}, worker {worker}" + (
        f"; {ending.message}" if ending.message else "")
    if ending.state == SUCCESS:
        return {"state": ending.state, "exit_code": ending.exit_code, "worker": worker}
    if ending.state == CANCELLED:
        raise Terminated(text)
    raise StepEnded(text)


def bind(app: Celery, runtime: Runtime) -> None:
    """Register the step task, a thin shell around ``Runtime.execute``, and the remote control
    commands that act on steps (``control.py``)."""
    control.install(app, runtime)

    @app.task(name=TASK_NAME, acks_late=True, ignore_result=True, Request=StepRequest,
              bind=True, throws=(StepEnded, Terminated))
    def run_step(task: Any, step_id: str, attempt: int = 0) -> dict[str, object]:
        request = _requests.pop(task.request.id, None)
        return report(runtime.execute(step_id, attempt,
                                      noop if request is None else request.acknowledge),
                      runtime.identity.name)
