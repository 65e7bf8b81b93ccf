"""Spare package copies staged in the background (``packages.spares``), in-process: real Redis,
a real directory feed and cache, real archives; the stager is the real thread."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
import redis
from archives import LIMITS, tools_tar, tree_state, zip_bytes
from conftest import wait_for

from workerpool.core.packageref import PackageRef
from workerpool.worker.packages.cache import PackageCache
from workerpool.worker.packages.formats import extract
from workerpool.worker.packages.install import PreparedPackage, prepare
from workerpool.worker.packages.registry import FeedRegistry
from workerpool.worker.packages.spares import Kind, Spares

MiB = 1 << 20




@pytest.fixture
def feeds(tmp_path: Path, raw: redis.Redis) -> FeedRegistry:
    folder = tmp_path / "feed"
    folder.mkdir()
    (folder / "Acme.Tools.1.0.0.tar.gz").write_bytes(tools_tar())
    for n in range(6):
        (folder / f"Acme.V{n}.1.0.0.zip").write_bytes(zip_bytes([(f"v{n}.txt", b"x" * n, None)]))
    registry = FeedRegistry(raw)
    registry.add("files", "directory", str(folder))
    return registry


@pytest.fixture
def cache(tmp_path: Path, raw: redis.Redis) -> PackageCache:
    return PackageCache(tmp_path / "cache", 1 << 30, raw, "test-pool")


@pytest.fixture
def make_spares(tmp_path: Path, cache: PackageCache):
    made: list[Spares] = []

    def make(count: int = 1, max_versions: int = 4) -> Spares:
        spares = Spares(tmp_path / "work" / ".staged", cache, count, max_versions)
        made.append(spares)
        return spares

    yield make
    for spares in made:
        spares.close()


TOOLS = PackageRef("tools", "Acme.Tools", "1.0.0", "files")


def place(ref: PackageRef, feeds: FeedRegistry, cache: PackageCache, workdir: Path,
          spares: Spares) -> PreparedPackage:
    workdir.mkdir(parents=True, exist_ok=True)  # as the worker makes each step's
    prepared = prepare(ref, feeds, cache, workdir, *LIMITS, spares=spares)
    prepared.release()
    return prepared


def kind_of(prepared: PreparedPackage) -> Kind:
    return Kind.of(prepared.ref, *LIMITS)


def folder(spares: Spares, prepared: PreparedPackage) -> Path:
    return spares.root / f"{prepared.cached.sha256}.{'tree' if prepared.ref.extract else 'file'}"




def test_a_staged_copy_is_what_a_fresh_extraction_writes(feeds, cache, make_spares,
                                                          tmp_path: Path) -> None:
    spares = make_spares()
    first = place(TOOLS, feeds, cache, tmp_path / "work" / "one", spares)
    assert not first.staged  # nothing staged before the first use
    wait_for(lambda: spares.ready(kind_of(first)) == 1, 20, "a spare staged")
    second = place(TOOLS, feeds, cache, tmp_path / "work" / "two", spares)
    assert second.staged and second.extracted_path == tmp_path / "work" / "two" / "tools"
    fresh = tmp_path / "fresh"
    with cache.fetch(TOOLS, feeds.get("files")) as cached:
        extract(cached.path, fresh, *LIMITS)
    assert tree_state(tmp_path / "work" / "two" / "tools") == tree_state(fresh)
    assert stat.S_IMODE((tmp_path / "work" / "two" / "tools").stat().st_mode) == \
        stat.S_IMODE(fresh.stat().st_mode)
    # Private: the staged tree shares no file with the first step's tree or the next spare.
    wait_for(lambda: spares.ready(kind_of(first)) == 1, 20, "a spare staged again")
    [spare] = [p for p in folder(spares, first).iterdir()]
    tool = "bin/tool"
    inodes = {(d / tool).stat().st_ino for d in (tmp_path / "work" / "one" / "tools",
                                                  tmp_path / "work" / "two" / "tools", spare)}
    assert len(inodes) == 3


def test_a_staged_file_copy_for_extract_false(feeds, cache, make_spares,
                                              tmp_path: Path) -> None:
    spares = make_spares()
    ref = PackageRef("tools", "Acme.Tools", "1.0.0", "files", extract=False)
    first = place(ref, feeds, cache, tmp_path / "work" / "one", spares)
    wait_for(lambda: spares.ready(kind_of(first)) == 1, 20, "a spare staged")
    second = place(ref, feeds, cache, tmp_path / "work" / "two", spares)
    assert second.staged and second.extracted_path is None
    assert second.file_path == tmp_path / "work" / "two" / "Acme.Tools.1.0.0.tar.gz"
    published = tmp_path / "feed" / "Acme.Tools.1.0.0.tar.gz"
    assert second.file_path.read_bytes() == published.read_bytes()
    assert second.file_path.stat().st_nlink == 1
    assert stat.S_IMODE(second.file_path.stat().st_mode) == \
        stat.S_IMODE(first.file_path.stat().st_mode)


def test_concurrent_takers_never_share_a_spare(feeds, cache, make_spares,
                                               tmp_path: Path) -> None:
    spares = make_spares(count=2)
    kind = kind_of(place(TOOLS, feeds, cache, tmp_path / "work" / "warm", spares))
    wait_for(lambda: spares.ready(kind) == 2, 20, "two spares staged")
    barrier = threading.Barrier(6)
    took: list[bool] = [False] * 6

    def take(index: int) -> None:
        barrier.wait()
        archive = spares.take(kind, tmp_path / "work" / f"t{index}")
        took[index] = archive is not None
        if archive is not None:
            archive.release()

    threads = [threading.Thread(target=take, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(took) == [False] * 4 + [True] * 2
    for index, got in enumerate(took):
        assert (tmp_path / "work" / f"t{index}" / "bin" / "tool").is_file() == got


def test_a_spare_whose_target_is_taken_stays_for_the_next_step(feeds, cache, make_spares,
                                                               tmp_path: Path) -> None:
    spares = make_spares()
    kind = kind_of(place(TOOLS, feeds, cache, tmp_path / "work" / "warm", spares))
    wait_for(lambda: spares.ready(kind) == 1, 20, "a spare staged")
    (tmp_path / "work" / "taken").mkdir()
    (tmp_path / "work" / "taken" / "mine.txt").write_text("kept")
    assert spares.take(kind, tmp_path / "work" / "taken") is None
    assert spares.take(kind, tmp_path / "work" / "missing" / "tools") is None
    assert (tmp_path / "work" / "taken" / "mine.txt").read_text() == "kept"
    assert os.listdir(tmp_path / "work" / "taken") == ["mine.txt"]
    assert spares.ready(kind) == 1  # still there for the next step


def test_only_recent_versions_keep_spares_and_evicted_ones_lose_them(
        feeds, cache, make_spares, tmp_path: Path, raw: redis.Redis) -> None:
    spares = make_spares(max_versions=2)
    used = []
    for n in range(3):
        prepared = place(PackageRef("v", f"Acme.V{n}", "1.0.0", "files"), feeds, cache,
                         tmp_path / "work" / f"s{n}", spares)
        used.append(prepared)
        wait_for(lambda p=prepared: spares.ready(kind_of(p)) == 1, 20, f"V{n} staged")
    kinds = [kind_of(p) for p in used]
    wait_for(lambda: not any(folder(spares, used[0]).iterdir()), 20, "V0's spare dropped")
    assert spares.ready(kinds[0]) == 0 and spares.ready(kinds[2]) == 1
    # Another process empties the cache: a step never gets a stale copy (V1), and V2, still
    # among the two most recent, loses its spare at the stager's next round.
    PackageCache(cache.root, 0, raw, "test-pool").evict()
    assert spares.take(kinds[1], tmp_path / "work" / "stale") is None
    assert not (tmp_path / "work" / "stale").exists()
    later = place(PackageRef("v", "Acme.V3", "1.0.0", "files"), feeds, cache,
                  tmp_path / "work" / "s3", spares)
    wait_for(lambda: spares.ready(kind_of(later)) == 1, 20, "V3 staged")
    assert spares.ready(kinds[2]) == 0
    wait_for(lambda: not any(folder(spares, used[2]).iterdir()), 20, "V2's tree removed")


def test_close_removes_every_spare_and_disabled_stages_nothing(feeds, cache, make_spares,
                                                               tmp_path: Path) -> None:
    off = make_spares(count=0)
    kind = kind_of(place(TOOLS, feeds, cache, tmp_path / "work" / "off", off))
    assert off.ready(kind) == 0 and not off.root.exists()
    on = make_spares()
    place(TOOLS, feeds, cache, tmp_path / "work" / "on", on)
    wait_for(lambda: on.ready(kind) == 1, 20, "a spare staged")
    on.close()
    assert not on.root.exists()
    assert on.take(kind, tmp_path / "work" / "after") is None
    assert not any(t.name == "package-stager" for t in threading.enumerate())


