"""Packages without Redis: references, file names, versions, and safe extraction of every
archive format (archives are built with zipfile and tarfile; nothing is mocked).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from archives import (
    README,
    SCRIPT,
    SQL,
    MiB,
    executable,
    link,
    package_tar,
    package_zip,
    tar_bytes,
    tree,
    zip_bytes,
)
from conftest import one_line

from workerpool.core.errors import ArchiveError, BadInput
from workerpool.core.packageref import PackageRef
from workerpool.worker.packages.archive import SafeWriter
from workerpool.worker.packages.feed import split_file_name
from workerpool.worker.packages.formats import extract
from workerpool.worker.packages.nuget import normalize_version

# --- building archives ---------------------------------------------------------------------------














def only_target_written(box: Path) -> None:
    outside = {p for p in tree(box) if p != "target" and not p.startswith("target/")}
    assert outside == set(), outside


# --- feeds served for real -----------------------------------------------------------------------






# --- references ----------------------------------------------------------------------------------


def test_parse_reference_and_round_trip() -> None:
    ref = PackageRef.parse("name=db,id=Acme.Database,version=1.2.0,feed=builtin,extract=true")
    assert ref == PackageRef("db", "Acme.Database", "1.2.0", "builtin", True)
    assert PackageRef.parse(ref.to_text()) == ref
    assert PackageRef.from_json(json.loads(json.dumps(ref.to_json()))) == ref
    short = PackageRef.parse(" name=tools , id=Acme.Tools, version=2.0.0-beta.1, extract=No ")
    assert (short.feed, short.extract, short.version) == ("builtin", False, "2.0.0-beta.1")


@pytest.mark.parametrize(("text", "words"), [
    ("id=Acme.Database,version=1.2.0", ["lacks name"]),
    ("name=db,version=1.2.0", ["lacks id"]),
    ("name=db,id=Acme.Database", ["lacks version"]),
    ("name=db,id=A,version=1,colour=red", ["'colour' is unknown"]),
    ("name=db,id=A,version=1,extract=maybe", ["extract='maybe'", "true or false"]),
    ("name=d b,id=A,version=1", ["'d b'"]),
    ("name=..,id=A,version=1", ["'..'"]),
    ("name=db,id=../etc,version=1", ["package id '../etc'"]),
    ("name=db,id=A,version=v1", ["version 'v1'", "start with a digit"]),
    ("name=db,id=A,version=1,feed=a/b", ["feed name 'a/b'"]),
    ("name=db,name=x,id=A,version=1", ["'name' twice"]),
    ("name=db,id", ["'id' is not key=value"]),
])
def test_parse_refuses_malformed_references(text: str, words: list[str]) -> None:
    with pytest.raises(BadInput) as caught:
        PackageRef.parse(text)
    one_line(caught.value, *words)


def test_from_json_refuses_bad_records() -> None:
    with pytest.raises(BadInput, match="lacks 'version'"):
        PackageRef.from_json({"name": "db", "package_id": "A"})
    with pytest.raises(BadInput, match="wrong type"):
        PackageRef.from_json({"name": "db", "package_id": "A", "version": "1", "extract": "y"})


def test_file_names_split_into_id_version_and_extension() -> None:
    assert split_file_name("Acme.Database.1.2.0.zip") == ("Acme.Database", "1.2.0", ".zip")
    assert split_file_name("Acme.Database.1.2.0-beta.1.tar.gz") == (
        "Acme.Database", "1.2.0-beta.1", ".tar.gz")
    assert split_file_name("Acme.7Zip.3.1.tgz") == ("Acme.7Zip", "3.1", ".tgz")
    assert split_file_name("tool.2.nupkg") == ("tool", "2", ".nupkg")
    for bad in ("Acme.Database.zip", "1.zip", "Acme.Database.1.2.0.rar", "readme"):
        assert split_file_name(bad) is None, bad


def test_nuget_version_normalization() -> None:
    assert normalize_version("1.0") == "1.0.0"
    assert normalize_version("1.02.3.0") == "1.2.3"
    assert normalize_version("1.2.3.4") == "1.2.3.4"
    assert normalize_version("1.0.0-Beta+build.5") == "1.0.0-beta"


# --- NuGet v3 feed -------------------------------------------------------------------------------


# --- extraction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("file_name", "data"), [
    ("p.1.0.zip", package_zip()), ("p.1.0.tar.gz", package_tar()), ("p.1.0.tgz", package_tar()),
    ("p.1.0.tar", package_tar(gz=False)),
])
def test_every_format_extracts_files_and_exec_bits(tmp_path: Path, file_name: str,
                                                   data: bytes) -> None:
    archive = tmp_path / file_name
    archive.write_bytes(data)
    out = tmp_path / "out"
    result = extract(archive, out, 10 * MiB, 100)
    assert result.files == 3 and result.bytes == len(SCRIPT) + len(README) + len(SQL)
    assert tree(out) == {"scripts", "scripts/deploy.sh", "README.txt", "sql",
                         "sql/001-schema.sql"}
    assert (out / "scripts" / "deploy.sh").read_bytes() == SCRIPT
    assert (out / "sql" / "001-schema.sql").read_bytes() == SQL
    assert executable(out / "scripts" / "deploy.sh")
    assert not executable(out / "README.txt") and not executable(out / "sql" / "001-schema.sql")
    ran = subprocess.run([str(out / "scripts" / "deploy.sh")], capture_output=True, text=True)
    assert ran.stdout == "deployed\n"


def test_tar_links_inside_the_target_are_kept(tmp_path: Path) -> None:
    archive = tmp_path / "p.1.0.tar"
    archive.write_bytes(tar_bytes([("bin/tool", SCRIPT, 0o755), link("current", "bin"),
                                   link("bin/alias", "tool"),
                                   link("bin/copy", "bin/tool", tarfile.LNKTYPE)], gz=False))
    extract(archive, tmp_path / "out", MiB, 100)
    out = tmp_path / "out"
    assert os.readlink(out / "current") == "bin"
    assert (out / "bin" / "alias").read_bytes() == SCRIPT
    assert (out / "bin" / "copy").stat().st_ino == (out / "bin" / "tool").stat().st_ino


UNSAFE = [
    ("zip-dotdot.zip", zip_bytes([("ok.txt", b"ok", None), ("../evil.txt", b"x", None)]),
     ["'../evil.txt'", "'..' component"]),
    ("zip-dotdot-nested.zip", zip_bytes([("a/../../evil.txt", b"x", None)]), ["'..' component"]),
    ("zip-backslash.zip", zip_bytes([("..\\evil.txt", b"x", None)]), ["'..' component"]),
    ("zip-drive.zip", zip_bytes([("C:/evil.txt", b"x", None)]), ["drive letter"]),
    ("zip-symlink.zip", zip_bytes([("link", b"/etc", 0o120777)]), ["'link'", "symbolic link"]),
    ("zip-fifo.zip", zip_bytes([("pipe", b"", 0o010644)]), ["'pipe'", "fifo"]),
    ("tar-dotdot.tar.gz", tar_bytes([("../evil.txt", b"x", 0o644)]), ["'..' component"]),
    ("tar-symlink-out.tar", tar_bytes([link("escape", "../.."), ("escape/evil.txt", b"x", 0o644)],
                                      gz=False), ["'escape'", "outside the target"]),
    ("tar-symlink-abs.tar", tar_bytes([link("escape", "/tmp")], gz=False),
     ["'escape'", "absolute path"]),
    ("tar-symlink-chain.tar", tar_bytes([link("here", "."), link("up", "here/..")], gz=False),
     ["'up'", "resolves outside"]),
    ("tar-through-link.tar", tar_bytes([("real/x", b"x", 0o644), link("alias", "real"),
                                        ("alias/evil.txt", b"x", 0o644)], gz=False),
     ["'alias/evil.txt'", "'alias' on its path is a link"]),
    ("tar-hardlink-out.tar", tar_bytes([link("h", "../evil.txt", tarfile.LNKTYPE)], gz=False),
     ["'../evil.txt'", "'..' component"]),
    ("tar-hardlink-abs.tar", tar_bytes([link("h", "/etc/passwd", tarfile.LNKTYPE)], gz=False),
     ["'/etc/passwd'", "absolute path"]),
    ("tar-hardlink-missing.tar", tar_bytes([link("h", "not-there", tarfile.LNKTYPE)], gz=False),
     ["'h'", "not a file extracted before it"]),
    ("tar-fifo.tar", tar_bytes([link("pipe", "", tarfile.FIFOTYPE)], gz=False),
     ["'pipe'", "device or fifo"]),
    ("tar-device.tar", tar_bytes([link("disk", "", tarfile.BLKTYPE)], gz=False),
     ["'disk'", "device or fifo"]),
]


@pytest.mark.parametrize(("file_name", "data", "words"), UNSAFE, ids=[u[0] for u in UNSAFE])
def test_unsafe_entries_are_refused(sandbox: Path, tmp_path: Path, file_name: str, data: bytes,
                                    words: list[str]) -> None:
    archive = tmp_path / file_name
    archive.write_bytes(data)
    with pytest.raises(ArchiveError) as caught:
        extract(archive, sandbox / "target", MiB, 100)
    one_line(caught.value, file_name, *words)
    only_target_written(sandbox)


def test_absolute_paths_are_refused(sandbox: Path, tmp_path: Path) -> None:
    evil = str(sandbox / "evil.txt")
    for archive, data in ((tmp_path / "abs.zip", zip_bytes([(evil, b"x", None)])),
                          (tmp_path / "abs.tgz", tar_bytes([(evil, b"x", 0o644)]))):
        archive.write_bytes(data)
        with pytest.raises(ArchiveError) as caught:
            extract(archive, sandbox / "target", MiB, 100)
        one_line(caught.value, repr(evil), "absolute path")
    only_target_written(sandbox)


def test_archive_bombs_are_refused(sandbox: Path, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(zip_bytes([("zeros.bin", bytes(20 * MiB), None)]))
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ArchiveError) as caught:
        extract(bomb, sandbox / "target", MiB, 100)
    one_line(caught.value, "archive bomb", "'zeros.bin'", f"{MiB}-byte limit")
    many = tmp_path / "many.tar.gz"
    many.write_bytes(tar_bytes([(f"f{i}", b"", 0o644) for i in range(50)]))
    with pytest.raises(ArchiveError) as caught:
        extract(many, sandbox / "target", MiB, 10)
    one_line(caught.value, "archive bomb", "more than 10 entries")
    only_target_written(sandbox)


def test_size_limit_is_enforced_while_writing_not_only_from_headers(tmp_path: Path) -> None:
    target = SafeWriter(tmp_path / "out", MiB, 10)
    target.count("liar.bin", declared_size=10)  # the header claims 10 bytes
    stream = io.BytesIO(bytes(3 * MiB))
    with pytest.raises(ArchiveError, match=r"archive bomb: entry 'liar\.bin'"):
        target.file("liar.bin", stream.read, executable=False)
    assert (tmp_path / "out" / "liar.bin").stat().st_size <= MiB


@pytest.mark.parametrize("file_name", ["bad.1.0.zip", "bad.1.0.tar.gz", "bad.1.0.tar"])
def test_corrupt_archives(sandbox: Path, tmp_path: Path, file_name: str) -> None:
    archive = tmp_path / file_name
    whole = package_zip() if file_name.endswith(".zip") else package_tar(".gz" in file_name)
    archive.write_bytes(whole[: len(whole) // 2] if ".tar" in file_name else b"PK\x03\x04junk")
    with pytest.raises(ArchiveError) as caught:
        extract(archive, sandbox / "target", MiB, 100)
    one_line(caught.value, file_name, "corrupt archive")
    only_target_written(sandbox)


def test_damaged_zip_data_is_corrupt(tmp_path: Path) -> None:
    data = bytearray(zip_bytes([("data.txt", b"hello world " * 1000, None)]))
    data[60:70] = b"\xff" * 10  # inside the compressed data
    archive = tmp_path / "p.1.0.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="corrupt archive"):
        extract(archive, tmp_path / "out", MiB, 100)


# --- CLI -----------------------------------------------------------------------------------------




