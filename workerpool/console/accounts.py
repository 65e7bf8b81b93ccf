"""The console's accounts: roles, scrypt password hashes, the users file and the login limiter.

The users file (``WORKERPOOL_WEB_USERS``) holds one account per line, ``name:role:hash``;
``#`` comments and blank lines are ignored. ``workerpool console-user`` writes it (mode 0600).
The hash is ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``: self-describing, so the cost can be
raised later without breaking the lines already written.

Redis keys (beside ``core/keys.py``'s layout, ``P`` is ``workerpool:``)::

    P console:login-failures:<sha256 of client IP>
                              string failed logins from that address in the current window,
                              expiring at the window's end (``LoginLimiter``)
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import redis

from workerpool.core.errors import BadInput

log = logging.getLogger(__name__)

VIEWER = "viewer"
OPERATOR = "operator"
ADMIN = "admin"
ROLES = (VIEWER, OPERATOR, ADMIN)  # each allows what the ones before it allow

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# A hash read from a file may name any cost: bound it, so one line cannot make every login
# take gigabytes of memory or minutes of CPU.
_MAX_MEMORY = 64 * 1024 * 1024
_MAX_P = 16
MIN_PASSWORD = 8
ONE_TIME_ADMIN = "admin"

NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
LOGIN_FAILURES = "workerpool:console:login-failures:"


def allows(role: str, needed: str) -> bool:
    """Whether *role* may do what *needed* may (admin ⊇ operator ⊇ viewer); unknown roles
    allow nothing."""
    if role not in ROLES or needed not in ROLES:
        return False
    return ROLES.index(role) >= ROLES.index(needed)


def hash_password(password: str) -> str:
    """*password* hashed with scrypt and a fresh salt, as ``scrypt$n$r$p$salt$hash``."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt),
                     _b64(digest)])


def verify_password(password: str, encoded: str) -> bool:
    """Whether *password* matches *encoded*; False, never an exception, when *encoded* is
    malformed."""
    parsed = _parse_hash(encoded)
    if parsed is None:
        return False
    n, r, p, salt, expected = parsed
    try:
        digest = _scrypt(password, salt, n, r, p, len(expected))
    except ValueError:  # a password that is not UTF-8 (lone surrogates), or OpenSSL refusing
        return False
    return hmac.compare_digest(digest, expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length,
                          maxmem=_MAX_MEMORY + 1024 * 1024)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    """The parts of a ``scrypt$...`` hash, or None if it is not one within the cost bounds."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or not all(x.isdigit() for x in parts[1:4]):
        return None
    n, r, p = (int(x) for x in parts[1:4])
    if n < 2 or n & (n - 1) or r < 1 or not 1 <= p <= _MAX_P or 128 * n * r > _MAX_MEMORY:
        return None
    try:
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except (binascii.Error, ValueError):
        return None
    if not salt or len(digest) < 16:
        return None
    return n, r, p, salt, digest


@functools.cache
def _dummy_hash() -> str:
    """A hash to verify against when the name is unknown, so that answer takes as long."""
    return hash_password(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    password_hash: str


def check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise BadInput(f"bad user name {name!r}: use 1-64 letters, digits and _ . @ -")


def check_role(role: str) -> None:
    if role not in ROLES:
        raise BadInput(f"unknown role {role!r}: use one of {', '.join(ROLES)}")


def load_users(path: Path) -> dict[str, Account]:
    """The accounts of the users file at *path*; BadInput naming the file and line of the first
    thing wrong, and how to fix it."""
    accounts: dict[str, Account] = {}
    lines_of: dict[str, int] = {}
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        account = _parse_line(path, number, line.strip())
        if account.name in accounts:
            raise BadInput(f"{path} line {number}: user {account.name!r} is already on line "
                           f"{lines_of[account.name]}; keep one line per user")
        accounts[account.name] = account
        lines_of[account.name] = number
    return accounts


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise BadInput(f"console users file {path} does not exist; create it with "
                       f"`workerpool console-user NAME --role ROLE --file {path}`") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise BadInput(f"cannot read console users file {path}: {reason}; make it a text "
                       "file this user can read (workerpool console-user writes one)") from None


def _parse_line(path: Path, number: int, line: str) -> Account:
    fields = line.split(":")
    where = f"{path} line {number}"
    if len(fields) != 3:
        raise BadInput(f"{where}: expected name:role:hash, found {len(fields)} field(s); "
                       "write one account per line (workerpool console-user writes them)")
    name, role, encoded = fields
    if not NAME.fullmatch(name):
        raise BadInput(f"{where}: bad user name {name!r}; use 1-64 letters, digits and "
                       "_ . @ -")
    if role not in ROLES:
        raise BadInput(f"{where}: unknown role {role!r} for {name!r}; use one of "
                       f"{', '.join(ROLES)}")
    if _parse_hash(encoded) is None:
        raise BadInput(f"{where}: the password hash of {name!r} is malformed; set the "
                       f"password again with `workerpool console-user {name} --role {role}`")
    return Account(name, role, encoded)


def save_user(path: Path, name: str, role: str, password: str) -> None:
    """Add or replace *name*'s line in the users file at *path* (other lines and comments
    kept), written atomically with mode 0600; the file is created when missing."""
    check_name(name)
    check_role(role)
    if len(password) < MIN_PASSWORD:
        raise BadInput(f"the password is too short: use at least {MIN_PASSWORD} characters")
    new_line = f"{name}:{role}:{hash_password(password)}"
    lines = _read_lines(path) if path.exists() else []
    kept: list[str] = []
    replaced = False
    for line in lines:
        if _name_of(line) != name:
            kept.append(line)
        elif not replaced:  # the first line of name becomes the new one; any others go
            kept.append(new_line)
            replaced = True
    if not replaced:
        kept.append(new_line)
    _write_atomically(path, "".join(f"{line}\n" for line in kept))


def _name_of(line: str) -> str | None:
    if not line.strip() or line.lstrip().startswith("#"):
        return None
    return line.strip().split(":", 1)[0]


def _write_atomically(path: Path, text: str) -> None:
    """Write *text* to a 0600 temporary file beside *path*, then rename it over *path*: a
    reader sees the old file or the new one, never half of one."""
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise BadInput(f"cannot write console users file {path}: {exc.strerror}; check that "
                       "its folder exists and is writable") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class Accounts:
    """The console's accounts: a users file, reread when it changes, or a fixed set (the
    one-time admin of ``workerpool up``, never written to disk)."""

    def __init__(self, source: Path | Mapping[str, Account]) -> None:
        """From a users file (BadInput now if it is missing or malformed) or fixed accounts."""
        self.path: Path | None = None
        self.problem: str | None = None  # why the file's last change could not be loaded
        self._lock = threading.Lock()
        self._signature: tuple[int, ...] | None = None
        if isinstance(source, Path):
            self.path = source
            self._signature = _signature(source)
            self._accounts = load_users(source)
        else:
            self._accounts = dict(source)

    @classmethod
    def from_file(cls, path: Path) -> Accounts:
        """The accounts of the users file at *path*, reread when it changes."""
        return cls(path)

    @classmethod
    def one_time_admin(cls) -> tuple[Accounts, str]:
        """Accounts holding only ``admin`` with a fresh random password; and that password."""
        password = secrets.token_urlsafe(12)
        account = Account(ONE_TIME_ADMIN, ADMIN, hash_password(password))
        return cls({account.name: account}), password

    def reload_if_changed(self) -> None:
        """Reread the users file if it changed (so a removed user loses access at the next
        request). A file now missing or malformed leaves no accounts (every login refused,
        every session ended) and its error in ``problem``, logged once: fail closed."""
        if self.path is None:
            return
        with self._lock:
            signature = _signature(self.path)
            if signature == self._signature:
                return
            self._signature = signature
            try:
                self._accounts = load_users(self.path)
                self.problem = None
            except BadInput as exc:
                self._accounts = {}
                self.problem = str(exc)
                log.error("console: no accounts until the users file is fixed: %s", exc)

    def get(self, name: str) -> Account | None:
        """The account *name* now (after a reload if the file changed), or None."""
        self.reload_if_changed()
        return self._accounts.get(name)

    def authenticate(self, name: str, password: str) -> Account | None:
        """The account if *password* is *name*'s; None otherwise, after the same scrypt work
        whether or not the name exists (its timing does not tell which names do)."""
        account = self.get(name)
        if account is None:
            verify_password(password, _dummy_hash())
            return None
        return account if verify_password(password, account.password_hash) else None

    def names(self) -> list[str]:
        self.reload_if_changed()
        return sorted(self._accounts)


def _signature(path: Path) -> tuple[int, ...]:
    """What changes when the file is edited or replaced; () while it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return ()
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def login_failures_key(who: str) -> str:
    """The failure counter's key for client address *who*, hashed: a fixed length whatever a
    proxy sends."""
    return LOGIN_FAILURES + hashlib.sha256(who.encode("utf-8", "surrogatepass")).hexdigest()


class LoginLimiter:
    """At most *attempts* failed logins per client address per *window* seconds, counted in
    Redis so every server node shares the count."""

    def __init__(self, client: redis.Redis, attempts: int = 5, window: int = 60) -> None:
        self.client = client
        self.attempts = attempts
        self.window = window

    def blocked_for(self, who: str) -> int:
        """Seconds until *who* may try again; 0 if it may now."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(login_failures_key(who))
        pipe.ttl(login_failures_key(who))
        count, ttl = pipe.execute()
        if count is None or int(count) < self.attempts:
            return 0
        if int(ttl) > 0:
            return int(ttl)
        # A counter left without its expiry (the key was touched by hand) must not block for
        # ever: give it the window.
        self.client.expire(login_failures_key(who), self.window, nx=True)
        return self.window

    def failed(self, who: str) -> None:
        """Count a failed login; the window starts at the first failure (EXPIRE NX)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.incr(login_failures_key(who))
        pipe.expire(login_failures_key(who), self.window, nx=True)
        pipe.execute()

    def succeeded(self, who: str) -> None:
        self.client.delete(login_failures_key(who))
