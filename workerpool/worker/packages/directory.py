"""A feed that is a directory (local or a mounted share) of ``<id>.<version>.<ext>`` files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from workerpool.worker.packages.feed import CHUNK, EXTENSIONS, Download, Feed, split_file_name


class DirectoryFeed(Feed):
    type = "directory"

    def open(self, package_id: str, version: str) -> Download:
        folder = Path(self.uri)
        try:
            names = {name.lower(): name for name in os.listdir(folder)}
        except OSError as exc:
            raise self.fail(package_id, version, f"feed directory {folder} is unreachable on "
                            f"this worker ({exc.strerror or exc}); mount it or fix the feed "
                            "URI (`workerpool feed list`)") from None
        for ext in EXTENSIONS:
            actual = names.get(f"{package_id}.{version}{ext}".lower())
            if actual is not None:
                return self._read(folder / actual, ext, package_id, version)
        raise self.fail(package_id, version, self._missing(package_id, list(names.values())))

    def _read(self, path: Path, ext: str, package_id: str, version: str) -> Download:
        try:
            fh = path.open("rb")
        except OSError as exc:
            raise self.fail(package_id, version, f"cannot read {path}: {exc.strerror or exc}") \
                from None
        return Download(ext, os.fstat(fh.fileno()).st_size, _chunks(fh), close=fh.close)

    def _missing(self, package_id: str, names: list[str]) -> str:
        versions = sorted({parsed[1] for parsed in map(split_file_name, names)
                           if parsed and parsed[0].lower() == package_id.lower()})
        if versions:
            return f"no such version in {self.uri} (available: {', '.join(versions[-10:])})"
        return f"no such package in feed directory {self.uri} (unknown package id)"


def _chunks(fh: BinaryIO) -> Iterator[bytes]:
    while chunk := fh.read(CHUNK):
        yield chunk
