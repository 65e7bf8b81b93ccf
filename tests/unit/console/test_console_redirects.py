"""Where the console redirects after a login or a drain: only to a path on itself."""

from __future__ import annotations

import pytest

from workerpool.console.app import local_path


@pytest.mark.parametrize("target", ["/", "/pools/db", "/steps?pool=a&state=Failed"])
def test_a_path_on_the_console_is_kept(target: str) -> None:
    assert local_path(target) == target


@pytest.mark.parametrize("target", ["//evil.example/", "/\\evil.example", "https://evil.example",
                                    "javascript:alert(1)", "", "pools"])
def test_anything_else_leads_home(target: str) -> None:
    assert local_path(target) == "/"
