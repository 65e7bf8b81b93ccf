"""Celery task events built without Celery: how the reaper tells Flower about a step that no
worker ended (its worker was lost, or none leased it in time).

A worker's task events come from Celery itself (``worker.celery.app``). A step the reaper ends
has no task left to report it, so Flower would show it STARTED, or not at all, for ever. The
reaper publishes the ``task-failed`` event Celery would have sent, in Celery's own layout (a
kombu message on the ``celeryev`` fanout exchange: a PUBLISH on ``/<db>.celeryev/task.failed``).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid

import redis

EXCHANGE = "celeryev"
REAPER = "workerpool-reaper"  # the hostname Flower shows for what the reaper reports


def reaper_hostname() -> str:
    return f"{REAPER}@{socket.gethostname()}"


def task_failed(task_id: str, exception: str, hostname: str,
                **fields: object) -> tuple[str, str]:
    """The channel and message of Celery's ``task-failed`` event for *task_id*, as *hostname*
    would send it; *fields* (``name``, ``args``, ``routing_key``) fill in a task Flower has
    not seen."""
    body = {"hostname": hostname, "utcoffset": -time.timezone / 3600, "pid": os.getpid(),
            "clock": 0, "uuid": task_id, "exception": exception, "traceback": "",
            "timestamp": time.time(), "type": "task-failed", **fields}
    message = {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8", "content-type": "application/json",
        "headers": {"hostname": hostname},
        "properties": {"delivery_mode": 1,
                       "delivery_info": {"exchange": EXCHANGE, "routing_key": "task.failed"},
                       "priority": 0, "body_encoding": "base64",
                       "delivery_tag": str(uuid.uuid4())},
    }
    return "task.failed", json.dumps(message)


def publish(client: redis.Redis, routing_key: str, message: str) -> None:
    """PUBLISH an event where Celery's event receivers (Flower) listen on *client*'s database."""
    db = client.connection_pool.connection_kwargs.get("db", 0)
    client.publish(f"/{db}.{EXCHANGE}/{routing_key}", message)
