"""Structured variable replacement in JSON and YAML files: paths, types, layout, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from workerpool.core.errors import BadInput
from workerpool.worker.step.structured import replace_structured

APPSETTINGS: dict[str, Any] = {
    "Zeta": "first key stays first",
    "ConnectionStrings": {"Default": "Server=old", "Reporting": "Server=r"},
    "Logging": {"LogLevel": {"Default": "Information", "Microsoft": "Warning"}},
    "Servers": [{"Host": "a", "Port": 80}, {"Host": "b", "Port": 81}],
    "Retries": 3,
    "Ratio": 0.5,
    "Enabled": True,
    "Nothing": None,
    "Alpha": "last key stays last",
}


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def json_file(tmp_path: Path, data: Any = None, indent: int | str | None = 2,
              name: str = "appsettings.json") -> Path:
    return write(tmp_path / name, json.dumps(APPSETTINGS if data is None else data,
                                             indent=indent) + "\n")


def load(path: Path) -> Any:
    return json.loads(path.read_text())


# --- key paths -----------------------------------------------------------------------------------


def test_replaces_nested_keys_and_returns_their_names(tmp_path: Path) -> None:
    path = json_file(tmp_path)
    replaced = replace_structured(path, {"ConnectionStrings:Default": "Server=new",
                                         "Logging:LogLevel:Default": "Debug", "Unrelated": "x"})
    assert replaced == ["ConnectionStrings:Default", "Logging:LogLevel:Default"]
    data = load(path)
    assert data["ConnectionStrings"] == {"Default": "Server=new", "Reporting": "Server=r"}
    assert data["Logging"]["LogLevel"] == {"Default": "Debug", "Microsoft": "Warning"}


def test_path_segments_match_case_insensitively(tmp_path: Path) -> None:
    path = json_file(tmp_path)
    assert replace_structured(path, {"connectionstrings:DEFAULT": "s"}) == [
        "connectionstrings:DEFAULT"]
    assert load(path)["ConnectionStrings"]["Default"] == "s"


def test_exact_case_wins_when_keys_differ_only_in_case(tmp_path: Path) -> None:
    path = json_file(tmp_path, {"key": 1, "Key": 2})
    replace_structured(path, {"Key": "9"})
    assert load(path) == {"key": 1, "Key": 9}


def test_arrays_are_indexed_by_number(tmp_path: Path) -> None:
    path = json_file(tmp_path)
    replaced = replace_structured(path, {"Servers:1:Host": "db-2", "Servers:0:Port": "8080",
                                         "Servers:2:Host": "no such", "Servers:x:Host": "no"})
    assert replaced == ["Servers:1:Host", "Servers:0:Port"]
    assert load(path)["Servers"] == [{"Host": "a", "Port": 8080}, {"Host": "db-2", "Port": 81}]


def test_paths_that_do_not_exist_leave_the_file_untouched(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", '{"a":   {"b": 1}}')
    before = path.read_bytes()
    assert replace_structured(path, {"a:c": "1", "b": "2", "a:b:c": "3"}) == []
    assert path.read_bytes() == before


# --- types ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("Retries", "5", 5),
    ("Retries", "2.5", 2.5),
    ("Retries", "-1e3", -1000.0),
    ("Retries", "five", "five"),
    ("Retries", "NaN", "NaN"),
    ("Retries", "1e999", "1e999"),
    ("Ratio", "0.75", 0.75),
    ("Enabled", "false", False),
    ("Enabled", "True", True),
    ("Enabled", "yes", "yes"),
    ("Zeta", "42", "42"),
    ("Zeta", "true", "true"),
    ("Nothing", "7", "7"),
    ("Zeta", '{"Nested": [1, "two"]}', {"Nested": [1, "two"]}),
    ("Retries", "[1, 2]", [1, 2]),
    ("ConnectionStrings", "plain", "plain"),
    ("Zeta", "{not json", "{not json"),
])
def test_type_follows_the_existing_value(tmp_path: Path, key: str, value: str,
                                         expected: Any) -> None:
    path = json_file(tmp_path)
    replace_structured(path, {key: value})
    assert load(path)[key] == expected


def test_shallow_paths_apply_first_so_deeper_ones_win(tmp_path: Path) -> None:
    path = json_file(tmp_path)
    replace_structured(path, {"Logging:LogLevel:Default": "Trace",
                              "Logging": '{"LogLevel": {"Default": "Error"}, "New": 1}'})
    assert load(path)["Logging"] == {"LogLevel": {"Default": "Trace"}, "New": 1}


# --- JSON layout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("indent", [2, 4, "\t"])
def test_json_indent_and_key_order_are_kept(tmp_path: Path, indent: int | str) -> None:
    path = json_file(tmp_path, indent=indent)
    replace_structured(path, {"ConnectionStrings:Default": "Server=new"})
    expected = json.loads(json.dumps(APPSETTINGS))
    expected["ConnectionStrings"]["Default"] = "Server=new"
    assert path.read_text() == json.dumps(expected, indent=indent) + "\n"
    assert list(load(path)) == list(APPSETTINGS)


def test_json_without_final_newline_stays_without(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", '{\n    "a": 1\n}')
    replace_structured(path, {"a": "2"})
    assert path.read_text() == '{\n    "a": 2\n}'


@pytest.mark.parametrize(("text", "expected"), [
    ('{"a": 1, "b": [1, 2]}', '{"a": 2, "b": [1, 2]}'),
    ('{"a":1,"b":[1,2]}', '{"a":2,"b":[1,2]}'),
])
def test_compact_json_stays_compact(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "a.json", text)
    replace_structured(path, {"a": "2"})
    assert path.read_text() == expected


def test_json_crlf_bom_and_non_ascii_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_bytes(b'\xef\xbb\xbf{\r\n  "name": "caf\xc3\xa9",\r\n  "a": 1\r\n}\r\n')
    replace_structured(path, {"a": "2"})
    assert path.read_bytes() == b'\xef\xbb\xbf{\r\n  "name": "caf\xc3\xa9",\r\n  "a": 2\r\n}\r\n'


# --- YAML layout ---------------------------------------------------------------------------------

YAML_TEXT = """\
# Application settings (keep this comment)
server:
  host: "localhost"   # where to listen
  port: 8080
  debug: false
  name: 'single'
items:
  - name: first    # one
    size: 1
  - name: second
    size: 2
defaults: &defaults
  level: info
production:
  <<: *defaults
  replicas: 3
"""


def test_yaml_comments_order_quotes_and_indentation_are_kept(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", YAML_TEXT)
    replaced = replace_structured(path, {"Server:Host": "0.0.0.0", "server:port": "9090",
                                         "server:debug": "true", "server:name": "new",
                                         "items:1:name": "Second"})
    assert replaced == ["Server:Host", "server:port", "server:debug", "server:name",
                        "items:1:name"]
    assert path.read_text() == YAML_TEXT.replace('"localhost"', '"0.0.0.0"  ').replace(
        "8080", "9090").replace("debug: false", "debug: true").replace(
        "'single'", "'new'").replace("name: second", "name: Second")


def test_yaml_subtree_and_merged_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yml", YAML_TEXT)
    replace_structured(path, {"items:0": '{"name": "x", "tags": ["a"]}',
                              "production:level": "debug"})
    text = path.read_text()
    assert "  - name: x\n    tags:\n      - a\n  - name: second" in text
    assert "defaults: &defaults\n  level: info\n" in text
    assert "production:\n  <<: *defaults\n  replicas: 3\n  level: debug\n" in text


def test_yaml_comment_before_document_start_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "# header\n\n---\n# body\nkey: old  # note\n")
    replace_structured(path, {"key": "new"})
    assert path.read_text() == "# header\n\n---\n# body\nkey: new  # note\n"


def test_yaml_multiple_documents_are_all_replaced(tmp_path: Path) -> None:
    path = write(tmp_path / "k8s.yaml", "kind: A\nspec:\n  image: old\n---\nkind: B\n"
                                        "spec:\n  image: old\n")
    assert replace_structured(path, {"spec:image": "new:1.0"}) == ["spec:image"]
    assert path.read_text() == ("kind: A\nspec:\n  image: new:1.0\n---\nkind: B\n"
                                "spec:\n  image: new:1.0\n")


def test_yaml_string_that_looks_like_a_number_stays_a_string(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "version: v1\ncount: 1\n")
    replace_structured(path, {"version": "2.0", "count": "3"})
    assert path.read_text() == "version: '2.0'\ncount: 3\n"


def test_yaml_crlf_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_bytes(b"# c\r\na: 1  # x\r\nb: 2\r\n")
    replace_structured(path, {"b": "3"})
    assert path.read_bytes() == b"# c\r\na: 1  # x\r\nb: 3\r\n"


# --- other extensions ----------------------------------------------------------------------------


def test_other_extensions_try_json_first(tmp_path: Path) -> None:
    path = write(tmp_path / "settings.conf", '{\n    "a": 1\n}\n')
    replace_structured(path, {"a": "2"})
    assert path.read_text() == '{\n    "a": 2\n}\n'


def test_other_extensions_fall_back_to_yaml(tmp_path: Path) -> None:
    path = write(tmp_path / "settings.conf", "a: 1  # keep\n")
    replace_structured(path, {"a": "2"})
    assert path.read_text() == "a: 2  # keep\n"


# --- bad input -----------------------------------------------------------------------------------


def test_invalid_json_names_the_file_and_position(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.json", '{\n  "a": 1,\n  "b": \n}\n')
    with pytest.raises(BadInput, match=r"bad\.json is not valid JSON: line 4, column 1"):
        replace_structured(path, {"a": "2"})


def test_invalid_yaml_names_the_file_and_position(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(BadInput, match=r"bad\.yaml is not valid YAML: line 3, column 2"):
        replace_structured(path, {"a": "2"})


def test_yaml_position_counts_the_kept_header(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "# header\n---\na: 1\na: 2\n")
    with pytest.raises(BadInput, match=r"line 4, column 1: duplicate key 'a'"):
        replace_structured(path, {"a": "2"})


def test_neither_json_nor_yaml_reports_both(tmp_path: Path) -> None:
    path = write(tmp_path / "web.config", '<a b="c">: x: y\n')
    with pytest.raises(BadInput, match=r"shown\.config is neither valid JSON \(line 1, column 1"):
        replace_structured(path, {"a": "2"}, name="shown.config")


def test_deeply_nested_documents_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "deep.json", "[" * 100_000)
    with pytest.raises(BadInput, match="nested too deeply"):
        replace_structured(path, {"0": "x"})


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin.json"
    path.write_bytes(b'{"a": "caf\xe9"}')
    with pytest.raises(BadInput, match="not UTF-8"):
        replace_structured(path, {"a": "x"})


def test_files_over_the_size_limit_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "big.json", '{"a": "' + "x" * 2000 + '"}')
    with pytest.raises(BadInput, match=r"big\.json is 2009 bytes; .* up to 1000 bytes"):
        replace_structured(path, {"a": "y"}, max_bytes=1000)


BILLION_LAUGHS = "\n".join(
    ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]) + "\n"


@pytest.mark.timeout(20)
def test_yaml_billion_laughs_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "bomb.yaml", BILLION_LAUGHS)
    with pytest.raises(BadInput, match="alias bomb"):
        replace_structured(path, {"a0:0": "x"})
    assert path.read_text() == BILLION_LAUGHS


def test_yaml_aliases_within_the_node_limit_are_fine(tmp_path: Path) -> None:
    path = write(tmp_path / "small.yaml", "a: &a [1, 2]\nb: *a\nc: 1\n")
    # root map 1 + 3 keys, two expansions of the list (1 + 2 each), one scalar: 11 nodes
    assert replace_structured(path, {"c": "2"}, max_nodes=11) == ["c"]
    with pytest.raises(BadInput, match="more than 10 nodes"):
        replace_structured(path, {"c": "3"}, max_nodes=10)


def test_yaml_tags_never_construct_python_objects(tmp_path: Path) -> None:
    path = write(tmp_path / "evil.yaml", "a: !!python/object/apply:os.system ['touch x']\nb: 1\n")
    assert replace_structured(path, {"b": "2"}) == ["b"]
    assert not (tmp_path / "x").exists()
    assert "!!python/object/apply:os.system" in path.read_text()


def test_node_limit_applies_only_to_alias_expansion(tmp_path: Path) -> None:
    path = write(tmp_path / "plain.yaml", "a: [1, 2, 3]\nb: {c: 1}\n")
    assert replace_structured(path, {"b:c": "2"}, max_nodes=1) == ["b:c"]
