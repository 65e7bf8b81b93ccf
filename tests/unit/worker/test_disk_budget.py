"""The disk budget of staged package copies, without Redis: what a tree takes on disk, the
budget's two refusals, and the staging helper (a real child process) that checks it before it
writes a spare and holds a spare to the same ratio a step's extraction is held to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from archives import MiB, disk_bytes, sparse_tar, tools_tar, tree_state
from conftest import one_line

from workerpool.worker.packages.archive import Extracted
from workerpool.worker.packages.budget import DiskBudget, NoRoom, disk_usage, footprint
from workerpool.worker.packages.formats import extract
from workerpool.worker.packages.stager import Stager


def folder_blocks(root: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in root.rglob("*") if p.is_dir()
               and not p.is_symlink())


def test_disk_usage_counts_blocks_once_per_inode_and_follows_no_link(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "step" / "db").mkdir(parents=True)
    (root / "step" / "db" / "data.bin").write_bytes(os.urandom(MiB))
    os.link(root / "step" / "db" / "data.bin", root / "step" / "copy.bin")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(os.urandom(2 * MiB))
    (root / "step" / "out").symlink_to(outside)
    with open(root / "step" / "sparse.img", "wb") as fh:
        fh.truncate(1 << 30)  # a hole: no block
    own = [root / "step" / "db" / "data.bin", root / "step" / "out", root / "step" / "sparse.img"]
    assert disk_usage(root) == folder_blocks(root) + sum(p.lstat().st_blocks * 512 for p in own)
    assert disk_usage(root) < 2 * MiB  # the link's target and the hole count nothing
    assert disk_usage(tmp_path / "gone") == 0


def test_a_copy_takes_its_bytes_and_at_most_a_block_per_file() -> None:
    assert footprint(Extracted(files=3, bytes=100)) == 100 + 3 * 4096


def test_the_budget_refuses_past_its_bytes_or_under_the_free_space(tmp_path: Path) -> None:
    (tmp_path / "step").mkdir()
    (tmp_path / "step" / "data.bin").write_bytes(os.urandom(MiB))
    used = disk_usage(tmp_path)
    DiskBudget(max_bytes=used + 1000, min_free=0).check(tmp_path, 1000)  # just fits
    DiskBudget(max_bytes=0, min_free=0).check(tmp_path, MiB)  # no budget: free space only
    with pytest.raises(NoRoom) as caught:
        DiskBudget(max_bytes=used + 1000, min_free=0).check(tmp_path, 1001)
    assert str(caught.value) == (
        f"its 1001 bytes and the {used} bytes the working directories take would pass "
        f"WORKERPOOL_WORKDIR_MAX_BYTES={used + 1000}; raise WORKERPOOL_WORKDIR_MAX_BYTES to "
        "stage it")
    with pytest.raises(NoRoom) as caught:
        DiskBudget(max_bytes=0, min_free=1 << 62).check(tmp_path, 10)
    one_line(caught.value, "its 10 bytes would leave", f"file system of {tmp_path}",
             f"under WORKERPOOL_WORKDIR_MIN_FREE_BYTES={1 << 62}", "lower")
    with pytest.raises(NoRoom) as caught:  # more than is free: refused even with no margin
        DiskBudget(max_bytes=0, min_free=0).check(tmp_path, 1 << 60)
    one_line(caught.value, f"its {1 << 60} bytes would leave -",
             "under WORKERPOOL_WORKDIR_MIN_FREE_BYTES=0")


def job(archive: Path, target: Path, **extra: object) -> dict[str, object]:
    return {"archive": str(archive), "target": str(target), "extract": True,
            "max_bytes": 64 * MiB, "max_entries": 1000, **extra}


def test_the_staging_helper_checks_the_budget_and_the_ratio_before_writing(
        tmp_path: Path) -> None:
    archive = tmp_path / "Acme.Tools.1.0.0.tar.gz"
    archive.write_bytes(tools_tar())
    bomb = tmp_path / "Disk.1.0.tar.gz"
    bomb.write_bytes(sparse_tar(3_500_000_000))
    room = {"root": str(tmp_path), "size": 10_000, "max_bytes": 1, "min_free": 0}
    stager = Stager()
    try:
        with pytest.raises(NoRoom, match="would pass WORKERPOOL_WORKDIR_MAX_BYTES=1;"):
            stager.write(job(archive, tmp_path / "refused", room=room), lambda: 0.0)
        assert not (tmp_path / "refused").exists()
        stager.write(job(archive, tmp_path / "spare", room={**room, "max_bytes": 0}),
                     lambda: 0.0)
        extract(archive, tmp_path / "fresh")
        assert tree_state(tmp_path / "spare") == tree_state(tmp_path / "fresh")
        with pytest.raises(OSError) as caught:
            stager.write(job(bomb, tmp_path / "bomb", max_bytes=4 << 30, max_ratio=50,
                             ratio_floor=MiB),
                         lambda: 0.0)
        assert not isinstance(caught.value, NoRoom)
        one_line(caught.value, "archive bomb: entry 'disk.img'",
                 "WORKERPOOL_EXTRACT_MAX_RATIO=50 times", "_RATIO_FLOOR_BYTES=1048576")
        assert disk_bytes(tmp_path / "bomb") == 0
    finally:
        stager.close()
