"""``/metrics`` (``server --http-port``'s pools page, and ``workerpool metrics``), read with
``prometheus_client``'s parser, value by value, against real workers and Redis."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import one_line_error, wait_for
from httpd import fetch, free_port, running
from promtext import samples, types, value

from workerpool import ScriptStep
from workerpool.core.tallies import DURATION_BUCKETS
from workerpool.server import web
from workerpool.server.metrics import SIGNAL

AGE = "workerpool_oldest_queued_step_age_seconds"
ENDED = "workerpool_steps_ended_total"
DURATION = "workerpool_step_duration_seconds"


@pytest.fixture
def scrape(redis_url: str) -> Iterator[Callable[[], str]]:
    """GET /metrics of a pools page on this test's Redis, as Prometheus would."""
    page = web.start(redis_url, 0)

    def get() -> str:
        status, body = fetch(f"http://127.0.0.1:{page.port}/metrics")
        assert status == 200, body
        return body

    yield get
    web.stop(page)


def shows(scrape: Callable[[], str], pool: str, **expected: float) -> None:
    """Wait until /metrics shows each *expected* series (``running_steps=1``, short for
    ``workerpool_running_steps``) of *pool* at that value."""
    def names(text: str) -> dict[str, float]:
        return {name: value(text, name if name == SIGNAL else f"workerpool_{name}", pool=pool)
                for name in expected}
    last: list[dict[str, float]] = []

    def matches() -> bool:
        last[:] = [names(scrape())]
        return last[0] == expected
    try:
        wait_for(matches, 30, f"/metrics of {pool} to show {expected}")
    except AssertionError:
        raise AssertionError(f"/metrics of {pool} shows {last}, not {expected}") from None


def gated(gate: object, pool: str, **extra: object) -> ScriptStep:
    return ScriptStep(script=f"while [ ! -e {gate} ]; do sleep 0.05; done", pool=pool,
                      **extra)  # type: ignore[arg-type]


def test_queued_age_running_free_slots_and_the_signal(client, start_worker, scrape,
                                                     redis_url, tmp_path):
    client.pools.add("Idle Pool")
    before = time.time()
    for _ in range(3):  # no worker: only Redis knows they wait
        client.run(ScriptStep(script="true", pool="Idle Pool"))
    shows(scrape, "idle-pool", queued_steps=3, running_steps=0, free_slots=0,
          **{SIGNAL: 3.0})  # no healthy slot: the slots wanted themselves
    wait_for(lambda: value(scrape(), AGE, pool="idle-pool") >= 0.3, 30, "the age to grow")
    assert value(scrape(), AGE, pool="idle-pool") <= time.time() - before + 0.5
    assert value(scrape(), AGE, pool="default-worker-pool") == 0

    client.pools.add("Metrics Pool")
    worker = start_worker("Metrics Pool", concurrency=2)
    text = scrape()
    assert value(text, "workerpool_workers", pool="metrics-pool", state="Healthy") == 1
    assert value(text, "workerpool_workers", pool="idle-pool", state="Healthy") == 0
    shows(scrape, "metrics-pool", free_slots=2, **{SIGNAL: 0.0})
    gate = tmp_path / "go"
    first = client.run(gated(gate, "Metrics Pool"))
    shows(scrape, "metrics-pool", queued_steps=0, running_steps=1, free_slots=1,
          **{SIGNAL: 0.5})  # (0 + 1) / 2
    more = [client.run(gated(gate, "Metrics Pool")) for _ in range(2)]
    shows(scrape, "metrics-pool", queued_steps=1, running_steps=2, free_slots=0,
          **{SIGNAL: 1.5})  # (1 + 2) / 2

    gate.touch()
    results = [h.wait(30) for h in (first, *more)]
    assert [r.state for r in results] == ["Success"] * 3
    took = [r.finished_at - r.started_at for r in results]  # type: ignore[operator]
    text = scrape()
    assert value(text, ENDED, pool="metrics-pool", state="Success") == 3
    assert value(text, ENDED, pool="metrics-pool", state="Failed") == 0
    assert value(text, f"{DURATION}_count", pool="metrics-pool") == 3
    assert value(text, f"{DURATION}_sum", pool="metrics-pool") == pytest.approx(sum(took),
                                                                                abs=1e-3)
    for bound in (*DURATION_BUCKETS, "+Inf"):
        under = sum(t <= float(bound) for t in took)
        assert value(text, f"{DURATION}_bucket", pool="metrics-pool", le=bound) == under
    assert types(text)["workerpool_steps_ended"] == "counter"
    assert types(text)[DURATION] == "histogram"
    assert worker.proc.poll() is None

    # A second server keeps nothing of its own: it shows the same counters.
    other = web.start(redis_url, 0)
    try:
        again = samples(fetch(f"http://127.0.0.1:{other.port}/metrics")[1])
    finally:
        web.stop(other)
    mine = samples(scrape())
    counted = {k for k in mine if k[0].startswith((ENDED, DURATION))}
    assert counted and {k: again[k] for k in counted} == {k: mine[k] for k in counted}


def test_steps_ended_are_counted_by_state_on_every_path(client, start_worker, scrape, tmp_path):
    client.pools.add("Ends Pool")
    client.pools.add("Idle Pool")
    worker = start_worker("Ends Pool")
    ran = [client.run(ScriptStep(script="true", pool="Ends Pool")).wait(30),
           client.run(ScriptStep(script="exit 3", pool="Ends Pool")).wait(30),
           client.run(ScriptStep(script="sleep 30", pool="Ends Pool", timeout=1)).wait(30)]
    assert [r.state for r in ran] == ["Success", "Failed", "TimedOut"]

    cancelled = client.run(ScriptStep(script="true", pool="Idle Pool"))
    assert cancelled.cancel() == "Queued"
    overdue = client.run(ScriptStep(script="true", pool="Idle Pool", lease_timeout=1))
    assert overdue.wait(30).state == "LeaseTimeout"  # its wait reaps the pool
    assert cancelled.result().state == "Cancelled"

    lost = client.run(gated(tmp_path / "never", "Ends Pool"))
    wait_for(lambda: lost.result().state == "Running", 30, "the step to run")
    worker.proc.kill()  # no end from the worker: the reaper ends it
    worker.proc.wait()
    ran.append(lost.wait(60))
    assert ran[-1].state == "WorkerLost"

    text = scrape()
    ends = {state: value(text, ENDED, pool="ends-pool", state=state)
            for state in ("Success", "Failed", "TimedOut", "WorkerLost", "Cancelled",
                          "LeaseTimeout")}
    assert ends == {"Success": 1, "Failed": 1, "TimedOut": 1, "WorkerLost": 1, "Cancelled": 0,
                    "LeaseTimeout": 0}
    idle = {state: value(text, ENDED, pool="idle-pool", state=state)
            for state in ("Success", "Cancelled", "LeaseTimeout")}
    assert idle == {"Success": 0, "Cancelled": 1, "LeaseTimeout": 1}
    # Only steps that ran have a running time.
    took = [r.finished_at - r.started_at for r in ran]  # type: ignore[operator]
    assert value(text, f"{DURATION}_count", pool="ends-pool") == 4
    assert value(text, f"{DURATION}_sum", pool="ends-pool") == pytest.approx(sum(took), abs=1e-3)
    assert value(text, f"{DURATION}_count", pool="idle-pool") == 0
    assert value(text, f"{DURATION}_bucket", pool="ends-pool", le="0.5") == \
        sum(t <= 0.5 for t in took)
    assert value(text, "workerpool_workers", pool="ends-pool", state="Offline") == 1


def test_paused_draining_and_capped_pools_move_the_signal(client, start_worker, scrape,
                                                         tmp_path):
    client.pools.add("Ops Pool")
    worker = start_worker("Ops Pool", concurrency=2)
    gate = tmp_path / "go"
    first = client.run(gated(gate, "Ops Pool"))
    shows(scrape, "ops-pool", running_steps=1, paused=0)
    client.pools.pause("Ops Pool", reason="maintenance")
    for _ in range(2):
        client.run(ScriptStep(script="true", pool="Ops Pool"))
    # Paused: the queued steps cannot start, so they want no slot; (0 + 1) / 2.
    shows(scrape, "ops-pool", paused=1, queued_steps=2, running_steps=1, free_slots=1,
          **{SIGNAL: 0.5})

    client.workers.drain(worker.name)
    shows(scrape, "ops-pool", free_slots=0, running_steps=1, **{SIGNAL: 1.0})  # no healthy slot
    text = scrape()
    assert value(text, "workerpool_workers", pool="ops-pool", state="Draining") == 1
    assert value(text, "workerpool_workers", pool="ops-pool", state="Healthy") == 0

    gate.touch()
    assert first.wait(30).state == "Success"
    assert worker.proc.wait(30) == 0  # drained: deregistered and gone
    shows(scrape, "ops-pool", running_steps=0, queued_steps=2, **{SIGNAL: 0.0})
    client.pools.resume("Ops Pool")
    shows(scrape, "ops-pool", paused=0, **{SIGNAL: 2.0})  # (2 + 0), no healthy slot
    client.pools.edit("Ops Pool", max_running=1)
    shows(scrape, "ops-pool", max_running=1, **{SIGNAL: 1.0})  # at most its cap


def test_the_metrics_command_serves_only_metrics_until_interrupted(client, env, cli, tmp_path):
    client.pools.add("Idle Pool")
    client.run(ScriptStep(script="true", pool="Idle Pool"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def answered() -> str | None:
        try:
            status, body = fetch(f"{url}/metrics")
        except OSError:
            return None
        return body if status == 200 else None

    with running(["metrics", "--port", str(port)], env, tmp_path / "metrics.log"):
        text = str(wait_for(answered, 30, "workerpool metrics to answer"))
        assert value(text, "workerpool_queued_steps", pool="idle-pool") == 1
        assert value(text, SIGNAL, pool="idle-pool") == 1
        assert fetch(f"{url}/")[0] == 404
        assert fetch(f"{url}/api/pools")[0] == 404
        taken = cli("metrics", "--port", str(port))
        assert f"cannot serve /metrics on 127.0.0.1:{port}" in one_line_error(taken)
    assert "Ctrl-C stops it" in (tmp_path / "metrics.log").read_text()

    bad_url = cli("metrics", "--port", str(free_port()),
                  extra_env={"WORKERPOOL_REDIS_URL": "http://127.0.0.1:6379"})
    assert "must start with redis://" in one_line_error(bad_url)
    out_of_range = cli("metrics", "--port", "70000")
    assert "--port" in one_line_error(out_of_range)
    with socket.socket() as nowhere:  # a port nothing answers on: Redis unreachable, exit 3
        nowhere.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{nowhere.getsockname()[1]}/0"
        unreachable = cli("metrics", "--port", str(free_port()),
                          extra_env={"WORKERPOOL_REDIS_URL": dead})
    assert "is unreachable" in one_line_error(unreachable, code=3)


def test_a_scrape_while_redis_is_unreachable_answers_503_with_the_reason() -> None:
    with socket.socket() as nowhere:
        nowhere.bind(("127.0.0.1", 0))
        page = web.start(f"redis://127.0.0.1:{nowhere.getsockname()[1]}/0", 0)
        try:
            status, body = fetch(f"http://127.0.0.1:{page.port}/metrics")
        finally:
            web.stop(page)
    assert status == 503 and "is unreachable" in body, body
