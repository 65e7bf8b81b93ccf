"""kombu's Redis transport, with one Redis client per channel instead of one per operation.

Stock kombu builds a new ``redis.Redis`` object for each message it publishes (a task event, a
message to a queue) and for each ack (``conn_or_acquire`` without a client). With redis-py 8
that costs about 50 µs of CPU a time, several times per step, all on the worker's consumer
thread. A ``redis.Redis`` object holds no connection of its own (it checks one out of the
channel's pool per command), so one object per channel and pool serves every thread. A pool
kombu drops (after a fork or a lost connection) gets a new client with the new pool.

Workers and ``Client.run``'s Celery app name it by ``broker_transport``; the URL stays a plain
``redis://`` or ``rediss://`` URL.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

NAME = "workerpool.worker.celery.transport:Transport"


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the event loop's own client (BRPOP): kombu already keeps one
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        pool = self.pool
        client = self._shared_client
        if client is None or client.connection_pool is not pool:
            client = self._shared_client = super()._create_client()  # type: ignore[misc]
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
