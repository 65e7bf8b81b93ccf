"""Redis Sentinel: Celery's ``sentinel://h1:26379;sentinel://h2:26379`` URLs, and clients of the
master the sentinels name.

The URL names the sentinels, one ``sentinel://`` part each, joined by ``;``; the credentials
and database, given in the first part, are the master's (as in Celery). The master's name and
the sentinels' own password come from the settings (``WORKERPOOL_REDIS_SENTINEL_MASTER``,
``WORKERPOOL_REDIS_SENTINEL_PASSWORD``). A client asks the sentinels for the master at each new
connection, and drops its connections to a master that became a replica, so it follows a
failover by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote, unquote, urlparse

import redis
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from workerpool.core.errors import BadInput
from workerpool.core.settings import Settings

SENTINEL = "sentinel"
SENTINEL_PORT = 26379
SENTINEL_FORM = "use sentinel://[:password@]host:26379[/db];sentinel://host2:26379;..."


@dataclass(frozen=True)
class SentinelURL:
    """A ``sentinel://`` URL taken apart: the sentinels' addresses, and the master's login and
    database."""

    sentinels: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    db: int = 0


def is_sentinel(url: str) -> bool:
    return url.partition(":")[0].lower() == SENTINEL


def parse_sentinel(url: str) -> SentinelURL:
    """The parts of a ``sentinel://h1:26379;sentinel://h2:26379`` URL; BadInput saying what is
    wrong otherwise."""
    parts = [_sentinel_part(url, part.strip()) for part in url.split(";") if part.strip()]
    if not parts:
        raise BadInput(f"Redis URL {redact(url)!r} names no sentinel; {SENTINEL_FORM}")
    _, username, password, db = parts[0]
    for _, *given in parts[1:]:  # later parts may repeat the first's login and database
        if any(value not in (None, first)
               for value, first in zip(given, parts[0][1:], strict=True)):
            raise BadInput(f"Redis URL {redact(url)!r} gives its sentinels different "
                           "credentials or databases; give them once, in the first part")
    return SentinelURL(tuple(address for address, *_ in parts), username, password, db or 0)


def _sentinel_part(url: str, part: str
                   ) -> tuple[tuple[str, int], str | None, str | None, int | None]:
    """One ``sentinel://`` part of *url*: its sentinel's address, and the login and database
    it gives (None: not given)."""
    try:
        parsed = urlparse(part)
        port = parsed.port
    except ValueError as exc:
        raise BadInput(f"Redis URL {redact(url)!r} is malformed ({exc}); {SENTINEL_FORM}"
                       ) from None
    if parsed.scheme != SENTINEL:
        raise BadInput(f"Redis URL {redact(url)!r}: every part must start with sentinel:// "
                       f"({redact(part)!r} does not); {SENTINEL_FORM}")
    if not parsed.hostname:
        raise BadInput(f"Redis URL {redact(url)!r} names a sentinel without a host; "
                       f"{SENTINEL_FORM}")
    if port == 0:
        raise BadInput(f"Redis URL {redact(url)!r} names a sentinel on port 0")
    if parsed.query or parsed.params or parsed.fragment:
        raise BadInput(f"Redis URL {redact(url)!r} has options; a sentinel:// URL takes none "
                       "(TLS to Sentinel is not supported)")
    path = parsed.path.strip("/")
    if path and not path.isdigit():
        raise BadInput(f"Redis URL {redact(url)!r} names database {path!r}; it must be a "
                       "number")
    username = unquote(parsed.username) if parsed.username else None
    password = None if parsed.password is None else unquote(parsed.password)
    return ((parsed.hostname, port or SENTINEL_PORT), username, password,
            int(path) if path else None)


def sentinel_url(parts: SentinelURL) -> str:
    """The one ``sentinel://`` URL of *parts* (its login and database in the first part)."""
    login = ""
    if parts.username is not None or parts.password is not None:
        login = (f"{quote(parts.username or '', safe='')}:"
                 f"{quote(parts.password or '', safe='')}@")
    hosts = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
             for host, port in parts.sentinels]
    first = f"{SENTINEL}://{login}{hosts[0]}/{parts.db}"
    return ";".join([first, *(f"{SENTINEL}://{host}" for host in hosts[1:])])


def redact(url: str) -> str:
    """*url* with the password of each part replaced, for messages."""
    shown = []
    for part in url.split(";"):
        try:
            password = urlparse(part).password
        except ValueError:
            return "<unparseable url>"
        shown.append(part if password is None else part.replace(f":{password}@", ":***@", 1))
    return ";".join(shown)


class SentinelMaster(redis.Redis):
    """A client of a Sentinel-monitored master that also closes its connections to the
    sentinels when closed."""

    manager: redis.sentinel.Sentinel | None = None

    def close(self) -> None:
        super().close()
        if self.manager is not None:
            self.manager.close()


def replicas_of(client: redis.Redis) -> list[redis.Redis]:
    """Clients of the replicas the sentinels name for *client*'s master, logged in as it is
    (none for a client of a plain URL): for what Redis does not replicate, ACL users."""
    pool = client.connection_pool
    if not isinstance(pool, redis.sentinel.SentinelConnectionPool):
        return []
    login: dict[str, Any] = {name: pool.connection_kwargs.get(name)
                             for name in ("username", "password", "db")}
    return [redis.Redis(host, port, socket_connect_timeout=5, **login)
            for host, port in pool.sentinel_manager.discover_slaves(pool.service_name)]


def sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    """What a connection to a sentinel takes: its password, if sentinels ask for one, and
    short timeouts (one sentinel down must not hold up asking the next)."""
    found: dict[str, Any] = {"socket_connect_timeout": 2, "socket_timeout": 2,
                             "retry": Retry(NoBackoff(), 0)}  # the next sentinel is the retry
    if settings.redis_sentinel_password:
        found["password"] = settings.redis_sentinel_password
    return found


def master(url: str, settings: Settings, **options: Any) -> redis.Redis:
    """A client of the master *settings* name, found by the sentinels of *url* at each new
    connection; *options* are its connections' (redis-py's keywords)."""
    parts = parse_sentinel(url)
    manager = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
        list(parts.sentinels), sentinel_kwargs=sentinel_kwargs(settings))
    client: SentinelMaster = manager.master_for(  # type: ignore[no-untyped-call, unused-ignore]
        settings.redis_sentinel_master, redis_class=SentinelMaster, db=parts.db,
        username=parts.username, password=parts.password, **options)
    client.manager = manager
    return client


def why_no_master(url: str) -> str:
    """Why no master was found: the sentinels are asked again, one by one, to tell an
    unreachable (or refusing) sentinel from a wrong master name or a master that is down."""
    settings = Settings.from_env()
    name, known, refused = settings.redis_sentinel_master, set[str](), list[str]()
    for host, port in parse_sentinel(url).sentinels:
        sentinel = redis.Redis(host, port, decode_responses=True, **sentinel_kwargs(settings))
        try:
            known.update(cast(dict[str, Any], sentinel.sentinel_masters()))
        except redis.AuthenticationError:
            refused.append(f"{host}:{port}")
        except (redis.RedisError, OSError):
            pass
        finally:
            sentinel.close()
    hosts = ", ".join(f"{host}:{port}" for host, port in parse_sentinel(url).sentinels)
    if refused and not known:
        return (f"the Redis Sentinels at {', '.join(refused)} refused the login; set "
                "WORKERPOOL_REDIS_SENTINEL_PASSWORD to their password (requirepass)")
    if not known:
        return (f"no Redis Sentinel at {hosts} answered; start them or fix "
                "WORKERPOOL_REDIS_URL")
    if name not in known:
        return (f"the Redis Sentinels at {hosts} monitor no master named {name!r} (they "
                f"know {', '.join(sorted(known))}); set WORKERPOOL_REDIS_SENTINEL_MASTER")
    return (f"the Redis Sentinels at {hosts} know master {name!r} but see it down; wait "
            "for the failover to end, or start a replica")
