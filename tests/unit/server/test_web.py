"""The pools page (``workerpool.server.web``), ``server --http-port``, ``workerpool flower``'s
options, and queue depth in ``status`` for a pool with no online worker."""

from __future__ import annotations

from workerpool.core import messages
from workerpool.core.pools import Pool
from workerpool.core.snapshot import Lease, QueueCounts, Snapshot
from workerpool.core.workers import Heartbeat, WorkerInfo
from workerpool.server import web


def test_pools_page_escapes_every_value():
    hostile = '<script>alert("x")</script>&'
    heartbeat = Heartbeat(time=100.0, state="Unhealthy", reason=hostile)
    snap = Snapshot(
        pools={hostile: Pool(name=hostile, slug=hostile, description=hostile, is_default=True)},
        builtin_enabled=False,
        workers=(WorkerInfo(name=hostile, pool=hostile, instance="i", host=hostile,
                            heartbeat=heartbeat),),
        queued={hostile: QueueCounts(records=3, messages=3, held=0)},
        leases=(Lease(step_id=hostile, worker=hostile, pool=hostile, started_at=90.0,
                      step_name=hostile),))
    html = web.render_html(snap, now=100.0, flower_url='http://x/"><script>')
    assert "<script>" not in html
    # name, slug (in an id), queue, description, worker name, host, reason; lease name, id, worker
    assert html.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;") == 10
    assert "Disabled" in html and "Unhealthy" in html


def test_task_label_names_step_pool_and_target_without_values():
    assert messages.label("Migrate", "Database Worker Pool", "abc", target="web-01") == \
        "step='Migrate' pool='Database Worker Pool' target='web-01' id=abc"
    assert messages.label("", "Kubernetes Worker Pool", "abc") == \
        "step='script' pool='Kubernetes Worker Pool' id=abc"
