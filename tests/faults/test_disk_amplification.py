"""Disk amplification on real workers: packages that expand far past their size fail their
step at once with one line naming the entry and the setting (the worker then serves a genuine
package), and a worker short of its disk budget stages no spare copy while its steps still
extract. Packages come from a real directory feed and the built-in feed; the budget's outcome
is read from the files under the worker's ``.staged/`` and its log."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest
from archives import MiB, disk_bytes, sparse_tar, zeros_zip, zip_bytes
from conftest import wait_for

from workerpool import ScriptStep
from workerpool.core import keys
from workerpool.core.packageref import PackageRef
from workerpool.worker.packages.builtin import push
from workerpool.worker.packages.registry import FeedRegistry
from workerpool.worker.workdirs import workdir_root

POOL = "Work"
RATIO = "WORKERPOOL_EXTRACT_MAX_RATIO"
FLOOR = "WORKERPOOL_EXTRACT_RATIO_FLOOR_BYTES"
STAGED = "from a staged copy"
SKIPPED = "not staging a spare copy of acme.database 1.2.0 (steps extract it inline): its "


def run(client, script: str, *refs: PackageRef):
    return client.run(ScriptStep(script=script, pool=POOL, packages=refs)).wait(timeout=60)


def system(result) -> list[str]:
    return [e.text for e in result.log if e.stream == "system"]


def stdout(result) -> list[str]:
    return [e.text for e in result.log if e.stream == "stdout"]


def root_of(client, worker) -> Path:
    [info] = [w for w in client.workers.list() if w.pid == worker.pid]
    return workdir_root(info.name, info.instance)


def staged_files(root: Path, ready: bool = False) -> list[Path]:
    """The files of spares, or (*ready*) of ready ones only: not those of a copy still being
    written (``.<name>``, renamed ready under the stager's lock, with its entry)."""
    return [p for p in (root / ".staged").rglob("*") if p.is_file() and not (
        ready and any(part.startswith(".") for part in p.relative_to(root / ".staged").parts))]


@pytest.fixture
def feed(client, tmp_path: Path) -> Path:
    folder = tmp_path / "feed"
    folder.mkdir()
    FeedRegistry(client.redis).add("files", "directory", str(folder))
    return folder


def test_bombs_fail_their_step_at_once_and_the_worker_then_extracts_a_genuine_package(
        client, raw, start_worker, feed, tmp_path) -> None:
    (feed / "Bomb.Sparse.1.0.0.tar.gz").write_bytes(sparse_tar(3_500_000_000))  # 98 bytes
    (feed / "Bomb.Zip.1.0.0.zip").write_bytes(zeros_zip(1 << 30))  # 1 MB
    (feed / "Acme.Fill.1.0.0.zip").write_bytes(zeros_zip(16 * MiB))  # past 100x, under the floor
    client.pools.add(POOL)
    worker = start_worker(POOL, extra_env={RATIO: "100"})
    root = root_of(client, worker)
    marker = tmp_path / "script-ran"
    [entry] = zipfile.ZipFile(feed / "Bomb.Zip.1.0.0.zip").infolist()
    compressed = entry.compress_size
    expected = {
        "Bomb.Sparse": "package Bomb.Sparse 1.0.0 from feed 'files': Bomb.Sparse.1.0.0.tar.gz: "
                       f"archive bomb: entry 'disk.img' takes the extracted size past {64 * MiB} "
                       "bytes, the most this 98-byte archive may expand to ("
                       f"{RATIO}=100 times, at least {FLOOR}={64 * MiB}); raise {RATIO} if the "
                       "package is genuine",
        "Bomb.Zip": "package Bomb.Zip 1.0.0 from feed 'files': Bomb.Zip.1.0.0.zip: archive bomb: "
                    f"entry 'zeros.bin' expands past {compressed * 100} bytes, the most its "
                    f"{compressed} compressed bytes may expand to ({RATIO}=100 times, at least "
                    f"{FLOOR}={64 * MiB}); raise {RATIO} if the package is genuine",
    }
    for package, line in expected.items():
        result = run(client, f"touch {marker}", PackageRef("bomb", package, "1.0.0", "files"))
        assert (result.state, result.exit_code, system(result)[-1]) == ("Failed", None, line)
        assert result.finished_at - result.started_at < 5  # refused from its header
    assert not marker.exists()
    wait_for(lambda: disk_bytes(root) < MiB, 10, "the failed steps' trees removed")
    assert staged_files(root) == []  # a refused package is never staged
    genuine = run(client, "stat -c %s fill/zeros.bin", PackageRef("fill", "Acme.Fill", "1.0.0",
                                                                  "files"))
    assert (genuine.state, genuine.worker, stdout(genuine)) == ("Success", worker.name,
                                                                [str(16 * MiB)])
    assert raw.zcard(keys.running(worker.pool_slug)) == 0


@pytest.mark.parametrize(("setting", "value", "reason"), [
    ("WORKERPOOL_WORKDIR_MAX_BYTES", "100000",
     "would pass WORKERPOOL_WORKDIR_MAX_BYTES=100000; raise WORKERPOOL_WORKDIR_MAX_BYTES to "
     "stage it"),
    ("WORKERPOOL_WORKDIR_MIN_FREE_BYTES", str(1 << 60),
     f"under WORKERPOOL_WORKDIR_MIN_FREE_BYTES={1 << 60}; free disk space, or lower "
     "WORKERPOOL_WORKDIR_MIN_FREE_BYTES to stage it"),
    ("WORKERPOOL_WORKDIR_MAX_BYTES", str(1 << 30), None),
], ids=["over-budget", "short-of-free-space", "within-budget"])
def test_a_worker_short_of_its_disk_budget_stages_no_spare_and_steps_still_extract(
        client, start_worker, tmp_path, setting: str, value: str, reason: str | None) -> None:
    data = os.urandom(300_000)
    push(client.redis, _package(tmp_path, data))
    client.pools.add(POOL)
    worker = start_worker(POOL, extra_env={setting: value})
    root = root_of(client, worker)
    ref = PackageRef("db", "Acme.Database", "1.2.0")
    log = tmp_path / "worker-0.log"
    for attempt in (1, 2):
        result = run(client, "sha256sum < db/data.bin", ref)
        assert result.state == "Success", system(result)
        assert stdout(result) == [f"{hashlib.sha256(data).hexdigest()}  -"]
        how = "downloaded" if attempt == 1 else "from cache"
        staged = f" {STAGED}" if reason is None and attempt == 2 else ""
        assert [x for x in system(result) if x.startswith("package Acme.Database")] == [
            f"package Acme.Database 1.2.0 ({how}) extracted to ./db/{staged}"]
        if reason is None:
            wait_for(lambda: staged_files(root, ready=True), 20, "a spare staged")
            continue
        wait_for(lambda n=attempt: log.read_text().count(SKIPPED) == n, 20,
                 "the budget's decision")
        [line] = [x for x in log.read_text().splitlines() if SKIPPED in x][-1:]
        assert line.endswith(reason) and staged_files(root) == []


def _package(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "Acme.Database.1.2.0.zip"
    path.write_bytes(zip_bytes([("VERSION", b"1.2.0\n", None), ("data.bin", data, None)]))
    return path
