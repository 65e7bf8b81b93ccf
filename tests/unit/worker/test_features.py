"""Configuration features over a working directory: globs, substitution, structured files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workerpool.core.errors import BadInput
from workerpool.worker.step.features import apply_features

SECRET = "s3cr3t-Pa55"
VARIABLES = {"Db.Password": SECRET, "Db.Host": "db-host-value", "Db.Name": "orders-value",
             "ConnectionStrings:Default": "Server=#{Db.Host};Password=#{Db.Password}",
             "Logging:Level": "Debug-value"}


class Log(list[str]):
    """Collects log lines; the callable the features are given."""

    def __call__(self, line: str) -> None:
        self.append(line)


def put(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def run(workdir: Path, substitute: list[str] | None = None,
        structured: list[str] | None = None) -> tuple[list[Path], Log]:
    log = Log()
    changed = apply_features(workdir, VARIABLES, substitute or [], structured or [], log)
    return changed, log


# --- substitution --------------------------------------------------------------------------------


def test_recursive_glob_substitutes_matching_files_only(tmp_path: Path) -> None:
    top = put(tmp_path / "db" / "app.config", "host=#{Db.Host} db=#{db.name} pw=#{Db.Password}")
    deep = put(tmp_path / "db" / "a" / "b" / "deep.config", "host=#{Db.Host}")
    other = put(tmp_path / "db" / "notes.txt", "host=#{Db.Host}")
    outside_glob = put(tmp_path / "web.config", "host=#{Db.Host}")
    changed, log = run(tmp_path, substitute=["db/**/*.config"])
    assert changed == [tmp_path / "db" / "a" / "b" / "deep.config", tmp_path / "db" / "app.config"]
    assert top.read_text() == f"host=db-host-value db=orders-value pw={SECRET}"
    assert deep.read_text() == "host=db-host-value"
    assert other.read_text() == outside_glob.read_text() == "host=#{Db.Host}"
    assert log == ["substituted variables in db/a/b/deep.config (1 replacement)",
                   "substituted variables in db/app.config (3 replacements)"]


def test_missing_variables_are_warnings_and_unchanged_files_are_not_returned(
        tmp_path: Path) -> None:
    path = put(tmp_path / "a.config", "x=#{Nope} y=#{ Also.Nope }")
    changed, log = run(tmp_path, substitute=["*.config"])
    assert changed == []
    assert path.read_text() == "x=#{Nope} y=#{ Also.Nope }"
    assert log == ["warning: a.config: no variable named 'Nope'; #{Nope} left as written",
                   "warning: a.config: no variable named 'Also.Nope'; #{Also.Nope} left as "
                   "written"]


def test_glob_matching_nothing_is_a_warning(tmp_path: Path) -> None:
    changed, log = run(tmp_path, substitute=["missing/**/*.config", ""], structured=["*.json"])
    assert changed == []
    assert log == ["warning: no files match 'missing/**/*.config'",
                   "warning: no files match '*.json'"]


def test_globs_may_be_newline_separated_and_use_backslashes(tmp_path: Path) -> None:
    put(tmp_path / "a" / "x.txt", "#{Db.Name}")
    put(tmp_path / "b" / "y.txt", "#{Db.Name}")
    changed, _ = run(tmp_path, substitute=["a\\*.txt\nb/*.txt"])
    assert changed == [tmp_path / "a" / "x.txt", tmp_path / "b" / "y.txt"]


def test_a_file_matched_twice_is_processed_once(tmp_path: Path) -> None:
    put(tmp_path / "a.config", "##{Db.Name} #{Db.Name}")
    changed, log = run(tmp_path, substitute=["*.config", "**/a.config"])
    assert changed == [tmp_path / "a.config"]
    assert (tmp_path / "a.config").read_text() == "#{Db.Name} orders-value"
    assert log == ["substituted variables in a.config (1 replacement)"]


@pytest.mark.parametrize("pattern", ["../*.config", "/etc/*.conf", "a/../../x", "C:\\x\\*.txt"])
def test_globs_that_leave_the_working_directory_are_refused(tmp_path: Path, pattern: str) -> None:
    with pytest.raises(BadInput, match="leaves the working directory"):
        run(tmp_path / "work", substitute=[pattern])


def test_symlinks_to_outside_the_working_directory_are_not_touched(tmp_path: Path) -> None:
    workdir, outside = tmp_path / "work", tmp_path / "outside"
    secret_file = put(outside / "target.config", "keep #{Db.Name}")
    put(workdir / "inside.config", "#{Db.Name}")
    (workdir / "link.config").symlink_to(secret_file)
    (workdir / "linkdir").symlink_to(outside, target_is_directory=True)
    changed, log = run(workdir, substitute=["*.config", "**/*.config", "linkdir/*.config"],
                       structured=["linkdir/*.config"])
    assert secret_file.read_text() == "keep #{Db.Name}"
    assert changed == [workdir / "inside.config"]
    assert "warning: skipped link.config: it links outside the working directory" in log
    assert "warning: skipped linkdir/target.config: it links outside the working directory" in log


def test_symlink_inside_the_working_directory_is_followed(tmp_path: Path) -> None:
    target = put(tmp_path / "real" / "app.config", "#{Db.Name}")
    (tmp_path / "alias.config").symlink_to(target)
    changed, _ = run(tmp_path, substitute=["alias.config"])
    assert changed == [tmp_path / "alias.config"]
    assert target.read_text() == "orders-value"


def test_binary_and_non_utf8_files_are_skipped(tmp_path: Path) -> None:
    binary = put(tmp_path / "image.config", b"\x89PNG\x00\x00#{Db.Name}")
    latin = put(tmp_path / "latin.config", b"caf\xe9 #{Db.Name}")
    changed, log = run(tmp_path, substitute=["*.config"])
    assert changed == []
    assert binary.read_bytes() == b"\x89PNG\x00\x00#{Db.Name}"
    assert latin.read_bytes() == b"caf\xe9 #{Db.Name}"
    assert log == ["skipped image.config: it is a binary file",
                   "skipped latin.config: it is not UTF-8 text"]


def test_newline_style_bom_and_utf8_are_kept(tmp_path: Path) -> None:
    crlf = put(tmp_path / "crlf.txt", b"caf\xc3\xa9\r\nname=#{Multi}\r\nend\r\n")
    lf = put(tmp_path / "lf.txt", b"\xef\xbb\xbfname=#{Multi}\nend")
    log = Log()
    apply_features(tmp_path, {"Multi": "one\ntwo"}, ["*.txt"], [], log)
    assert crlf.read_bytes() == b"caf\xc3\xa9\r\nname=one\r\ntwo\r\nend\r\n"
    assert lf.read_bytes() == b"\xef\xbb\xbfname=one\ntwo\nend"


def test_variable_cycle_is_bad_input(tmp_path: Path) -> None:
    put(tmp_path / "a.txt", "#{A}")
    with pytest.raises(BadInput, match="variable cycle: A -> B -> A"):
        apply_features(tmp_path, {"A": "#{B}", "B": "#{A}"}, ["*.txt"], [], Log())


# --- structured replacement ----------------------------------------------------------------------


def test_structured_replacement_with_resolved_values(tmp_path: Path) -> None:
    path = put(tmp_path / "appsettings.json", json.dumps(
        {"ConnectionStrings": {"Default": "old"}, "Logging": {"Level": "Info"}}, indent=2) + "\n")
    changed, log = run(tmp_path, structured=["*.json"])
    assert changed == [path]
    assert json.loads(path.read_text()) == {
        "ConnectionStrings": {"Default": f"Server=db-host-value;Password={SECRET}"},
        "Logging": {"Level": "Debug-value"}}
    assert log == ["replaced 2 structured variables in appsettings.json: "
                   "ConnectionStrings:Default, Logging:Level"]


def test_structured_file_without_matching_keys_is_logged_not_changed(tmp_path: Path) -> None:
    path = put(tmp_path / "config" / "other.yaml", "a: 1  # comment\n")
    changed, log = run(tmp_path, structured=["config/*.yaml"])
    assert changed == []
    assert path.read_text() == "a: 1  # comment\n"
    assert log == ["no structured variables matched a key in config/other.yaml"]


def test_substitution_runs_before_structured_replacement(tmp_path: Path) -> None:
    path = put(tmp_path / "app.json", '{"Db": "#{Db.Name}", "Logging": {"Level": "x"}}')
    changed, log = run(tmp_path, substitute=["*.json"], structured=["*.json"])
    assert changed == [path]
    assert json.loads(path.read_text()) == {"Db": "orders-value",
                                            "Logging": {"Level": "Debug-value"}}
    assert len(log) == 2


def test_invalid_structured_file_is_bad_input_with_its_relative_name(tmp_path: Path) -> None:
    put(tmp_path / "conf" / "bad.json", '{"a": }')
    with pytest.raises(BadInput, match=r"^conf/bad\.json is not valid JSON: line 1, column 7"):
        run(tmp_path, structured=["conf/*.json"])


# --- logs ----------------------------------------------------------------------------------------


def test_log_lines_never_contain_variable_values(tmp_path: Path) -> None:
    put(tmp_path / "a.config", f"#{{Db.Password}} #{{Db.Host}} #{{Missing}} {SECRET}")
    put(tmp_path / "bin.config", b"\x00#{Db.Password}")
    put(tmp_path / "appsettings.json", '{"ConnectionStrings": {"Default": ""}, "Db.Password": 1}')
    put(tmp_path / "x.yaml", "Logging:\n  Level: info\n")
    _, log = run(tmp_path, substitute=["*.config", "nothing/*"],
                 structured=["*.json", "*.yaml"])
    assert len(log) == 6
    values = [*VARIABLES.values(), SECRET, "db-host-value", "Debug-value"]
    for line in log:
        for value in values:
            assert value not in line
