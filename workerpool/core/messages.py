"""Celery protocol-2 task messages in kombu's Redis layout, built without importing Celery.

The client pushes these straight onto a pool's queue in the same transaction that stores the
step, so enqueuing is one round trip. A message is a pure function of the step's id, attempt,
queue and label, so it can be rebuilt later (to remove a timed-out step from its queue).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

TASK_NAME = "workerpool.run_step"


def task_id(step_id: str, attempt: int) -> str:
    return step_id if attempt == 0 else f"{step_id}-r{attempt}"


def build(step_id: str, attempt: int, queue: str, label: str) -> str:
    """The raw list entry a Celery worker consuming *queue* will run as ``run_step(id, attempt)``.

    *label* is what monitoring shows as the task's arguments; it never holds variable values.
    """
    tid = task_id(step_id, attempt)
    body = json.dumps([[step_id, attempt], {},
                       {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    headers: dict[str, object] = {
        "lang": "py", "task": TASK_NAME, "id": tid, "shadow": None, "eta": None,
        "expires": None, "group": None, "group_index": None, "retries": attempt,
        "timelimit": [None, None], "root_id": tid, "parent_id": None,
        "argsrepr": label, "kwargsrepr": "{}", "origin": "workerpool",
        "ignore_result": True, "replaced_task_nesting": 0, "stamped_headers": None,
        "stamps": {},
    }
    message = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": tid, "reply_to": "", "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": tid,
        },
    }
    return json.dumps(message, separators=(",", ":"))


def label(step_name: str, pool_name: str, step_id: str, *, target: str = "") -> str:
    """The task arguments monitoring shows: step name, pool and deployment target (if the step
    runs on behalf of one), never variables."""
    shown = step_name or "script"
    on_behalf = f" target={target!r}" if target else ""
    return f"step={shown!r} pool={pool_name!r}{on_behalf} id={step_id}"


def for_record(step_id: str, attempt: int, record: Mapping[str, str]) -> str:
    """The message of *step_id*'s *attempt* rebuilt from its stored record: the same bytes as
    enqueued, so it can be pushed again or removed from its queue."""
    shown = label(record.get("name", ""), record.get("pool_name", ""), step_id,
                  target=record.get("target", ""))
    return build(step_id, attempt, record.get("queue", ""), shown)
