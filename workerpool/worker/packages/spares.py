"""Spare copies of packages, staged in the background, so that a cache hit is one rename.

After a step places a package version, the worker's stager thread has ``count`` spare, private
copies made of what the step got (the extracted tree, or a copy of the file with
``extract=false``) in a staging directory on the working directories' file system, by a helper
process (``stager.py``) that waits, or is paused, while a step starts. The next step that needs
the version takes a spare with a single ``os.rename()`` into its working directory, whatever the
package's size; with none ready (its first use, or steps arriving faster than the stager) the
step fetches and extracts inline, as without spares. A spare is written by the same
``place()`` (same limits, same refusals) from the cached archive, verified as ``fetch()``
verifies it when the spare is staged; and it is a real copy, never hard links: a script (maybe
root) that writes into its tree changes nothing but that tree.

Taking a spare costs no Redis call beyond the feed's lookup every step makes (a removed feed
fails the step, spare or not): the step holds the cached archive again (the same file the
stager verified, checked by inode; see ``PackageCache.rehold``), as a fetched package is held
until the step ends.

Bounds: ``count`` spares per version (``WORKERPOOL_PACKAGE_SPARES``, 0 disables), for the
``MAX_VERSIONS`` most recently used versions; a spare goes when its archive leaves the cache,
and all of them when the worker stops. Disk: up to ``count * MAX_VERSIONS`` extracted packages
per worker process, beside the cache, and only within the worker's disk budget (``budget.py``:
checked before each copy, against the size the step's own placement wrote).

Layout under the staging root (``<the worker's working-directory root>/.staged``)::

    <sha256>.tree/<hex>    a ready spare tree       <sha256>.file/<hex>    a ready file copy
    <sha256>.tree/.<hex>   being staged: never taken
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis

from workerpool.core.packageref import PackageRef
from workerpool.worker.packages.archive import DEFAULT_RATIO, Ratio
from workerpool.worker.packages.budget import DiskBudget, NoRoom
from workerpool.worker.packages.cache import CachedPackage, PackageCache, file_identity
from workerpool.worker.packages.stager import Stager

log = logging.getLogger("workerpool.packages")

MAX_VERSIONS = 4  # package versions (each extracted or not) that keep spares
PRUNE_EVERY = 30.0  # seconds between checks that spares' archives are still cached (and at uses)
# For this long after a step used a package the stager polls (every IDLE_POLL seconds) instead
# of being woken: waking a thread during a step's start would make the step wait for the GIL.
ACTIVE_FOR = 60.0
IDLE_POLL = 0.1
RETRY_AFTER = 5.0  # seconds the stager rests after an unexpected error
QUIET = 0.05  # seconds after a step starts during which staging waits: the step goes first
MAX_YIELD = 1.0  # seconds one staging copy waits at most for steps that keep starting
JOIN_TIMEOUT = 10.0
DEFAULT_BUDGET = DiskBudget()


@dataclass(frozen=True)
class Kind:
    """What a step asks for: a cached package version, extracted or not, within limits."""

    feed: str
    package_id: str
    version: str
    extract: bool
    max_bytes: int
    max_entries: int
    ratio: Ratio = DEFAULT_RATIO

    @classmethod
    def of(cls, ref: PackageRef, max_bytes: int, max_entries: int,
           ratio: Ratio = DEFAULT_RATIO) -> Kind:
        # the cache's own spelling: ids and versions are case-insensitive
        return cls(ref.feed, ref.package_id.lower(), ref.version.lower(), ref.extract,
                   max_bytes, max_entries, ratio)

    def job(self, archive: Path, target: Path) -> dict[str, object]:
        """The staging helper's job (``stager.py``) for a spare of this kind."""
        return {"archive": str(archive), "target": str(target), "extract": self.extract,
                "max_bytes": self.max_bytes, "max_entries": self.max_entries,
                "max_ratio": self.ratio.times, "ratio_floor": self.ratio.floor}


@dataclass(frozen=True)
class Spare:
    path: Path
    archive: CachedPackage  # released: the archive it was made from, to hold it again


@dataclass
class _Version:
    ready: list[Spare] = field(default_factory=list)
    failed: bool = False  # not staged again until a step uses the version again
    size: int | None = None  # on disk, at most (budget.footprint); unknown: nothing is staged


class Spares:
    """One worker process's spare package copies, and the thread that stages them."""

    def __init__(self, root: Path, cache: PackageCache, count: int,
                 max_versions: int = MAX_VERSIONS, budget: DiskBudget = DEFAULT_BUDGET) -> None:
        self.root = root  # <the worker's working-directory root>/.staged
        self.cache = cache
        self.count = count
        self.max_versions = max_versions
        self.budget = budget
        self._cond = threading.Condition()
        self._versions: dict[Kind, _Version] = {}  # least recently used first
        self._discard: list[Path] = []
        self._changed = False
        self._stopping = False
        self._idle = False  # the stager sleeps until woken (no step used a package lately)
        self._last_want = -ACTIVE_FOR
        self._next_prune = 0.0
        self._thread: threading.Thread | None = None
        self._helper: Stager | None = None
        self._quiet_until = 0.0  # monotonic; staging waits (or is paused) until then
        self._yield_until = 0.0  # monotonic; the current copy stops yielding then

    def step_starting(self) -> None:
        """A step is being set up: staging yields the machine to it for a moment."""
        now = time.monotonic()
        self._quiet_until = now + QUIET
        helper = self._helper
        if helper is not None and now < self._yield_until:
            helper.pause()

    def take(self, kind: Kind, dest: Path) -> CachedPackage | None:
        """Move a ready spare of *kind* to *dest* (for ``extract=false``, *dest* / the file's
        name) with one rename; the archive it came from, held, or None if none is ready or
        *dest* is taken (the spare then stays for the next step)."""
        with self._cond:
            version = self._versions.get(kind)
            if version is None or not version.ready:
                return None
            spare = version.ready.pop()  # under the lock: no other step can take this one
        archive = self.cache.rehold(spare.archive)
        if archive is None:  # evicted since it was staged: this copy is stale
            self._drop([spare.path])
            return None
        try:
            # No check first (a step's start is short): a name already there makes it fail,
            # except an empty directory, which it replaces as an extraction would fill it.
            os.rename(spare.path, dest if kind.extract else dest / archive.file_name)
        except OSError:
            archive.release()
            self._put_back(kind, spare)
            return None
        return archive

    def want(self, kind: Kind, size: int | None = None) -> None:
        """A step just placed *kind*, *size* bytes on disk (None: it took a spare, of the size
        known since): keep ``count`` spares of it, as the most recent version. A version whose
        size was never told is not staged: the budget could not be checked."""
        if self.count <= 0:
            return
        with self._cond:
            if self._stopping:
                return
            version = self._versions.pop(kind, None) or _Version()
            version.failed = False
            version.size = version.size if size is None else size
            self._versions[kind] = version
            while len(self._versions) > self.max_versions:
                dropped = self._versions.pop(next(iter(self._versions)))
                self._discard.extend(spare.path for spare in dropped.ready)
            self._changed = True
            self._last_want = time.monotonic()
            if self._idle:
                self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="package-stager",
                                                daemon=True)
                self._thread.start()

    def ready(self, kind: Kind) -> int:
        """How many spares of *kind* a step could take now."""
        with self._cond:
            version = self._versions.get(kind)
            return 0 if version is None else len(version.ready)

    def close(self) -> None:
        """Stop staging (abandoning an extraction in progress) and remove every spare."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread, helper = self._thread, self._helper
        if helper is not None:
            helper.kill()  # the stager thread, waiting for its reply, sees it end
        if thread is not None:
            thread.join(JOIN_TIMEOUT)
        if helper is not None and (thread is None or not thread.is_alive()):
            helper.close()
            self._helper = None
        shutil.rmtree(self.root, ignore_errors=True)

    # -- the stager thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._round()
            except Exception:  # a bug here must not kill the thread; steps extract inline
                log.exception("package stager error; retrying in %gs", RETRY_AFTER)
                with self._cond:
                    self._cond.wait(RETRY_AFTER)

    def _round(self) -> None:
        """Wait for a change (or the next prune), then bring every version to ``count``."""
        with self._cond:
            if not self._changed and not self._stopping:
                active = time.monotonic() - self._last_want < ACTIVE_FOR
                self._idle = not active
                self._cond.wait(IDLE_POLL if active else PRUNE_EVERY)
                self._idle = False
            changed, self._changed = self._changed, False
        if not changed and time.monotonic() < self._next_prune:
            return
        self._wait_quiet()
        self._next_prune = time.monotonic() + PRUNE_EVERY
        self._prune()
        self._remove_discarded()
        while not self._stopping and (kind := self._next()) is not None:
            self._wait_quiet()
            self._stage(kind)
            self._remove_discarded()

    def _wait_quiet(self) -> None:
        """Until no step has started for QUIET seconds; what follows (a copy) yields to steps
        that start until MAX_YIELD from now, not longer."""
        self._yield_until = time.monotonic() + MAX_YIELD
        with self._cond:
            while not self._stopping and (wait := self._resume_at() - time.monotonic()) > 0:
                self._cond.wait(wait)

    def _next(self) -> Kind | None:
        """The most recently used version short of spares."""
        with self._cond:
            for kind in reversed(self._versions):
                version = self._versions[kind]
                if not version.failed and version.size is not None \
                        and len(version.ready) < self.count:
                    return kind
        return None

    def _stage(self, kind: Kind) -> None:
        size = self._size(kind)
        if size is None:
            return  # dropped meanwhile
        try:
            archive = self.cache.hold(kind.feed, kind.package_id, kind.version)
        except (OSError, redis.RedisError) as exc:
            self._failed(kind, exc)
            return
        if archive is None:
            self._forget(kind)  # its archive left the cache, so do its spares
            return
        partial = self._copy(kind, archive, size)
        if partial is None:
            return
        path = partial.with_name(partial.name[1:])
        failure: OSError | None = None
        with self._cond:  # the ready name appears with its entry: a step finds both or neither
            version = self._versions.get(kind)
            if version is not None and not self._stopping:
                try:
                    os.rename(partial, path)
                except OSError as exc:
                    failure = exc
                else:
                    version.ready.append(Spare(path, archive))
                    return
        _remove(partial)  # the version was dropped meanwhile, or the rename failed
        if failure is not None:
            self._failed(kind, failure)

    def _size(self, kind: Kind) -> int | None:
        with self._cond:
            version = self._versions.get(kind)
            return None if version is None else version.size

    def _copy(self, kind: Kind, archive: CachedPackage, size: int) -> Path | None:
        """A spare of *kind* written from *archive* by the helper, if the budget has room for
        *size* more bytes, under its partial name (``.<name>``: ``_stage`` renames it ready);
        None (logged) if it could not be."""
        name = uuid.uuid4().hex
        folder = self.root / f"{archive.sha256}.{'tree' if kind.extract else 'file'}"
        partial = folder / f".{name}"
        try:
            with archive:  # held: the cache does not evict it while it is read
                folder.mkdir(parents=True, exist_ok=True)
                job = {**kind.job(archive.path, partial), "room": self._room(size)}
                self._helper_now().write(job, self._resume_at)
        except OSError as exc:
            _remove(partial)
            with contextlib.suppress(OSError):  # left only if empty: no spare of it is ready
                folder.rmdir()
            self._failed(kind, exc)
            return None
        return partial

    def _room(self, size: int) -> dict[str, object]:
        """What the helper checks before writing: the budget over the working-directory root."""
        return {"root": str(self.root.parent), "size": size, "max_bytes": self.budget.max_bytes,
                "min_free": self.budget.min_free}

    def _resume_at(self) -> float:
        return min(self._quiet_until, self._yield_until)

    def _helper_now(self) -> Stager:
        """The helper process, started at the first job and again if it died."""
        with self._cond:
            if self._stopping:
                raise OSError("the worker is stopping")
            if self._helper is not None and not self._helper.alive():
                self._helper.close()
                self._helper = None
            if self._helper is None:
                self._helper = Stager()
            return self._helper

    def _failed(self, kind: Kind, exc: Exception) -> None:
        with self._cond:
            if self._stopping:
                return
            version = self._versions.get(kind)
            if version is not None:
                version.failed = True
        if isinstance(exc, NoRoom):
            log.info("not staging a spare copy of %s %s (steps extract it inline): %s",
                     kind.package_id, kind.version, exc)
            return
        log.warning("could not stage a spare copy of %s %s (steps extract it inline): %s",
                    kind.package_id, kind.version, exc)

    def _prune(self) -> None:
        """Drop spares whose archive has left the cache (or been replaced) since."""
        with self._cond:
            spares = [spare for version in self._versions.values() for spare in version.ready]
        stale = {spare.path for spare in spares
                 if file_identity(spare.archive.path) != spare.archive.identity}
        if not stale:
            return
        with self._cond:
            for version in self._versions.values():
                version.ready = [spare for spare in version.ready if spare.path not in stale]
            self._discard.extend(stale)

    def _forget(self, kind: Kind) -> None:
        with self._cond:
            version = self._versions.pop(kind, None)
            if version is not None:
                self._discard.extend(spare.path for spare in version.ready)

    def _put_back(self, kind: Kind, spare: Spare) -> None:
        with self._cond:
            version = self._versions.get(kind)
            if version is not None and not self._stopping and spare.path.exists():
                version.ready.append(spare)
                return
        self._drop([spare.path])

    def _drop(self, paths: list[Path]) -> None:
        with self._cond:
            self._discard.extend(paths)
            self._changed = True
            self._cond.notify()

    def _remove_discarded(self) -> None:
        with self._cond:
            paths, self._discard = self._discard, []
        for path in paths:
            _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
