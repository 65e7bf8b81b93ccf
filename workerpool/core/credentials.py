"""Redis credentials per role: a worker reaches only its own pool, a runner cannot change pools.

Each is a Redis ACL user (Redis 7 or later), made or updated by an admin connection (the
default user, or any user allowed ``ACL SETUSER``):

- ``workerpool-pool-<slug>`` (a pool's workers), ``workerpool-builtin`` (the built-in worker),
  ``workerpool-target-<slug>`` (a target's agent): its pool's space (``keys.space``) and queue,
  kombu's binding of that queue, the pools and feeds to read (a health check, a package), the
  channel of task events (Flower), and Celery's remote control to listen to and reply on. It
  cannot push onto another queue, read another pool's steps, send a control command, or
  change pools, feeds, targets or the built-in worker's switch.
- ``workerpool-runner`` (clients that run and follow steps, and submit deployments): every
  pool's steps and queues, deployments, the channel of task events (the reaper's word on a
  step no worker ended); pools, targets and the built-in worker's switch only to read.

A user's password is made here, shown once, and stored by Redis only as a hash; asking again
gives the user a new password and keeps the old ones until ``revoke`` (so running workers go
on while the new one is rolled out).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, urlparse, urlunparse

import redis

from workerpool.core import keys
from workerpool.core.errors import Infrastructure, Refused
from workerpool.core.sentinel import is_sentinel, parse_sentinel, replicas_of, sentinel_url

RUNNER = "runner"
USER_PREFIX = "workerpool-"
# What every role may run: data commands, scripts and pub/sub, not the server's administration.
COMMANDS = ("-@all", "+@all", "-@dangerous", "-@admin", "+info",
            "+client|setname", "+client|id")
READ_ONLY = (keys.POOLS, keys.DEFAULT_POOL, keys.FEEDS, keys.BUILTIN_PACKAGES,
             keys.builtin_package_data("*", "*").rsplit(":", 1)[0] + ":*")
EVENTS = ("/*.celeryev/*",)  # Celery's task events (Flower)
KOMBU_BINDINGS = ("_kombu.binding", "_kombu.binding_permanent")  # kombu's sets of bindings
# Celery's remote control (Flower's buttons, ``celery control``): a worker listens on the
# broadcast channel of its database (kombu subscribes by pattern, which Redis checks
# literally), binds its own mailbox, and pushes its replies onto the asker's reply queue. The
# listening is granted by a selector that allows nothing else, so the worker cannot PUBLISH
# there: only an admin's login can send a control command to the workers of every pool.
CONTROL_LISTEN = "(+psubscribe +punsubscribe &/{db}.celery.pidbox)"
CONTROL_KEYS = ("~_kombu.binding.celery.pidbox", "~_kombu.binding_permanent.celery.pidbox",
                "~_kombu.binding_deadlines", "%R~_kombu.binding.reply.celery.pidbox",
                "%W~*.celery.pidbox")


class CredentialsRefused(Refused):
    """Redis cannot hold per-role users here (too old, or this connection is no admin)."""


@dataclass(frozen=True)
class Credentials:
    """A role's Redis user and the URL that logs in as it."""

    user: str
    password: str
    url: str


def user_name(pool: str) -> str:
    """The ACL user of *pool*'s workers (a slug, ``builtin`` or ``target:<slug>``), or of the
    runner (``RUNNER``)."""
    return USER_PREFIX + (RUNNER if pool == RUNNER else
                          "builtin" if pool == keys.BUILTIN_POOL else
                          pool.replace(":", "-") if pool.startswith(keys.TARGET_POOL_PREFIX)
                          else "pool-" + pool)


def database(url: str) -> int:
    """The database number a Redis URL names (0 if none)."""
    if is_sentinel(url):
        return parse_sentinel(url).db
    path = urlparse(url).path.strip("/")
    return int(path) if path.isdigit() else 0


def worker_rules(pool: str, db: int = 0) -> list[str]:
    """The ACL rules of *pool*'s workers on database *db*: their pool's space and queue, and
    what they read."""
    queue = keys.queue_of(pool)
    rules = [*COMMANDS, f"~{_escape(keys.space(pool))}*",
             *(f"~{name}" for name in keys.priority_lists(queue)),
             f"~{_escape(keys.dead(pool))}",
             *(f"~{binding}.{queue}" for binding in KOMBU_BINDINGS),
             *(f"%R~{key}" for key in READ_ONLY),
             *CONTROL_KEYS, f"&{_escape(keys.space(pool))}control:*",
             *(f"&{c}" for c in EVENTS), CONTROL_LISTEN.format(db=db)]
    if pool == keys.BUILTIN_POOL:
        rules.append(f"%R~{keys.BUILTIN_DISABLED}")
    if pool.startswith(keys.TARGET_POOL_PREFIX):
        rules.append(f"%R~{keys.TARGETS}")
    return rules


def runner_rules() -> list[str]:
    """The ACL rules of clients that run steps and deployments but change no pool."""
    every_space = _escape(keys.SPACE_PREFIX) + "*"
    return [*COMMANDS, f"~{every_space}", f"~{keys.POOL_QUEUE_PREFIX}*", f"~{keys.BUILTIN_QUEUE}",
            f"~{keys.TARGET_QUEUE_PREFIX}*", f"~{keys.deployment('*')}",
            f"~{keys.PREFIX}deployments:*",
            *(f"%R~{key}" for key in (*READ_ONLY, keys.BUILTIN_DISABLED, keys.TARGETS,
                                      keys.POOL_KEYS, keys.SERVER_HEARTBEAT,
                                      keys.dead("*"))),
            f"&{every_space}", *(f"&{c}" for c in EVENTS)]


def issue(admin: redis.Redis, admin_url: str, pool: str, revoke: bool = False) -> Credentials:
    """Make or update the ACL user of *pool* (or ``RUNNER``) with a new password, keeping its
    earlier ones unless *revoke*; its URL has *admin_url*'s host, port, database and options."""
    user, password = user_name(pool), secrets.token_urlsafe(24)
    rules = runner_rules() if pool == RUNNER else worker_rules(pool, database(admin_url))
    start = ["reset"] if revoke else ["resetkeys", "resetchannels", "clearselectors"]
    with _every_node(admin) as nodes:
        for node in nodes:
            try:
                node.execute_command(  # type: ignore[no-untyped-call]
                    "ACL", "SETUSER", user, *start, "on", f">{password}", *rules)
            except redis.ResponseError as exc:
                raise _refused(exc) from None
    return Credentials(user, password, url_for(admin_url, user, password))


@contextmanager
def _every_node(admin: redis.Redis) -> Iterator[list[redis.Redis]]:
    """*admin*, and, behind Sentinel, the master's replicas too: Redis does not replicate ACL
    users, and a replica the sentinels promote must let the same workers in. A replica added
    later needs the users set again (or an ACL file, ``acl_line``)."""
    replicas = replicas_of(admin)
    try:
        yield [admin, *replicas]
    finally:
        for replica in replicas:
            replica.close()


def revoke_user(admin: redis.Redis, pool: str) -> bool:
    """Delete the ACL user of *pool* (or ``RUNNER``); whoever logged in as it is refused from
    its next command. False if there was none."""
    try:
        with _every_node(admin) as nodes:
            deleted = [bool(node.acl_deluser(user_name(pool))) for node in nodes]
        return deleted[0]  # the master's word
    except redis.ResponseError as exc:
        raise _refused(exc) from None


def offline(admin_url: str, pool: str) -> Credentials:
    """New credentials of *pool* (or ``RUNNER``) for an ACL file, not set in any Redis."""
    user, password = user_name(pool), secrets.token_urlsafe(24)
    return Credentials(user, password, url_for(admin_url, user, password))


def acl_line(pool: str, password: str, db: int = 0) -> str:
    """The ``user`` line of an ACL file (or redis.conf) for *pool*'s user with *password*, on
    database *db*."""
    rules = runner_rules() if pool == RUNNER else worker_rules(pool, db)
    return " ".join(["user", user_name(pool), "on", f">{password}", *rules])


def url_for(admin_url: str, user: str, password: str) -> str:
    """*admin_url* logging in as *user* with *password* instead."""
    if is_sentinel(admin_url):
        return sentinel_url(replace(parse_sentinel(admin_url), username=user, password=password))
    parsed = urlparse(admin_url)
    host = parsed.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parsed.port:
        netloc += f":{parsed.port}"
    return urlunparse(parsed._replace(netloc=netloc))


def supported(admin: redis.Redis) -> bool:
    """Whether this Redis holds per-role users (key read/write permissions need Redis 7)."""
    info: dict[str, Any] = admin.info("server")
    return int(str(info.get("redis_version", "0")).split(".")[0]) >= 7


def _escape(pattern: str) -> str:
    """*pattern* with the glob characters in it matched literally (``[``, ``?``, ``*``)."""
    return "".join(f"\\{c}" if c in "[]?*\\" else c for c in pattern)


def _refused(exc: redis.ResponseError) -> Exception:
    text = str(exc)
    if "NOPERM" in text or "no permissions" in text:
        return CredentialsRefused("this Redis login may not manage users (ACL SETUSER); use "
                                  "the admin's URL (the default user, or one with +acl)")
    if "unknown command" in text.lower() or "Error in ACL SETUSER modifier" in text:
        return CredentialsRefused(f"this Redis cannot hold workerpool's users ({text}); they "
                                  "need Redis 7 or later")
    return Infrastructure(f"Redis refused to set a user: {text}")
