"""Preparing a step's package on a worker: fetch through the cache, then extract into the workdir
or take a spare copy staged in advance (``spares.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from workerpool.core.errors import ArchiveError, PackageError
from workerpool.core.packageref import PackageRef
from workerpool.worker.packages.archive import DEFAULT_RATIO, Extracted, Ratio
from workerpool.worker.packages.budget import footprint
from workerpool.worker.packages.cache import CachedPackage, PackageCache
from workerpool.worker.packages.feed import Progress
from workerpool.worker.packages.formats import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, place
from workerpool.worker.packages.registry import FeedRegistry
from workerpool.worker.packages.spares import Kind, Spares


@dataclass
class PreparedPackage:
    """A package ready for a step; keep it open while the step runs (the cached file it points
    to is not evicted until ``release()``)."""

    ref: PackageRef
    cached: CachedPackage
    extracted_path: Path | None
    file_path: Path  # the package file: in the cache, or its copy in the working directory
    staged: bool = False  # placed by taking a spare copy staged in advance (packages.spares)

    def variables(self) -> dict[str, str]:
        """The step variables ``Package[NAME].*`` that describe this package."""
        prefix = f"Package[{self.ref.name}]."
        values = {"PackageId": self.ref.package_id, "PackageVersion": self.ref.version,
                  "FeedId": self.ref.feed, "PackageFilePath": str(self.file_path),
                  "PackageFileName": self.cached.file_name, "Sha256": self.cached.sha256,
                  "ExtractedPath": str(self.extracted_path or "")}
        return {prefix + key: value for key, value in values.items()}

    def release(self) -> None:
        self.cached.release()

    def __enter__(self) -> PreparedPackage:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def prepare(ref: PackageRef, feeds: FeedRegistry, cache: PackageCache, workdir: Path,
            max_bytes: int = DEFAULT_MAX_BYTES, max_entries: int = DEFAULT_MAX_ENTRIES,
            progress: Progress | None = None, spares: Spares | None = None,
            ratio: Ratio = DEFAULT_RATIO) -> PreparedPackage:
    """Fetch *ref* and extract it into ``workdir/<ref.name>`` (within the limits and *ratio*),
    or (``extract=false``) copy the file into *workdir*; with *spares*, take a copy staged in
    advance when one is ready.

    Raises UnknownFeed for a feed nobody added, and PackageError (one line naming the package,
    version and feed) for everything else that stops the package from being used.
    """
    feed = feeds.get(ref.feed)  # a removed feed fails the step, staged copies or not
    kind = Kind.of(ref, max_bytes, max_entries, ratio)
    if spares is not None:  # (a missing workdir makes take() fail: it is made below)
        staged = spares.take(kind, workdir / ref.name if ref.extract else workdir)
        if staged is not None:
            spares.want(kind)
            return _prepared(ref, staged, workdir, staged=True)
    cached = cache.fetch(ref, feed, progress)
    try:
        placed = _place(ref, cached, workdir, kind)
    except ArchiveError as exc:
        cached.release()
        raise PackageError(ref.package_id, ref.version, ref.feed, str(exc)) from None
    except BaseException:
        cached.release()
        raise
    if spares is not None:  # only once placed: an archive that fails is never staged
        spares.want(kind, footprint(placed))
    return _prepared(ref, cached, workdir, staged=False)


def _place(ref: PackageRef, cached: CachedPackage, workdir: Path, kind: Kind) -> Extracted:
    if not ref.extract:
        workdir.mkdir(parents=True, exist_ok=True)
    return place(cached.path, workdir / ref.name if ref.extract else workdir / cached.file_name,
                 ref.extract, kind.max_bytes, kind.max_entries, kind.ratio)


def _prepared(ref: PackageRef, cached: CachedPackage, workdir: Path,
              staged: bool) -> PreparedPackage:
    if ref.extract:
        return PreparedPackage(ref, cached, workdir / ref.name, cached.path, staged)
    return PreparedPackage(ref, cached, None, workdir / cached.file_name, staged)
