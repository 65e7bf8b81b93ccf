"""Tar archives, plain and gzip-compressed, read front to back in one pass.

tarfile's own stream mode ("r|") re-slices its whole read buffer for every 512-byte header, and
its gzip reader never checks the CRC trailer; reading "r:" over ``gzip.open`` avoids both (tarfile
only ever seeks forward here, which gzip does by reading on).
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

from workerpool.worker.packages.archive import COPY_BUFFER, ArchiveFormat, SafeWriter, unsafe


class TarFormat(ArchiveFormat):
    def open(self, archive: Path) -> io.BufferedIOBase:
        return archive.open("rb")

    def extract_into(self, archive: Path, target: SafeWriter) -> None:
        with self.open(archive) as raw:
            with tarfile.open(fileobj=raw, mode="r:") as tf:
                for member in tf:
                    target.count(member.name, member.size if member.isreg() else 0)
                    self._entry(tf, member, target)
            # tar stops at its end marker; reading on makes gzip check its length and CRC
            while raw.read(COPY_BUFFER):
                pass

    def _entry(self, tf: tarfile.TarFile, member: tarfile.TarInfo, target: SafeWriter) -> None:
        if member.isdir():
            target.directory(member.name)
        elif member.isreg():
            source = tf.extractfile(member)
            assert source is not None  # regular members always have data
            target.file(member.name, source.read, bool(member.mode & 0o111))
        elif member.issym():
            target.symlink(member.name, member.linkname)
        elif member.islnk():
            target.hardlink(member.name, member.linkname)
        elif member.isdev():
            raise unsafe(member.name, "it is a device or fifo, not a file or directory")
        else:
            raise unsafe(member.name, f"its tar entry type {member.type!r} is not supported")


class TarGzFormat(TarFormat):
    def open(self, archive: Path) -> io.BufferedIOBase:
        return gzip.open(archive, "rb")
