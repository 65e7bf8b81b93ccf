"""Poison messages on a pool's queue, pushed as any client with write access to Redis could:
each is dropped or dead-lettered, never taken again and again, and the pool's next real step
runs within 10 s."""

from __future__ import annotations

import base64
import json
import time

import pytest
from conftest import wait_for
from httpd import fetch
from promtext import types, value

from workerpool import ScriptStep
from workerpool.core import keys, messages
from workerpool.server import web

QUEUE = keys.pool_queue("pool")
STEP = ["pool~0000", 0]


def entry(payload: object = None, header: dict[str, object] | None = None,
          prop: dict[str, object] | None = None, **fields: object) -> str:
    """A step message as ``messages.build`` makes it, with parts replaced."""
    message = json.loads(messages.build("pool~0000", 0, QUEUE, "hand-made"))
    if payload is not None:
        message["body"] = json.dumps(payload)
    message["headers"].update(header or {})
    message["properties"].update(prop or {})
    message.update(fields)
    return json.dumps(message)


EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
NOT_JSON = "its body is not JSON (plain, or base64-encoded)"
MALFORMED = {
    "body-an-object": (entry({"not": "a list"}), "its body is not [args, kwargs, embed]"),
    "step-id-not-text": (entry([[{"x": 1}, "a"], {}, EMBED]), "its step id is not text"),
    "attempt-not-a-number": (entry([["pool~0000", {"x": 1}], {}, EMBED]),
                             "its attempt is not a whole number >= 0"),
    "attempt-a-bool": (entry([["pool~0000", True], {}, EMBED]),
                       "its attempt is not a whole number >= 0"),
    "three-args": (entry([["pool~0000", 0, 1], {}, EMBED]),
                   "its arguments are not [step id, attempt]"),
    "keyword-args": (entry([STEP, {"attempt": 1}, EMBED]),
                     "its arguments are not [step id, attempt]"),
    "a-callback": (entry([STEP, {}, {**EMBED, "callbacks": [{"task": "x"}]}]),
                   "it carries callbacks, a chain or a chord"),
    "an-eta": (entry(header={"eta": "2999-01-01T00:00:00"}), "it carries an eta or an expiry"),
    "foreign-task": (entry(header={"task": "celery.chord_unlock"}),
                     "its task is 'celery.chord_unlock', not workerpool.run_step"),
    "task-id-not-text": (entry(header={"id": None}), "its task id or delivery tag is not text"),
    "delivery-tag-an-object": (entry(prop={"delivery_tag": {"a": 1}}),
                               "its task id or delivery tag is not text"),
    "body-not-json": (entry(**{"body": "{not json"}), NOT_JSON),
    "body-not-base64": (entry(prop={"body_encoding": "base64"}, body="!!not base64!!"),
                        NOT_JSON),
    "deep-body": (entry(**{"body": "[" * 100_000}), NOT_JSON),
    "deep-base64-body": (entry(prop={"body_encoding": "base64"},
                               body=base64.b64encode(b"[" * 100_000).decode()), NOT_JSON),
    "pickle": (entry(**{"content-type": "application/x-python-serialize"}),
               "refusing content type 'application/x-python-serialize'"),
    "headers-a-list": (entry(**{"headers": [1]}),
                       "its headers or properties are not JSON objects"),
    "a-json-string": (json.dumps("just text"), "it is not a JSON object"),
    "not-json": ("{not json", "it is not JSON"),
}


def status_of(cli, slug: str) -> dict[str, object]:
    done = cli("status", "--json")
    assert done.returncode == 0, done.stderr
    return next(p for p in json.loads(done.stdout)["pools"] if p["slug"] == slug)


def acked(raw) -> None:
    """Wait until the pool's unacked hash is empty. The step is Success before Celery acks its
    message (the ack follows the task's return), so an empty hash is a condition to wait on; a
    poison message left unacked keeps it non-empty and fails the wait."""
    unacked = keys.kombu_keys("pool")["unacked_key"]
    wait_for(lambda: raw.hlen(unacked) == 0, 10, f"{unacked} to be empty")


def log_lines(tmp_path, text: str) -> list[str]:
    return [line for line in (tmp_path / "worker-0.log").read_text().splitlines()
            if text in line]


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_message_is_dropped_once_and_the_next_step_runs(case, client, start_worker,
                                                                    raw, cli, tmp_path):
    poison, why = MALFORMED[case]
    client.pools.add("Pool")
    worker = start_worker("Pool")
    raw.lpush(QUEUE, poison)
    started = time.monotonic()
    after = client.run(ScriptStep(script="echo fine", pool="Pool")).wait(timeout=10)
    assert after.state == "Success" and after.worker == worker.name
    assert time.monotonic() - started < 10
    dropped = log_lines(tmp_path, "dropped a malformed message")
    assert len(dropped) == 1 and f"from queue {QUEUE}" in dropped[0] and why in dropped[0], \
        dropped
    assert raw.llen(QUEUE) == 0
    acked(raw)
    assert "Unrecoverable error" not in (tmp_path / "worker-0.log").read_text()
    assert status_of(cli, "pool")["dropped_messages"] == 1
    assert worker.proc.poll() is None


def test_a_message_that_crashes_celerys_consumer_is_dead_lettered_on_its_second_crash(
        client, start_worker, raw, cli, tmp_path):
    # It passes the shape check (its body is a step's), but Celery iterates over its
    # stamped_headers when it checks for revocation, and an int is not iterable: Celery's
    # consumer raises, restarts, and kombu hands the message back to the queue.
    client.pools.add("Pool")
    worker = start_worker("Pool")
    poison = entry(header={"stamped_headers": 5}, prop={"delivery_tag": "poison-1"})
    raw.lpush(QUEUE, poison)
    after = client.run(ScriptStep(script="echo fine", pool="Pool")).wait(timeout=10)
    assert after.state == "Success" and after.worker == worker.name
    assert len(log_lines(tmp_path, "crashed Celery's consumer (")) == 1
    assert len(log_lines(tmp_path, "dead-lettered message poison-1")) == 1
    assert raw.llen(QUEUE) == 0
    acked(raw)
    assert not raw.hexists(keys.crashes("pool"), "poison-1")

    listed = cli("dead", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [letter] = json.loads(listed.stdout)
    assert (letter["pool"], letter["tag"], letter["queue"], letter["worker"]) == (
        "pool", "poison-1", QUEUE, worker.name)
    assert "TypeError" in letter["reason"] and "not iterable" in letter["reason"]
    shown = cli("dead", "show", "poison-1")
    assert shown.returncode == 0, shown.stderr
    kept, sent = json.loads(json.loads(shown.stdout)["message"]), json.loads(poison)
    assert kept.pop("headers").pop("redelivered") is True  # kombu marks a message it gives
    sent.pop("headers")                                      # back as redelivered
    assert (kept["body"], kept["properties"]["delivery_tag"]) == (sent["body"], "poison-1")
    assert status_of(cli, "pool")["dead_letters"] == 1

    assert cli("dead", "drop", "poison-1").stdout.strip() == "dropped 1 dead letter(s)"
    assert raw.llen(keys.dead("pool")) == 0 and status_of(cli, "pool")["dead_letters"] == 0
    missing = cli("dead", "show", "poison-1")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "no dead letter 'poison-1'" in missing.stderr
    assert worker.proc.poll() is None


def test_a_step_whose_record_redis_refuses_does_not_hold_a_slot(client, start_worker, raw,
                                                                tmp_path):
    # A key of the wrong type where the step's record should be: Redis answers the claim with
    # WRONGTYPE, a permanent error, and the worker gives up on the message at once instead of
    # retrying it for five minutes as if Redis were away.
    client.pools.add("Pool")
    worker = start_worker("Pool")
    raw.set(keys.step("pool~evil"), "not a hash")
    raw.lpush(QUEUE, messages.build("pool~evil", 0, QUEUE, "hand-made"))
    after = client.run(ScriptStep(script="echo fine", pool="Pool")).wait(timeout=10)
    assert after.state == "Success" and after.worker == worker.name
    refused = log_lines(tmp_path, "could not claim step pool~evil")
    assert len(refused) == 1 and "not retried" in refused[0] and "WRONGTYPE" in refused[0]


def test_metrics_count_dropped_messages_and_dead_letters(client, start_worker, raw, cli,
                                                         redis_url):
    client.pools.add("Pool")
    start_worker("Pool")
    raw.lpush(QUEUE, MALFORMED["body-an-object"][0])
    raw.lpush(keys.dead("pool"), json.dumps({"tag": "t", "queue": QUEUE, "reason": "r",
                                             "worker": "w", "at": 1.0, "message": "{}"}))
    wait_for(lambda: raw.get(keys.dropped("pool")) == "1", 10, "the drop to be counted")
    server = web.start(redis_url, 0, basic_auth="ops:secret")
    try:
        assert fetch(f"http://127.0.0.1:{server.port}/metrics")[0] == 401
        status, body = fetch(f"http://127.0.0.1:{server.port}/metrics", "ops:secret")
    finally:
        web.stop(server)
    assert status == 200
    assert value(body, "workerpool_dropped_messages_total", pool="pool") == 1
    assert value(body, "workerpool_dead_letters", pool="pool") == 1
    assert value(body, "workerpool_queued_steps", pool="pool") == 0
    assert types(body)["workerpool_dropped_messages"] == "counter"
    assert cli("dead", "drop", "--all").stdout.strip() == "dropped 1 dead letter(s)"
    assert raw.llen(keys.dead("pool")) == 0
    both = cli("dead", "drop", "t", "--all")
    assert both.returncode == 2 and "give exactly one of TAG or --all" in both.stderr
