"""Sensitive values sealed to the pool that runs them, so only that pool's workers open them.

Every pool (and the built-in worker, and each target's agent) has an X25519 key pair. Its public
key is in Redis (``keys.POOL_KEYS``); a client seals a step's sensitive variables to the newest
public key of the step's pool (an ephemeral X25519 key, HKDF-SHA256, then ChaCha20-Poly1305
with the pool as associated data), so it needs no secret of its own, and Redis, the Celery
message and the logs never hold a value in clear. Only a worker given the pool's private key
(``WORKERPOOL_POOL_KEY``, printed by ``workerpool pool credentials``) opens them, just before the
script starts; a worker of another pool holds another key.

The private keys are derived from the admin's master key, ``WORKERPOOL_SECRET_KEY`` (HKDF of the
pool and the key's generation), so the admin can hand a pool's key out again at any time, and
the server, which holds the master key, opens what is sealed to the built-in worker: server
steps and deployment records (it seals each run again to the run's pool). Workers must not be
given the master key: one that holds it can open every pool's values (it says so at start-up).

Rotation: ``workerpool pool credentials NAME --rotate-key`` publishes the next generation; new
values are sealed to it, and workers given ``NEW,OLD`` keys open both. Several master keys
(``NEW,OLD``) rotate the master: the first derives new generations, any derives old ones.
Without a master key the local stack (``up``, ``demo``) makes one in ``$WORKERPOOL_HOME``.
"""

from __future__ import annotations

import base64
import functools
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from workerpool.core import keys
from workerpool.core.errors import BadInput

if TYPE_CHECKING:
    import redis
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from workerpool.core.settings import Settings

KEY_FILE = "secret.key"
PREFIX = "sealed:v2:"
MAKE_ONE = "make one with `workerpool secret-key`"
def credentials_help(pool: str) -> str:
    """How a worker of *pool* gets its key."""
    if pool == keys.BUILTIN_POOL:
        command = "workerpool builtin-worker credentials"
    elif pool.startswith(keys.TARGET_POOL_PREFIX):
        command = f"workerpool target credentials {pool.removeprefix(keys.TARGET_POOL_PREFIX)}"
    else:
        command = f"workerpool pool credentials {pool}"
    return f"give it the key `{command}` prints (WORKERPOOL_POOL_KEY)"


class SealError(Exception):
    """A sealed value cannot be opened here: the message says why and what to do."""


def new_key() -> str:
    """A new master key (32 random bytes, URL-safe base64)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def key_file(settings: Settings) -> Path:
    return settings.home / KEY_FILE


def ensure_local_key(settings: Settings) -> None:
    """Give the local stack a master key in ``$WORKERPOOL_HOME`` when none is configured."""
    if settings.secret_key:
        return
    path = key_file(settings)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another stack on this home made it first
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(new_key() + "\n")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text.encode())


@dataclass(frozen=True)
class PublicKey:
    """A pool's public key of one generation: what clients seal to."""

    pool: str
    generation: int
    public: str  # 32 bytes, URL-safe base64

    def to_json(self) -> dict[str, object]:
        return {"generation": self.generation, "public": self.public}


def published(pool: str, raw: str | None) -> PublicKey | None:
    """The newest of the public keys stored for *pool* (``keys.POOL_KEYS``), or None."""
    if not raw:
        return None
    entries = json.loads(raw)
    newest = max(entries, key=lambda e: int(e["generation"]))
    return PublicKey(pool, int(newest["generation"]), str(newest["public"]))


@dataclass(frozen=True)
class PoolKey:
    """A pool's private key of one generation, as ``WORKERPOOL_POOL_KEY`` carries it:
    ``<pool>:<generation>:<32 bytes, base64>``."""

    pool: str
    generation: int
    secret: bytes

    def private(self) -> X25519PrivateKey:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        return X25519PrivateKey.from_private_bytes(self.secret)

    def public(self) -> PublicKey:
        from cryptography.hazmat.primitives import serialization

        raw = self.private().public_key().public_bytes(serialization.Encoding.Raw,
                                                       serialization.PublicFormat.Raw)
        return PublicKey(self.pool, self.generation, _b64(raw))

    def to_text(self) -> str:
        return f"{self.pool}:{self.generation}:{_b64(self.secret)}"

    @classmethod
    def parse(cls, text: str, source: str) -> PoolKey:
        head, _, secret = text.strip().rpartition(":")  # the pool may hold a ':' (a target)
        pool, _, generation = head.rpartition(":")
        try:
            raw = _unb64(secret)
            if not pool or len(raw) != 32:
                raise ValueError
            return cls(pool, int(generation), raw)
        except ValueError:
            raise BadInput(f"{source}: {text[:20]!r}... is not a pool key (POOL:GENERATION:KEY, "
                           "as `workerpool pool credentials POOL` prints it)") from None


@functools.lru_cache(maxsize=1024)
def derive(master: str, pool: str, generation: int) -> PoolKey:
    """*pool*'s private key of *generation*, from a master key (remembered: the server opens
    every server step and deployment record with keys it derives)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    secret = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"workerpool pool key",
                  info=f"{pool}\0{generation}".encode()).derive(master.encode())
    return PoolKey(pool, generation, secret)


def _aead_key(shared: bytes, pool: str) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"workerpool sealed value",
                info=pool.encode()).derive(shared)


def seal(key: PublicKey, text: str) -> str:
    """*text* sealed to *key*: only the matching private key opens it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    ephemeral = X25519PrivateKey.generate()
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(_unb64(key.public)))
    nonce = os.urandom(12)
    sealed = ChaCha20Poly1305(_aead_key(shared, key.pool)).encrypt(
        nonce, text.encode(), f"workerpool {key.pool}".encode())
    public = ephemeral.public_key().public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw)
    return f"{PREFIX}{key.generation}:{_b64(public + nonce + sealed)}"


def open_sealed(key: PoolKey, sealed: str) -> str:
    """The clear text of *sealed* (of *key*'s generation); ValueError if it does not open."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    raw = _unb64(sealed[len(PREFIX):].partition(":")[2])
    shared = key.private().exchange(X25519PublicKey.from_public_bytes(raw[:32]))
    try:
        return ChaCha20Poly1305(_aead_key(shared, key.pool)).decrypt(
            raw[32:44], raw[44:], f"workerpool {key.pool}".encode()).decode()
    except (InvalidTag, UnicodeDecodeError):
        raise ValueError("does not open") from None


def generation_of(sealed: str) -> int:
    if not sealed.startswith(PREFIX):
        raise ValueError("not sealed")
    return int(sealed[len(PREFIX):].partition(":")[0])


class Keyring:
    """What a component holds to open sealed values: the admin's master keys
    (``WORKERPOOL_SECRET_KEY``: the server, admin commands, the local stack) and pool keys
    (``WORKERPOOL_POOL_KEY``: a pool's workers). Sealing needs neither, only a public key."""

    def __init__(self, masters: Iterable[str] = (), pool_keys: Iterable[PoolKey] = (),
                 source: str = "WORKERPOOL_SECRET_KEY") -> None:
        self.masters = [m for m in masters if m]
        self.pool_keys = {(k.pool, k.generation): k for k in pool_keys}
        self.source = source

    @classmethod
    def load(cls, settings: Settings) -> Keyring:
        masters, source = _masters(settings)
        return cls(masters, _pool_keys(settings), source)

    @classmethod
    def for_worker(cls, settings: Settings) -> Keyring:
        """A worker's keys: its pool's (WORKERPOOL_POOL_KEY), and a master key only when one is
        set for it explicitly (never the home's key file: a worker need not hold one)."""
        return cls(_split(settings.secret_key or ""), _pool_keys(settings))

    def warnings(self, pool: str) -> list[str]:
        """What a worker of *pool* holding these keys should say at start-up."""
        said = []
        if self.masters:
            said.append("WARNING: this worker holds the admin's master key "
                        "(WORKERPOOL_SECRET_KEY): it can open every pool's sensitive values; "
                        "give it only its pool's key (WORKERPOOL_POOL_KEY)")
        others = sorted({p for p, _ in self.pool_keys if p != pool})
        if others:
            said.append(f"WARNING: WORKERPOOL_POOL_KEY holds keys of {', '.join(others)}, not "
                        f"of this worker's pool {pool}; they open nothing here")
        return said

    @property
    def has_master(self) -> bool:
        return bool(self.masters)

    def check(self) -> None:
        """BadInput when a configured key is malformed (components call this at start)."""
        for index, master in enumerate(self.masters):
            if len(master) < 32:
                raise BadInput(f"{self.source}: key {index + 1} is too short to be a master key "
                               f"(at least 32 characters); {MAKE_ONE}")

    def key_for(self, pool: str, generation: int, public: PublicKey | None = None
                ) -> PoolKey | None:
        """*pool*'s private key of *generation*: given (WORKERPOOL_POOL_KEY), or derived from
        a master key (the one whose public key is *public*, when several are held)."""
        found = self.pool_keys.get((pool, generation))
        if found is not None or not self.masters:
            return found
        for master in self.masters:
            derived = derive(master, pool, generation)
            if public is None or derived.public().public == public.public:
                return derived
        return None

    def seal_map(self, values: Mapping[str, str], key: PublicKey | None) -> str:
        """A record field for *values*: '' when empty, else one JSON object sealed to *key*."""
        if not values:
            return ""
        if key is None:
            raise BadInput("sensitive values are sealed to the pool that runs them, and this pool "
                           "has no key yet: it is made by `workerpool server` (or `up`), or by "
                           "`workerpool pool credentials POOL`, where WORKERPOOL_SECRET_KEY is")
        return seal(key, json.dumps(dict(values)))

    def open_map(self, field: str, pool: str, who: str) -> dict[str, str]:
        """The values of a record field sealed to *pool*; SealError naming *who* (this worker,
        the server) when they cannot be opened here."""
        if not field or field == "{}":
            return {}
        opened = json.loads(self.open(field, pool, who))
        if not isinstance(opened, dict):
            raise SealError("refused: the sealed variables are not a mapping")
        return {str(k): str(v) for k, v in opened.items()}

    def open(self, sealed: str, pool: str, who: str) -> str:
        try:
            generation = generation_of(sealed)
        except ValueError:
            raise SealError("refused: sensitive values arrived unsealed or sealed otherwise "
                            "(only values sealed to a pool's key are accepted); submit the step "
                            "with a workerpool client") from None
        key = self.key_for(pool, generation)
        if key is None:
            raise SealError(f"refused: {who} has no key of {pool} (generation {generation}) to "
                            f"open the sensitive variables; {credentials_help(pool)}")
        try:
            return open_sealed(key, sealed)
        except ValueError:
            raise SealError(f"refused: {who}'s key of {pool} (generation {generation}) does not "
                            "open the sensitive variables (another key of that generation); "
                            f"{credentials_help(pool)}") from None

    def publish(self, client: redis.Redis, pool: str, rotate: bool = False) -> PoolKey:
        """Make sure *pool* has a published public key (the next generation, with *rotate*)
        and return its private key; needs a master key."""
        if not self.masters:
            raise BadInput(f"making {pool}'s key needs the admin's master key: set "
                           f"WORKERPOOL_SECRET_KEY ({MAKE_ONE})")
        raw = cast(str | None, client.hget(keys.POOL_KEYS, pool))
        entries: list[dict[str, object]] = json.loads(raw) if raw else []
        newest = max((int(str(e["generation"])) for e in entries), default=0)
        if newest and not rotate:
            found = self.key_for(pool, newest, published(pool, raw))
            if found is not None:
                return found
        key = derive(self.masters[0], pool, newest + 1)
        entries.append(key.public().to_json())
        if newest:
            client.hset(keys.POOL_KEYS, pool, json.dumps(entries))
        elif not client.hsetnx(keys.POOL_KEYS, pool, json.dumps(entries)):
            return self.publish(client, pool)  # another admin made it first
        return key


def key_to_seal(keyring: Keyring, client: redis.Redis, public_keys: Mapping[str, str],
                pool: str, needed: bool) -> PublicKey | None:
    """The public key to seal a step of *pool* to, from a snapshot's *public_keys*; a pool with
    none yet gets one when *needed* and *keyring* holds a master key (an admin, the server)."""
    found = published(pool, public_keys.get(pool))
    if found is not None or not needed or not keyring.has_master:
        return found
    return keyring.publish(client, pool).public()


def ensure_keys(keyring: Keyring, client: redis.Redis, pools: Iterable[str]) -> int:
    """Publish a key for each of *pools* that has none (the server does this for every pool,
    so clients can seal to a pool added since); how many were made."""
    have = set(cast(list[str], client.hkeys(keys.POOL_KEYS)))
    missing = [pool for pool in pools if pool not in have]
    for pool in missing:
        keyring.publish(client, pool)
    return len(missing)


def _split(keys_text: str) -> list[str]:
    """The keys of a comma-separated setting (``NEW,OLD``)."""
    return [part.strip() for part in keys_text.split(",") if part.strip()]


def _pool_keys(settings: Settings) -> list[PoolKey]:
    return [PoolKey.parse(part, "WORKERPOOL_POOL_KEY") for part in _split(settings.pool_key or "")]


def _masters(settings: Settings) -> tuple[list[str], str]:
    if settings.secret_key:
        return _split(settings.secret_key), "WORKERPOOL_SECRET_KEY"
    path = key_file(settings)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return [], "WORKERPOOL_SECRET_KEY"
    except OSError as exc:
        raise BadInput(f"cannot read the secret key file {path}: {exc.strerror}") from None
    return _split(text), str(path)
