"""Who scripts run as: per-slot uids held by real lock files, a named user, or the worker's."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from workerpool.core.errors import BadInput
from workerpool.core.settings import Settings
from workerpool.worker.isolation.users import (
    ScriptUsers,
    hand_over,
    named_user,
    reachable_by_others,
)

UIDS = range(63000, 63004)  # its own range: workers here use 61000-61999 (the tests run as root)

def test_each_slot_and_the_health_check_get_a_uid_no_other_worker_holds() -> None:
    first = ScriptUsers(None, 2, UIDS)
    try:
        assert first.mode == "slots" and first.uids == [63000, 63001, 63002]
        assert first.health is not None and first.health.uid == 63000
        taken = {first.take(), first.take()}
        assert {u.uid for u in taken if u} == {63001, 63002}
        assert all(u is not None and u.exclusive and u.gid == 63000 for u in taken)
        # Another worker on this machine gets what is left, and is refused past the range.
        with pytest.raises(BadInput, match="has 1 free uids and this worker needs 2"):
            ScriptUsers(None, 1, UIDS)
        for user in taken:
            first.give_back(user)
        assert "uids 63000, 63001, 63002" in first.describe()
    finally:
        first.close()
    again = ScriptUsers(None, 3, UIDS)  # the locks went with the first worker
    assert again.uids == [63000, 63001, 63002, 63003]
    again.close()


def test_same_runs_scripts_as_the_worker_and_warns() -> None:
    users = ScriptUsers("same", 4, UIDS)
    assert users.take() is None and users.uids == []
    assert users.describe().startswith("WARNING: scripts run as")


def test_a_named_user_serves_every_step_and_root_is_refused() -> None:
    nobody = pwd.getpwnam("nobody")
    users = ScriptUsers("nobody", 2, UIDS)
    assert users.take() == users.take() == named_user("nobody")
    assert (users.fixed.uid, users.fixed.home) == (nobody.pw_uid, nobody.pw_dir)
    assert not users.fixed.exclusive  # others may run as it: its processes are not the step's
    for bad, words in (("root", "must not run as root"), ("0", "must not run as root"),
                       ("no-such-user-x", "no such user")):
        with pytest.raises(BadInput, match=words):
            named_user(bad)


def test_the_uid_range_setting() -> None:
    assert Settings.from_env({}).script_uids == range(61000, 62000)
    assert Settings.from_env({"WORKERPOOL_SCRIPT_UIDS": "5000-5001"}).script_uids == \
        range(5000, 5002)
    for bad in ("5000", "9-2", "0-10", "a-b"):
        with pytest.raises(BadInput, match="WORKERPOOL_SCRIPT_UIDS"):
            Settings.from_env({"WORKERPOOL_SCRIPT_UIDS": bad})


def test_hand_over_gives_the_whole_tree_links_included(tmp_path: Path) -> None:
    user = ScriptUsers(None, 1, UIDS)
    try:
        slot = user.take()
        assert slot is not None
        (tmp_path / "db" / "scripts").mkdir(parents=True)
        (tmp_path / "db" / "scripts" / "run.sh").write_text("x")
        (tmp_path / "link").symlink_to("/etc/passwd")
        hand_over(tmp_path, slot)
        for path in (tmp_path, tmp_path / "db", tmp_path / "db" / "scripts" / "run.sh"):
            assert path.stat().st_uid == slot.uid
        assert (tmp_path / "link").lstat().st_uid == slot.uid
        assert Path("/etc/passwd").stat().st_uid == 0  # a link's target is never given away
    finally:
        user.close()


def test_reachable_by_others(tmp_path: Path) -> None:
    tool = tmp_path / "a" / "tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    os.chmod(tmp_path, 0o711)
    assert reachable_by_others(str(tool))
    os.chmod(tool.parent, 0o700)
    assert not reachable_by_others(str(tool))
    os.chmod(tool.parent, 0o755)
    tool.chmod(0o750)
    assert not reachable_by_others(str(tool))
    assert stat.S_IMODE(tool.stat().st_mode) == 0o750
