"""Opening Redis: URL validation, the embedded server's address, and mapping failures to errors.

Every component (client, CLI, workers' Celery side, server, Flower) reads the one URL the same
way. TLS options are query parameters of a ``rediss://`` URL, parsed here once for redis-py and
for kombu alike: ``ssl_ca_certs`` (CA file), ``ssl_cert_reqs`` (``required``, the default, or
``optional``/``none``), ``ssl_check_hostname`` (``true``, the default, or ``false``), and
``ssl_certfile``/``ssl_keyfile`` (a client certificate).

A ``sentinel://h1:26379;sentinel://h2:26379`` URL (Celery's form) names the sentinels of a
Redis Sentinel deployment (``sentinel.py``).
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlparse, urlunparse

import redis
import redis.sentinel
from redis._parsers.base import BaseParser  # the error classes it maps replies to

from workerpool.core import sentinel
from workerpool.core.errors import BadInput, Forbidden, RedisUnavailable, one_line
from workerpool.core.settings import Settings

# Seconds a worker waits out a Redis outage before giving up on what it must store (a claim, a
# step's last log lines, its end).
REDIS_RETRY_SECONDS = 300.0



class NoReplicasError(redis.ResponseError):
    """``NOREPLICAS``: a master with ``min-replicas-to-write`` refusing writes while too few
    replicas are in sync (one is restarting, or a failover left the new master without one).
    Its text keeps the error code, as a plain ResponseError's does."""

    def __init__(self, message: str = "", *args: Any, **kwargs: Any) -> None:
        super().__init__(f"NOREPLICAS {message}", *args, **kwargs)


# redis-py raises a plain ResponseError for NOREPLICAS; the class above, from here on, so that
# it can be waited out like the others.
BaseParser.EXCEPTION_CLASSES.setdefault("NOREPLICAS", NoReplicasError)

# The Redis errors that mean "Redis is away for now": a lost or refused connection, a timeout,
# a server still loading its data, a replica that cannot write yet (a failover) or a master
# refusing writes until its replicas are back. Worth waiting out. Any other (DataError: an
# argument no command takes; ResponseError: a command Redis refused, NOPERM among them) is
# permanent: the same call fails the same way again.
AWAY: tuple[type[redis.RedisError], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError, NoReplicasError)

T = TypeVar("T")
SCHEMES = ("redis", "rediss", "unix", "sentinel")
CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
TLS_OPTIONS = ("ssl_cert_reqs", "ssl_check_hostname", *TLS_FILES)


def validate_url(url: str) -> str:
    """Return *url* if it is a usable Redis URL, else raise BadInput saying what is wrong."""
    _checked(url)
    return url


def _checked(url: str) -> dict[str, Any]:
    """``tls_options(url)`` of a usable Redis URL; BadInput saying what is wrong otherwise."""
    if sentinel.is_sentinel(url):
        sentinel.parse_sentinel(url)
        return {}
    try:
        parsed = urlparse(url)
        port = parsed.port
    except ValueError as exc:
        raise BadInput(f"Redis URL {redact(url)!r} is malformed ({exc}); "
                       "use redis://[:password@]host:port/db") from None
    if parsed.scheme not in SCHEMES:
        raise BadInput(f"Redis URL {redact(url)!r} must start with redis://, rediss://, unix:// "
                       "or sentinel://")
    if parsed.scheme != "unix" and not parsed.hostname:
        raise BadInput(f"Redis URL {redact(url)!r} has no host; use redis://host:port/db")
    if port == 0:
        raise BadInput(f"Redis URL {redact(url)!r} has port 0")
    return tls_options(url)


def _query(url: str) -> dict[str, str]:
    """The URL's query options; BadInput for one we do not know or one given twice."""
    parsed = urlparse(url)
    known = {"unix": ("db",), "rediss": TLS_OPTIONS}.get(parsed.scheme, ())
    pairs = parse_qsl(parsed.query, keep_blank_values=True)
    options = dict(pairs)
    for name, _ in pairs:
        if name not in known:
            hint = ("TLS options need a rediss:// URL" if name in TLS_OPTIONS
                    else f"known options: {', '.join(TLS_OPTIONS)} (rediss://), db (unix://)")
            raise BadInput(f"Redis URL {redact(url)!r} has option {name!r}: {hint}")
    if len(options) != len(pairs):
        raise BadInput(f"Redis URL {redact(url)!r} gives an option twice")
    return options


def tls_options(url: str) -> dict[str, Any]:
    """The TLS settings of a ``rediss://`` URL as redis-py's SSLConnection takes them (empty for
    other schemes); certificates are verified unless the URL says otherwise."""
    options = _query(url)
    if urlparse(url).scheme != "rediss":
        return {}
    # Explicit, not redis-py's default (which was off before redis-py 6).
    found: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
    for name, value in options.items():
        if name == "ssl_cert_reqs":
            if value not in CERT_REQS:
                raise BadInput(f"Redis URL option ssl_cert_reqs={value!r} must be one of "
                               f"{', '.join(CERT_REQS)}")
            found[name] = CERT_REQS[value]
        elif name == "ssl_check_hostname":
            if value.lower() not in BOOLEANS:
                raise BadInput(f"Redis URL option ssl_check_hostname={value!r} must be true or "
                               "false")
            found[name] = BOOLEANS[value.lower()]
        else:
            path = os.path.expanduser(value)
            if not os.path.isfile(path) or not os.access(path, os.R_OK):
                raise BadInput(f"Redis URL option {name}={value!r}: no readable file there")
            found[name] = path
    if found["ssl_cert_reqs"] == ssl.CERT_NONE:
        if options.get("ssl_check_hostname", "").lower() in ("true", "1", "yes"):
            raise BadInput("Redis URL option ssl_check_hostname=true needs a certificate: use "
                           "ssl_cert_reqs=required (or optional)")
        found["ssl_check_hostname"] = False  # nothing to check without a certificate
    return found


def without_query(url: str) -> str:
    """The URL without its options (they are passed apart, as parsed by ``tls_options``)."""
    return urlunparse(urlparse(url)._replace(query=""))


def redact(url: str) -> str:
    """The URL with any password replaced, for messages."""
    if sentinel.is_sentinel(url):
        return sentinel.redact(url)
    try:
        parsed = urlparse(url)
    except ValueError:
        return "<unparseable url>"
    if parsed.password is None:
        return url
    return url.replace(f":{parsed.password}@", ":***@", 1)


def embedded_state_file(settings: Settings) -> str:
    return str(settings.home / "embedded.json")


def resolve_url(settings: Settings) -> str:
    """The Redis URL to use: WORKERPOOL_REDIS_URL, else the running embedded server's."""
    if settings.redis_url:
        return validate_url(settings.redis_url)
    try:
        with open(embedded_state_file(settings)) as fh:
            url = str(json.load(fh)["url"])
    except (OSError, ValueError, KeyError):
        raise RedisUnavailable(
            f"no Redis configured: start the embedded stack with `workerpool up` "
            f"(home {settings.home}) or set WORKERPOOL_REDIS_URL") from None
    return validate_url(url)


def _driver() -> dict[str, Any]:
    """redis-py's CLIENT SETINFO names its version, which it otherwise looks up in the
    installed packages' metadata at every connection (4 ms, a fifth of a quick command)."""
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # redis-py before 7: the older keyword
        return {"lib_version": redis.__version__}
    return {"driver_info": DriverInfo(lib_version=redis.__version__)}


DRIVER = _driver()


def connect(url: str, settings: Settings | None = None, decode: bool = True) -> redis.Redis:
    """A client for *url* that decodes replies to str (unless not *decode*); no I/O happens
    until first use. For a ``sentinel://`` URL, a client of the master *settings* (by default
    the environment's) name, which asks the sentinels where it is at each new connection."""
    if sentinel.is_sentinel(url):
        return sentinel.master(url, settings or Settings.from_env(), decode_responses=decode,
                               socket_connect_timeout=5, health_check_interval=30, **DRIVER)
    options = _checked(url)
    return redis.Redis.from_url(without_query(url) if options else url, decode_responses=decode,
                                socket_connect_timeout=5, health_check_interval=30,
                                **DRIVER, **options)


def guarded(action: Callable[[], T], url: str) -> T:
    """Run *action*, turning connection and auth failures into RedisUnavailable."""
    try:
        return action()
    except redis.AuthenticationError as exc:
        raise RedisUnavailable(_refused(url, exc)) from None
    except redis.exceptions.NoPermissionError as exc:
        user = urlparse(url).username or "default"
        raise Forbidden(f"Redis user {user!r} may not do this ({_one_line(exc)}); it is a "
                        "worker's or a runner's login: use the admin's URL") from None
    except redis.exceptions.MasterDownError as exc:
        raise RedisUnavailable(_no_writes(url, exc)) from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise RedisUnavailable(_refused(url, exc)) from None
        if str(exc).startswith("NOREPLICAS"):
            raise RedisUnavailable(_no_writes(url, exc)) from None
        raise
    except redis.sentinel.MasterNotFoundError:
        raise RedisUnavailable(sentinel.why_no_master(url)) from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnavailable(_unreachable(url, exc)) from None


def ensure_reachable(url: str) -> None:
    """One PING of *url*: RedisUnavailable (exit 3) now, rather than an error at every request
    a long-running command would later serve."""
    client = connect(url)
    try:
        guarded(client.ping, url)
    finally:
        client.close()


def _refused(url: str, exc: Exception) -> str:
    parsed, why = urlparse(url), _one_line(exc)
    if parsed.password is None and parsed.username is None:
        return (f"Redis at {redact(url)} requires a password ({why}); put it in "
                "WORKERPOOL_REDIS_URL: redis://:PASSWORD@host:port/db, or "
                "redis://USER:PASSWORD@host:port/db for an ACL user")
    who = f"user {parsed.username!r} with that password" if parsed.username else "the password"
    return (f"Redis at {redact(url)} refused {who} ({why}); check the credentials in "
            "WORKERPOOL_REDIS_URL")


def _no_writes(url: str, exc: Exception) -> str:
    return (f"Redis at {redact(url)} takes no writes for now ({_one_line(exc)}): too few of its "
            "replicas are in sync (min-replicas-to-write) or it lost its master; start or "
            "reconnect them, then try again")


def _unreachable(url: str, exc: Exception) -> str:
    why = _one_line(exc)
    if sentinel.is_sentinel(url):
        return (f"the Redis master the sentinels of {redact(url)} name is unreachable ({why}); "
                "a failover may be under way (it takes the sentinels' down-after time and a "
                "few seconds): try again")
    tls = _tls_error(exc)
    if tls is not None:
        return (f"the TLS handshake with Redis at {redact(url)} failed ({_one_line(tls)}); "
                "check that the server speaks TLS and that ssl_ca_certs in WORKERPOOL_REDIS_URL "
                "names the CA that signed its certificate")
    hint = ("; a server that expects TLS closes plain connections: use rediss://"
            if urlparse(url).scheme == "redis" and "closed by server" in why else "")
    return (f"Redis at {redact(url)} is unreachable ({why}){hint}; start it (`workerpool up`) "
            "or fix WORKERPOOL_REDIS_URL")


def _tls_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS failure behind *exc*, if there is one (redis-py wraps it in ConnectionError)."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is short; the bound only guards against a cycle
        if seen is None or isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _one_line(exc: BaseException) -> str:
    return one_line(exc) or type(exc).__name__
