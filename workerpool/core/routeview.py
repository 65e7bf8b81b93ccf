"""What routing one step reads: its pool, the default pool and their live workers, in one call.

``read_route`` costs the same with ten workers or ten thousand in other pools: ``lua/route.lua``
reads the step's pool's record and its live index (``keys.live``), never another pool's
workers (``snapshot.read_snapshot`` reads the whole cluster, for status).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from workerpool.core import keys, scripts
from workerpool.core.errors import UnknownPool
from workerpool.core.pools import DEFAULT_POOL_NAME, Pool, find, pools_from_hash, slugify
from workerpool.core.workers import OFFLINE, WorkerInfo

DEFAULT_RECORD = json.dumps({"name": DEFAULT_POOL_NAME, "description": ""})


@dataclass(frozen=True)
class RouteView:
    """The part of the cluster one step's routing looks at (``routing.route`` takes it)."""

    pools: dict[str, Pool]  # the step's pool and the default pool, no other
    builtin_enabled: bool
    live: dict[str, tuple[WorkerInfo, ...]] = field(default_factory=dict)  # pool -> live ones
    public_keys: dict[str, str] = field(default_factory=dict)  # pool -> its keys' JSON

    @property
    def default_pool(self) -> Pool:
        return next(p for p in self.pools.values() if p.is_default)

    def workers_in(self, pool_slug: str) -> list[WorkerInfo]:
        """The live workers of *pool_slug* (``builtin`` for the built-in worker), if read."""
        return list(self.live.get(pool_slug, ()))


def read_route(client: redis.Redis, pool: str | None, server: bool = False) -> RouteView:
    """What routing a step that names *pool* (None: the default pool), or runs on the
    *server*, needs: one round trip, creating the default pool if there is none. A pool that
    does not exist raises UnknownPool naming every pool, read only then."""
    view = _read(client, None if server else pool, server)
    if pool is None or server:
        return view
    try:
        find(view.pools, pool)
    except UnknownPool:
        every = pools_from_hash(cast(dict[str, str], client.hgetall(keys.POOLS)),
                                view.default_pool.slug)
        find(every, pool)  # raises, with every pool's name
        return _read(client, pool, server)  # added since the first read
    return view


def _read(client: redis.Redis, pool: str | None, server: bool) -> RouteView:
    mode = "server" if server else "default" if pool is None else "pool"
    reply = scripts.load(client, "route")(
        keys=[],
        args=[mode, slugify(pool) if pool is not None else "", slugify(DEFAULT_POOL_NAME),
              DEFAULT_RECORD, keys.SPACE_PREFIX, keys.POOLS, keys.DEFAULT_POOL,
              keys.BUILTIN_DISABLED, keys.POOL_KEYS])
    default, default_record, chosen, record, disabled, workers, builtin, public = reply
    stored = {default: default_record} if default_record is not None else {}
    if record is not None:
        stored[chosen] = record
    live = {chosen: _live(workers)} if chosen else {}
    if mode == "server" or (mode == "default" and not workers):  # what route.lua read
        live[keys.BUILTIN_POOL] = _live(builtin)
    public_keys = {name: value for name, value in
                   zip((chosen or keys.BUILTIN_POOL, keys.BUILTIN_POOL), public, strict=True)
                   if value is not None}
    return RouteView(pools=pools_from_hash(stored, default), builtin_enabled=not disabled,
                     live=live, public_keys=public_keys)


def _live(rows: list[Any]) -> tuple[WorkerInfo, ...]:
    """Workers from (record, heartbeat) rows, sorted by name; one whose heartbeat expired
    between the index's score and its key (the same millisecond) is left out."""
    workers = (WorkerInfo.from_record(record, beat or None) for record, beat in rows)
    return tuple(sorted((w for w in workers if w.state != OFFLINE), key=lambda w: w.name))
