"""Spare package copies staged in the background (``packages.spares``), in-process: real Redis,
a real directory feed and cache, real archives; the stager is the real thread."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from archives import LIMITS, tools_tar, tree_state
from conftest import wait_for

from workerpool.core.errors import BadInput
from workerpool.core.settings import Settings
from workerpool.worker.packages.formats import extract
from workerpool.worker.packages.stager import Stager

MiB = 1 << 20








def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def test_the_helper_waits_while_a_step_starts_then_writes(tmp_path: Path) -> None:
    archive = tmp_path / "Acme.Tools.1.0.0.tar.gz"
    archive.write_bytes(tools_tar())
    target = tmp_path / "spare"
    stager = Stager()
    resume_at = [float("inf")]  # a step is starting, for as long as the test says
    failures: list[BaseException] = []

    def job() -> None:
        try:
            stager.write({"archive": str(archive), "target": str(target), "extract": True,
                          "max_bytes": LIMITS[0], "max_entries": LIMITS[1]},
                         lambda: resume_at[0])
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    thread = threading.Thread(target=job)
    thread.start()
    try:
        wait_for(lambda: state(stager.pid) == "T", 20, "the helper stopped")
        assert not target.exists()
        resume_at[0] = 0.0  # the step's start is over
        thread.join(20)
        assert not thread.is_alive() and failures == []
        fresh = tmp_path / "fresh"
        extract(archive, fresh, *LIMITS)
        assert tree_state(target) == tree_state(fresh)
        with pytest.raises(OSError, match="archive bomb"):
            stager.write({"archive": str(archive), "target": str(tmp_path / "small"),
                          "extract": True, "max_bytes": LIMITS[0], "max_entries": 2},
                         lambda: 0.0)
    finally:
        resume_at[0] = 0.0
        thread.join(20)
        stager.close()
    assert not stager.alive()


def test_the_spares_setting_allows_zero_but_not_less() -> None:
    assert Settings.from_env({}).package_spares == 1
    assert Settings.from_env({"WORKERPOOL_PACKAGE_SPARES": "0"}).package_spares == 0
    with pytest.raises(BadInput, match="WORKERPOOL_PACKAGE_SPARES must be at least 0"):
        Settings.from_env({"WORKERPOOL_PACKAGE_SPARES": "-1"})
