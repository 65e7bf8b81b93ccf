"""Exclusive workers' settings and pools' cleanup scripts: the pure checks (no Redis)."""

from __future__ import annotations

import pytest

from workerpool.core.errors import BadInput
from workerpool.core.pools import MAX_CLEANUP_SCRIPT_BYTES, Pool, validate_cleanup_script
from workerpool.core.settings import Settings


def test_a_cleanup_script_loses_only_its_surrounding_blank_lines() -> None:
    assert validate_cleanup_script("\n\nrm -rf /tmp/build\n  docker system prune -f\n\n") == \
        "rm -rf /tmp/build\n  docker system prune -f"
    assert validate_cleanup_script("  \n\t\n") == ""  # blank: no cleanup
    assert validate_cleanup_script("x" * MAX_CLEANUP_SCRIPT_BYTES) == \
        "x" * MAX_CLEANUP_SCRIPT_BYTES


@pytest.mark.parametrize(("script", "words"), [
    ("x" * (MAX_CLEANUP_SCRIPT_BYTES + 1), f"is {MAX_CLEANUP_SCRIPT_BYTES + 1} bytes; the limit"),
    ("é" * (MAX_CLEANUP_SCRIPT_BYTES // 2 + 1), "bytes; the limit"),  # bytes, not characters
    ("rm x\x00y", "NUL byte"),
    ("rm \udcff", "not UTF-8 text"),
    (b"rm -rf x", "must be text (str), not bytes"),
])
def test_a_bad_cleanup_script_is_refused_in_one_line(script: object, words: str) -> None:
    with pytest.raises(BadInput) as info:
        validate_cleanup_script(script)  # type: ignore[arg-type]
    assert words in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("the cleanup script ")


def test_a_pool_without_a_cleanup_script_stores_none() -> None:
    assert Pool("K", "k").cleanup_script == ""
    assert Pool("K", "k", cleanup_script="true").to_json()["cleanup_script"] == "true"


@pytest.mark.parametrize(("raw", "exclusive"), [
    (None, False), ("", False), ("0", False), ("no", False), ("false", False),
    ("1", True), ("true", True), ("YES", True), (" 1 ", True),
])
def test_workerpool_exclusive(raw: str | None, exclusive: bool) -> None:
    env = {} if raw is None else {"WORKERPOOL_EXCLUSIVE": raw}
    assert Settings.from_env(env).exclusive is exclusive


def test_a_bad_exclusive_setting_or_cleanup_timeout_is_refused() -> None:
    with pytest.raises(BadInput, match=r"WORKERPOOL_EXCLUSIVE='maybe' must be 1 or 0"):
        Settings.from_env({"WORKERPOOL_EXCLUSIVE": "maybe"})
    with pytest.raises(BadInput, match="WORKERPOOL_CLEANUP_TIMEOUT must be a finite number"):
        Settings.from_env({"WORKERPOOL_CLEANUP_TIMEOUT": "0"})
    assert Settings.from_env({}).cleanup_timeout == 300
    assert Settings.from_env({"WORKERPOOL_CLEANUP_TIMEOUT": "12.5"}).cleanup_timeout == 12.5
