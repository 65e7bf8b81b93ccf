"""The worker's package cache: one download per package, checksum-verified, size-bounded.

Layout under the root (shared by every worker process on the machine)::

    packages/<feed>/<id>/<version>/<id>.<version><ext>   the package, read-only
    packages/<feed>/<id>/<version>/entry.json            {file_name, sha256, size}; mtime = last use
    locks/<feed>~<id>~<version>.download                 flock: held while checking or downloading
    locks/<feed>~<id>~<version>.use                      flock: shared while callers use the file
    tmp/                                                 downloads in progress, renamed when whole

A package is cached only once entry.json exists, and entry.json is written (by rename) after
the package file is complete, so a crash leaves at worst a stray file in tmp/.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import IO, cast

import redis

from workerpool.core import keys
from workerpool.core.errors import PackageError
from workerpool.core.packageref import PackageRef
from workerpool.worker.packages.feed import Downloaded, Feed, Progress

log = logging.getLogger("workerpool.packages")
ENTRY = "entry.json"
STALE_TMP_SECONDS = 24 * 3600


@dataclass
class CachedPackage:
    """A package file in the cache, protected from eviction until ``release()``."""

    path: Path
    file_name: str
    sha256: str
    downloaded: bool
    _use: IO[bytes] | None = field(default=None, repr=False, compare=False)
    use_lock: Path | None = field(default=None, repr=False, compare=False)
    # (inode, size, ctime) of the file when it was held: the same file, if it matches later
    identity: tuple[int, int, int] | None = field(default=None, repr=False, compare=False)

    def release(self) -> None:
        if self._use is not None:
            self._use.close()  # closing drops the shared flock
            self._use = None

    def __del__(self) -> None:
        self.release()  # a caller that forgot release() still lets eviction proceed, quietly

    def __enter__(self) -> CachedPackage:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _shared(lock: Path) -> IO[bytes]:
    """A use of a cached package: *lock* (its use lock) held shared until the file closes; an
    evictor holds it exclusively only while it removes the package."""
    use = lock.open("ab")
    fcntl.flock(use.fileno(), fcntl.LOCK_SH)
    return use


def file_identity(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_ctime_ns


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    with path.open("ab") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield


def _try_flock(path: Path) -> IO[bytes] | None:
    fh = path.open("ab")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


@dataclass(frozen=True)
class _Entry:
    feed: str
    package_id: str
    version: str

    @property
    def parts(self) -> tuple[str, str, str]:
        return self.feed, self.package_id.lower(), self.version.lower()


class PackageCache:
    """Fetches packages through feeds into *root*; safe across threads and processes."""

    def __init__(self, root: Path, max_bytes: int, client: redis.Redis, pool: str) -> None:
        """*pool*: the pool whose space records each package's sha256 (its workers' space)."""
        self.root = root
        self.pool = pool
        self.max_bytes = max_bytes
        self.redis = client
        for sub in ("packages", "locks", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._guard = threading.Lock()
        self._thread_locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._sweep_tmp()

    def fetch(self, ref: PackageRef, feed: Feed,
              progress: Progress | None = None) -> CachedPackage:
        """The cached package, downloading it first unless a cached copy is valid. The caller
        must ``release()`` it (or use ``with``) once done with the file."""
        entry = _Entry(feed.name, ref.package_id, ref.version)
        with self._thread_lock(entry), _flock(self._lock(entry, "download")):
            meta = self._cached(entry)
            downloaded = meta is None
            if meta is None:
                meta = self._download(entry, feed, progress)
            os.utime(self._dir(entry) / ENTRY)  # its last use, for least-recently-used eviction
            package = self._held(entry, meta, downloaded)
        if downloaded:
            self.evict()
        return package

    def hold(self, feed: str, package_id: str, version: str) -> CachedPackage | None:
        """The package held as ``fetch()`` holds it (a use, for eviction), if it is cached;
        never downloads. The worker's stager makes spare copies with it (``spares.py``)."""
        entry = _Entry(feed, package_id, version)
        with self._thread_lock(entry), _flock(self._lock(entry, "download")):
            meta = self._cached(entry)
            if meta is None:
                return None
            os.utime(self._dir(entry) / ENTRY)
            package = self._held(entry, meta, False)
        # Only a package held here is held again later (``rehold``): it alone needs these.
        return replace(package, use_lock=self._lock(entry, "use"),
                       identity=file_identity(package.path))

    @staticmethod
    def rehold(known: CachedPackage) -> CachedPackage | None:
        """Hold again the very file *known* held (checked when it was held: no Redis, no lock
        on downloads), or None if that file has left the cache since. For a step's hot path."""
        if known.use_lock is None:
            return None
        use = _shared(known.use_lock)
        if file_identity(known.path) != known.identity:
            use.close()
            return None
        return replace(known, downloaded=False, _use=use)

    def _held(self, entry: _Entry, meta: dict[str, str], downloaded: bool) -> CachedPackage:
        use = _shared(self._lock(entry, "use"))  # evictors need both locks: never blocks
        return CachedPackage(self._dir(entry) / meta["file_name"], meta["file_name"],
                             meta["sha256"], downloaded, use)

    def _thread_lock(self, entry: _Entry) -> threading.Lock:
        with self._guard:
            return self._thread_locks.setdefault(entry.parts, threading.Lock())

    def _dir(self, entry: _Entry) -> Path:
        return self.root.joinpath("packages", *entry.parts)

    def _lock(self, entry: _Entry, kind: str) -> Path:
        return self.root / "locks" / f"{'~'.join(entry.parts)}.{kind}"

    def _cached(self, entry: _Entry) -> dict[str, str] | None:
        """The entry's metadata if its file is whole and matches the recorded sha256."""
        folder = self._dir(entry)
        try:
            meta = json.loads((folder / ENTRY).read_text())
            size = (folder / meta["file_name"]).stat().st_size
        except (OSError, ValueError, KeyError):
            return None
        record = keys.package_sha(self.pool, entry.feed, entry.package_id, entry.version)
        recorded = cast(str | None, self.redis.get(record))
        if size != meta["size"] or (recorded is not None and recorded != meta["sha256"]):
            log.warning("discarding cached %s: it no longer matches its record", folder)
            self._remove(folder)
            return None
        if recorded is None:
            self.redis.set(record, meta["sha256"], nx=True)
        return {"file_name": str(meta["file_name"]), "sha256": str(meta["sha256"])}

    def _download(self, entry: _Entry, feed: Feed, progress: Progress | None) -> dict[str, str]:
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", prefix=f"{'~'.join(entry.parts)}.")
        try:
            with open(fd, "wb") as out:
                got = feed.download(entry.package_id, entry.version, out, progress)
                out.flush()
                os.fsync(out.fileno())
            self._verify(entry, got)
            return self._install(entry, Path(tmp), got)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _verify(self, entry: _Entry, got: Downloaded) -> None:
        def mismatch(reason: str) -> PackageError:
            return PackageError(entry.package_id, entry.version, entry.feed,
                                f"checksum mismatch: the download has sha256 {got.sha256[:12]} "
                                f"but {reason}")

        if got.published_sha256 is not None and got.published_sha256 != got.sha256:
            raise mismatch(f"the feed published {got.published_sha256[:12]}; the stored "
                           "package is damaged, push it again")
        record = keys.package_sha(self.pool, entry.feed, entry.package_id, entry.version)
        if not self.redis.set(record, got.sha256, nx=True):
            recorded = cast(str | None, self.redis.get(record))
            if recorded is not None and recorded != got.sha256:
                raise mismatch(f"its first download had {recorded[:12]}; the feed's file was "
                               "replaced: publish changes as a new version")

    def _install(self, entry: _Entry, tmp: Path, got: Downloaded) -> dict[str, str]:
        folder = self._dir(entry)
        folder.mkdir(parents=True, exist_ok=True)
        file_name = f"{entry.package_id}.{entry.version}{got.extension}"
        os.chmod(tmp, 0o444)  # steps read the cached file in place; they must not change it
        os.replace(tmp, folder / file_name)
        meta = {"file_name": file_name, "sha256": got.sha256, "size": got.size}
        tmp_entry = folder / f".{ENTRY}.{os.getpid()}.{threading.get_ident()}"
        tmp_entry.write_text(json.dumps(meta))
        os.replace(tmp_entry, folder / ENTRY)
        return {"file_name": file_name, "sha256": got.sha256}

    # -- size limit --------------------------------------------------------------------

    def entries(self) -> list[tuple[float, int, _Entry]]:
        """(last use, size, entry) of every cached package."""
        found = []
        for meta_path in (self.root / "packages").glob(f"*/*/*/{ENTRY}"):
            try:
                used = meta_path.stat().st_mtime
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            feed, package_id, version = meta_path.parent.relative_to(self.root / "packages").parts
            found.append((used, int(meta.get("size", 0)), _Entry(feed, package_id, version)))
        return found

    def size(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self) -> None:
        """Remove least recently used packages until the cache fits; skip any in use."""
        entries = sorted(self.entries(), key=lambda e: e[0])
        total = sum(size for _, size, _ in entries)
        for _, size, entry in entries:
            if total <= self.max_bytes:
                return
            if self._evict(entry):
                total -= size
        if total > self.max_bytes:
            log.warning("package cache %s holds %d bytes, over its %d-byte limit, because the "
                        "rest is in use", self.root, total, self.max_bytes)

    def _evict(self, entry: _Entry) -> bool:
        download = _try_flock(self._lock(entry, "download"))
        if download is None:
            return False
        with download:
            use = _try_flock(self._lock(entry, "use"))
            if use is None:
                return False
            with use:
                self._remove(self._dir(entry))
                log.info("evicted %s from the package cache", "/".join(entry.parts))
                return True

    def _remove(self, folder: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            (folder / ENTRY).unlink()  # first, so a half-removed entry is never taken as cached
        shutil.rmtree(folder, ignore_errors=True)

    def _sweep_tmp(self) -> None:
        """Drop downloads a crashed process left behind."""
        cutoff = time.time() - STALE_TMP_SECONDS
        for stray in (self.root / "tmp").iterdir():
            with contextlib.suppress(OSError):
                if stray.stat().st_mtime < cutoff:
                    stray.unlink()
