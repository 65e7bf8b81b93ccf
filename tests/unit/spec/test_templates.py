"""Step templates and the YAML reading they share with process files. No Redis.

The two shipped Python templates are also run for real, as a worker would (the python syntax's
bootstrap, parameters in the environment), against a local HTTP server in a thread.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

from workerpool.core.errors import BadInput
from workerpool.core.packageref import PackageRef
from workerpool.core.syntaxes import SYNTAXES, install_helpers
from workerpool.spec.templates import (
    Template,
    default_templates_dir,
    list_templates,
    load_template,
    parse_template,
)
from workerpool.spec.yamlfile import MAX_FILE_BYTES, MAX_NODES, read_yaml

REPO_TEMPLATES = REPO / "workerpool" / "spec" / "templates"

GREET = """\
name: Greet
description: Say hello
syntax: bash
parameters:
  - {name: Who, description: whom to greet, required: true}
  - {name: Greeting, default: Hello}
  - {name: Token, sensitive: true}
  - {name: Optional}
script: |
  echo "#{Greeting}, #{Who}"
packages:
  - {name: tools, id: Acme.Tools, version: 2.0.0}
"""


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    directory = tmp_path / "templates"
    directory.mkdir()
    (directory / "greet.yaml").write_text(GREET)
    return directory


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


# --- loading -------------------------------------------------------------------------------------


def test_load_template_by_file_name_and_by_display_name(templates: Path) -> None:
    template = load_template("greet", templates)
    assert template.slug == "greet" and template.name == "Greet"
    assert template.syntax == "bash" and template.description == "Say hello"
    assert [p.name for p in template.parameters] == ["Who", "Greeting", "Token", "Optional"]
    assert template.packages == (PackageRef("tools", "Acme.Tools", "2.0.0"),)
    assert load_template("GREET", templates) == template


def test_unknown_template_lists_the_available_ones(templates: Path) -> None:
    with pytest.raises(BadInput, match=r"no step template 'nope' in .*; available: greet"):
        load_template("nope", templates)


def test_template_name_cannot_walk_out_of_the_directory(templates: Path, tmp_path: Path) -> None:
    write(tmp_path, "outside.yaml", GREET.replace("name: Greet", "name: Outside"))
    with pytest.raises(BadInput, match="no step template"):
        load_template("../outside", templates)


def test_missing_directory_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"does not exist .*WORKERPOOL_TEMPLATES"):
        load_template("greet", tmp_path / "missing")
    assert list_templates(tmp_path / "missing") == []


def test_a_broken_template_does_not_hide_another_found_by_name(templates: Path) -> None:
    write(templates, "aaa-broken.yaml", "name: [")
    assert load_template("Greet", templates).slug == "greet"
    with pytest.raises(BadInput, match=r"aaa-broken\.yaml: line"):
        list_templates(templates)


def test_default_directory_is_the_shipped_templates(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WORKERPOOL_TEMPLATES", raising=False)
    assert default_templates_dir().resolve() == REPO_TEMPLATES.resolve()
    monkeypatch.setenv("WORKERPOOL_TEMPLATES", str(tmp_path))
    assert default_templates_dir() == tmp_path


def test_shipped_templates_load() -> None:
    found = {t.slug: t for t in list_templates(REPO_TEMPLATES)}
    assert {"notify-webhook", "http-health-check"} <= set(found)
    webhook = {p.name: p for p in found["notify-webhook"].parameters}
    assert webhook["WebhookUrl"].required and webhook["WebhookUrl"].sensitive
    assert {p.name for p in found["http-health-check"].parameters if p.required} == {"Url"}
    for template in found.values():
        if template.syntax == "python":
            compile(template.script, template.source, "exec")
        assert "curl" not in template.script


@pytest.mark.parametrize(("text", "field", "what"), [
    ("description: x\nscript: echo\n", "name", "missing"),
    ("name: X\n", "script", "missing"),
    ("name: X\nscript: echo\nsyntax: cobol\n", "syntax", "unknown syntax 'cobol'"),
    ("name: X\nscript: echo\nscirpt: echo\n", "scirpt", "did you mean 'script'"),
    ("name: X\nscript: echo\nparameters: {A: 1}\n", "parameters", "must be a list"),
    ("name: X\nscript: echo\nparameters: [{name: A}, {name: a}]\n", "parameters",
     "declared twice"),
    ("name: X\nscript: echo\nparameters: [{name: A, required: maybe}]\n", "parameters",
     "required must be true or false"),
    ("name: X\nscript: echo\nparameters: [{name: A, type: text}]\n", "parameters",
     "unknown key 'type'"),
    ("name: X\nscript: echo\nparameters: [{description: no name}]\n", "parameters",
     "has no value"),
    ("name: X\nscript: echo\npackages: [{name: db, id: Acme.Db}]\n", "packages",
     "lacks version"),
])
def test_invalid_template_names_file_and_field(templates: Path, text: str, field: str,
                                               what: str) -> None:
    path = write(templates, "bad.yaml", text)
    with pytest.raises(BadInput) as caught:
        parse_template(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: field '{field}': ")
    assert what in message


# --- instantiation -------------------------------------------------------------------------------


def test_instantiate_gives_script_syntax_variables_and_sensitive_names(templates: Path) -> None:
    template = load_template("greet", templates)
    script, syntax, variables, sensitive = template.instantiate({"Who": "world", "token": "t0k"})
    assert script == 'echo "#{Greeting}, #{Who}"\n' and syntax == "bash"
    assert variables == {"Who": "world", "Greeting": "Hello", "Token": "t0k", "Optional": ""}
    assert sensitive == {"Token"}


def test_instantiate_keeps_values_out_of_the_script(templates: Path) -> None:
    script, *_ = load_template("greet", templates).instantiate({"Who": "a\"; rm -rf / #"})
    assert "rm -rf" not in script


def test_given_value_overrides_default(templates: Path) -> None:
    _, _, variables, _ = load_template("greet", templates).instantiate(
        {"Who": "x", "Greeting": "Hi"})
    assert variables["Greeting"] == "Hi"


@pytest.mark.parametrize("params", [{}, {"Who": ""}, {"Greeting": "Hi"}])
def test_missing_required_parameter_is_refused(templates: Path,
                                               params: dict[str, str]) -> None:
    with pytest.raises(BadInput, match=r"template 'greet' needs parameter 'Who' \(whom to greet\)"):
        load_template("greet", templates).instantiate(params)


def test_unknown_parameter_is_refused_with_the_known_ones(templates: Path) -> None:
    with pytest.raises(BadInput, match="has no parameter 'Whom'; its parameters: Who, Greeting, "
                                       "Token, Optional"):
        load_template("greet", templates).instantiate({"Who": "x", "Whom": "y"})


# --- YAML reading --------------------------------------------------------------------------------


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "name: X\n  steps: 1\n")
    with pytest.raises(BadInput) as caught:
        read_yaml(path)
    assert str(caught.value) == (f"{path}: line 2 column 8: mapping values are not allowed "
                                 "here (fix the YAML syntax there)")


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "dup.yaml", "name: X\nname: Y\n")
    with pytest.raises(BadInput, match=r"line 2 column 1: .*duplicate key .*each key may appear"):
        read_yaml(path)


def test_alias_bomb_is_refused_before_it_is_built(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 10)]
    path = write(tmp_path, "bomb.yaml", "\n".join(lines) + "\n")
    with pytest.raises(BadInput, match=f"more than {MAX_NODES} nodes.*alias bomb"):
        read_yaml(path)


def test_modest_aliases_are_fine(tmp_path: Path) -> None:
    path = write(tmp_path, "ok.yaml", "base: &b {pool: P}\none: *b\ntwo: *b\n")
    assert read_yaml(path) == {"base": {"pool": "P"}, "one": {"pool": "P"}, "two": {"pool": "P"}}


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "loop.yaml", "a: &x [1, *x]\n")
    with pytest.raises(BadInput, match="line 1: an alias refers to a node that contains it"):
        read_yaml(path)


def test_file_over_one_megabyte_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "big.yaml", "a: " + "x" * MAX_FILE_BYTES + "\n")
    with pytest.raises(BadInput, match=rf"{path.name}: the file is \d+ bytes; the limit is"):
        read_yaml(path)


@pytest.mark.parametrize(("text", "what"), [
    (b"\xff\xfe", "not UTF-8"),
    (b"a: !!python/object:os.system x\n", "line 1 column 4"),
    (b"a: 1\n---\nb: 2\n", "line 2"),
])
def test_other_unreadable_yaml(tmp_path: Path, text: bytes, what: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_bytes(text)
    with pytest.raises(BadInput, match=what):
        read_yaml(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="cannot read the process file"):
        read_yaml(tmp_path / "none.yaml", "process file")


def test_reference_cut_off_as_a_comment_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", 'script: echo "warming #{Machine.Name}"\n')
    with pytest.raises(BadInput, match=r"line 1 column 23: ' #\{' starts a YAML comment"):
        read_yaml(path)
    fine = write(tmp_path, "d.yaml", 'script: "echo #{A}"  # a real comment\nb: |\n  x #{A}\n')
    assert read_yaml(fine) == {"script": "echo #{A}", "b": "x #{A}\n"}


# --- the shipped templates, run as a worker runs them ---------------------------------------------






def run_template(template: Template, params: dict[str, str],
                 workdir: Path) -> subprocess.CompletedProcess[str]:
    script, syntax, variables, _ = template.instantiate(params)
    workdir.mkdir()
    support = install_helpers(workdir.parent / "support")
    argv, extra = SYNTAXES[syntax].prepare(workdir, script, support)
    env = {**os.environ, **extra, **variables, "Project_Name": "Orders",
           "Environment_Name": "Test", "Deployment_Id": "d1", "Step_Name": "Notify"}
    return subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_notify_webhook_posts_slack_json(http_server, tmp_path: Path) -> None:
    url, requests = http_server([200])
    done = run_template(load_template("notify-webhook", REPO_TEMPLATES),
                        {"WebhookUrl": url + "/hook", "Message": 'it\'s "done"'}, tmp_path / "w")
    assert done.returncode == 0, done.stderr
    [(method, path, body, content_type)] = requests
    assert (method, path, content_type) == ("POST", "/hook", "application/json")
    assert json.loads(body) == {"text": 'it\'s "done"'}
    assert "##workerpool[setVariable name='StatusCode' value='200']" in done.stdout


def test_notify_webhook_default_message_names_the_deployment(http_server,
                                                             tmp_path: Path) -> None:
    url, requests = http_server([200])
    done = run_template(load_template("notify-webhook", REPO_TEMPLATES), {"WebhookUrl": url},
                        tmp_path / "w")
    assert done.returncode == 0, done.stderr
    assert json.loads(requests[0][2]) == {"text": "Deployment d1 of Orders to Test: step Notify"}


def test_notify_webhook_fails_clearly_on_http_error(http_server, tmp_path: Path) -> None:
    url, _ = http_server([404])
    done = run_template(load_template("notify-webhook", REPO_TEMPLATES), {"WebhookUrl": url},
                        tmp_path / "w")
    assert done.returncode == 1
    assert "the webhook refused the message: HTTP 404 Not Found: channel_not_found" in done.stderr
    assert url not in done.stderr + done.stdout


def test_health_check_retries_until_the_expected_status(http_server, tmp_path: Path) -> None:
    url, requests = http_server([503, 503, 200])
    done = run_template(load_template("http-health-check", REPO_TEMPLATES),
                        {"Url": url + "/health", "DelaySeconds": "0", "ExpectedText": "ready"},
                        tmp_path / "w")
    assert done.returncode == 0, done.stderr
    assert len(requests) == 3 and all(r[0] == "GET" for r in requests)
    assert "attempt 1/5" in done.stdout and "HTTP 503, expected 200" in done.stdout
    assert "value='200'" in done.stdout


def test_health_check_fails_after_its_attempts(http_server, tmp_path: Path) -> None:
    url, requests = http_server([500])
    done = run_template(load_template("http-health-check", REPO_TEMPLATES),
                        {"Url": url, "Attempts": "2", "DelaySeconds": "0"}, tmp_path / "w")
    assert done.returncode == 1 and len(requests) == 2
    assert "was not healthy after 2 attempts: HTTP 500, expected 200" in done.stderr


def test_health_check_refuses_bad_parameters(tmp_path: Path) -> None:
    done = run_template(load_template("http-health-check", REPO_TEMPLATES),
                        {"Url": "ftp://x", "Attempts": "0"}, tmp_path / "w")
    assert done.returncode == 1 and "must be an http:// or https:// URL" in done.stderr
