"""workerpool's kombu transport: one Redis client per channel and pool, real Redis throughout."""

from __future__ import annotations

from kombu.transport import redis as kombu_redis

from workerpool.worker.celery import transport
from workerpool.worker.celery.app import make_app


def test_workers_use_workerpool_transport_and_the_baseline_kombus(redis_url):
    with make_app(redis_url).connection_for_write() as conn:
        assert conn.transport_cls == transport.NAME
        assert type(conn.transport) is transport.Transport
    with make_app(redis_url, transport=None).connection_for_write() as conn:
        assert type(conn.transport) is kombu_redis.Transport


def test_a_channel_reuses_one_client_for_publishes_and_acks(redis_url):
    app = make_app(redis_url)
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        first = channel._create_client()
        with conn.SimpleQueue("workerpool.test.transport") as queue:
            for n in range(20):
                queue.put({"n": n})
            got = []
            for _ in range(20):
                message = queue.get(timeout=5)
                got.append(message.payload["n"])
                message.ack()
        assert sorted(got) == list(range(20))
        assert channel._create_client() is first
        assert first.connection_pool is channel.pool


def test_a_dropped_pool_gets_a_new_client_that_works(redis_url):
    app = make_app(redis_url)
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        old = channel._create_client()
        channel._disconnect_pools()  # what kombu does after a fork or a lost connection
        new = channel._create_client()
        assert new is not old
        assert new.connection_pool is channel.pool
        assert new.ping()
        with conn.SimpleQueue("workerpool.test.transport-after") as queue:
            queue.put({"ok": True})
            message = queue.get(timeout=5)
            message.ack()
        assert message.payload == {"ok": True}
