"""Sensitive values sealed with ``WORKERPOOL_SECRET_KEY`` before they are written to Redis.

A client seals a step's sensitive variables (and a deployment's sensitive project variables)
with Fernet (AES-128-CBC with HMAC-SHA256, from the ``cryptography`` package); only a worker or
server holding the same key opens them, just before the script starts. Redis, the Celery
message and the logs never hold them in clear.

The key is ``WORKERPOOL_SECRET_KEY``, else the file ``$WORKERPOOL_HOME/secret.key`` that the
local stack (``workerpool up``, ``workerpool demo``) creates when neither exists. Several keys
separated by commas rotate: the first seals, any of them opens.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from workerpool.core.errors import BadInput

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

    from workerpool.core.settings import Settings

KEY_FILE = "secret.key"
PREFIX = "sealed:v1:"
MAKE_ONE = "make one with `workerpool secret-key`"


class SealError(Exception):
    """A sealed value cannot be opened here: the message says why and what to do."""


def new_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def key_file(settings: Settings) -> Path:
    return settings.home / KEY_FILE


def ensure_local_key(settings: Settings) -> None:
    """Give the local stack a key in ``$WORKERPOOL_HOME`` when none is configured, so every
    component started from this home shares it."""
    if settings.secret_key:
        return
    path = key_file(settings)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another stack on this home made it first
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(new_key() + "\n")


class Keyring:
    """The configured key(s), or none; opened lazily so callers without secrets never pay for
    the cryptography import."""

    def __init__(self, text: str | None, source: str) -> None:
        self.text = text
        self.source = source
        self._fernet: MultiFernet | None = None

    @classmethod
    def load(cls, settings: Settings) -> Keyring:
        if settings.secret_key:
            return cls(settings.secret_key, "WORKERPOOL_SECRET_KEY")
        path = key_file(settings)
        try:
            return cls(path.read_text().strip() or None, str(path))
        except FileNotFoundError:
            return cls(None, "WORKERPOOL_SECRET_KEY")
        except OSError as exc:
            raise BadInput(f"cannot read the secret key file {path}: {exc.strerror}") from None

    @property
    def present(self) -> bool:
        return self.text is not None

    def check(self) -> None:
        """BadInput when a key is configured but malformed (components call this at start)."""
        if self.present:
            self._multi()

    def _multi(self) -> MultiFernet:
        if self._fernet is None:
            from cryptography.fernet import Fernet, MultiFernet

            assert self.text is not None
            fernets = []
            for index, part in enumerate(p.strip() for p in self.text.split(",")):
                try:
                    fernets.append(Fernet(part.encode()))
                except ValueError:
                    raise BadInput(f"{self.source}: key {index + 1} is not a valid secret key "
                                   f"(44 characters of URL-safe base64); {MAKE_ONE}") from None
            self._fernet = MultiFernet(fernets)
        return self._fernet

    def seal(self, text: str) -> str:
        if not self.present:
            raise BadInput("sensitive values are sealed before they are stored, and no secret "
                           f"key is configured: set WORKERPOOL_SECRET_KEY ({MAKE_ONE}) to the "
                           "key your workers have")
        return PREFIX + self._multi().encrypt(text.encode()).decode()

    def open(self, sealed: str, who: str) -> str:
        """The clear text of *sealed*; SealError naming *who* (this worker, the server) when
        it cannot be opened here."""
        if not sealed.startswith(PREFIX):
            raise SealError("refused: sensitive values arrived unsealed (only sealed values "
                            "are accepted); submit the step with a workerpool client")
        if not self.present:
            raise SealError(f"refused: {who} has no WORKERPOOL_SECRET_KEY to open the sensitive "
                            "variables; give it the same key as the client that submitted")
        from cryptography.fernet import InvalidToken

        try:
            return self._multi().decrypt(sealed[len(PREFIX):].encode()).decode()
        except (InvalidToken, UnicodeDecodeError):
            raise SealError(f"refused: {who}'s WORKERPOOL_SECRET_KEY cannot open the sensitive "
                            "variables (the keys differ); give it the key the client used"
                            ) from None

    def seal_map(self, values: dict[str, str]) -> str:
        """A record field for *values*: '' when empty, else one sealed JSON object."""
        return self.seal(json.dumps(values)) if values else ""

    def open_map(self, field: str, who: str) -> dict[str, str]:
        if not field or field == "{}":
            return {}
        opened = json.loads(self.open(field, who))
        if not isinstance(opened, dict):
            raise SealError("refused: the sealed variables are not a mapping")
        return {str(k): str(v) for k, v in opened.items()}
