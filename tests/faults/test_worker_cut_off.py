"""A worker cut off from Redis while it runs a step.

The worker reaches Redis through ``tests/netproxy.py``; the test's client reaches it directly, so
Redis itself stays up and the client's reaper goes on judging heartbeats. The link is cut two
ways: reset (connections refused) and blackhole (nothing gets through, nothing is closed).

- A cut shorter than one heartbeat interval: the step finishes during the cut and is reported
  once the link returns: Success, with its whole log, run once.
- A cut longer than the heartbeat TTL: the reaper ends the step WorkerLost. When the link
  returns the worker neither overwrites that state nor runs the step again, and a script still
  running is killed as soon as the worker learns that its lease is gone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import redis
from conftest import ADMIN_PASSWORD, HEARTBEAT, pid_alive, wait_for
from netproxy import NetProxy

from workerpool import ScriptStep
from workerpool.core import credentials, keys
from workerpool.server.embedded import EmbeddedRedis

POOL = "Cut Pool"
POOL_SLUG = "cut-pool"
SHORT_INTERVAL = 2.0  # the cut-off worker's heartbeat interval in the short-cut case (TTL 4 s)
SHORT_CUT = 1.0  # shorter than one interval (less a quarter, the retry of a lost beat)


@pytest.fixture
def proxy(redis_server: EmbeddedRedis) -> Iterator[NetProxy]:
    with NetProxy(redis_server.port) as running:
        yield running


@pytest.fixture
def cut_off_worker(proxy: NetProxy, client, start_worker,
                   redis_url: str) -> Callable[..., object]:
    """Factory: a worker of POOL that reaches Redis only through the proxy (which outlives
    it, so the worker stops as usual)."""
    client.pools.add(POOL)
    own = credentials.issue(client.redis, redis_url, POOL_SLUG)  # the pool's user, via the proxy
    through_proxy = credentials.url_for(f"redis://127.0.0.1:{proxy.port}{urlparse(redis_url).path}",
                                        own.user, own.password)

    def start(heartbeat: float = HEARTBEAT) -> object:
        before = proxy.accepted
        worker = start_worker(POOL, extra_env={"WORKERPOOL_REDIS_URL": through_proxy,
                                               "WORKERPOOL_HEARTBEAT_INTERVAL": str(heartbeat)})
        assert proxy.accepted > before
        return worker

    return start


class Script:
    """A step script that records each run, then prints a line every 0.1 s (counted in a file
    of its own) until the test lets it finish."""

    def __init__(self, tmp_path: Path) -> None:
        self.runs = tmp_path / "runs"
        self.go = tmp_path / "go"
        self.pid = tmp_path / "pid"
        self.ticks = tmp_path / "ticks"
        self.text = (f'echo $$ > {self.pid}; echo "start $WORKERPOOL_STEP_ID" >> {self.runs}\n'
                     f'echo started\n'
                     f'while [ ! -e {self.go} ]; do echo waiting; echo >> {self.ticks}; '
                     f'sleep 0.1; done\n'
                     f'echo finished\n'
                     f'echo "end $WORKERPOOL_STEP_ID" >> {self.runs}\n')

    def lines(self) -> list[str]:
        return self.runs.read_text().split("\n")[:-1] if self.runs.exists() else []

    def started(self) -> bool:
        return any(line.startswith("start ") for line in self.lines())

    def ended(self) -> bool:
        return any(line.startswith("end ") for line in self.lines())


def last_beat(raw, instance: str) -> float:
    beat = raw.get(keys.heartbeat(POOL_SLUG, instance))
    return float(json.loads(beat)["time"]) if beat else 0.0


def start_step(client, script: Script):
    handle = client.run(ScriptStep(script=script.text, pool=POOL, name="cut-off step"))
    wait_for(lambda: script.started() and handle.result().state == "Running", 30,
             "the step to run")
    return handle


@pytest.fixture
def expirations(redis_server: EmbeddedRedis, redis_url: str, raw) -> Iterator[Callable[[], list]]:
    """Heartbeat keys of this test's database that expired so far (keyspace notifications)."""
    admin = redis.Redis(port=redis_server.port, password=ADMIN_PASSWORD, decode_responses=True)
    before = admin.config_get("notify-keyspace-events")["notify-keyspace-events"]
    admin.config_set("notify-keyspace-events", "Kx")
    events = raw.pubsub()
    events.psubscribe(f"__keyspace@{urlparse(redis_url).path.strip('/')}__:"
                      f"{keys.heartbeat_prefix(POOL_SLUG)}*")

    def expired() -> list:
        seen = []
        while (message := events.get_message(timeout=0.2)) is not None:
            if message["type"] == "pmessage" and message["data"] == "expired":
                seen.append(message["channel"])
        return seen

    yield expired
    events.close()
    admin.config_set("notify-keyspace-events", before)
    admin.close()


@pytest.mark.parametrize("blackhole", [False, True], ids=["reset", "blackhole"])
def test_short_cut_the_step_finishes_and_reports_when_the_link_returns(
        client, cut_off_worker, proxy, tmp_path, raw, expirations, blackhole):
    worker = cut_off_worker(heartbeat=SHORT_INTERVAL)
    script = Script(tmp_path)
    handle = start_step(client, script)
    # Cut 1.5 s after a beat of the heartbeat thread (the one at start-up may be off its
    # rhythm), so the cut spans the next one: that beat is lost (reset) or held (blackhole),
    # and the heartbeat key must still never lapse.
    [instance] = [w.instance for w in client.workers.list(POOL)]
    first = last_beat(raw, instance)
    wait_for(lambda: last_beat(raw, instance) > first, 3 * SHORT_INTERVAL, "a heartbeat")
    ttl_ms = 2 * SHORT_INTERVAL * 1000
    wait_for(lambda: ttl_ms - 2000 < raw.pttl(keys.heartbeat(POOL_SLUG, instance)) <= ttl_ms - 1500,
             3 * SHORT_INTERVAL, "1.5 s after a heartbeat")
    cut_at = time.monotonic()
    proxy.cut(blackhole=blackhole)
    script.go.touch()
    wait_for(script.ended, 10, "the script to end during the cut")
    time.sleep(max(0.0, SHORT_CUT - (time.monotonic() - cut_at)))  # the cut under test
    assert handle.result().state == "Running"  # nothing reached Redis during the cut
    proxy.restore()
    restored = time.time()
    result = handle.wait(timeout=30)
    assert result.state == "Success", result.message
    assert result.worker == worker.name
    printed = [e.text for e in result.log if e.stream == "stdout"]
    # The whole log, lines printed during the cut included:
    assert printed == ["started"] + ["waiting"] * script.ticks.read_text().count("\n") + \
        ["finished"]
    assert script.lines() == [f"start {handle.id}", f"end {handle.id}"]  # ran once
    wait_for(lambda: last_beat(raw, instance) > restored, 3 * SHORT_INTERVAL,
             "a heartbeat after the link returned")
    assert expirations() == []  # the heartbeat never lapsed: the worker never looked lost
    assert [w.state for w in client.workers.list(POOL)] == ["Healthy"]


@pytest.mark.parametrize("blackhole, ends_during_cut", [(False, True), (True, False)],
                         ids=["reset-script-ends-during-cut", "blackhole-script-still-running"])
def test_long_cut_ends_the_step_worker_lost_and_the_worker_keeps_out(
        client, cut_off_worker, proxy, tmp_path, expirations, blackhole, ends_during_cut):
    worker = cut_off_worker()
    script = Script(tmp_path)
    handle = start_step(client, script)
    pid = int(script.pid.read_text())
    proxy.cut(blackhole=blackhole)

    def reaped() -> bool:
        client.reap()  # as a waiting client, another worker or the server would
        return handle.result().state == "WorkerLost"

    wait_for(reaped, 20, "the reaper to end the step WorkerLost")  # the cut lasts until then
    lost = handle.result()
    assert worker.name in lost.message
    assert len(expirations()) == 1  # its heartbeat lapsed
    if ends_during_cut:
        script.go.touch()
        wait_for(script.ended, 10, "the script to end during the cut")
    proxy.restore()
    # The worker learns its lease is gone: a script still running is killed; a finished one's
    # report is refused by the atomic finish (only the lease holder, only from Running).
    wait_for(lambda: not pid_alive(pid), 30, "the cut-off worker's script to stop")
    wait_for(lambda: [w.state for w in client.workers.list(POOL)] == ["Healthy"], 30,
             "the worker to be Healthy again")
    after = handle.result()
    assert (after.state, after.message, after.finished_at) == \
        (lost.state, lost.message, lost.finished_at)
    assert [line for line in script.lines() if line.startswith("start ")] == \
        [f"start {handle.id}"]  # never run again
    assert script.lines() == ([f"start {handle.id}", f"end {handle.id}"] if ends_during_cut
                              else [f"start {handle.id}"])
    # The worker serves again, and the lost step's message did not come back to it.
    script.go.touch()
    again = client.run(ScriptStep(script="echo again", pool=POOL)).wait(timeout=30)
    assert again.state == "Success" and again.worker == worker.name
    assert [line for line in script.lines() if line.startswith("start ")] == \
        [f"start {handle.id}"]
    # While Redis was away, the worker retried writing the script's lines now and then; it
    # did not spin on them.
    assert (tmp_path / "worker-0.log").read_text().count("could not write") < 50
