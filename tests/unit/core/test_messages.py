"""``messages.problem``: the shape check a worker makes of each entry on its step queue."""

from __future__ import annotations

import base64
import json

from workerpool.core import messages


def test_the_messages_workerpool_builds_pass_the_check():
    for attempt in (0, 1, 7):
        raw = json.loads(messages.build("pool~ab12", attempt, "workerpool.pool.pool", "label"))
        assert messages.problem(raw) is None


def test_celerys_own_send_task_shape_passes():
    raw = json.loads(messages.build("pool~ab12", 0, "workerpool.pool.pool", "label"))
    raw["body"] = json.dumps([["pool~ab12"], {}, {"callbacks": None, "chord": None}])
    assert messages.problem(raw) is None
    # kombu's own Redis publisher: the body base64-encoded, and said so
    raw["body"] = base64.b64encode(raw["body"].encode()).decode()
    raw["properties"]["body_encoding"] = "base64"
    assert messages.problem(raw) is None
    raw["properties"].pop("body_encoding")  # base64 text is not a plain JSON body
    assert messages.problem(raw) == "its body is not JSON (plain, or base64-encoded)"


def test_each_wrong_part_is_named():
    base = json.loads(messages.build("pool~ab12", 0, "workerpool.pool.pool", "label"))
    assert messages.problem([base]) == "it is not a JSON object"
    assert messages.problem({**base, "properties": None}) == \
        "its headers or properties are not JSON objects"
    assert messages.problem({**base, "body": 5}) == "its body is not text"
    assert messages.problem({**base, "headers": {**base["headers"], "expires": 1}}) == \
        "it carries an eta or an expiry (steps have neither)"
