"""A step's working directory: made per attempt, removed whole, never following a link out."""

from __future__ import annotations

import os

from workerpool.worker.workdirs import make_workdir, remove_workdir


def test_each_attempt_gets_a_new_private_directory_named_after_it(tmp_path):
    first = make_workdir(tmp_path, "abc123", "0")
    assert first == tmp_path / "abc123-0"
    assert first.stat().st_mode & 0o777 == 0o700
    again = make_workdir(tmp_path, "abc123", "0")  # the name is taken: never reused
    assert again != first and again.name.startswith("abc123-0-") and again.is_dir()
    assert make_workdir(tmp_path, "abc123", "1") == tmp_path / "abc123-1"


def test_a_directory_of_files_is_removed(tmp_path):
    workdir = make_workdir(tmp_path, "s", "0")
    for name in ("script.sh", "out.txt", ".hidden"):
        (workdir / name).write_text(name)
    os.mkfifo(workdir / "fifo")
    remove_workdir(workdir)
    assert not workdir.exists()


def test_nested_directories_and_links_are_removed_without_following_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    workdir = make_workdir(tmp_path, "s", "0")
    (workdir / "script.sh").write_text("true")
    (workdir / "link-to-dir").symlink_to(outside)
    (workdir / "link-to-file").symlink_to(outside / "keep.txt")
    nested = workdir / "a" / "b"
    nested.mkdir(parents=True)
    (nested / "deep.txt").write_text("x")
    (workdir / "a").chmod(0o500)  # a script may leave a directory read-only
    remove_workdir(workdir)
    assert not workdir.exists()
    assert (outside / "keep.txt").read_text() == "keep"


def test_only_links_to_directories_are_unlinked_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    workdir = make_workdir(tmp_path, "s", "0")
    (workdir / "link").symlink_to(outside)
    remove_workdir(workdir)
    assert not workdir.exists()
    assert (outside / "keep.txt").exists()


def test_a_missing_directory_is_no_error(tmp_path):
    remove_workdir(tmp_path / "gone")


def test_a_script_is_written_whole_as_utf8(tmp_path):
    from workerpool.core.syntaxes import write_script
    script = "echo 'héllo ✓'\n" + "x" * (3 << 20)
    write_script(tmp_path / "script.sh", script)
    assert (tmp_path / "script.sh").read_bytes() == script.encode()
    write_script(tmp_path / "script.sh", "true\n")  # an existing file is replaced whole
    assert (tmp_path / "script.sh").read_text() == "true\n"
