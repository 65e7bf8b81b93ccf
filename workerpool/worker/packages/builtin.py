"""The built-in feed: packages stored in Redis, so every worker reaches them over its Redis link."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import redis
from redis.sentinel import SentinelConnectionPool

from workerpool.core import keys
from workerpool.core.errors import BadInput
from workerpool.core.packageref import BUILTIN_FEED
from workerpool.worker.packages.feed import CHUNK, EXTENSIONS, Download, Feed, split_file_name


@dataclass(frozen=True)
class BuiltinPackage:
    """One package version in the built-in feed."""

    package_id: str
    version: str
    extension: str
    size: int
    sha256: str
    chunks: int
    pushed_at: float

    @property
    def file_name(self) -> str:
        return f"{self.package_id}.{self.version}{self.extension}"

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "file_name": self.file_name}

    @classmethod
    def from_json(cls, raw: str | bytes) -> BuiltinPackage:
        data = json.loads(raw)
        return cls(data["package_id"], data["version"], data["extension"], int(data["size"]),
                   data["sha256"], int(data["chunks"]), float(data["pushed_at"]))


_twins: weakref.WeakKeyDictionary[redis.Redis, redis.Redis] = weakref.WeakKeyDictionary()
_twins_lock = threading.Lock()


def binary(client: redis.Redis) -> redis.Redis:
    """A client on the same server that returns bytes (package data is not text); one per
    client, so steps reuse its connections."""
    pool = client.connection_pool
    if not pool.connection_kwargs.get("decode_responses"):
        return client
    with _twins_lock:
        twin = _twins.get(client)
        if twin is None:
            kwargs = {**pool.connection_kwargs, "decode_responses": False}
            twin = redis.Redis(connection_pool=_pool_like(pool, kwargs))
            _twins[client] = twin
        return twin


def _pool_like(pool: redis.ConnectionPool, kwargs: dict[str, Any]) -> redis.ConnectionPool:
    """A pool on *pool*'s server with *kwargs*; on a Sentinel's master, one that asks the
    sentinels for the master itself, so it follows a failover as *pool* does."""
    if isinstance(pool, SentinelConnectionPool):
        kwargs.pop("connection_pool", None)  # the proxy of *pool*: the new pool makes its own
        return SentinelConnectionPool(  # type: ignore[no-untyped-call]
            pool.service_name, pool.sentinel_manager,
                                      connection_class=pool.connection_class, **kwargs)
    return redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)


def stored(client: redis.Redis, package_id: str, version: str) -> BuiltinPackage | None:
    raw = client.hget(keys.BUILTIN_PACKAGES, keys.package_field(package_id, version))
    return BuiltinPackage.from_json(cast(str, raw)) if raw else None


def list_packages(client: redis.Redis) -> list[BuiltinPackage]:
    """Every package in the built-in feed, by id then push order."""
    raw = cast(dict[Any, Any], client.hgetall(keys.BUILTIN_PACKAGES))
    found = [BuiltinPackage.from_json(value) for value in raw.values()]
    return sorted(found, key=lambda p: (p.package_id.lower(), p.pushed_at))


def push(client: redis.Redis, file: Path) -> BuiltinPackage:
    """Store *file* (``<id>.<version>.<ext>``) in the built-in feed; a version is immutable."""
    parsed = split_file_name(file.name)
    if parsed is None:
        raise BadInput(f"cannot tell package id and version from {file.name!r}: name it "
                       f"<id>.<version><ext> like Acme.Database.1.2.0.zip (ext: "
                       f"{', '.join(EXTENSIONS)})")
    package_id, version, ext = parsed
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read {file}: {exc.strerror or exc}") from None
    package = BuiltinPackage(package_id, version, ext, len(data), hashlib.sha256(data).hexdigest(),
                             max(1, -(-len(data) // CHUNK)), time.time())
    return _store(binary(client), package, data)


def _store(client: redis.Redis, package: BuiltinPackage, data: bytes) -> BuiltinPackage:
    """Write the chunks and the index entry in one transaction, unless this version exists."""
    field = keys.package_field(package.package_id, package.version)
    data_key = keys.builtin_package_data(package.package_id, package.version)
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(keys.BUILTIN_PACKAGES)  # type: ignore[no-untyped-call]
                raw = pipe.hget(keys.BUILTIN_PACKAGES, field)
                if raw:
                    return _same_or_refuse(BuiltinPackage.from_json(cast(bytes, raw)), package)
                pipe.multi()
                pipe.delete(data_key)
                for start in range(0, max(len(data), 1), CHUNK):
                    pipe.rpush(data_key, data[start:start + CHUNK])
                pipe.hset(keys.BUILTIN_PACKAGES, field, json.dumps(asdict(package)))
                pipe.execute()
                return package
            except redis.WatchError:
                continue  # another push changed the index meanwhile: look again


def _same_or_refuse(existing: BuiltinPackage, package: BuiltinPackage) -> BuiltinPackage:
    if existing.sha256 == package.sha256:
        return existing
    raise BadInput(f"package {package.package_id} {package.version} is already in the built-in "
                   f"feed with different content (sha256 {existing.sha256[:12]}); versions are "
                   "immutable, so push it under a new version")


class BuiltinFeed(Feed):
    type = "builtin"

    def __init__(self, client: redis.Redis, name: str = BUILTIN_FEED) -> None:
        super().__init__(name, "redis")
        self.redis = binary(client)

    def open(self, package_id: str, version: str) -> Download:
        package = stored(self.redis, package_id, version)
        if package is None:
            raise self.fail(package_id, version, self._missing(package_id))
        return Download(package.extension, package.size, self._chunks(package), package.sha256)

    def _chunks(self, package: BuiltinPackage) -> Iterator[bytes]:
        data_key = keys.builtin_package_data(package.package_id, package.version)
        for index in range(package.chunks):
            chunk = cast(list[bytes], self.redis.lrange(data_key, index, index))
            if not chunk:
                raise OSError(f"chunk {index} of {package.chunks} is missing from Redis")
            yield chunk[0]

    def _missing(self, package_id: str) -> str:
        versions = [p.version for p in list_packages(self.redis)
                    if p.package_id.lower() == package_id.lower()]
        if versions:
            return f"unknown version (the built-in feed has {', '.join(versions[-10:])})"
        return "unknown package: push it with `workerpool package push <id>.<version>.zip`"
