"""Celery protocol-2 task messages in kombu's Redis layout, built without importing Celery.

The client pushes these straight onto a pool's queue in the same transaction that stores the
step, so enqueuing is one round trip. A message is a pure function of the step's id, attempt,
queue and label, so it can be rebuilt later (to remove a timed-out step from its queue).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

from workerpool.core import keys

TASK_NAME = "workerpool.run_step"


def task_id(step_id: str, attempt: int) -> str:
    return step_id if attempt == 0 else f"{step_id}-r{attempt}"


def step_of(task_id: str) -> str:
    """The step id of a Celery task id (``task_id``'s inverse)."""
    step_id, sep, attempt = task_id.rpartition("-r")
    return step_id if sep and attempt.isdigit() and step_id else task_id


def build(step_id: str, attempt: int, queue: str, label: str,
          priority: str = keys.NORMAL) -> str:
    """The raw list entry a Celery worker consuming *queue* will run as ``run_step(id, attempt)``.

    *label* is what monitoring shows as the task's arguments; it never holds variable values.
    *priority* is kombu's number for it, which a message kombu restores is put back by
    (``keys.priority_list``).

    Only what a worker reads is written, as a million queued steps are a million of these: a
    header Celery reads with a default (``eta``, ``group``, ``timelimit``, ``retries`` of a
    first attempt, ...) is left out when it would hold that default, ``root_id`` (the task's
    own id) too, as are the properties only a result backend reads (``reply_to``,
    ``correlation_id``) and kombu's default ``content-encoding`` (utf-8). The body is plain
    JSON (kombu takes a body without a ``body_encoding`` as is), its embed empty (no callbacks,
    chain or chord).
    """
    tid = task_id(step_id, attempt)
    headers: dict[str, object] = {"task": TASK_NAME, "id": tid, "argsrepr": label,
                                  "kwargsrepr": "{}"}
    if attempt:
        headers["retries"] = attempt
    message = {
        "body": json.dumps([[step_id, attempt], {}, {}], separators=(",", ":")),
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            # kombu's Redis transport: where a restored message goes back (exchange, routing
            # key, priority) and the key of its unacknowledged copy (delivery tag).
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": keys.PRIORITY_NUMBERS.get(priority, keys.PRIORITY_NUMBERS[keys.NORMAL]),
            "delivery_tag": tid,
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
    return build(step_id, attempt, record.get("queue", ""), shown,
                 record.get("priority", keys.NORMAL))


# What a step message's embed may name: Celery's own keys, all empty (steps have no callbacks,
# chains or chords, which would make a worker publish further tasks).
EMBED_KEYS = frozenset({"callbacks", "errbacks", "chain", "chord"})


def problem(message: object) -> str | None:
    """Why a raw entry taken from a step queue is not a step message, or None if it is one.

    Checked before Celery or kombu unpack it: a malformed entry would otherwise raise inside
    Celery's consumer, which restarts and takes the same entry again. The envelope kombu reads,
    the task, and the body ``[[step id, attempt], {}, embed]`` are checked for their exact
    shape, and the headers Celery schedules by (``eta``, ``expires``) must be empty.
    """
    if not isinstance(message, dict):
        return "it is not a JSON object"
    headers, properties = message.get("headers"), message.get("properties")
    if not isinstance(headers, dict) or not isinstance(properties, dict):
        return "its headers or properties are not JSON objects"
    return _header_problem(headers, properties) or _content_problem(message, properties)


def _header_problem(headers: dict[str, object], properties: dict[str, object]) -> str | None:
    if headers.get("task") != TASK_NAME:
        return f"its task is {str(headers.get('task'))[:80]!r}, not {TASK_NAME}"
    if not isinstance(headers.get("id"), str) or not isinstance(properties.get("delivery_tag"),
                                                                 str):
        return "its task id or delivery tag is not text"
    if headers.get("eta") is not None or headers.get("expires") is not None:
        return "it carries an eta or an expiry (steps have neither)"
    return None


def _content_problem(message: dict[str, object], properties: dict[str, object]) -> str | None:
    content_type = message.get("content-type")
    if content_type != "application/json":
        return (f"refusing content type {str(content_type)[:80]!r}: step messages are JSON "
                "only, any other serializer is untrusted")
    body = message.get("body")
    if not isinstance(body, str):
        return "its body is not text"
    try:
        raw = base64.b64decode(body, validate=True) if properties.get("body_encoding") \
            == "base64" else body.encode()
        payload = json.loads(raw)
    except (ValueError, RecursionError):
        return "its body is not JSON (plain, or base64-encoded)"
    return _payload_problem(payload)


def _payload_problem(payload: object) -> str | None:
    if not isinstance(payload, list) or len(payload) != 3:
        return "its body is not [args, kwargs, embed]"
    args, kwargs, embed = payload
    if not isinstance(args, list) or not 1 <= len(args) <= 2 or kwargs != {}:
        return "its arguments are not [step id, attempt] with no keyword arguments"
    if not isinstance(args[0], str):
        return "its step id is not text"
    if len(args) == 2 and (type(args[1]) is not int or args[1] < 0):
        return "its attempt is not a whole number >= 0"
    if not isinstance(embed, dict) or not embed.keys() <= EMBED_KEYS \
            or any(value is not None for value in embed.values()):
        return "it carries callbacks, a chain or a chord (steps have none)"
    return None
