"""Preparing a step's package on a worker: fetch through the cache, extract into the workdir."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from workerpool.errors import ArchiveError, PackageError
from workerpool.packages.cache import CachedPackage, PackageCache
from workerpool.packages.feed import Progress
from workerpool.packages.formats import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, extract
from workerpool.packages.ref import PackageRef
from workerpool.packages.registry import FeedRegistry


@dataclass
class PreparedPackage:
    """A package ready for a step; keep it open while the step runs (the cached file it points
    to is not evicted until ``release()``)."""

    ref: PackageRef
    cached: CachedPackage
    extracted_path: Path | None
    file_path: Path  # the package file: in the cache, or its copy in the working directory

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
            progress: Progress | None = None) -> PreparedPackage:
    """Fetch *ref* and extract it into ``workdir/<ref.name>``, or (``extract=false``) copy the
    file into *workdir*.

    Raises UnknownFeed for a feed nobody added, and PackageError (one line naming the package,
    version and feed) for everything else that stops the package from being used.
    """
    cached = cache.fetch(ref, feeds.get(ref.feed), progress)
    target = workdir / ref.name
    try:
        if not ref.extract:
            workdir.mkdir(parents=True, exist_ok=True)
            copy = workdir / cached.file_name
            shutil.copyfile(cached.path, copy)
            return PreparedPackage(ref, cached, None, copy)
        extract(cached.path, target, max_bytes, max_entries)
    except ArchiveError as exc:
        cached.release()
        raise PackageError(ref.package_id, ref.version, ref.feed, str(exc)) from None
    except BaseException:
        cached.release()
        raise
    return PreparedPackage(ref, cached, target, cached.path)
