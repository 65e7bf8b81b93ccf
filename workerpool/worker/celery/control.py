"""Celery remote control on a pool's workers: what ``celery control`` and Flower's buttons do.

Celery's own commands answer as they do on any Celery worker (``inspect``, ``ping``,
``shutdown``...). Four are wrapped on a workerpool worker, so that they act on steps and
pools rather than on Celery's idea of them:

- ``revoke`` (with or without ``terminate``) and ``terminate``: cancel the step as
  ``workerpool cancel`` does. A Queued step ends Cancelled before it runs; a Running one has
  its whole process group stopped by the worker running it and ends Cancelled, which Flower
  shows as REVOKED. The signal asked for is not used: the group gets SIGTERM, then SIGKILL
  after the kill grace, as for every cancel. A broadcast reaches every worker of every pool;
  each acts on its own pool's steps only.
- ``cancel_consumer`` and ``add_consumer`` of the worker's own queue hold and release its
  queue gate (``consumer.queue_gate``), so the worker says why it takes nothing
  ("consumer cancelled by control command"); ``add_consumer`` of any other queue is refused,
  as the pool's Redis login reaches no other queue.

Only an admin's Redis login can publish a control command: a pool's login may listen on the
control channel but not publish on it (``core.credentials``), so one pool cannot stop another.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery
from celery.utils.functional import maybe_list
from celery.worker import state as worker_state
from celery.worker.control import Panel

from workerpool.core.messages import TASK_NAME

if TYPE_CHECKING:
    from workerpool.worker.runtime import Runtime

Command = Callable[..., Any]

# The runtime of each worker app in this process: Celery hands a command only its app.
_runtimes: weakref.WeakKeyDictionary[Celery, Runtime] = weakref.WeakKeyDictionary()
_STOCK: dict[str, Command] = {}


def listens(client: redis.Redis) -> bool:
    """Whether *client*'s login may listen for control commands: a pool login issued before
    workers took remote control may not, and its worker would fail at every start of Celery's
    mailbox."""
    db = client.connection_pool.connection_kwargs.get("db", 0)
    pubsub = client.pubsub()  # type: ignore[no-untyped-call, unused-ignore]
    try:
        pubsub.psubscribe(f"/{db}.celery.pidbox")
        pubsub.get_message(timeout=5.0)  # the answer: subscribed, or refused
        return True
    except redis.ResponseError as exc:
        if "NOPERM" in str(exc) or "permission" in str(exc):
            return False
        raise
    finally:
        pubsub.close()


def install(app: Celery, runtime: Runtime) -> None:
    """Make *app*'s worker answer revoke, terminate, cancel_consumer and add_consumer for
    *runtime*'s pool; any other app in the process keeps Celery's own commands."""
    _runtimes[app] = runtime
    if _STOCK:
        return
    for name, wrapper in (("revoke", _revoke), ("terminate", _terminate),
                          ("cancel_consumer", _cancel_consumer),
                          ("add_consumer", _add_consumer)):
        _STOCK[name] = Panel.data[name]
        Panel.data[name] = wrapper


def _revoke(state: Any, task_id: Any, terminate: bool = False, signal: str | None = None,
            **kwargs: Any) -> Any:
    runtime = _runtimes.get(state.app)
    if runtime is None:
        return _STOCK["revoke"](state, task_id, terminate, signal, **kwargs)
    ids = {str(t) for t in maybe_list(task_id) or []}
    worker_state.revoked.update(ids)  # a copy still on its way is discarded by Celery too
    for revoked, label in runtime.revoke(ids):  # its task never reached a worker: say so
        state.consumer.event_dispatcher.send(
            "task-revoked", uuid=revoked, terminated=False, signum=None, expired=False,
            name=TASK_NAME, args=label, routing_key=runtime.identity.queue)
    return {"ok": f"tasks {', '.join(sorted(ids))} cancelled (as `workerpool cancel`)"}


def _terminate(state: Any, signal: str, task_id: Any, **kwargs: Any) -> Any:
    return _revoke(state, task_id, terminate=True, signal=signal)


def _cancel_consumer(state: Any, queue: str, **kwargs: Any) -> Any:
    runtime = _runtimes.get(state.app)
    if runtime is None or queue != runtime.identity.queue:
        return _STOCK["cancel_consumer"](state, queue, **kwargs)
    runtime.held = True  # the queue gate stops consuming at its next look
    return {"ok": f"no longer consuming from {queue}"}


def _add_consumer(state: Any, queue: str, exchange: str | None = None,
                  exchange_type: str | None = None, routing_key: str | None = None,
                  **options: Any) -> Any:
    runtime = _runtimes.get(state.app)
    if runtime is None:
        return _STOCK["add_consumer"](state, queue, exchange, exchange_type, routing_key,
                                      **options)
    if queue != runtime.identity.queue:
        return {"error": f"a worker of pool {runtime.identity.pool} consumes only its pool's "
                         f"queue {runtime.identity.queue}: its Redis login reaches no other"}
    runtime.held = False  # the queue gate resumes at its next look, if the worker is healthy
    return {"ok": f"add consumer {queue}"}
