"""What Celery, and so Flower, is told of a step: pure functions of the step's ending."""

from __future__ import annotations

import base64
import json

import pytest
from celery.exceptions import Ignore, Terminated

from workerpool.core import credentials
from workerpool.core.events import task_failed
from workerpool.core.messages import step_of, task_id
from workerpool.worker.celery.app import StepEnded, report
from workerpool.worker.runtime import Ending


def test_success_is_a_result_with_state_exit_code_and_worker() -> None:
    assert report(Ending("Success", 0, ""), "w1") == {"state": "Success", "exit_code": 0,
                                                      "worker": "w1"}


@pytest.mark.parametrize("state, code, text", [
    ("Failed", 3, "Failed: exit code 3, worker w1; the script exited with code 3"),
    ("TimedOut", -15, "TimedOut: exit code -15, worker w1; timed out"),
    ("WorkerLost", None, "WorkerLost: exit code none, worker w1; timed out"),
])
def test_any_other_end_is_a_failure_naming_state_exit_code_and_worker(
        state: str, code: int | None, text: str) -> None:
    with pytest.raises(StepEnded) as raised:
        report(Ending(state, code, text.split("; ", 1)[1]), "w1")
    assert str(raised.value) == text


def test_cancelled_is_a_terminated_task_and_a_message_that_ran_nothing_is_ignored() -> None:
    with pytest.raises(Terminated, match=r"^Cancelled: exit code -15, worker w1; cancelled$"):
        report(Ending("Cancelled", -15, "cancelled"), "w1")
    with pytest.raises(Ignore):
        report(None, "w1")


@pytest.mark.parametrize("step_id", ["db~0123abcd", "web-r1~ff", "a-r~9"])
def test_a_task_id_names_its_step_for_every_attempt(step_id: str) -> None:
    assert step_of(task_id(step_id, 0)) == step_id
    assert step_of(task_id(step_id, 1)) == step_id


def test_a_pool_login_listens_for_control_commands_only_on_its_database() -> None:
    assert credentials.database("redis://u:p@h:6379/7") == 7
    assert credentials.database("rediss://h") == 0
    rules = credentials.worker_rules("db", 7)
    listen = [r for r in rules if r.startswith("(")]
    assert listen == ["(+psubscribe +punsubscribe &/7.celery.pidbox)"]
    assert not any("pidbox" in r for r in rules if r.startswith("&"))  # never to publish on


def test_the_reapers_event_is_celerys_task_failed_layout() -> None:
    routing_key, raw = task_failed("db~01", "LeaseTimeout: exit code none", "r@h",
                                   name="workerpool.run_step")
    message = json.loads(raw)
    body = json.loads(base64.b64decode(message["body"]))
    assert routing_key == "task.failed"
    assert message["properties"]["delivery_info"] == {"exchange": "celeryev",
                                                      "routing_key": "task.failed"}
    assert {k: body[k] for k in ("type", "uuid", "exception", "hostname", "name")} == {
        "type": "task-failed", "uuid": "db~01", "exception": "LeaseTimeout: exit code none",
        "hostname": "r@h", "name": "workerpool.run_step"}
