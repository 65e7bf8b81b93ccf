"""Process files: loading, every refusal (one line naming file, step and field), variable
scoping, sensitive names and pool variables. No Redis."""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict
from pathlib import Path

import pytest

from workerpool.core.errors import BadInput
from workerpool.core.packageref import PackageRef
from workerpool.spec.processes import (
    Process,
    ProcessStep,
    ProjectVariable,
    load_process,
)
from workerpool.spec.projectvars import Scope, pool_for, select, variables_for
from workerpool.spec.shipped import example_processes, examples_dir
from workerpool.spec.yamlfile import MAX_FILE_BYTES

TEMPLATE = """\
name: Greet
syntax: python
parameters:
  - {name: Who, required: true}
  - {name: Token, sensitive: true, default: none}
script: print("hello")
packages: [{name: tools, id: Acme.Tools, version: 2.0.0}]
"""


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    directory = tmp_path / "templates"
    directory.mkdir()
    (directory / "greet.yaml").write_text(TEMPLATE)
    return directory


def write(tmp_path: Path, text: str, name: str = "process.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path: Path, text: str, templates: Path | None = None) -> Process:
    return load_process(write(tmp_path, text), templates_dir=templates or tmp_path / "none")


def refusal(tmp_path: Path, text: str, templates: Path | None = None) -> str:
    with pytest.raises(BadInput) as caught:
        load(tmp_path, text, templates)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'process.yaml'}: ")
    return message


def steps(*lines: str) -> str:
    return "name: P\nsteps:\n" + "".join(f"  - {line}\n" for line in lines)


# --- loading -------------------------------------------------------------------------------------


def test_the_example_in_the_issue_loads(tmp_path: Path) -> None:
    process = load(tmp_path, """
        name: Database deployment
        variables:
          DbName: orders
          DbPassword: {value: s3cret, sensitive: true}
          ConnectionString:
            - {value: "Server=sql-test", environment: Test}
            - {value: "Server=sql-prod", environment: Production}
        steps:
          - name: Migrate
            location: worker
            pool: Database Worker Pool
            packages: [{name: db, id: Acme.Database, version: 1.0.0, feed: builtin, extract: true}]
            script: bash db/migrate.sh "#{ConnectionString}"
          - name: Warm up
            location: worker-per-target
            pool: Kubernetes Worker Pool
            roles: [web]
            max_parallelism: 4
            script: |
              echo "warming #{Machine.Name} for #{Action[Migrate].Output.Version}"
        """)
    assert process.name == "Database deployment"
    assert process.source == str(tmp_path / "process.yaml")
    migrate, warm = process.steps
    assert migrate == ProcessStep(
        name="Migrate", location="worker", pool="Database Worker Pool", pool_variable=None,
        roles=(), script='bash db/migrate.sh "#{ConnectionString}"', syntax="bash",
        script_file=None, template=None, parameters={},
        packages=(PackageRef("db", "Acme.Database", "1.0.0", "builtin", True),), variables={},
        sensitive_variables={}, substitute=(), structured=(), timeout=None)
    assert (warm.location, warm.roles, warm.max_parallelism) == ("worker-per-target",
                                                                 ("web",), 4)
    assert warm.script == 'echo "warming #{Machine.Name} for #{Action[Migrate].Output.Version}"\n'
    assert process.variables == (
        ProjectVariable("DbName", "orders"),
        ProjectVariable("DbPassword", "s3cret", sensitive=True),
        ProjectVariable("ConnectionString", "Server=sql-test", environments=("Test",)),
        ProjectVariable("ConnectionString", "Server=sql-prod", environments=("Production",)))


def test_defaults_and_every_step_field(tmp_path: Path) -> None:
    process = load(tmp_path, """
        name: P
        description: all the fields
        steps:
          - {name: Default, script: echo}
          - name: Full
            location: worker
            pool_variable: Pool
            syntax: sh
            script: echo
            variables: {Plain: 1, Flag: true, Secret: {value: pw, sensitive: true}}
            features: {substitute: ["**/*.config"], structured: appsettings.json}
            timeout: 5m
            condition: always
            retries: 2
        variables:
          Pool: Database Worker Pool
        """)
    default, full = process.steps
    assert (default.location, default.pool, default.syntax, default.timeout) == \
        ("worker", None, "bash", None)
    assert (default.max_parallelism, default.condition, default.retries) == (10, "success", 0)
    assert full.pool_variable == "Pool" and full.syntax == "sh"
    assert full.variables == {"Plain": "1", "Flag": "true"}
    assert full.sensitive_variables == {"Secret": "pw"}
    assert full.substitute == ("**/*.config",) and full.structured == ("appsettings.json",)
    assert (full.timeout, full.condition, full.retries) == (300.0, "always", 2)


@pytest.mark.parametrize(("raw", "seconds"), [("90", 90.0), (45, 45.0), (1.5, 1.5),
                                              ("30s", 30.0), ("5m", 300.0), ("1.5h", 5400.0),
                                              ("500ms", 0.5), (" 2 m ", 120.0)])
def test_timeouts(tmp_path: Path, raw: object, seconds: float) -> None:
    process = load(tmp_path, steps(f"{{name: A, script: echo, timeout: {json.dumps(raw)}}}"))
    assert process.steps[0].timeout == seconds


def test_script_file_inside_a_package_takes_its_syntax_from_the_extension(tmp_path: Path) -> None:
    process = load(tmp_path, steps(
        "{name: A, script_file: db/tools/migrate.py, packages: [{name: db, id: Acme.Db, "
        "version: 1.0.0}]}"))
    step = process.steps[0]
    assert (step.script, step.script_file, step.syntax) == (None, "db/tools/migrate.py",
                                                           "python")


def test_process_serialises_to_json_and_back(tmp_path: Path) -> None:
    """The orchestrator stores ``asdict(process)`` as JSON and rebuilds it from there."""
    process = load_process(examples_dir() / "database-deployment.yaml")
    data = json.loads(json.dumps(asdict(process)))
    rebuilt = Process(
        name=data["name"], source=data["source"],
        steps=tuple(ProcessStep(**{**s, "packages": tuple(PackageRef(**p) for p in s["packages"]),
                                   **{k: tuple(s[k]) for k in ("roles", "substitute",
                                                               "structured")}})
                    for s in data["steps"]),
        variables=tuple(ProjectVariable(**{**v, **{k: tuple(v[k]) for k in
                                                   ("environments", "roles", "targets")}})
                        for v in data["variables"]))
    assert rebuilt == process


# --- the shipped examples ------------------------------------------------------------------------


@pytest.mark.parametrize("path", example_processes(),
                         ids=lambda p: p.name)
def test_example_processes_load(path: Path) -> None:
    process = load_process(path)
    assert process.steps


def test_seed_database_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKERPOOL_TEMPLATES", raising=False)
    process = load_process(examples_dir() / "database-deployment.yaml")
    migrate, warm, notify = process.steps
    assert migrate.pool == "Database Worker Pool"
    assert [(p.package_id, p.feed, p.extract) for p in migrate.packages] == \
        [("Acme.Database", "builtin", True)]
    assert "db/" in (migrate.script or "")
    assert (warm.location, warm.roles) == ("worker-per-target", ("web",))
    assert (notify.condition, notify.template, notify.syntax) == ("failure", "notify-webhook",
                                                                  "python")
    assert notify.sensitive_variables == {"WebhookUrl": "#{NotifyWebhookUrl}"}
    values, sensitive = variables_for(process, "Production")
    assert values["ConnectionString"].startswith("Server=sql-prod")
    assert {"DbPassword", "NotifyWebhookUrl"} <= sensitive


# --- refusals: one line naming file, step and field ----------------------------------------------


STEP_REFUSALS = [
    # (step yaml, step label, field, part of the message)
    ("{name: A, location: somewhere, script: echo}", "'A'", "location",
     "unknown location 'somewhere' (use one of worker, worker-per-target, target, server)"),
    ("{name: A, scirpt: echo}", "'A'", "scirpt", "did you mean 'script'?"),
    ("{name: A, colour: red, script: echo}", "'A'", "colour", "allowed: name, location"),
    ("{location: server, script: echo}", "1", "name", "missing or empty"),
    ("{name: '  ', script: echo}", "1", "name", "missing or empty"),
    ("{name: 'A[1]', script: echo}", "'A[1]'", "name", "may not hold brackets"),
    ("just text", "1", "name", "a step is a mapping"),
    ("{name: A, location: worker-per-target, roles: [web], script: echo}", "'A'", "pool",
     "a worker-per-target step needs a pool"),
    ("{name: A, location: worker-per-target, pool: P, script: echo}", "'A'", "roles",
     "needs the roles of the targets"),
    ("{name: A, location: target, script: echo}", "'A'", "roles", "needs the roles"),
    ("{name: A, location: target, roles: web, pool: P, script: echo}", "'A'", "pool",
     "runs on each target's agent, not on a pool"),
    ("{name: A, location: server, pool: P, script: echo}", "'A'", "pool",
     "a server step runs on the built-in worker, not on a pool"),
    ("{name: A, location: server, pool_variable: Pool, script: echo}", "'A'", "pool_variable",
     "not on a pool"),
    ("{name: A, location: server, roles: [web], script: echo}", "'A'", "roles",
     "runs once, not per target"),
    ("{name: A, pool: P, pool_variable: Pool, script: echo}", "'A'", "pool_variable",
     "not both"),
    ("{name: A, pool_variable: Nope, script: echo}", "'A'", "pool_variable",
     "no project variable named 'Nope'"),
    ("{name: A, pool: '', script: echo}", "'A'", "pool", "pool name is empty"),
    ("{name: A, pool: builtin, script: echo}", "'A'", "pool", "reserved for the built-in"),
    ("{name: A, script: echo, template: greet}", "'A'", "template",
     "exactly one of script, script_file or template, not both script and template"),
    ("{name: A}", "'A'", "script", "not neither"),
    ("{name: A, script: '  '}", "'A'", "script", "the script is empty"),
    ("{name: A, script: [echo]}", "'A'", "script", "must be text, not a list"),
    ("{name: A, template: nope}", "'A'", "template", "no step template 'nope'"),
    ("{name: A, script: echo, parameters: {Who: x}}", "'A'", "parameters",
     "only a template step takes parameters"),
    ("{name: A, template: greet}", "'A'", "parameters", "needs parameter 'Who'"),
    ("{name: A, template: greet, parameters: {Who: x, Whom: y}}", "'A'", "parameters",
     "has no parameter 'Whom'; its parameters: Who, Token"),
    ("{name: A, template: greet, parameters: [Who]}", "'A'", "parameters", "must be a mapping"),
    ("{name: A, script: echo, condition: sometimes}", "'A'", "condition",
     "'sometimes' is not one of success, failure, always"),
    ("{name: A, script: echo, syntax: cobol}", "'A'", "syntax", "not one of bash, sh"),
    ("{name: A, location: worker-per-target, pool: P, roles: [web], max_parallelism: 0, "
     "script: echo}", "'A'", "max_parallelism", "0 is not a whole number of at least 1"),
    ("{name: A, script: echo, max_parallelism: -3}", "'A'", "max_parallelism", "at least 1"),
    ("{name: A, script: echo, max_parallelism: 2.5}", "'A'", "max_parallelism", "whole number"),
    ("{name: A, script: echo, max_parallelism: true}", "'A'", "max_parallelism", "whole number"),
    ("{name: A, script: echo, retries: -1}", "'A'", "retries", "-1 is not a whole number from 0"),
    ("{name: A, script: echo, retries: 1000}", "'A'", "retries", "from 0 to 100"),
    ("{name: A, script: echo, timeout: 0}", "'A'", "timeout", "not a duration greater than 0"),
    ("{name: A, script: echo, timeout: -5}", "'A'", "timeout", "greater than 0"),
    ("{name: A, script: echo, timeout: soon}", "'A'", "timeout", "'soon' is not a duration"),
    ("{name: A, script: echo, timeout: 5 days}", "'A'", "timeout", "e.g. 30s, 5m, 1h"),
    ("{name: A, script: echo, timeout: .inf}", "'A'", "timeout", "greater than 0"),
    ("{name: A, script: echo, timeout: true}", "'A'", "timeout", "not a duration"),
    ("{name: A, script: echo, packages: {name: db}}", "'A'", "packages", "must be a list"),
    ("{name: A, script: echo, packages: [db]}", "'A'", "packages", "package 1 must be a mapping"),
    ("{name: A, script: echo, packages: [{name: db, id: Acme.Db}]}", "'A'", "packages",
     "package 1 lacks version"),
    ("{name: A, script: echo, packages: [{name: db, id: Acme.Db, version: 1.0, extract: true}]}",
     "'A'", "packages", "quote it"),
    ("{name: A, script: echo, packages: [{name: db, id: Acme.Db, version: 1.0.0, "
     "extract: maybe}]}", "'A'", "packages", "extract must be true or false"),
    ("{name: A, script: echo, packages: [{name: ../db, id: Acme.Db, version: 1.0.0}]}", "'A'",
     "packages", "package 1: package reference name '../db'"),
    ("{name: A, script: echo, packages: [{name: db, id: Acme.Db, version: 1.0.0, sha: x}]}",
     "'A'", "packages", "unknown key 'sha'"),
    ("{name: A, script: echo, packages: [{name: db, id: A.B, version: 1.0.0}, "
     "{name: DB, id: C.D, version: 1.0.0}]}", "'A'", "packages", "'DB' is used twice"),
    ("{name: A, script_file: db/run.sh}", "'A'", "script_file",
     "not inside an extracted package of this step"),
    ("{name: A, script_file: ../run.sh, packages: [{name: db, id: A.B, version: 1.0.0}]}",
     "'A'", "script_file", "must be a relative path"),
    ("{name: A, script_file: db/run.sh, packages: [{name: db, id: A.B, version: 1.0.0, "
     "extract: false}]}", "'A'", "script_file", "extracted packages: none"),
    ("{name: A, script: echo, variables: [A]}", "'A'", "variables", "must be a mapping"),
    ("{name: A, script: echo, variables: {'A=B': x}}", "'A'", "variables",
     "variable name 'A=B' is invalid"),
    ("{name: A, script: echo, variables: {X: {value: 1, scope: Test}}}", "'A'", "variables",
     "unknown variable 'X' key"),
    ("{name: A, script: echo, variables: {X: 1, x: 2}}", "'A'", "variables", "given twice"),
    ("{name: A, script: echo, variables: {X: }}", "'A'", "variables", "'X' has no value"),
    ("{name: A, script: echo, features: [x]}", "'A'", "features", "must be a mapping"),
    ("{name: A, script: echo, features: {transform: [x]}}", "'A'", "features",
     "unknown features key 'transform'"),
    ("{name: A, script: echo, features: {substitute: [../x]}}", "'A'", "features",
     "leaves the working directory"),
    ("{name: A, script: echo, features: {structured: [/etc/x]}}", "'A'", "features",
     "leaves the working directory"),
]


@pytest.mark.parametrize(("step", "label", "field", "what"), STEP_REFUSALS,
                         ids=[f"{r[2]}-{n}" for n, r in enumerate(STEP_REFUSALS)])
def test_invalid_step_is_refused_naming_file_step_and_field(
        tmp_path: Path, templates: Path, step: str, label: str, field: str, what: str) -> None:
    text = "name: P\nvariables: {Pool: P}\nsteps:\n  - {name: Before, script: echo}\n" \
           f"  - {step}\n"
    message = refusal(tmp_path, text, templates)
    step_label = f"step {label}" if label.startswith("'") else f"step {int(label) + 1}"
    assert message.startswith(f"{tmp_path / 'process.yaml'}: {step_label}: field '{field}': ")
    assert what in message


def test_duplicate_step_names_are_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, steps("{name: Migrate, script: echo}",
                                      "{name: migrate, script: echo}"))
    assert message == (f"{tmp_path / 'process.yaml'}: step 'migrate': field 'name': another "
                       "step is already named 'Migrate' (give each step its own name)")


@pytest.mark.parametrize(("text", "field", "what"), [
    ("steps: [{name: A, script: echo}]\n", "name", "missing or empty"),
    ("name: P\n", "steps", "missing or empty"),
    ("name: P\nsteps: []\n", "steps", "missing or empty"),
    ("name: P\nsteps: {name: A}\n", "steps", "give a list of steps"),
    ("name: P\nstep: []\n", "step", "did you mean 'steps'?"),
    ("name: [P]\nsteps: [{name: A, script: echo}]\n", "name", "must be text"),
    ("name: P\nvariables_file: nope.yaml\nsteps: [{name: A, script: echo}]\n", "variables_file",
     "does not exist"),
])
def test_invalid_top_level_is_refused_naming_the_field(tmp_path: Path, text: str, field: str,
                                                       what: str) -> None:
    message = refusal(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'process.yaml'}: field '{field}': ")
    assert what in message


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text\n"])
def test_a_process_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    assert "a process file is a mapping" in refusal(tmp_path, text)


@pytest.mark.parametrize(("variables", "what"), [
    ("[A]", "must be a mapping of variable names"),
    ("{A: }", "variable 'A' has no value"),
    ("{A: 1.10}", "variable 'A' is a float in YAML; quote it"),
    ("{A: 2024-01-01}", "is a date in YAML"),
    ("{A: {sensitive: true}}", "variable 'A': a value given as a mapping needs 'value'"),
    ("{A: {value: x, sensitive: yes please}}", "sensitive must be true or false"),
    ("{A: {value: x, enviroment: Test}}",
     "unknown variable 'A' key 'enviroment' (did you mean 'environment'?"),
    ("{A: {value: x, environment: Test, environments: [Prod]}}", "not both"),
    ("{A: {value: x, role: ''}}", "roles must be a name or a non-empty list"),
    ("{A: {value: x, targets: []}}", "targets must be a name or a non-empty list"),
    ("{A: []}", "empty list of values"),
    ("{A: [x, y]}", "two values with the same scope (unscoped)"),
    ("{A: [{value: x, environment: [Test, Prod]}, {value: y, environment: [prod, test]}]}",
     "two values with the same scope (environment prod, test)"),
    ("{A: 1, a: 2}", "'A' and 'a' differ only in case"),
    ("{'A=B': 1}", "variable name 'A=B' is invalid"),
])
def test_invalid_variables_are_refused(tmp_path: Path, variables: str, what: str) -> None:
    message = refusal(tmp_path, f"name: P\nvariables: {variables}\n"
                                "steps: [{name: A, script: echo}]\n")
    assert message.startswith(f"{tmp_path / 'process.yaml'}: variables: ")
    assert what in message


def test_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    message = refusal(tmp_path, "name: P\nsteps:\n  - {name: A, script: echo\n")
    assert message.startswith(f"{tmp_path / 'process.yaml'}: line 4 column 1: ")


def test_reference_read_as_a_comment_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, """
        name: P
        steps:
          - name: Warm up
            script: echo hi #{Machine.Name}
        """)
    assert "line 5 column 21: ' #{' starts a YAML comment" in message


def test_file_larger_than_one_megabyte_is_refused(tmp_path: Path) -> None:
    big = steps("{name: A, script: echo}") + "# " + "x" * MAX_FILE_BYTES + "\n"
    assert "the process file is" in refusal(tmp_path, big)
    assert f"the limit is {MAX_FILE_BYTES}" in refusal(tmp_path, big)


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["name: P", "steps: [{name: A, script: echo}]", "x0: &x0 [a, a, a, a, a, a, a, a]"]
    lines += [f"x{n}: &x{n} [{', '.join([f'*x{n - 1}'] * 8)}]" for n in range(1, 9)]
    assert "alias bomb" in refusal(tmp_path, "\n".join(lines) + "\n")


# --- variable cycles -----------------------------------------------------------------------------


def test_unscoped_cycle_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, "name: P\nvariables: {A: '#{B}', B: 'x#{C}', C: '#{a}'}\n"
                                "steps: [{name: S, script: echo}]\n")
    assert message == (f"{tmp_path / 'process.yaml'}: variables: unscoped: variable cycle: "
                       "A -> B -> C -> A; change one of these values so it no longer refers back")


def test_cycle_in_one_environment_names_it(tmp_path: Path) -> None:
    message = refusal(tmp_path, """
        name: P
        variables:
          A: "#{B}"
          B:
            - {value: plain}
            - {value: "#{A}", environment: Production}
        steps: [{name: S, script: echo}]
        """)
    assert "variables: in environment 'Production': variable cycle: " in message


@pytest.mark.parametrize("scope", ["role: web", "target: web-01"])
def test_cycle_through_a_role_or_target_value(tmp_path: Path, scope: str) -> None:
    message = refusal(tmp_path, f"""
        name: P
        variables:
          A: "#{{B}}"
          B: [{{value: plain}}, {{value: "#{{A}}", {scope}}}]
        steps: [{{name: S, script: echo}}]
        """)
    assert f"variables: unscoped, {scope.split(':')[0]} " in message
    assert "variable cycle" in message


def test_references_that_never_meet_in_one_scope_are_not_a_cycle(tmp_path: Path) -> None:
    process = load(tmp_path, """
        name: P
        variables:
          A: [{value: "#{B}", environment: Test}, {value: a, environment: Production}]
          B: [{value: b, environment: Test}, {value: "#{A}", environment: Production}]
        steps: [{name: S, script: echo}]
        """)
    assert variables_for(process, "Test")[0] == {"A": "#{B}", "B": "b"}


def test_cycle_through_step_variables(tmp_path: Path) -> None:
    message = refusal(tmp_path, """
        name: P
        variables: {A: "#{B}"}
        steps: [{name: S, script: echo, variables: {B: "x #{A}"}}]
        """)
    assert message.startswith(f"{tmp_path / 'process.yaml'}: step 'S': field 'variables': ")
    assert "variable cycle: B -> A -> B" in message


def test_cycle_through_template_parameters(tmp_path: Path, templates: Path) -> None:
    message = refusal(tmp_path, """
        name: P
        variables: {A: "#{Who}"}
        steps: [{name: S, template: greet, parameters: {Who: "#{A}"}}]
        """, templates)
    assert "step 'S': field 'parameters': " in message and "variable cycle" in message


def test_escaped_reference_is_not_a_cycle(tmp_path: Path) -> None:
    load(tmp_path, "name: P\nvariables: {A: '##{A}'}\nsteps: [{name: S, script: echo}]\n")


# --- variables files -----------------------------------------------------------------------------


def test_variables_file_adds_values_and_wins_ties(tmp_path: Path) -> None:
    write(tmp_path, "variables:\n  DbName: from-file\n  Extra: [{value: e, role: web}]\n",
          "vars.yaml")
    extra = write(tmp_path, "variables:\n  DbName: {value: extra, environment: Test}\n",
                  "extra.yaml")
    path = write(tmp_path, "name: P\nvariables_file: vars.yaml\nvariables: {DbName: inline}\n"
                           "steps: [{name: S, script: echo}]\n")
    process = load_process(path, extra_variables_file=extra)
    assert [v.value for v in process.variables] == ["inline", "from-file", "e", "extra"]
    assert variables_for(process, "Production")[0] == {"DbName": "from-file"}
    assert variables_for(process, "Test")[0]["DbName"] == "extra"


@pytest.mark.parametrize(("text", "what"), [
    ("variables: {A: [x, x]}\n", "variables: variable 'A' has two values"),
    ("DbName: x\n", "a variables file is a mapping with one key, variables"),
    ("variables: {}\nsteps: []\n", "field 'steps': unknown variables-file key"),
])
def test_invalid_variables_file_names_that_file(tmp_path: Path, text: str, what: str) -> None:
    extra = write(tmp_path, text, "extra.yaml")
    path = write(tmp_path, "name: P\nsteps: [{name: S, script: echo}]\n")
    with pytest.raises(BadInput) as caught:
        load_process(path, extra_variables_file=extra)
    assert str(caught.value).startswith(f"{extra}: ") and what in str(caught.value)


# --- templates in steps --------------------------------------------------------------------------


def test_template_step_gets_script_syntax_packages_and_variables(tmp_path: Path,
                                                                 templates: Path) -> None:
    process = load(tmp_path, steps("{name: A, template: greet, parameters: {who: '#{Name}', "
                                   "Token: t0k}}"), templates)
    step = process.steps[0]
    assert (step.script, step.syntax, step.template) == ('print("hello")', "python", "greet")
    assert step.packages == (PackageRef("tools", "Acme.Tools", "2.0.0"),)
    assert step.parameters == {"who": "#{Name}", "Token": "t0k"}
    assert step.variables == {"Who": "#{Name}"}
    assert step.sensitive_variables == {"Token": "t0k"}


def test_step_values_override_the_template(tmp_path: Path, templates: Path) -> None:
    process = load(tmp_path, steps(
        "{name: A, template: greet, syntax: python, parameters: {Who: x}, packages: [], "
        "variables: {Who: y}}"), templates)
    step = process.steps[0]
    assert step.packages == () and step.variables == {"Who": "y"}
    assert step.sensitive_variables == {"Token": "none"}


def test_broken_template_is_refused_naming_step_and_template_file(tmp_path: Path,
                                                                  templates: Path) -> None:
    (templates / "broken.yaml").write_text("name: Broken\nscript: echo\nsyntax: cobol\n")
    message = refusal(tmp_path, steps("{name: A, template: broken}"), templates)
    assert message.startswith(f"{tmp_path / 'process.yaml'}: step 'A': field 'template': "
                              f"{templates / 'broken.yaml'}: field 'syntax': ")


def test_templates_dir_defaults_to_the_environment(tmp_path: Path, templates: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKERPOOL_TEMPLATES", str(templates))
    path = write(tmp_path, steps("{name: A, template: greet, parameters: {Who: x}}"))
    assert load_process(path).steps[0].template == "greet"


# --- scoping -------------------------------------------------------------------------------------

SCOPED = """
name: P
variables:
  Url:
    - {value: unscoped}
    - {value: env, environment: Test}
    - {value: role, role: web}
    - {value: role-and-env, role: web, environment: Production}
    - {value: target, target: web-01}
  Other: [{value: only-prod, environment: [Staging, production]}]
  Secret:
    - {value: plain}
    - {value: hidden, sensitive: true, environment: Test}
steps: [{name: S, script: echo}]
"""


@pytest.mark.parametrize(("environment", "target", "expected"), [
    ("Dev", None, "unscoped"),
    ("Test", None, "env"),
    ("test", None, "env"),
    ("Test", Scope("db-01", "Test", ("db",)), "env"),
    ("Test", Scope("web-02", "Test", ("web",)), "role"),
    ("Test", Scope("web-02", "Test", ("api", "WEB")), "role"),
    ("Production", Scope("web-02", "Production", ("web",)), "role-and-env"),
    ("Test", Scope("web-01", "Test", ("web",)), "target"),
    ("Production", Scope("WEB-01", "Production", ("db",)), "target"),
])
def test_most_specific_value_wins(tmp_path: Path, environment: str, target: Scope | None,
                                  expected: str) -> None:
    values, _ = variables_for(load(tmp_path, SCOPED), environment, target)
    assert values["Url"] == expected


def test_variable_without_an_applying_value_is_absent(tmp_path: Path) -> None:
    process = load(tmp_path, SCOPED)
    assert "Other" not in variables_for(process, "Test")[0]
    assert variables_for(process, "Production")[0]["Other"] == "only-prod"


def test_sensitive_names_follow_the_chosen_value(tmp_path: Path) -> None:
    process = load(tmp_path, SCOPED)
    assert variables_for(process, "Test")[1] == {"Secret"}
    values, sensitive = variables_for(process, "Dev")
    assert values["Secret"] == "plain" and sensitive == set()


def test_extra_overrides_everything_and_keeps_sensitivity(tmp_path: Path) -> None:
    process = load(tmp_path, SCOPED)
    target = Scope("web-01", "Test", ("web",))
    values, sensitive = variables_for(process, "Test", target,
                                      {"url": "cli", "secret": "s", "New": "n"})
    assert values["Url"] == "cli" and values["Secret"] == "s" and values["New"] == "n"
    assert "url" not in values and "Secret" in sensitive
    assert variables_for(process, "Dev", None, {"Secret": "s"})[1] == {"Secret"}


def test_on_a_tie_the_later_value_wins() -> None:
    variables = [ProjectVariable("A", "first", environments=("Test",)),
                 ProjectVariable("a", "second", environments=("test",))]
    assert select(variables, "Test") == ({"A": "second"}, set())


def test_scope_dimensions_must_all_match() -> None:
    variables = [ProjectVariable("A", "x", environments=("Test",), roles=("web",))]
    assert select(variables, "Test") == ({}, set())
    assert select(variables, "Prod", Scope("w", "Prod", ("web",))) == ({}, set())
    assert select(variables, "Test", Scope("w", "Test", ("web",)))[0] == {"A": "x"}


# --- pool_variable -------------------------------------------------------------------------------

POOLS = """
name: P
variables:
  DbPool:
    - {value: "#{Prefix} Worker Pool"}
    - {value: Prod DB Pool, environment: Production}
  Prefix: Database
  Empty: [{value: Somewhere, environment: Production}]
steps:
  - {name: Fixed, pool: Azure Worker Pool, script: echo}
  - {name: ByVariable, pool_variable: DbPool, script: echo}
  - {name: Default, script: echo}
  - {name: Unset, pool_variable: empty, script: echo}
  - {name: PerTarget, location: worker-per-target, roles: web, pool_variable: DbPool,
     script: echo}
"""


def test_pool_for_resolves_the_pool_variable_per_environment(tmp_path: Path) -> None:
    process = load(tmp_path, POOLS)
    fixed, by_variable, default, _, per_target = process.steps
    test, _ = variables_for(process, "Test")
    prod, _ = variables_for(process, "Production")
    assert pool_for(fixed, test) == "Azure Worker Pool"
    assert pool_for(by_variable, test) == "Database Worker Pool"
    assert pool_for(by_variable, prod) == "Prod DB Pool"
    assert pool_for(per_target, variables_for(process, "Test", None, {"dbpool": "X"})[0]) == "X"
    assert pool_for(default, test) is None


def test_pool_variable_without_a_value_in_the_environment(tmp_path: Path) -> None:
    process = load(tmp_path, POOLS)
    unset = process.steps[3]
    assert pool_for(unset, variables_for(process, "Production")[0]) == "Somewhere"
    with pytest.raises(BadInput) as caught:
        pool_for(unset, variables_for(process, "Test")[0])
    assert str(caught.value).startswith("step 'Unset': field 'pool_variable': variable 'empty' "
                                        "has no value for this environment")
