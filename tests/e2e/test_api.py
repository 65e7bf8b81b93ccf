"""The Python API: the same results as the CLI, two round trips to enqueue, no worker imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis
from conftest import CountingConnection

from workerpool import Client, ScriptStep
from workerpool.core.errors import StepWaitTimeout, UnknownPool
from workerpool.core.store import StepStore


def test_run_wait_logs_from_python(client, start_worker):
    client.pools.add("Database Worker Pool", description="SQL on 1433")
    worker = start_worker("database-worker-pool")
    handle = client.run(ScriptStep(script="echo hi; set_workerpool_variable V 1",
                                   pool="Database Worker Pool", variables={"A": "b"},
                                   timeout=30))
    result = handle.wait(timeout=30)
    assert result.succeeded and result.worker == worker.name
    assert result.output_variables == {"V": "1"}
    assert [e.text for e in handle.logs()] == ["hi"]
    assert result.to_json()["pool"] == "database-worker-pool"
    assert [p.name for p in client.pools.list()] == ["Default Worker Pool",
                                                     "Database Worker Pool"]
    assert client.pools.get("database-worker-pool").description == "SQL on 1433"
    assert [w.name for w in client.workers.list()] == [worker.name]


def test_enqueue_costs_two_round_trips(redis_url, settings):
    client = Client(settings=settings.with_redis_url(redis_url))
    client.pools.add("Parked")
    pool = redis.ConnectionPool.from_url(redis_url, decode_responses=True,
                                         connection_class=CountingConnection)
    client.redis = redis.Redis(connection_pool=pool)
    client.store = StepStore(client.redis, keyring=client.store.keyring)
    client.run(ScriptStep(script="true", pool="Parked"))  # loads the Lua scripts if new
    CountingConnection.sent = 0
    client.run(ScriptStep(script="true", pool="Parked"))
    assert CountingConnection.sent == 2


def test_client_does_not_import_worker_code(redis_url):
    code = f"""
import sys, json
from workerpool import Client, ScriptStep
c = Client(redis_url={redis_url!r})
c.pools.add("Parked")
c.run(ScriptStep(script="true", pool="Parked"))
print(json.dumps(sorted(m for m in sys.modules
                        if m.split('.')[0] in ('celery', 'kombu', 'billiard')
                        or m in ('workerpool.worker.runtime', 'workerpool.worker.celery.app',
                                 'workerpool.worker.step.execution'))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == []


def test_wait_timeout_and_unknown_pool(client):
    client.pools.add("Parked")
    handle = client.run(ScriptStep(script="true", pool="Parked"))
    with pytest.raises(StepWaitTimeout):
        handle.wait(timeout=0.3)
    assert handle.result().state == "Queued"
    with pytest.raises(UnknownPool):
        client.run(ScriptStep(script="true", pool="nope"))
