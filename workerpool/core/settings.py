"""Every tunable of workerpool in one frozen dataclass, read from the environment on demand."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from workerpool.core.errors import BadInput

ENV_PREFIX = "WORKERPOOL_"


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadInput(f"{ENV_PREFIX}{name}={raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise BadInput(f"{ENV_PREFIX}{name} must be a finite number greater than 0 (got {raw})")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadInput(f"{ENV_PREFIX}{name}={raw!r} is not a whole number") from None
    if value < minimum:
        floor = "greater than 0" if minimum == 1 else f"at least {minimum}"
        raise BadInput(f"{ENV_PREFIX}{name} must be {floor} (got {raw})")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    """``1``/``true``/``yes`` -> True, ``0``/``false``/``no`` or unset -> False."""
    raw = env.get(ENV_PREFIX + name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise BadInput(f"{ENV_PREFIX}{name}={raw!r} must be 1 or 0 (true/false, yes/no)")


def _name(env: Mapping[str, str], name: str, default: str) -> str:
    """A name that is one word (a Sentinel master's), or *default* if unset."""
    raw = env.get(ENV_PREFIX + name, "").strip()
    if raw and len(raw.split()) != 1:
        raise BadInput(f"{ENV_PREFIX}{name}={raw!r} must be one word (no spaces)")
    return raw or default


def _uid_range(env: Mapping[str, str], name: str, default: range) -> range:
    """``START-END`` (inclusive) -> range; BadInput saying the form otherwise."""
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    start, sep, end = raw.partition("-")
    try:
        first, last = int(start), int(end)
    except ValueError:
        first, last = 0, -1
    if not sep or not 0 < first <= last < 2**31:
        raise BadInput(f"{ENV_PREFIX}{name}={raw!r} must be START-END, two uids above 0 with "
                       "START <= END (e.g. 61000-61999)")
    return range(first, last + 1)


@dataclass(frozen=True)
class Settings:
    """Configuration shared by the client, the workers and the stack supervisor."""

    redis_url: str | None = None
    # With a sentinel:// URL: the master's name (``sentinel monitor <name> ...``), and the
    # sentinels' own password if they require one (the URL's password is the master's).
    redis_sentinel_master: str = "mymaster"
    redis_sentinel_password: str | None = field(default=None, repr=False)
    # Replicas that must have a step before its enqueue returns (WAIT); 0: none asked.
    redis_wait_replicas: int = 0
    redis_wait_timeout: float = 5.0  # seconds an enqueue waits for those replicas
    home: Path = field(default_factory=lambda: Path.home() / ".workerpool")
    heartbeat_interval: float = 2.0
    health_interval: float = 30.0  # seconds between a pool worker's health checks
    lease_timeout: float = 3600.0
    # Seconds the leading server's lease lasts unless renewed; a standby takes over within
    # twice this after the leader stops (workerpool/core/leadership.py).
    server_lease: float = 6.0
    step_timeout: float = 3600.0
    log_max_lines: int = 10_000
    log_max_line_bytes: int = 16_384
    result_ttl: int = 7 * 24 * 3600
    kill_grace: float = 3.0
    shutdown_grace: float = 10.0
    max_steps: int = 0  # a worker drains and exits 0 after this many steps; 0: never
    # One step at a time whatever the concurrency, and the pool's cleanup script after each.
    exclusive: bool = False
    cleanup_timeout: float = 300.0  # seconds an exclusive worker's cleanup script may run
    # Seconds a normal or low step waits before it moves up to the end of the high line
    priority_aging: float = 300.0
    keep_workdirs: bool = False
    package_cache_bytes: int = 10 * 1024**3
    package_spares: int = 1  # staged copies per recently used package version; 0: none
    # An archive may expand to this many times its compressed size (a zip entry too), and to
    # the floor whatever its size (worker/packages/archive.py: ``Ratio``).
    extract_max_ratio: int = 200
    extract_ratio_floor_bytes: int = 64 * 1024**2
    # A spare package copy is staged only if the worker's working directories and staged copies
    # stay within this many bytes (0: no such budget) and the file system keeps the free bytes
    # after it (worker/packages/budget.py).
    workdir_max_bytes: int = 0
    workdir_min_free_bytes: int = 1024**3
    step_max_processes: int | None = None  # per-step cap (pids cgroup); None: no cap
    # Who scripts run as (worker/isolation/users.py): None, per-slot users when the worker is
    # root; "same", the worker's own user; or a user name.
    script_user: str | None = None
    # The console's accounts (``workerpool console-user``): name:role:scrypt hash per line.
    web_users: str | None = None
    script_uids: range = range(61000, 62000)  # the per-slot users' uids
    # kombu redelivers a message unacked for this long; a worker acks a step's message once the
    # step's script starts, so only a message whose worker died before that is redelivered.
    visibility_timeout: float = 24 * 3600.0
    # Seals sensitive values (workerpool.core.sealing); kept out of repr so it never reaches a log.
    secret_key: str | None = field(default=None, repr=False)
    # This worker's pool key(s), POOL:GENERATION:KEY (core/sealing.py): what opens its steps.
    pool_key: str | None = field(default=None, repr=False)

    @property
    def heartbeat_ttl(self) -> float:
        """A worker whose last heartbeat is older than this is Offline."""
        return self.heartbeat_interval * 2

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        home = env.get(ENV_PREFIX + "HOME") or str(Path.home() / ".workerpool")
        return cls(
            redis_url=env.get(ENV_PREFIX + "REDIS_URL") or None,
            redis_sentinel_master=_name(env, "REDIS_SENTINEL_MASTER", cls.redis_sentinel_master),
            redis_sentinel_password=env.get(ENV_PREFIX + "REDIS_SENTINEL_PASSWORD") or None,
            redis_wait_replicas=_int(env, "REDIS_WAIT_REPLICAS", 0, minimum=0),
            redis_wait_timeout=_float(env, "REDIS_WAIT_TIMEOUT", cls.redis_wait_timeout),
            home=Path(home).expanduser(),
            heartbeat_interval=_float(env, "HEARTBEAT_INTERVAL", cls.heartbeat_interval),
            health_interval=_float(env, "HEALTH_INTERVAL", cls.health_interval),
            lease_timeout=_float(env, "LEASE_TIMEOUT", cls.lease_timeout),
            server_lease=_float(env, "SERVER_LEASE", cls.server_lease),
            step_timeout=_float(env, "STEP_TIMEOUT", cls.step_timeout),
            log_max_lines=_int(env, "LOG_MAX_LINES", cls.log_max_lines),
            log_max_line_bytes=_int(env, "LOG_MAX_LINE_BYTES", cls.log_max_line_bytes),
            result_ttl=_int(env, "RESULT_TTL", cls.result_ttl),
            kill_grace=_float(env, "KILL_GRACE", cls.kill_grace),
            shutdown_grace=_float(env, "SHUTDOWN_GRACE", cls.shutdown_grace),
            max_steps=_int(env, "MAX_STEPS", cls.max_steps, minimum=0),
            exclusive=_flag(env, "EXCLUSIVE"),
            cleanup_timeout=_float(env, "CLEANUP_TIMEOUT", cls.cleanup_timeout),
            priority_aging=_float(env, "PRIORITY_AGING", cls.priority_aging),
            visibility_timeout=_float(env, "VISIBILITY_TIMEOUT", cls.visibility_timeout),
            package_cache_bytes=_int(env, "PACKAGE_CACHE_BYTES", cls.package_cache_bytes),
            package_spares=_int(env, "PACKAGE_SPARES", cls.package_spares, minimum=0),
            extract_max_ratio=_int(env, "EXTRACT_MAX_RATIO", cls.extract_max_ratio),
            extract_ratio_floor_bytes=_int(env, "EXTRACT_RATIO_FLOOR_BYTES",
                                           cls.extract_ratio_floor_bytes, minimum=0),
            workdir_max_bytes=_int(env, "WORKDIR_MAX_BYTES", cls.workdir_max_bytes, minimum=0),
            workdir_min_free_bytes=_int(env, "WORKDIR_MIN_FREE_BYTES",
                                        cls.workdir_min_free_bytes, minimum=0),
            step_max_processes=_int(env, "STEP_MAX_PROCESSES", 0) or None,
            secret_key=env.get(ENV_PREFIX + "SECRET_KEY") or None,
            pool_key=env.get(ENV_PREFIX + "POOL_KEY") or None,
            script_user=env.get(ENV_PREFIX + "SCRIPT_USER") or None,
            web_users=env.get(ENV_PREFIX + "WEB_USERS") or None,
            script_uids=_uid_range(env, "SCRIPT_UIDS", cls.script_uids),
            keep_workdirs=env.get(ENV_PREFIX + "KEEP_WORKDIRS", "").lower() in ("1", "true", "yes"),
        )

    def with_redis_url(self, url: str) -> Settings:
        return replace(self, redis_url=url)
