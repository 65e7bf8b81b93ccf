"""Step priorities: a free worker takes the oldest step of the highest priority first, and a
step that has waited the aging time moves up to the high line; end to end against real
workers (logged in as their pool's Redis user) and Redis."""

from __future__ import annotations

import json

from conftest import one_line_error, wait_for

from workerpool import ScriptStep
from workerpool.core import keys, messages


def test_a_free_worker_takes_the_oldest_step_of_the_highest_priority_first(client, start_worker,
                                                                          cli, raw):
    client.pools.add("Ops Pool")
    order = ["low-1", "normal-1", "high-1", "normal-2", "high-2", "low-2"]
    handles = {name: client.run(ScriptStep(script="true", pool="Ops Pool", name=name,
                                           priority=name.split("-")[0]))
               for name in order}
    queue = keys.pool_queue("ops-pool")
    assert [raw.llen(name) for name in keys.priority_lists(queue)] == [2, 2, 2]
    status = json.loads(cli("status", "--json").stdout)
    pool = next(p for p in status["pools"] if p["name"] == "Ops Pool")
    assert (pool["queued"], pool["without_message"]) == (6, 0)  # every list counted
    assert handles["high-1"].result().priority == "high"

    start_worker("Ops Pool", concurrency=1)
    results = [h.wait(60) for h in handles.values()]
    assert [r.state for r in results] == ["Success"] * 6
    started = sorted(results, key=lambda r: r.started_at or 0)
    assert [r.name for r in started] == ["high-1", "high-2", "normal-1", "normal-2", "low-1",
                                         "low-2"]
    assert [raw.llen(name) for name in keys.priority_lists(queue)] == [0, 0, 0]


def test_a_step_that_waited_the_aging_time_goes_before_later_high_steps(client, start_worker,
                                                                        cli, raw):
    client.pools.add("Ops Pool")
    cli("pool", "pause", "Ops Pool")
    start_worker("Ops Pool", concurrency=1, extra_env={"WORKERPOOL_PRIORITY_AGING": "1"})
    old = client.run(ScriptStep(script="true", pool="Ops Pool", name="old low", priority="low"))
    high_list = keys.priority_list(keys.pool_queue("ops-pool"), "high")

    def moved_up() -> bool:  # the worker's reaper moved it once it had waited a second
        return any(messages.step_of(json.loads(entry)["headers"]["id"]) == old.id
                   for entry in raw.lrange(high_list, 0, -1))
    wait_for(moved_up, 30, "the low step to move up to the high line")
    later = [client.run(ScriptStep(script="true", pool="Ops Pool", name=f"high {i}",
                                   priority="high")) for i in range(2)]
    assert cli("pool", "resume", "Ops Pool").returncode == 0
    results = [h.wait(60) for h in (old, *later)]
    assert [r.state for r in results] == ["Success"] * 3
    started = sorted(results, key=lambda r: r.started_at or 0)
    assert [r.name for r in started] == ["old low", "high 0", "high 1"]
    assert old.result().priority == "low"  # its own priority; only its place in line moved


def test_priority_from_the_command_line(client, cli, raw):
    client.pools.add("Ops Pool")
    queued = cli("run", "--pool", "Ops Pool", "--script", "true", "--priority", "low",
                 "--no-wait")
    assert queued.returncode == 0, queued.stderr
    step_id = queued.stdout.strip()
    assert raw.hget(keys.step(step_id), "priority") == "low"
    assert raw.llen(keys.priority_list(keys.pool_queue("ops-pool"), "low")) == 1

    unknown = cli("run", "--pool", "Ops Pool", "--script", "true", "--priority", "urgent")
    assert one_line_error(unknown) == ("workerpool: error: unknown priority 'urgent'; use "
                                       "one of high, normal, low")
