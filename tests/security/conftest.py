"""Attacker tests run against a Redis that wants a password, so there is a password to steal;
each test gets its own database, as in the other tests."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator

import pytest
import redis

from workerpool.server.embedded import EmbeddedRedis

PASSWORD = "pw-" + secrets.token_hex(12)  # what an attacker looks for, by value
DATABASES = 64
_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("guarded-redis"),
                           extra_args=("--requirepass", PASSWORD, "--databases", str(DATABASES),
                                       "--appendonly", "no"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    number = next(_numbers)
    assert number < DATABASES
    url = f"redis://:{PASSWORD}@127.0.0.1:{redis_server.port}/{number}"
    redis.Redis.from_url(url).flushdb()
    return url
