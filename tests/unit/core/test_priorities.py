"""Step priorities as pure functions: the lists of a queue, kombu's numbers, the step's check,
the setting, and a process file's ``priority:``."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from workerpool.core import keys, messages
from workerpool.core.errors import BadInput
from workerpool.core.settings import Settings
from workerpool.core.steps import ScriptStep
from workerpool.spec.deployment import process_from_json
from workerpool.spec.processes import load_process


def test_a_queue_has_three_lists_taken_high_first():
    queue = keys.pool_queue("db")
    assert keys.priority_lists(queue) == ("workerpool.pool.db:high", "workerpool.pool.db",
                                          "workerpool.pool.db:low")
    assert keys.priority_list(queue) == keys.priority_list(queue, "bogus") == queue
    assert [keys.priority_of_number(n) for n in keys.PRIORITY_STEPS] == ["high", "normal", "low"]
    assert keys.priority_of_number(9) == "normal"
    assert keys.is_step_queue(queue) and keys.is_step_queue(keys.BUILTIN_QUEUE)
    assert keys.is_step_queue(keys.target_queue("web-01"))
    assert not keys.is_step_queue("db-01@host.celery.pidbox")


def test_a_message_carries_kombus_number_for_its_priority():
    for name, number in keys.PRIORITY_NUMBERS.items():
        raw = json.loads(messages.build("db~ab12", 0, "workerpool.pool.db", "label", name))
        assert raw["properties"]["priority"] == number
        assert messages.problem(raw) is None
    record = {"queue": "workerpool.pool.db", "priority": "low"}
    assert json.loads(messages.for_record("db~ab12", 0, record))["properties"]["priority"] == 6


@pytest.mark.parametrize("priority, refusal", [
    ("urgent", "unknown priority 'urgent'; use one of high, normal, low"),
    ("HIGH", "unknown priority 'HIGH'; use one of high, normal, low"),
    (1, "ScriptStep.priority must be text (str), not int"),
])
def test_a_step_with_an_unknown_priority_is_refused(priority, refusal):
    with pytest.raises(BadInput) as caught:
        ScriptStep(script="true", priority=priority).validate()
    assert str(caught.value).startswith(refusal)


def test_a_step_keeps_its_priority_in_its_record():
    assert ScriptStep(script="true").to_record()["priority"] == "normal"
    assert ScriptStep(script="true", priority="high").validate().to_record()["priority"] == "high"


def test_the_aging_setting():
    assert Settings.from_env({}).priority_aging == 300.0
    assert Settings.from_env({"WORKERPOOL_PRIORITY_AGING": "2.5"}).priority_aging == 2.5
    with pytest.raises(BadInput, match="WORKERPOOL_PRIORITY_AGING must be a finite number"):
        Settings.from_env({"WORKERPOOL_PRIORITY_AGING": "0"})


def test_a_process_step_takes_a_priority(tmp_path):
    path = tmp_path / "process.yaml"
    path.write_text("name: P\nsteps:\n  - name: Urgent\n    script: 'true'\n    priority: high\n"
                    "  - name: Later\n    script: 'true'\n")
    process = load_process(path, templates_dir=tmp_path)
    assert [s.priority for s in process.steps] == ["high", "normal"]
    assert process_from_json(json.dumps(asdict(process), default=str)) == process

    path.write_text("name: P\nsteps:\n  - name: Urgent\n    script: 'true'\n    priority: asap\n")
    with pytest.raises(BadInput) as caught:
        load_process(path, templates_dir=tmp_path)
    assert str(caught.value) == (f"{path}: step 'Urgent': field 'priority': 'asap' is not one "
                                 "of high, normal, low")
