"""``StepStore.enqueue_many``: steps pipelined in batches are stored and queued exactly as
``enqueue`` stores one, and a real worker runs them."""

from __future__ import annotations

import json

from workerpool import ScriptStep
from workerpool.core import keys, messages
from workerpool.core.routing import Route
from workerpool.core.sealing import key_to_seal
from workerpool.core.store import DEFAULTED

STEP = ScriptStep(script='test "$TOKEN" = "${GREETING}-t0ken" && echo "$GREETING"', name="many",
                  pool="Many", variables={"GREETING": "hello"},
                  sensitive_variables={"TOKEN": "hello-t0ken"}, priority="high")
PER_STEP = {"queued_at", "deadline", "secrets"}  # the enqueue's time, its own sealed box


def test_enqueue_many_stores_and_queues_each_step_as_enqueue_does(client, raw, start_worker):
    pool = client.pools.add("Many")
    route = Route(pool.queue, pool.slug, pool.name)
    sealing = key_to_seal(client.store.keyring, raw, {}, pool.slug, True)
    settings = client.settings
    one = client.store.enqueue(STEP, route, settings.lease_timeout, settings.step_timeout,
                               sealing=sealing)
    many = client.store.enqueue_many(STEP, route, 5, settings.lease_timeout,
                                     settings.step_timeout, sealing=sealing, batch=2)
    assert len(set(many)) == 5 and all(keys.pool_of(step_id) == pool.slug for step_id in many)

    model = client.store.record(one)
    assert "secrets" in model and "variables" in model  # set when they hold something
    assert not (DEFAULTED.keys() - {"variables"}) & model.keys()  # left out: defaults
    for step_id in many:
        record = client.store.record(step_id)
        assert record.keys() == model.keys()
        assert {k: v for k, v in record.items() if k not in PER_STEP} == \
            {k: v for k, v in model.items() if k not in PER_STEP}
        assert record["secrets"] and record["secrets"] != model["secrets"]
        assert "hello-t0ken" not in json.dumps(record)  # sealed, never stored in clear
    assert set(raw.zrange(keys.pending(pool.slug), 0, -1)) == {one, *many}
    queued = raw.lrange(keys.priority_list(route.queue, "high"), 0, -1)
    assert queued == [messages.for_record(s, 0, client.store.record(s))
                      for s in reversed([one, *many])]

    worker = start_worker("Many")
    for step_id in [one, *many]:
        result = client.step(step_id).wait(timeout=30)
        assert (result.state, result.worker, result.priority) == ("Success", worker.name,
                                                                  "high")
        assert [entry.text for entry in result.log] == ["hello"]
    assert raw.llen(keys.priority_list(route.queue, "high")) == 0
