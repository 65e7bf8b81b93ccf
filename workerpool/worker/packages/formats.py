"""``extract()``: pick the format by file name and unpack safely into one directory."""

from __future__ import annotations

import gzip
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path

from workerpool.core.errors import ArchiveError
from workerpool.worker.packages.archive import (
    DEFAULT_RATIO,
    ArchiveFormat,
    Extracted,
    Ratio,
    SafeWriter,
)
from workerpool.worker.packages.feed import split_extension
from workerpool.worker.packages.tars import TarFormat, TarGzFormat
from workerpool.worker.packages.zips import NupkgFormat, ZipFormat

FORMATS: dict[str, ArchiveFormat] = {
    ".zip": ZipFormat(), ".nupkg": NupkgFormat(), ".tar.gz": TarGzFormat(),
    ".tgz": TarGzFormat(), ".tar": TarFormat(),
}
DEFAULT_MAX_BYTES = 4 << 30
DEFAULT_MAX_ENTRIES = 100_000
CORRUPT = (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, zlib.error, EOFError,
           gzip.BadGzipFile, NotImplementedError, UnicodeDecodeError)


def format_for(archive: Path) -> ArchiveFormat:
    split = split_extension(archive.name)
    if split is None:
        raise ArchiveError(f"{archive.name}: not an archive workerpool can extract (use "
                           f"{', '.join(FORMATS)}), or reference the package with extract=false")
    return FORMATS[split[1]]


def extract(archive: Path, target: Path, max_bytes: int = DEFAULT_MAX_BYTES,
            max_entries: int = DEFAULT_MAX_ENTRIES, ratio: Ratio = DEFAULT_RATIO) -> Extracted:
    """Unpack *archive* into *target*, writing nothing outside it, and at most *ratio* of the
    archive's size. On ArchiveError the target may hold part of the archive: discard it."""
    unpacker = format_for(archive)
    writer = SafeWriter(target, max_bytes, max_entries, ratio, archive.stat().st_size)
    try:
        unpacker.extract_into(archive, writer)
        return writer.finish()
    except ArchiveError as exc:
        raise ArchiveError(f"{archive.name}: {exc}") from None
    except CORRUPT as exc:
        raise ArchiveError(f"{archive.name}: corrupt archive ({exc or type(exc).__name__}); "
                           "publish it again") from None


def place(archive: Path, target: Path, unpack: bool, max_bytes: int = DEFAULT_MAX_BYTES,
          max_entries: int = DEFAULT_MAX_ENTRIES, ratio: Ratio = DEFAULT_RATIO) -> Extracted:
    """A package where a step uses it: *archive* extracted into the directory *target*, or
    (``unpack`` false) copied to the file *target*; what was written. Steps and staged spares
    both use it."""
    if unpack:
        return extract(archive, target, max_bytes, max_entries, ratio)
    shutil.copyfile(archive, target)
    return Extracted(1, target.stat().st_size)
