"""Bootsteps of a worker's Celery consumer: task events gathered for 50 ms, and the queue gate
that consumes the worker's queue only while its health check passes and remote control has
not held it."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery, bootsteps
from celery.worker.consumer import Consumer
from celery.worker.consumer.events import Events
from celery.worker.consumer.tasks import Tasks

from workerpool.worker.celery import internals
from workerpool.worker.runtime import Runtime

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
        internals.flush_events(self)

    def shutdown(self) -> Any:
        """Publish what is gathered before Celery closes the dispatcher (which would drop it)."""
        try:
            internals.flush_events(self)
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


def fetching(consumer: Any) -> bool:
    """Whether the consumer's channel has a BRPOP in flight: cancelling a queue stops the next
    one, not one Redis already holds, which still delivers a message pushed meanwhile."""
    return internals.brpop_in_flight(consumer.task_consumer.channel)


def queue_gate(runtime: Runtime) -> type[bootsteps.StartStopStep]:
    """A consumer bootstep that consumes the worker's queue only while its runtime accepts
    steps: healthy, its pool not paused, not draining, and not held by remote control
    (``control.py``: ``celery control cancel_consumer``).

    It runs in the consumer's own thread (Celery's event loop), where ``cancel_task_queue`` and
    ``add_task_queue`` are safe to call; the health thread and the control commands only set
    ``runtime.health`` and ``runtime.held``. It first runs after the task consumer is made and
    before the loop's first fetch, so a worker that starts unhealthy takes nothing; after a
    reconnection it runs again.
    """
    queue = runtime.identity.queue

    def reconcile(consumer: Any) -> None:
        # Whether the queue is listed, not whether a fetch is active: at the first look the
        # event loop has not started consuming yet, and would start with every listed queue.
        listed = any(q.name == queue for q in consumer.task_consumer.queues)
        wanted = runtime.accepting
        if listed and not wanted:
            consumer.cancel_task_queue(queue)
            listed = False
        elif wanted and not listed:
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
