"""Opening Redis: URL validation, the embedded server's address, and mapping failures to errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlparse

import redis

from workerpool.errors import BadInput, RedisUnavailable
from workerpool.settings import Settings

T = TypeVar("T")
SCHEMES = ("redis", "rediss", "unix")


def validate_url(url: str) -> str:
    """Return *url* if it is a usable Redis URL, else raise BadInput saying what is wrong."""
    try:
        parsed = urlparse(url)
        port = parsed.port
    except ValueError as exc:
        raise BadInput(f"Redis URL {redact(url)!r} is malformed ({exc}); "
                       "use redis://[:password@]host:port/db") from None
    if parsed.scheme not in SCHEMES:
        raise BadInput(f"Redis URL {redact(url)!r} must start with redis://, rediss:// or unix://")
    if parsed.scheme != "unix" and not parsed.hostname:
        raise BadInput(f"Redis URL {redact(url)!r} has no host; use redis://host:port/db")
    if port == 0:
        raise BadInput(f"Redis URL {redact(url)!r} has port 0")
    return url


def redact(url: str) -> str:
    """The URL with any password replaced, for messages."""
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


def connect(url: str) -> redis.Redis:
    """A client for *url* that decodes replies to str; no I/O happens until first use."""
    validate_url(url)
    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5,
                                health_check_interval=30)


def guarded(action: Callable[[], T], url: str) -> T:
    """Run *action*, turning connection and auth failures into RedisUnavailable."""
    try:
        return action()
    except redis.AuthenticationError as exc:
        raise RedisUnavailable(f"Redis at {redact(url)} refused the credentials ({exc}); "
                               "check the password in WORKERPOOL_REDIS_URL") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise RedisUnavailable(f"Redis at {redact(url)} needs a valid password ({exc}); "
                                   "put it in WORKERPOOL_REDIS_URL") from None
        raise
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnavailable(f"Redis at {redact(url)} is unreachable ({exc}); "
                               "start it (`workerpool up`) or fix WORKERPOOL_REDIS_URL") from None
