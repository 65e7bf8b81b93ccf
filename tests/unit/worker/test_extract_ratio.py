"""Disk amplification, without Redis: archives that expand far past their size (sparse tar
members, zip bombs, many small bombs) are refused by the ratio to their compressed size, before
or while writing, naming the entry and the setting; small genuine archives pass the floor.
The archives are real (tests/archives.py builds them without writing what they expand to)."""

from __future__ import annotations

import io
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from archives import MiB, disk_bytes, sparse_tar, tree, zeros_zip, zip_bytes
from conftest import one_line

from workerpool.core.errors import ArchiveError, BadInput
from workerpool.core.settings import Settings
from workerpool.worker.packages.archive import Ratio, SafeWriter
from workerpool.worker.packages.formats import extract

GB_35 = 3_500_000_000
DEFAULT = Ratio()
SMALL = Ratio(times=10, floor=MiB)  # a bomb's worth of refusal at a test's sizes
RATIO = "WORKERPOOL_EXTRACT_MAX_RATIO"
FLOOR = "WORKERPOOL_EXTRACT_RATIO_FLOOR_BYTES"


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused(archive: Path, target: Path, ratio: Ratio = DEFAULT) -> tuple[str, float]:
    """The refusal's text and how long it took."""
    started = time.monotonic()
    with pytest.raises(ArchiveError) as caught:
        extract(archive, target, 4 << 30, 1000, ratio)
    return str(caught.value), time.monotonic() - started


def whole_archive(name: str, archive: Path, ratio: Ratio) -> str:
    size = archive.stat().st_size
    return (f"{archive.name}: archive bomb: entry {name!r} takes the extracted size past "
            f"{max(ratio.floor, size * ratio.times)} bytes, the most this {size}-byte archive "
            f"may expand to ({RATIO}={ratio.times} times, at least {FLOOR}={ratio.floor}); "
            f"raise {RATIO} if the package is genuine")


@pytest.mark.parametrize(("style", "file_name"), [("gnu", "Disk.1.0.tar.gz"),
                                                  ("pax", "Disk.1.0.tar.gz"),
                                                  ("gnu", "Disk.1.0.tar")])
def test_a_tiny_tar_with_a_sparse_multi_gb_member_is_refused_before_writing(
        sandbox: Path, tmp_path: Path, style: str, file_name: str) -> None:
    archive = write(tmp_path, file_name, sparse_tar(GB_35, style, gz=file_name.endswith(".gz")))
    assert archive.stat().st_size <= 10_240
    text, took = refused(archive, sandbox / "target")
    assert text == whole_archive("disk.img", archive, DEFAULT)
    assert took < 1.0  # the declared size is judged before a byte is written
    assert tree(sandbox / "target") == set() and disk_bytes(sandbox) == 0


def test_a_sparse_member_within_the_floor_is_written_whole(tmp_path: Path) -> None:
    archive = write(tmp_path, "Disk.1.0.tar.gz", sparse_tar(4 * MiB, "pax"))
    done = extract(archive, tmp_path / "out", 4 << 30, 1000, DEFAULT)
    data = (tmp_path / "out" / "disk.img").read_bytes()
    assert (done.files, done.bytes) == (1, 4 * MiB)
    assert data == bytes(4 * MiB - 512) + b"y" * 512


def test_a_1_mb_zip_of_1_gib_of_zeros_is_refused_by_its_entry_ratio(sandbox: Path,
                                                                    tmp_path: Path) -> None:
    archive = write(tmp_path, "Bomb.1.0.zip", zeros_zip(1 << 30))
    assert archive.stat().st_size < 1_100_000
    text, took = refused(archive, sandbox / "target")
    [entry] = zipfile.ZipFile(archive).infolist()
    compressed = entry.compress_size
    assert text == (f"Bomb.1.0.zip: archive bomb: entry 'zeros.bin' expands past "
                    f"{compressed * 200} bytes, the most its {compressed} compressed bytes may "
                    f"expand to ({RATIO}=200 times, at least {FLOOR}={64 * MiB}); raise {RATIO} "
                    "if the package is genuine")
    assert took < 1.0 and disk_bytes(sandbox) == 0


def test_many_entries_each_within_the_entry_ratio_are_held_to_the_archive_ratio(
        sandbox: Path, tmp_path: Path) -> None:
    archive = write(tmp_path, "Many.1.0.zip",
                    zip_bytes([(f"z{n:03d}.bin", bytes(MiB // 2), None) for n in range(100)]))
    cap = max(SMALL.floor, archive.stat().st_size * SMALL.times)
    text, _ = refused(archive, sandbox / "target", SMALL)
    first = cap // (MiB // 2)  # entries written whole before the one that passes the cap
    assert text == whole_archive(f"z{first:03d}.bin", archive, SMALL)
    assert disk_bytes(sandbox / "target") <= cap


def test_a_tar_gz_of_a_huge_zero_file_is_judged_as_a_whole(sandbox: Path,
                                                           tmp_path: Path) -> None:
    member = io.BytesIO()  # a regular member: no compressed size of its own, only the archive's
    with tarfile.open(fileobj=member, mode="w:gz") as tf:
        info = tarfile.TarInfo("zeros.img")
        info.size = 32 * MiB
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    archive = write(tmp_path, "Zeros.1.0.tar.gz", member.getvalue())
    text, _ = refused(archive, sandbox / "target", SMALL)
    assert text == whole_archive("zeros.img", archive, SMALL)
    assert disk_bytes(sandbox) == 0


@pytest.mark.parametrize("compressed", [10, None], ids=["zip-entry", "tar-member"])
def test_the_ratio_counts_bytes_written_not_headers(tmp_path: Path,
                                                    compressed: int | None) -> None:
    writer = SafeWriter(tmp_path / "out", 4 << 30, 10, SMALL, archive_size=1000)
    writer.count("liar.bin", declared_size=10, compressed=compressed)  # the header claims 10
    with pytest.raises(ArchiveError) as caught:
        writer.file("liar.bin", io.BytesIO(bytes(5 * MiB)).read, False, compressed)
    if compressed is None:
        one_line(caught.value, "'liar.bin' takes the extracted size past 1048576 bytes",
                 "this 1000-byte archive", f"raise {RATIO}")
    else:
        one_line(caught.value, "'liar.bin' expands past 1048576 bytes",
                 "its 10 compressed bytes", f"raise {RATIO}")
    assert (tmp_path / "out" / "liar.bin").stat().st_size <= MiB


def test_small_genuine_archives_expand_up_to_the_floor(tmp_path: Path) -> None:
    archive = write(tmp_path, "Fill.1.0.zip", zeros_zip(32 * MiB))  # ratio about 1000
    assert archive.stat().st_size * 200 < 32 * MiB
    done = extract(archive, tmp_path / "out", 4 << 30, 1000, DEFAULT)
    assert (done.files, done.bytes) == (1, 32 * MiB)
    assert (tmp_path / "out" / "zeros.bin").stat().st_size == 32 * MiB


def test_the_absolute_limit_is_named_before_the_ratio(sandbox: Path, tmp_path: Path) -> None:
    archive = write(tmp_path, "Disk.1.0.tar.gz", sparse_tar(GB_35))
    with pytest.raises(ArchiveError) as caught:
        extract(archive, sandbox / "target", MiB, 10, DEFAULT)
    one_line(caught.value, "'disk.img' takes the extracted size past the 1048576-byte limit")


def test_extract_and_workdir_settings_defaults_and_refusals() -> None:
    defaults = Settings.from_env({})
    assert (defaults.extract_max_ratio, defaults.extract_ratio_floor_bytes,
            defaults.workdir_max_bytes, defaults.workdir_min_free_bytes) == (
                200, 64 * MiB, 0, 1 << 30)
    chosen = Settings.from_env({RATIO: "50", FLOOR: "0", "WORKERPOOL_WORKDIR_MAX_BYTES": "5",
                                "WORKERPOOL_WORKDIR_MIN_FREE_BYTES": "0"})
    assert Ratio.of(chosen) == Ratio(50, 0)
    assert (chosen.workdir_max_bytes, chosen.workdir_min_free_bytes) == (5, 0)
    for name, value, why in ((RATIO, "0", "must be greater than 0"),
                             (FLOOR, "-1", "must be at least 0"),
                             ("WORKERPOOL_WORKDIR_MAX_BYTES", "lots", "is not a whole number")):
        with pytest.raises(BadInput) as caught:
            Settings.from_env({name: value})
        one_line(caught.value, name, why)
