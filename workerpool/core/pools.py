"""Worker pools: names, slugs, the default-pool rule, and their registry in Redis."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

import redis

from workerpool.core import keys, scripts
from workerpool.core.errors import BadInput, PoolConflict, UnknownPool

DEFAULT_POOL_NAME = "Default Worker Pool"
MAX_NAME_LENGTH = 100
MAX_HEALTH_CHECK_BYTES = 64 * 1024
MAX_CLEANUP_SCRIPT_BYTES = 64 * 1024
MAX_REASON_CHARS = 200
_SLUG_RUN = re.compile(r"[^a-z0-9]+")
# A tool is looked up by name on the worker's PATH, so a path or anything a shell would split on
# cannot be one.
_BAD_TOOL_CHAR = re.compile(r"[/\s\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Pool:
    name: str
    slug: str
    description: str = ""
    is_default: bool = False
    requires: tuple[str, ...] = ()  # tools each worker must find on its PATH
    health_check: str = ""  # a bash script each worker runs; exit 0 means healthy
    paused: bool = False  # no worker of the pool starts a step (``pause``)
    paused_reason: str = ""
    paused_since: float = 0.0  # Unix time, 0 if not paused
    max_running: int = 0  # steps running at once across all its workers; 0: no cap
    cleanup_script: str = ""  # a bash script an exclusive worker runs after each step

    @property
    def queue(self) -> str:
        return keys.pool_queue(self.slug)

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "slug": self.slug, "description": self.description,
                "is_default": self.is_default, "queue": self.queue,
                "requires": list(self.requires), "health_check": self.health_check,
                "paused": self.paused, "paused_reason": self.paused_reason,
                "paused_since": self.paused_since or None, "max_running": self.max_running,
                "cleanup_script": self.cleanup_script}


def slugify(name: str) -> str:
    """``Database Worker Pool`` -> ``database-worker-pool``."""
    return _SLUG_RUN.sub("-", name.lower()).strip("-")


def validate_name(name: str) -> str:
    """The trimmed name, or BadInput explaining what a pool name must be."""
    if not isinstance(name, str):
        raise BadInput(f"pool name must be text (str), not {type(name).__name__}")
    name = name.strip()
    if not name:
        raise BadInput("pool name is empty; give a name such as 'Database Worker Pool'")
    if len(name) > MAX_NAME_LENGTH:
        raise BadInput(f"pool name is {len(name)} characters; the limit is {MAX_NAME_LENGTH}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise BadInput("pool name contains control characters; use letters, digits and spaces")
    if not slugify(name):
        raise BadInput(f"pool name {name!r} has no ASCII letters or digits to make a slug from")
    if slugify(name) == keys.BUILTIN_POOL:
        # Its queue, workers and status would be confused with the built-in worker's.
        raise BadInput(f"pool name {name!r} is reserved for the built-in worker; "
                       "choose another name")
    return name


def validate_requires(tools: Iterable[str]) -> tuple[str, ...]:
    """Tool names, each item split on commas, trimmed, without blanks or repeats; BadInput for a
    name that cannot be looked up on a PATH."""
    names: list[str] = []
    for item in [tools] if isinstance(tools, str) else tools:
        for tool in (part.strip() for part in item.split(",")):
            if tool and _BAD_TOOL_CHAR.search(tool):
                raise BadInput(f"required tool {tool!r} is not a command name: give names such as "
                               "'kubectl,az' (no slashes, spaces or control characters)")
            if tool and tool not in names:
                names.append(tool)
    return tuple(names)


def validate_health_check(script: str) -> str:
    """The script without surrounding blank lines ("" if blank); BadInput if it holds a NUL byte
    (bash cannot take it) or is over the size limit."""
    return _validate_script(script, "health check", MAX_HEALTH_CHECK_BYTES)


def validate_cleanup_script(script: str) -> str:
    """A cleanup script, checked as a health check is ("" if blank: no cleanup)."""
    return _validate_script(script, "cleanup", MAX_CLEANUP_SCRIPT_BYTES)


def _validate_script(script: str, what: str, limit: int) -> str:
    if not isinstance(script, str):
        raise BadInput(f"the {what} script must be text (str), not {type(script).__name__}")
    if "\x00" in script:
        raise BadInput(f"the {what} script contains a NUL byte; give a bash script as text")
    try:
        size = len(script.encode())
    except UnicodeEncodeError:
        raise BadInput(f"the {what} script is not UTF-8 text; give a bash script as "
                       "text") from None
    if size > limit:
        raise BadInput(f"the {what} script is {size} bytes; the limit is {limit} "
                       "(run a file the workers have instead)")
    return script.strip("\r\n") if script.strip() else ""


def worker_type(slug: str) -> str:
    """The seed's ``[workertype]`` in worker names: ``database-worker-pool`` -> ``database``."""
    for suffix in ("-worker-pool", "-workers", "-pool"):
        if slug.endswith(suffix) and len(slug) > len(suffix):
            return slug[: -len(suffix)]
    return slug


def _decode(slug: str, raw: str, default_slug: str | None) -> Pool:
    data = json.loads(raw)
    return Pool(name=data["name"], slug=slug, description=data.get("description", ""),
                is_default=slug == default_slug, requires=tuple(data.get("requires", ())),
                health_check=data.get("health_check", ""), paused=bool(data.get("paused")),
                paused_reason=str(data.get("paused_reason", "")),
                paused_since=float(data.get("paused_since") or 0),
                max_running=int(data.get("max_running") or 0),
                cleanup_script=str(data.get("cleanup_script", "")))


def pools_from_hash(raw: dict[str, str], default_slug: str | None) -> dict[str, Pool]:
    return {slug: _decode(slug, value, default_slug) for slug, value in raw.items()}


def ordered(pools: Iterable[Pool]) -> list[Pool]:
    """Pools as every listing shows them: the default pool first, then by name."""
    return sorted(pools, key=lambda p: (not p.is_default, p.name.lower()))


def find(pools: dict[str, Pool], ident: str) -> Pool:
    """The pool named or slugged *ident* (case-insensitive), else UnknownPool."""
    ident = ident.strip()
    pool = pools.get(slugify(ident))
    if pool is not None and (pool.slug == ident.lower() or pool.name.lower() == ident.lower()):
        return pool
    known = ", ".join(sorted(p.name for p in pools.values())) or "none"
    raise UnknownPool(f"no pool named {ident!r} (pools: {known}); "
                      f"create it with `workerpool pool add {ident!r}`")







def _pool_keys(pool: Pool) -> list[str]:
    """The KEYS of ``pool_edit.lua`` and ``pool_remove.lua`` for *pool*: the registry, its
    workers, its queue and its live index (which goes with its slug)."""
    return [keys.POOLS, keys.DEFAULT_POOL, keys.workers(pool.slug), pool.queue,
            keys.live(pool.slug), keys.states(pool.slug)]


def _record(name: str, description: str, requires: tuple[str, ...] = (),
            health_check: str = "", paused: Pool | None = None, max_running: int = 0,
            cleanup_script: str = "") -> str:
    """A pool's stored JSON; *paused* is the pool whose pause it keeps, if it is paused."""
    data: dict[str, object] = {"name": name, "description": description,
                               "requires": list(requires), "health_check": health_check,
                               "max_running": max_running}
    if cleanup_script:
        data["cleanup_script"] = cleanup_script
    if paused is not None and paused.paused:
        data.update(paused=True, paused_reason=paused.paused_reason,
                    paused_since=paused.paused_since)
    return json.dumps(data)


def validate_max_running(value: object) -> int:
    """A concurrency cap: a whole number >= 0 (0: no cap)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadInput(f"max running must be a whole number >= 0 (0: no cap), not {value!r}")
    return value


def validate_reason(reason: str) -> str:
    """A pause reason: one line of at most MAX_REASON_CHARS, without control characters."""
    reason = reason.strip()
    if len(reason) > MAX_REASON_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in reason):
        raise BadInput(f"a pause reason is one line of at most {MAX_REASON_CHARS} characters, "
                       "without control characters")
    return reason


class PoolRegistry:
    """Pool CRUD with the rules from the spec; each change is one atomic script."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._ensure = scripts.load(client, "pool_ensure_default")
        self._add = scripts.load(client, "pool_add")
        self._edit = scripts.load(client, "pool_edit")
        self._remove = scripts.load(client, "pool_remove")
        self._shift_pending = scripts.load(client, "shift_pending")

    def ensure_default(self) -> None:
        self._ensure(keys=[keys.POOLS, keys.DEFAULT_POOL],
                     args=[slugify(DEFAULT_POOL_NAME), _record(DEFAULT_POOL_NAME, "")])

    def all(self) -> dict[str, Pool]:
        self.ensure_default()
        return self.read()

    def read(self) -> dict[str, Pool]:
        """Every pool, read only (a worker's credentials may read pools, not change them)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.POOLS)
        pipe.get(keys.DEFAULT_POOL)
        raw, default_slug = pipe.execute()
        return pools_from_hash(raw, default_slug)

    def list(self) -> list[Pool]:
        return ordered(self.all().values())

    def get(self, ident: str) -> Pool:
        return find(self.all(), ident)

    def by_slug(self, slug: str) -> Pool | None:
        """The pool stored under *slug*, read without creating the default pool (workers poll
        this for their pool's health requirements)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(keys.POOLS, slug)
        pipe.get(keys.DEFAULT_POOL)
        raw, default_slug = pipe.execute()
        return None if raw is None else _decode(slug, raw, default_slug)

    def add(self, name: str, description: str = "", is_default: bool = False,
            requires: Iterable[str] = (), health_check: str = "",
            cleanup_script: str = "") -> Pool:
        """Create a pool; *cleanup_script* runs after each step on its exclusive workers."""
        name = validate_name(name)
        slug = slugify(name)
        record = _record(name, description, validate_requires(requires),
                         validate_health_check(health_check),
                         cleanup_script=validate_cleanup_script(cleanup_script))
        self.ensure_default()
        outcome = self._add(keys=[keys.POOLS, keys.DEFAULT_POOL],
                            args=[slug, record, "1" if is_default else "0"])
        if outcome == "exists":
            existing = self.all()[slug]
            raise PoolConflict(f"a pool named {existing.name!r} already exists (slug {slug}); "
                               "pool names are unique ignoring case and punctuation")
        return self.get(slug)

    def edit(self, ident: str, name: str | None = None, description: str | None = None,
             make_default: bool = False, requires: Iterable[str] | None = None,
             health_check: str | None = None, max_running: int | None = None,
             cleanup_script: str | None = None) -> Pool:
        """Change what is given (None keeps it; an empty *requires*, *health_check* or
        *cleanup_script* clears it). Workers pick up new requirements at their next health
        check, and a new cleanup script after their next step, without a restart."""
        pool = self.get(ident)
        new_name = validate_name(name) if name is not None else pool.name
        new_slug = slugify(new_name)
        record = _record(
            new_name, pool.description if description is None else description,
            pool.requires if requires is None else validate_requires(requires),
            pool.health_check if health_check is None else validate_health_check(health_check),
            paused=pool, max_running=pool.max_running if max_running is None
            else validate_max_running(max_running),
            cleanup_script=pool.cleanup_script if cleanup_script is None
            else validate_cleanup_script(cleanup_script))
        outcome = self._edit(keys=_pool_keys(pool),
                             args=[pool.slug, new_slug, record, "1" if make_default else "0"])
        self._raise_for(outcome, pool, action="rename")
        return self.get(new_slug)

    def pause(self, ident: str, reason: str = "") -> Pool:
        """Pause the pool: its steps are still accepted and stay Queued, no worker of it starts
        one, running steps go on, and waiting steps do not run out their lease timeout. Pausing
        a paused pool keeps its first time and takes the new reason. Stored in the pool's
        record, so it survives worker and Redis restarts; workers are told at once."""
        pool = self.get(ident)
        reason = validate_reason(reason)
        since = pool.paused_since if pool.paused else self._now()
        changed = replace(pool, paused=True, paused_reason=reason, paused_since=since)
        self._store(pool, changed)
        self.redis.publish(keys.pool_control(pool.slug), "pause")
        return changed

    def resume(self, ident: str) -> Pool:
        """Resume a paused pool (a pool that is not paused is left as it is). Its waiting
        steps' lease deadlines move on by the time it was paused."""
        pool = self.get(ident)
        if not pool.paused:
            return pool
        resumed = replace(pool, paused=False, paused_reason="", paused_since=0.0)
        self._store(pool, resumed)
        self._shift_pending(keys=[keys.pending(pool.slug)],
                            args=[max(0.0, self._now() - pool.paused_since)])
        self.redis.publish(keys.pool_control(pool.slug), "resume")
        return resumed

    def _now(self) -> float:
        seconds, micros = self.redis.time()  # one clock for every machine
        return seconds + micros / 1e6

    def _store(self, before: Pool, after: Pool) -> None:
        record = _record(after.name, after.description, after.requires, after.health_check,
                         paused=after, max_running=after.max_running,
                         cleanup_script=after.cleanup_script)
        outcome = self._edit(keys=_pool_keys(before),
                             args=[before.slug, before.slug, record, "0"])
        self._raise_for(outcome, before, action="pause")

    def remove(self, ident: str) -> Pool:
        pool = self.get(ident)
        outcome = self._remove(keys=_pool_keys(pool), args=[pool.slug])
        self._raise_for(outcome, pool, action="remove")
        return pool

    @staticmethod
    def _raise_for(outcome: str, pool: Pool, action: str) -> None:
        if outcome == "ok":
            return
        messages = {
            "missing": f"pool {pool.name!r} was removed meanwhile",
            "exists": "another pool already has that name",
            "default": f"{pool.name!r} is the default pool and cannot be removed; make another "
                       "pool the default first (`workerpool pool edit OTHER --default`)",
            "has-workers": f"cannot {action} {pool.name!r}: workers are registered in it; "
                           "stop them first",
            "has-steps": f"cannot {action} {pool.name!r}: steps are waiting in its queue",
        }
        raise PoolConflict(messages[outcome])
