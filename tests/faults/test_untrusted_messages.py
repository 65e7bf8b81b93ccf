"""Only JSON task messages are accepted: a pickled message on a pool queue is rejected, not run."""

from __future__ import annotations

import base64
import json
import pickle

from workerpool import ScriptStep
from workerpool.core import keys, messages


class Boom:
    """Unpickling this would run a command; the worker must never unpickle it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickled_message_is_rejected_and_logged_not_executed(client, start_worker, raw,
                                                             tmp_path):
    client.pools.add("Pool")
    worker = start_worker("Pool")
    marker = tmp_path / "pwned"
    queue = keys.pool_queue("pool")
    message = json.loads(messages.build("0" * 16, 0, queue, "hand-made"))
    message["body"] = base64.b64encode(pickle.dumps(((Boom(str(marker)),), {}, {}))).decode()
    message["content-type"] = "application/x-python-serialize"
    message["content-encoding"] = "binary"
    raw.lpush(queue, json.dumps(message))
    # A real step queued behind it runs: the worker kept serving, so it handled the bad one.
    after = client.run(ScriptStep(script="echo fine", pool="Pool")).wait(timeout=30)
    assert after.state == "Success" and after.worker == worker.name
    assert not marker.exists()
    assert raw.llen(queue) == 0
    log = (tmp_path / "worker-0.log").read_text()
    assert "untrusted" in log.lower() or "refusing" in log.lower(), log[-2000:]
