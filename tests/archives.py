"""Archives built in memory for package tests: zips and tars of chosen entries, links."""

from __future__ import annotations

import gzip
import io
import os
import stat
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

SCRIPT = b"#!/bin/sh\necho deployed\n"


def zip_bytes(entries: list[tuple[str, bytes, int | None]]) -> bytes:
    """A zip of (name, data, unix mode or None) entries."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode is not None:
                info.create_system = 3
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return buffer.getvalue()


def tar_bytes(members: list[tarfile.TarInfo | tuple[str, bytes, int]], gz: bool = True) -> bytes:
    """A tar(.gz) of TarInfo members (links, devices) or (name, data, mode) files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tf:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
                continue
            name, data, mode = member
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def make_zip(path: Path, files: dict[str, str]) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o755 if name.endswith(".sh") else 0o644) << 16
            archive.writestr(info, text)
    path.write_bytes(buffer.getvalue())
    return path
MiB = 1 << 20


README = b"the database package\n"


SQL = b"CREATE TABLE customers (id int);\n" * 200


def package_zip() -> bytes:
    return zip_bytes([("scripts/deploy.sh", SCRIPT, 0o100755),
                      ("scripts/", b"", 0o040755),
                      ("README.txt", README, 0o100644),
                      ("sql/001-schema.sql", SQL, None)])


def package_tar(gz: bool = True) -> bytes:
    return tar_bytes([("./scripts/deploy.sh", SCRIPT, 0o755), ("./README.txt", README, 0o644),
                      ("./sql/001-schema.sql", SQL, 0o644)], gz=gz)


def nupkg() -> bytes:
    return zip_bytes([("[Content_Types].xml", b"<Types/>", None),
                      ("_rels/.rels", b"<Relationships/>", None),
                      ("package/services/metadata/core-properties/x.psmdcp", b"<core/>", None),
                      ("Acme.Database.nuspec", b"<package/>", None),
                      ("tools/deploy%20it.sh", SCRIPT, 0o100755),
                      ("content/README.txt", README, None)])


def executable(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IXUSR)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}
LIMITS = (64 * MiB, 1000)


def tools_tar() -> bytes:
    """Directories, an executable, a symbolic and a hard link: everything a tree can hold."""
    return tar_bytes([("bin/tool", SCRIPT, 0o755), ("etc/app.config", b"Server=x\n", 0o600),
                      ("docs/readme.txt", b"read me\n" * 1000, 0o644), link("current", "bin"),
                      link("bin/alias", "tool"), link("bin/copy", "bin/tool", tarfile.LNKTYPE)])


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything extraction decides about a tree: names, types, modes, contents, link targets,
    and which files are hard links of which."""
    found: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        rel = str(path.relative_to(root))
        kind = stat.S_IFMT(info.st_mode)
        detail: object = None
        if stat.S_ISLNK(info.st_mode):
            detail = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            detail = (path.read_bytes(), info.st_nlink, inodes.setdefault(info.st_ino, rel))
        found[rel] = (kind, stat.S_IMODE(info.st_mode), detail)
    return found


# -- hostile archives: tiny files that expand to gigabytes, built without writing them ---------

def _octal(value: int, width: int = 12) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def gnu_sparse_header(name: str, size: int, data: int = 512) -> bytes:
    """An old-style GNU sparse ('S') header: *size* bytes, of which only the last *data* are
    stored (tarfile reads it; it cannot write one)."""
    info = tarfile.TarInfo(name)
    info.type, info.size = tarfile.GNUTYPE_SPARSE, data
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[386:410] = _octal(size - data) + _octal(data)  # the first sparse map entry
    header[483:495] = _octal(size)  # the real size
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header[:512])
    return bytes(header[:512])


def sparse_tar(size: int, style: str = "gnu", gz: bool = True, name: str = "disk.img") -> bytes:
    """A tar(.gz) of one sparse member of *size* bytes whose only data is its last block: a
    few hundred bytes whatever *size*, as GNU's old sparse header or PAX's 0.1 sparse map."""
    if style == "gnu":
        raw = gnu_sparse_header(name, size) + b"y" * 512 + bytes(1024)
        return gzip.compress(raw, mtime=0) if gz else raw
    info = tarfile.TarInfo(name)
    info.size = 512
    info.pax_headers = {"GNU.sparse.map": f"{size - 512},512", "GNU.sparse.realsize": str(size)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w",
                      format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(b"y" * 512))
    return buffer.getvalue()


def zeros_zip(size: int, name: str = "zeros.bin") -> bytes:
    """A zip of one deflated entry of *size* zero bytes (whole MiBs, under 4 GiB) with honest
    headers: one compressed MiB repeated (each block starts afresh), so 1 GiB takes ~1 MB and a
    fraction of a second to build."""
    assert size % MiB == 0 and size < 1 << 32
    mib, packer, crc = bytes(MiB), zlib.compressobj(9, zlib.DEFLATED, -15), 0
    block = packer.compress(mib) + packer.flush(zlib.Z_FULL_FLUSH)
    for _ in range(size // MiB):
        crc = zlib.crc32(mib, crc)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0)),
                    block * (size // MiB) + packer.flush())
    data = bytearray(buffer.getvalue())
    central = data.rindex(b"PK\x01\x02")
    for at in (0, central + 2):  # local header, then the central one (its fields 2 bytes on)
        struct.pack_into("<H", data, at + 8, zipfile.ZIP_DEFLATED)
        struct.pack_into("<L", data, at + 14, crc)
        struct.pack_into("<L", data, at + 22, size)  # the compressed size stays the stored one
    return bytes(data)


def disk_bytes(root: Path) -> int:
    """Bytes the files under *root* take on disk (their allocated blocks; folders not counted)."""
    total = 0
    # The worker may be removing the tree meanwhile: what it removed takes no space any more.
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                info = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode):
                total += info.st_blocks * 512
    return total
