"""Zip archives, and NuGet packages (zip files with NuGet's own metadata parts left out)."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path
from urllib.parse import unquote

from workerpool.core.errors import ArchiveError
from workerpool.worker.packages.archive import ArchiveFormat, SafeWriter, unsafe

UNIX = 3
ENCRYPTED = 0x1


class ZipFormat(ArchiveFormat):
    def extract_into(self, archive: Path, target: SafeWriter) -> None:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                target.count(info.filename, info.file_size, info.compress_size)
                name = self.entry_name(info.filename)
                if not self.skip(name):
                    self._entry(zf, info, name, target)

    def entry_name(self, raw: str) -> str:
        return raw

    def skip(self, name: str) -> bool:
        """Whether the entry is the container's own metadata rather than package content."""
        return False

    def _entry(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str,
               target: SafeWriter) -> None:
        mode = info.external_attr >> 16 if info.create_system == UNIX else 0
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise unsafe(name, "it is a symbolic link, and links in zip archives are refused")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise unsafe(name, "it is a device, fifo or socket, not a file or directory")
        if info.flag_bits & ENCRYPTED:
            raise ArchiveError(f"entry {name!r} is encrypted; packages must not be")
        if info.is_dir() or kind == stat.S_IFDIR:
            target.directory(name)
            return
        with zf.open(info) as source:
            target.file(name, source.read, bool(mode & 0o111), info.compress_size)


class NupkgFormat(ZipFormat):
    """NuGet's OPC parts are not package content; part names are %-encoded."""

    METADATA = ("[content_types].xml", ".signature.p7s")
    METADATA_DIRS = ("_rels/", "package/")

    def entry_name(self, raw: str) -> str:
        return unquote(raw)

    def skip(self, name: str) -> bool:
        lower = name.replace("\\", "/").lower()
        return lower in self.METADATA or lower.startswith(self.METADATA_DIRS)
