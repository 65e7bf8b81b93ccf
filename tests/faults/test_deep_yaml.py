"""Over-deep YAML a user gives (a process file, its variables file, `--variables`, a template)
is refused with one line and exit 2, never a RecursionError traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import one_line_error

from workerpool.spec.yamlfile import MAX_DEPTH

FLOW = "[" * 200_000  # 200,000 nested flow sequences, never closed
BLOCK = "- " * (MAX_DEPTH + 1) + "x\n"  # one past the limit, as block sequences
PROCESS = "name: P\nsteps:\n  - name: A\n    script: echo hi\n"
NEEDLE = f"nests lists or mappings more than {MAX_DEPTH} deep; flatten it"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("deep", [FLOW, BLOCK, f"a:\n  b: {'{c: ' * 150}"],
                         ids=["flow-sequences", "block-sequences", "flow-mappings"])
def test_a_deep_process_file_is_refused_in_one_line(cli, tmp_path, deep):
    error = one_line_error(cli("deploy", str(_write(tmp_path / "p.yaml", deep)),
                               "--environment", "Test"))
    assert f"{tmp_path / 'p.yaml'}: line " in error and NEEDLE in error


def test_deep_variables_files_are_refused_in_one_line(cli, tmp_path):
    _write(tmp_path / "vars.yaml", FLOW)
    given = one_line_error(cli("deploy", str(_write(tmp_path / "p.yaml", PROCESS)),
                               "--environment", "Test", "--variables",
                               str(tmp_path / "vars.yaml")))
    assert "vars.yaml: line 1 column 101" in given and NEEDLE in given
    named = _write(tmp_path / "q.yaml", PROCESS.replace("steps:", "variables_file: vars.yaml\n"
                                                                   "steps:"))
    assert NEEDLE in one_line_error(cli("deploy", str(named), "--environment", "Test"))


def test_a_deep_template_is_refused_and_skipped_in_the_list(cli, tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    _write(templates / "deep.yaml", BLOCK)
    _write(templates / "fine.yaml", "name: Fine\nsyntax: bash\nscript: echo fine\n")
    env = {"WORKERPOOL_TEMPLATES": str(templates)}
    assert NEEDLE in one_line_error(cli("template", "show", "deep", extra_env=env))
    listed = cli("template", "list", "--json", extra_env=env)
    assert listed.returncode == 0 and '"name": "Fine"' in listed.stdout
    assert "skipped" in listed.stderr and NEEDLE in listed.stderr
    assert "Traceback" not in listed.stderr


def test_nesting_up_to_the_limit_is_read(cli, tmp_path):
    inner = "[" * (MAX_DEPTH - 3) + "]" * (MAX_DEPTH - 3)  # under steps: [ {x: ... } ]
    path = _write(tmp_path / "p.yaml", PROCESS + f"    deep_field: {inner}\n")
    error = one_line_error(cli("deploy", str(path), "--environment", "Test"))
    assert "deep_field" in error and NEEDLE not in error  # read, then refused for its field
