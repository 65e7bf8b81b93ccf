"""The core's Lua scripts: one ``.lua`` file each in ``lua/``, loaded by name.

Each file opens with a header naming its KEYS and ARGV. Key names reach a script only through
KEYS and ARGV, built by ``keys``, so ``keys.py`` stays the one place that spells them.
"""

from __future__ import annotations

import functools
from importlib import resources

import redis
from redis.commands.core import Script


@functools.cache
def source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return (resources.files(__package__) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def load(client: redis.Redis, name: str) -> Script:
    """Script *name* bound to *client*: called, it runs by EVALSHA, and is sent again if Redis
    lost its script cache."""
    return client.register_script(source(name))
