"""Which ``workerpool server`` node leads: a lease key and a fencing token.

Several server nodes may run against one Redis; one leads and runs deployments, the others
stand by. The leader holds ``server:lease`` (its node and token, expiring after the lease
interval unless renewed). A standby that finds the lease lapsed takes it under a new token,
the ``server:fence`` counter's next value, and resumes every active deployment.

Every write the orchestrator makes (taking a deployment, its record, the active set, each
step it enqueues) is a Lua script that first checks the writer's token against the fence, and
writes nothing unless it is the newest. A leader that stalls (a pause, a stopped process, a
cut link) past its lease and then wakes finds its token stale at its next write: the write is
refused (``Fenced``) and the deployment is left to the node that leads now.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterable, Mapping
from typing import cast

import redis

from workerpool.core import keys, scripts

Value = str | int | float
FENCED = -1  # what a fenced script returns when its token is not the newest


class Fenced(Exception):
    """A write refused: another server took the lease since this one's token was issued."""


def node_id() -> str:
    """This server process's name in the lease: host, pid and a random part (a restarted
    process with a reused pid is another node)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def holder(client: redis.Redis) -> tuple[str, int] | None:
    """(node, token) of the server that holds the lease, or None while none does."""
    held = cast(str | None, client.get(keys.SERVER_LEASE))
    if not held:
        return None
    node, _, token = held.rpartition(" ")
    return node, int(token)


class Lease:
    """One node's hold on the lease: ``hold`` renews it, or takes it once it lapsed, and writes
    the server's heartbeat (``deploy`` refuses without one), lasting *beat_seconds*."""

    def __init__(self, client: redis.Redis, node: str, seconds: float,
                 beat_seconds: float) -> None:
        self.redis = client
        self.node = node
        self.ms = max(int(seconds * 1000), 1)
        self.beat_ms = max(int(beat_seconds * 1000), 1)
        self._lead = scripts.load(client, "lead")
        self._resign = scripts.load(client, "resign")

    def hold(self, token: int) -> int:
        """Beat, and renew the lease held under *token* (0: none held), or take a lapsed one
        under a new token: one call. The token held now, or 0 while another node holds it."""
        return int(cast(int, self._lead(
            keys=[keys.SERVER_LEASE, keys.SERVER_FENCE, keys.SERVER_HEARTBEAT],
            args=[self.node, token or "", self.ms, time.time(), self.beat_ms])))

    def resign(self, token: int) -> bool:
        """Give the lease up if held under *token*, so a standby need not wait for it to lapse."""
        return bool(self._resign(keys=[keys.SERVER_LEASE], args=[self.node, token]))


class FencedWrites:
    """The orchestrator's writes of deployments, each refused (``Fenced``) unless its token is
    the newest."""

    def __init__(self, client: redis.Redis) -> None:
        self._take = scripts.load(client, "take")
        self._write = scripts.load(client, "deployment")

    def take(self, token: int) -> str | None:
        """The oldest queued deployment, moved into the active set; None if none is queued."""
        taken = self._take(keys=[keys.SERVER_FENCE, keys.DEPLOYMENTS_QUEUE,
                                 keys.DEPLOYMENTS_ACTIVE], args=[token])
        if taken == FENCED:
            raise Fenced(f"fencing token {token} is stale")
        return cast(str | None, taken)

    def write(self, token: int, deployment_id: str, fields: Mapping[str, Value] | None = None,
              active: str = "", delete: Iterable[str] = ()) -> None:
        """Set *fields* of the deployment's record; add it to the active set (*active* ``+``)
        or remove it (``-``); delete *delete*: all or nothing, and only under the newest
        token."""
        pairs: list[Value] = [item for name, value in (fields or {}).items()
                              for item in (name, value)]
        done = self._write(keys=[keys.SERVER_FENCE, keys.deployment(deployment_id),
                                 keys.DEPLOYMENTS_ACTIVE, *delete],
                           args=[token, deployment_id, active, *pairs])
        if done == FENCED:
            raise Fenced(f"fencing token {token} is stale")
