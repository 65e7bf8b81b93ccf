"""The feeds packages come from, by name, stored in Redis; ``builtin`` always exists."""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import cast
from urllib.parse import urlparse

import redis

from workerpool.core import keys
from workerpool.core.errors import BadInput, UnknownFeed
from workerpool.core.packageref import BUILTIN_FEED, check_feed_name
from workerpool.worker.packages.builtin import BuiltinFeed
from workerpool.worker.packages.directory import DirectoryFeed
from workerpool.worker.packages.feed import DEFAULT_TIMEOUT, Feed
from workerpool.worker.packages.http import HttpFeed
from workerpool.worker.packages.nuget import NuGetFeed

FEED_TYPES: dict[str, type[Feed]] = {"directory": DirectoryFeed, "http": HttpFeed,
                                     "nuget": NuGetFeed}


def check_uri(feed_type: str, uri: str) -> str:
    """The URI if a feed of *feed_type* can use it, else BadInput saying what it needs."""
    uri = uri.strip()
    if feed_type == "directory":
        if not PurePosixPath(uri).is_absolute():
            raise BadInput(f"directory feed URI {uri!r} must be an absolute path (workers "
                           "resolve it on their own machine), e.g. /srv/packages")
        return uri
    try:
        parsed = urlparse(uri)
    except ValueError:
        parsed = urlparse("")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        example = "https://api.nuget.org/v3/index.json" if feed_type == "nuget" \
            else "https://packages.example.com/feed"
        raise BadInput(f"{feed_type} feed URI {uri!r} must be an http(s) URL, e.g. {example}")
    return uri


class FeedRegistry:
    """Add, list, look up and remove feeds; look-ups build the Feed that downloads."""

    def __init__(self, client: redis.Redis, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.redis = client
        self.timeout = timeout

    def add(self, name: str, feed_type: str, uri: str) -> Feed:
        check_feed_name(name)
        if name.lower() == BUILTIN_FEED:
            raise BadInput(f"feed name {name!r} is reserved for the built-in feed; choose another")
        if feed_type not in FEED_TYPES:
            raise BadInput(f"feed type {feed_type!r} is unknown; use {', '.join(FEED_TYPES)}")
        feed = self._build(name, feed_type, check_uri(feed_type, uri))
        record = json.dumps({"type": feed_type, "uri": feed.uri})
        if not self.redis.hsetnx(keys.FEEDS, name, record):
            raise BadInput(f"feed {name!r} already exists; remove it first with "
                           f"`workerpool feed remove {name}`")
        return feed

    def list(self) -> list[Feed]:
        raw = cast(dict[str, str], self.redis.hgetall(keys.FEEDS))
        feeds = [self._decode(name, value) for name, value in sorted(raw.items())]
        return [BuiltinFeed(self.redis), *feeds]

    def get(self, name: str) -> Feed:
        if name == BUILTIN_FEED:
            return BuiltinFeed(self.redis)
        raw = cast(str | None, self.redis.hget(keys.FEEDS, name))
        if raw is None:
            raise UnknownFeed(f"no feed named {name!r}; add it with `workerpool feed add {name} "
                              "--type directory|http|nuget --uri URI`")
        return self._decode(name, raw)

    def remove(self, name: str) -> None:
        if name == BUILTIN_FEED:
            raise BadInput("the built-in feed cannot be removed; it is where "
                           "`workerpool package push` stores packages")
        if not self.redis.hdel(keys.FEEDS, name):
            raise UnknownFeed(f"no feed named {name!r} to remove (see `workerpool feed list`)")

    def _decode(self, name: str, raw: str) -> Feed:
        data = json.loads(raw)
        return self._build(name, str(data["type"]), str(data["uri"]))

    def _build(self, name: str, feed_type: str, uri: str) -> Feed:
        return FEED_TYPES[feed_type](name, uri, self.timeout)
