"""What ``workerpool flower`` gives Flower: every pool's queue on its Broker page and in
``/api/queues/length``, counted over the queue's three priority lists, and its ``/metrics``
behind its own login. Imported only when Flower runs.

Flower's handlers are Flower's own, subclassed: each is put in Flower's route table in place
of the class it extends, before Flower builds its application.
"""

from __future__ import annotations

import contextlib
from typing import Any

import redis
import tornado.web
from flower import urls
from flower.api.tasks import GetQueueLengths
from flower.utils.broker import RedisBase
from flower.views.broker import BrokerView
from flower.views.monitor import Metrics

from workerpool.core import keys
from workerpool.core.connection import connect
from workerpool.core.errors import Incompatible
from workerpool.core.snapshot import all_pools


class PoolQueues:
    """The queues Flower's broker views show: those online workers report consuming (Flower's
    own rule, from ``inspect active_queues``), and every pool's, read from Redis each time, so
    a pool without online workers shows its waiting steps too."""

    client: redis.Redis | None = None

    def get_active_queue_names(self) -> list[str]:
        workers: dict[str, Any] = self.application.workers  # type: ignore[attr-defined]
        names = {str(queue["name"]) for info in workers.values()
                 for queue in info.get("active_queues", [])}
        if self.client is not None:
            # Redis away: Flower's own broker client then says why the page is empty.
            with contextlib.suppress(redis.RedisError):
                names.update(keys.queue_of(slug) for slug in all_pools(self.client))
        return sorted(names)


class PoolsBrokerView(PoolQueues, BrokerView):  # type: ignore[misc]
    """Flower's Broker page, with every pool's queue."""


class PoolsQueueLengths(PoolQueues, GetQueueLengths):  # type: ignore[misc]
    """Flower's ``/api/queues/length``, with every pool's queue."""


class AuthenticatedMetrics(Metrics):  # type: ignore[misc]
    """Flower's Prometheus page, asking for the credentials its other pages ask for (Flower
    serves it to anyone, even with ``--basic-auth``)."""

    @tornado.web.authenticated
    async def get(self) -> Any:
        return await super().get()


_stock_q_for_pri = RedisBase._q_for_pri


def _q_for_pri(self: RedisBase, queue: str, pri: int) -> str:
    """Flower's name of *queue*'s list for kombu's priority *pri*: a step queue's lists are
    ``keys.priority_lists`` (what workers BRPOP), so Flower counts every waiting message."""
    if keys.is_step_queue(queue) and pri in keys.PRIORITY_STEPS:
        return keys.priority_list(queue, keys.priority_of_number(pri))
    return _stock_q_for_pri(self, queue, pri)  # type: ignore[no-any-return]


def install(url: str, public_metrics: bool) -> None:
    """Put workerpool's handlers in Flower's route table. Refuses (exit 2) if a handler they
    extend is no longer routed: Flower has changed shape."""
    PoolQueues.client = connect(url)
    RedisBase._q_for_pri = _q_for_pri
    replacing: dict[type, type] = {BrokerView: PoolsBrokerView,
                                   GetQueueLengths: PoolsQueueLengths}
    if not public_metrics:
        replacing[Metrics] = AuthenticatedMetrics
    for index, route in enumerate(urls.handlers):
        if isinstance(route, tuple) and route[1] in replacing:
            urls.handlers[index] = (route[0], replacing.pop(route[1]), *route[2:])
        elif getattr(route, "handler_class", None) in replacing:
            route.target = route.handler_class = replacing.pop(route.handler_class)
    if replacing:
        missing = ", ".join(sorted(f"{c.__module__}.{c.__name__}" for c in replacing))
        raise Incompatible(f"the installed Flower no longer routes {missing}; install the "
                           "Flower version pyproject.toml allows")
