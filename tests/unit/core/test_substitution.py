"""``#{...}`` substitution: names, escapes, missing variables, nested values, cycles. No Redis."""

from __future__ import annotations

import pytest

from workerpool.core import substitution
from workerpool.core.errors import BadInput
from workerpool.core.substitution import MAX_DEPTH, Resolver, resolve_all, substitute

# --- plain substitution --------------------------------------------------------------------------


def test_replaces_every_reference() -> None:
    text, missing = substitute("Server=#{Host};Db=#{Db};Again=#{Host}", {"Host": "h", "Db": "d"})
    assert text == "Server=h;Db=d;Again=h"
    assert missing == []


@pytest.mark.parametrize("name", [
    "Package[db].ExtractedPath", "Action[Migrate].Output.Version", "Machine.Name",
    "Name with spaces", "Octopus.Action[Deploy: Web].Output", "a{b", "ünïcode",
])
def test_names_may_hold_any_character_but_brace_and_newline(name: str) -> None:
    assert substitute(f"<#{{{name}}}>", {name: "v"}) == ("<v>", [])


@pytest.mark.parametrize("reference", ["#{machine.name}", "#{MACHINE.NAME}", "#{Machine.Name}",
                                       "#{ Machine.Name }", "#{\tmachine.NAME  }"])
def test_names_are_case_insensitive_and_trimmed(reference: str) -> None:
    assert substitute(reference, {"Machine.Name": "web-01"}) == ("web-01", [])


def test_text_without_references_is_unchanged() -> None:
    text = "no refs here, a # and { and } and #{\n} and #{}"
    assert substitute(text, {"": "empty"}) == (text, [])


def test_counts_replacements() -> None:
    result = Resolver({"A": "1"}).substitute("#{A} #{a} #{B} ##{A}")
    assert (result.text, result.replacements, result.missing) == ("1 1 #{B} #{A}", 2, ("B",))


# --- missing variables ---------------------------------------------------------------------------


def test_missing_variable_is_left_exactly_as_written() -> None:
    text, missing = substitute("a=#{ Missing.One } b=#{Other} c=#{missing.one}", {"Other": "o"})
    assert text == "a=#{ Missing.One } b=o c=#{missing.one}"
    assert missing == ["Missing.One", "missing.one"]


def test_missing_names_are_listed_once_in_order() -> None:
    assert substitute("#{B} #{A} #{B}", {})[1] == ["B", "A"]


def test_missing_reference_inside_a_value_is_reported() -> None:
    text, missing = substitute("#{Url}", {"Url": "https://#{Host}/"})
    assert text == "https://#{Host}/"
    assert missing == ["Host"]


# --- escapes -------------------------------------------------------------------------------------


def test_double_hash_is_an_escape_for_the_literal() -> None:
    assert substitute("##{Name} #{Name}", {"Name": "v"}) == ("#{Name} v", [])


def test_escape_of_a_missing_name_is_not_reported() -> None:
    assert substitute("##{ Nope }", {}) == ("#{ Nope }", [])


def test_triple_hash_keeps_one_hash_then_the_escape() -> None:
    assert substitute("###{Name}", {"Name": "v"}) == ("##{Name}", [])


def test_escape_inside_a_value_yields_a_literal_that_is_not_resolved_again() -> None:
    assert substitute("#{A}", {"A": "##{B}", "B": "b"}) == ("#{B}", [])


def test_substituted_values_are_not_rescanned_as_text() -> None:
    # The literal produced by the escape stays literal even though B exists.
    assert substitute("#{A}-#{B}", {"A": "##{B}", "B": "x"}) == ("#{B}-x", [])


# --- values that refer to other variables --------------------------------------------------------


def test_values_are_resolved_recursively() -> None:
    variables = {"Url": "https://#{Host}:#{Port}/", "Host": "#{Env}.example.com", "Port": "443",
                 "Env": "test"}
    assert substitute("url=#{URL}", variables) == ("url=https://test.example.com:443/", [])


def test_resolve_all_resolves_every_value_and_keeps_names() -> None:
    variables = {"A": "#{b}-#{C}", "B": "b", "C": "#{B}#{B}", "D": "#{Missing}"}
    assert resolve_all(variables) == {"A": "b-bb", "B": "b", "C": "bb", "D": "#{Missing}"}


@pytest.mark.parametrize(("variables", "cycle"), [
    ({"A": "#{B}", "B": "#{A}"}, "variable cycle: A -> B -> A"),
    ({"A": "x#{A}"}, "variable cycle: A -> A"),
    ({"A": "#{b}", "B": "#{c}", "C": "#{a}"}, "variable cycle: A -> B -> C -> A"),
])
def test_cycles_raise_bad_input_naming_the_cycle(variables: dict[str, str], cycle: str) -> None:
    with pytest.raises(BadInput, match="variable cycle") as caught:
        substitute("#{A}", variables)
    assert str(caught.value).startswith(cycle)
    with pytest.raises(BadInput, match="variable cycle"):
        resolve_all(variables)


def test_cycle_message_names_only_the_loop() -> None:
    variables = {"Start": "#{A}", "A": "#{B}", "B": "#{A}"}
    with pytest.raises(BadInput) as caught:
        substitute("#{Start}", variables)
    assert str(caught.value).startswith("variable cycle: A -> B -> A;")


def test_resolve_all_finds_a_cycle_nothing_refers_to() -> None:
    with pytest.raises(BadInput, match="variable cycle: X -> Y -> X"):
        resolve_all({"Used": "u", "X": "#{Y}", "Y": "#{X}"})


def test_unreferenced_cycle_does_not_stop_substitution() -> None:
    assert substitute("#{Used}", {"Used": "u", "X": "#{Y}", "Y": "#{X}"}) == ("u", [])


def chain(length: int) -> dict[str, str]:
    """V1 -> V2 -> ... -> V<length>, the last one a plain value."""
    variables = {f"V{i}": f"#{{V{i + 1}}}" for i in range(1, length)}
    variables[f"V{length}"] = "end"
    return variables


def test_depth_limit_allows_a_chain_of_the_limit() -> None:
    assert substitute("#{V1}", chain(MAX_DEPTH)) == ("end", [])


def test_depth_limit_refuses_a_longer_chain() -> None:
    with pytest.raises(BadInput, match=f"deeper than {MAX_DEPTH} levels") as caught:
        substitute("#{V1}", chain(MAX_DEPTH + 1))
    assert "V1 -> V2 -> V3 -> ... ->" in str(caught.value)


def test_depth_limit_does_not_depend_on_resolution_order() -> None:
    resolver = Resolver(chain(MAX_DEPTH + 1))
    assert resolver.value("V2") == "end"  # 32 levels: fine, and now cached
    with pytest.raises(BadInput, match="deeper than"):
        resolver.substitute("#{V1}")


def test_values_that_double_at_every_level_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(substitution, "MAX_CHARS", 10_000)
    variables = {f"L{i}": f"#{{L{i + 1}}}#{{L{i + 1}}}" for i in range(20)}
    variables["L20"] = "x" * 100
    with pytest.raises(BadInput, match="expands to more than 10000 characters"):
        substitute("#{L0}", variables)
