"""Pure functions: names, slugs, service messages, masking, steps, messages, settings. No Redis."""

from __future__ import annotations

import pytest

from workerpool.worker.step.servicemessages import ServiceMessage, parse, unescape

# --- service messages ----------------------------------------------------------------------------


def test_parse_set_variable() -> None:
    assert parse("##workerpool[setVariable name='Version' value='1.2.3']") == ServiceMessage(
        "setVariable", {"name": "Version", "value": "1.2.3"})


def test_parse_unescapes_every_escape() -> None:
    line = "##workerpool[setVariable name='A|]b' value='p||q |'quoted|' x|]y|nline2|rend']"
    message = parse(line)
    assert message is not None
    assert message.kind == "setVariable"
    assert message.attributes == {"name": "A]b", "value": "p|q 'quoted' x]y\nline2\rend"}


def test_parse_tolerates_trailing_whitespace_and_newline() -> None:
    message = parse("##workerpool[setVariable name='X' value='']  \n")
    assert message == ServiceMessage("setVariable", {"name": "X", "value": ""})


def test_parse_message_without_attributes() -> None:
    assert parse("##workerpool[progress]") == ServiceMessage("progress", {})


@pytest.mark.parametrize("line", [
    "##workerpool[setVariable name='X' value='unterminated]",
    "##workerpool[setVariable name='X' value='dangling pipe|']",
    "##workerpool[setVariable name='X' value='stray ' quote']",
    "##workerpool[setVariable name='X' value='Y'",
    "##workerpool[setVariable name=X value=Y]",
    "##workerpool[setVariable name='X' value='Y'] trailing text",
    "##workerpool[]",
    "##workerpool[ setVariable name='X' value='Y']",
    "##workerpool[set-Variable name='X' value='Y']",
])
def test_parse_malformed_is_none(line: str) -> None:
    assert parse(line) is None


@pytest.mark.parametrize("line", [
    "", "hello world", "Version=1.2.3", "  ##workerpool[setVariable name='X' value='Y']",
    "#workerpool[setVariable name='X' value='Y']", "##teamcity[setParameter name='X' value='Y']",
])
def test_parse_ordinary_output_is_none(line: str) -> None:
    assert parse(line) is None


@pytest.mark.parametrize(("text", "plain"), [
    ("||", "|"), ("|'", "'"), ("|]", "]"), ("|n", "\n"), ("|r", "\r"), ("|[", "["),
    ("||n", "|n"), ("a|||nb", "a|\nb"), ("no escapes", "no escapes"), ("", ""),
])
def test_unescape(text: str, plain: str) -> None:
    assert unescape(text) == plain
