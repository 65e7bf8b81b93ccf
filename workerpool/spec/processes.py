"""Deployment processes: ordered steps and project variables, loaded from YAML and checked.

Everything that can be checked without Redis is checked here, before anything runs. Every
refusal is one ``BadInput`` line that names the file, the step and the field, e.g.
``process.yaml: step 'Migrate': field 'location': unknown location 'somewhere' (use one of ...)``.
The format is described in ``docs/processes.md``; example processes ship in ``examples/``
(``shipped.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from workerpool.core import keys
from workerpool.core.errors import BadInput
from workerpool.core.packageref import PackageRef
from workerpool.core.pools import validate_name
from workerpool.core.steps import MAX_SCRIPT_BYTES, check_variable
from workerpool.core.syntaxes import SYNTAXES, syntax_for_path
from workerpool.spec.fields import check_keys, name_list, parse_field, parse_packages, text_value
from workerpool.spec.projectvars import ProjectVariable, check_cycles, parse_variables
from workerpool.spec.templates import default_templates_dir, load_template
from workerpool.spec.yamlfile import read_yaml

__all__ = ["LOCATIONS", "Process", "ProcessStep", "ProjectVariable", "load_process",
           "parse_variables"]

LOCATIONS = ("worker", "worker-per-target", "target", "server")
POOL_LOCATIONS = ("worker", "worker-per-target")
ROLE_LOCATIONS = ("worker-per-target", "target")
CONDITIONS = ("success", "failure", "always")
TOP_KEYS = ("name", "description", "variables", "variables_file", "steps")
VARIABLES_FILE_KEYS = ("variables",)
STEP_KEYS = ("name", "location", "pool", "pool_variable", "roles", "script", "script_file",
             "syntax", "template", "parameters", "packages", "variables", "features", "timeout",
             "max_parallelism", "condition", "retries", "priority")
FEATURE_KEYS = ("substitute", "structured")
DEFAULT_MAX_PARALLELISM = 10
MAX_RETRIES = 100
_STEP_NAME_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\[\]{}]")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
T = TypeVar("T")


@dataclass(frozen=True)
class ProcessStep:
    """One step of a process, with its template (if any) already applied."""

    name: str
    location: str
    pool: str | None
    pool_variable: str | None
    roles: tuple[str, ...]
    script: str | None
    syntax: str
    script_file: str | None
    template: str | None
    parameters: dict[str, str]
    packages: tuple[PackageRef, ...]
    variables: dict[str, str]
    sensitive_variables: dict[str, str]
    substitute: tuple[str, ...]
    structured: tuple[str, ...]
    timeout: float | None
    max_parallelism: int = DEFAULT_MAX_PARALLELISM
    condition: str = "success"
    retries: int = 0
    priority: str = keys.NORMAL  # high, normal or low: its runs' place in their pool's queue


@dataclass(frozen=True)
class Process:
    name: str
    source: str
    steps: tuple[ProcessStep, ...]
    variables: tuple[ProjectVariable, ...] = field(default=())


def load_process(path: Path, templates_dir: Path | None = None,
                 extra_variables_file: Path | None = None) -> Process:
    """Load and check a process file; BadInput (one line naming file, step, field) if invalid.

    Project variables come from the file's ``variables``, then its ``variables_file``, then
    *extra_variables_file*; on equal scope a later one wins.
    """
    source = str(path)
    data = read_yaml(path, "process file")
    if not isinstance(data, dict):
        raise BadInput(f"{source}: a process file is a mapping with {', '.join(TOP_KEYS)} "
                       "(see docs/processes.md)")
    try:
        check_keys(data, TOP_KEYS, "top-level")
        name = _text(data, "name", required=True)
        raw_steps = data.get("steps")
        if not isinstance(raw_steps, list) or not raw_steps:
            raise BadInput("field 'steps': missing or empty (give a list of steps)")
        variables_file = _text(data, "variables_file")
    except BadInput as exc:
        raise BadInput(f"{source}: {exc}") from None
    variables = _variables(source, data.get("variables"))
    if variables_file:
        variables += _variables_file(path.parent / variables_file, source)
    if extra_variables_file is not None:
        variables += _variables_file(extra_variables_file, None)
    templates = default_templates_dir() if templates_dir is None else templates_dir
    steps = _steps(source, raw_steps, templates, variables)
    check_cycles(source, variables, steps)
    return Process(name=name, source=source, steps=steps, variables=tuple(variables))


# -- variables -----------------------------------------------------------------------------

def _variables(source: str, raw: object) -> list[ProjectVariable]:
    try:
        return parse_variables(raw)
    except BadInput as exc:
        raise BadInput(f"{source}: variables: {exc}") from None


def _variables_file(path: Path, referenced_from: str | None) -> list[ProjectVariable]:
    if referenced_from is not None and not path.is_file():
        raise BadInput(f"{referenced_from}: field 'variables_file': {path} does not exist "
                       "(the path is relative to the process file)")
    data = read_yaml(path, "variables file")
    if not isinstance(data, dict) or "variables" not in data:
        raise BadInput(f"{path}: a variables file is a mapping with one key, variables")
    try:
        check_keys(data, VARIABLES_FILE_KEYS, "variables-file")
    except BadInput as exc:
        raise BadInput(f"{path}: {exc}") from None
    return _variables(str(path), data["variables"])


# -- steps ---------------------------------------------------------------------------------

def _steps(source: str, raw_steps: list[Any], templates: Path,
           variables: list[ProjectVariable]) -> tuple[ProcessStep, ...]:
    declared = {v.name.casefold() for v in variables}
    steps: list[ProcessStep] = []
    for number, raw in enumerate(raw_steps, 1):
        label = f"step {number}"
        if isinstance(raw, dict) and isinstance(raw.get("name"), str) and raw["name"].strip():
            label = f"step {raw['name'].strip()!r}"
        try:
            step = _step(raw, templates, declared)
            earlier = next((s for s in steps if s.name.casefold() == step.name.casefold()), None)
            if earlier is not None:
                raise BadInput(f"field 'name': another step is already named {earlier.name!r} "
                               "(give each step its own name)")
        except BadInput as exc:
            raise BadInput(f"{source}: {label}: {exc}") from None
        steps.append(step)
    return tuple(steps)


def _step(raw: object, templates: Path, declared: set[str]) -> ProcessStep:
    if not isinstance(raw, dict):
        raise BadInput("field 'name': a step is a mapping with name, location and script "
                       "(or template)")
    check_keys(raw, STEP_KEYS, "step")
    name = _step_name(raw)
    location = _text(raw, "location") or "worker"
    if location not in LOCATIONS:
        raise BadInput(f"field 'location': unknown location {location!r} (use one of "
                       f"{', '.join(LOCATIONS)})")
    pool, pool_variable = _pool(raw, location, declared)
    roles: tuple[str, ...] = parse_field(raw, "roles", lambda r: name_list(r, "it"), ())
    _check_roles(location, roles)
    script, syntax, script_file, template, parameters, packages, variables, secret = \
        _body(raw, templates)
    features: dict[str, tuple[str, ...]] = parse_field(raw, "features", _features, {})
    return ProcessStep(
        name=name, location=location, pool=pool, pool_variable=pool_variable, roles=roles,
        script=script, syntax=syntax, script_file=script_file, template=template,
        parameters=parameters, packages=packages, variables=variables,
        sensitive_variables=secret, substitute=features.get("substitute", ()),
        structured=features.get("structured", ()),
        timeout=parse_field(raw, "timeout", _timeout, None),
        max_parallelism=parse_field(raw, "max_parallelism", _max_parallelism,
                                    DEFAULT_MAX_PARALLELISM),
        condition=_choice(raw, "condition", CONDITIONS),
        retries=parse_field(raw, "retries", _retries, 0),
        priority=_choice(raw, "priority", keys.PRIORITIES, default=keys.NORMAL))


def _step_name(raw: dict[str, Any]) -> str:
    name = _text(raw, "name", required=True).strip()
    if _STEP_NAME_FORBIDDEN.search(name) or len(name) > 200:
        raise BadInput(f"field 'name': {name!r} may not hold brackets, braces or control "
                       "characters, nor exceed 200 characters (later steps refer to it as "
                       "#{Action[NAME].Output...})")
    return name


def _pool(raw: dict[str, Any], location: str,
          declared: set[str]) -> tuple[str | None, str | None]:
    pool = parse_field(raw, "pool", lambda r: validate_name(text_value(r, "it")), None)
    pool_variable = _text(raw, "pool_variable").strip() or None
    if pool and pool_variable:
        raise BadInput("field 'pool_variable': give pool or pool_variable, not both")
    if location not in POOL_LOCATIONS and (pool or pool_variable):
        key = "pool" if pool else "pool_variable"
        runs = "on the built-in worker" if location == "server" else "on each target's agent"
        raise BadInput(f"field {key!r}: a {location} step runs {runs}, not on a pool "
                       f"(remove {key}, or use location worker)")
    if location == "worker-per-target" and not (pool or pool_variable):
        raise BadInput("field 'pool': a worker-per-target step needs a pool (add pool: NAME, "
                       "or pool_variable: VARIABLE)")
    if pool_variable and pool_variable.casefold() not in declared:
        raise BadInput(f"field 'pool_variable': no project variable named {pool_variable!r} "
                       "(declare it under variables:, scoped per environment)")
    return pool, pool_variable


def _check_roles(location: str, roles: tuple[str, ...]) -> None:
    if location in ROLE_LOCATIONS and not roles:
        raise BadInput(f"field 'roles': a {location} step needs the roles of the targets it "
                       "runs for (add roles: [web])")
    if location not in ROLE_LOCATIONS and roles:
        raise BadInput(f"field 'roles': a {location} step runs once, not per target (remove "
                       "roles, or use location worker-per-target or target)")


_Body = tuple[str | None, str, str | None, str | None, dict[str, str], tuple[PackageRef, ...],
              dict[str, str], dict[str, str]]


def _body(raw: dict[str, Any], templates: Path) -> _Body:
    """What the step runs: an inline script, a script file in a package, or a template."""
    given = [key for key in ("script", "script_file", "template") if raw.get(key) is not None]
    if len(given) != 1:
        what = "neither" if not given else "both " + " and ".join(given)
        raise BadInput(f"field {(given or ['script'])[-1]!r}: a step has exactly one of script, "
                       f"script_file or template, not {what}")
    packages: tuple[PackageRef, ...] | None = parse_field(raw, "packages", parse_packages, None)
    syntax = _choice(raw, "syntax", tuple(SYNTAXES), default="")
    no_variables: tuple[dict[str, str], dict[str, str]] = ({}, {})
    variables, secret = parse_field(raw, "variables", _step_variables, no_variables)
    if "parameters" in raw and "template" not in raw:
        raise BadInput("field 'parameters': only a template step takes parameters (use "
                       "variables: for a script step)")
    script = script_file = template = None
    parameters: dict[str, str] = {}
    if "template" in raw:
        template = _text(raw, "template", required=True)
        parameters = parse_field(raw, "parameters", _parameters, {})
        script, template_syntax, template_packages, from_template, sensitive_names = \
            _instantiate(template, parameters, templates)
        syntax = syntax or template_syntax
        packages = template_packages if packages is None else packages
        overridden = {n.casefold() for n in (*variables, *secret)}
        for param, value in from_template.items():
            if param.casefold() not in overridden:
                (secret if param in sensitive_names else variables)[param] = value
    elif "script_file" in raw:
        script_file = _script_file(_text(raw, "script_file", required=True), packages or ())
        syntax = syntax or syntax_for_path(script_file).name
    else:
        script = _script(raw)
    return (script, syntax or "bash", script_file, template, parameters, packages or (),
            variables, secret)


def _instantiate(name: str, parameters: dict[str, str], templates: Path
                 ) -> tuple[str, str, tuple[PackageRef, ...], dict[str, str], set[str]]:
    try:
        template = load_template(name, templates)
    except BadInput as exc:
        raise BadInput(f"field 'template': {exc}") from None
    try:
        script, syntax, variables, sensitive = template.instantiate(parameters)
    except BadInput as exc:
        raise BadInput(f"field 'parameters': {exc}") from None
    return script, syntax, template.package_refs(variables), variables, sensitive


def _script(raw: dict[str, Any]) -> str:
    script = _text(raw, "script")
    if not script.strip():
        raise BadInput("field 'script': the script is empty (write the commands to run)")
    if len(script.encode()) > MAX_SCRIPT_BYTES:
        raise BadInput(f"field 'script': longer than {MAX_SCRIPT_BYTES} bytes (put it in a "
                       "package and use script_file)")
    if "\x00" in script:
        raise BadInput("field 'script': contains a NUL byte (scripts must be text)")
    return script


def _script_file(path: str, packages: tuple[PackageRef, ...]) -> str:
    parts = PurePosixPath(path).parts
    extracted = [p.name for p in packages if p.extract]
    if not parts or path.startswith("/") or ".." in parts or "\\" in path:
        raise BadInput(f"field 'script_file': {path!r} must be a relative path inside an "
                       "extracted package, such as db/migrate.sh")
    if parts[0] not in extracted or len(parts) < 2:
        names = ", ".join(extracted) or "none"
        raise BadInput(f"field 'script_file': {path!r} is not inside an extracted package of "
                       f"this step (start it with a package name; extracted packages: {names})")
    return str(PurePosixPath(*parts))


def _step_variables(raw: object) -> tuple[dict[str, str], dict[str, str]]:
    """A step's own ``{Name: value | {value, sensitive}}``; unscoped, they override project
    variables for this step."""
    if not isinstance(raw, dict):
        raise BadInput("must be a mapping of names to values")
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    for name, spec in raw.items():
        name = text_value(name, "a variable name").strip()
        if isinstance(spec, dict):
            check_keys(spec, ("value", "sensitive"), f"variable {name!r}", nested=True)
            value = text_value(spec.get("value"), f"variable {name!r}")
            sensitive = spec.get("sensitive", False)
            if not isinstance(sensitive, bool):
                raise BadInput(f"variable {name!r}: sensitive must be true or false")
        else:
            value, sensitive = text_value(spec, f"variable {name!r}"), False
        check_variable(name, value)
        if name.casefold() in {n.casefold() for n in (*plain, *secret)}:
            raise BadInput(f"variable {name!r} is given twice (names are case-insensitive)")
        (secret if sensitive else plain)[name] = value
    return plain, secret


def _parameters(raw: object) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise BadInput("must be a mapping of the template's parameter names to values")
    return {text_value(name, "a parameter name").strip(): text_value(value, f"parameter {name!r}")
            for name, value in raw.items()}


def _features(raw: object) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict):
        raise BadInput("must be a mapping: {substitute: [GLOB, ...], structured: [GLOB, ...]}")
    check_keys(raw, FEATURE_KEYS, "features", nested=True)
    result: dict[str, tuple[str, ...]] = {}
    for key, value in raw.items():
        globs = name_list(value, key)
        for glob in globs:
            if glob.startswith("/") or ".." in PurePosixPath(glob).parts:
                raise BadInput(f"{key} glob {glob!r} leaves the working directory (use a "
                               "relative pattern such as db/**/*.config)")
        result[key] = globs
    return result


def _timeout(raw: object) -> float:
    """Seconds as a number, or text like ``90``, ``30s``, ``5m``, ``1.5h``, ``500ms``."""
    seconds: float | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        seconds = float(raw)
    elif isinstance(raw, str) and (match := _DURATION.fullmatch(raw.strip())):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise BadInput(f"{_shown(raw)} is not a duration greater than 0 (write seconds, or e.g. "
                       "30s, 5m, 1h)")
    return seconds


def _max_parallelism(raw: object) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
        raise BadInput(f"{_shown(raw)} is not a whole number of at least 1 (how many targets "
                       "run at once)")
    return raw


def _retries(raw: object) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw <= MAX_RETRIES:
        raise BadInput(f"{_shown(raw)} is not a whole number from 0 to {MAX_RETRIES} (how many "
                       "times a failed run is tried again)")
    return raw


# -- small field helpers -------------------------------------------------------------------

def _shown(raw: object) -> str:
    """A YAML value as the user wrote it, near enough: ``true`` rather than ``True``."""
    return str(raw).lower() if isinstance(raw, bool) else repr(raw)


def _text(data: Mapping[str, Any], key: str, required: bool = False) -> str:
    value = parse_field(data, key, lambda raw: text_value(raw, "the value"), "")
    if required and not value.strip():
        raise BadInput(f"field {key!r}: missing or empty (every process and step needs one)"
                       if key == "name" else f"field {key!r}: missing or empty")
    return value


def _choice(data: Mapping[str, Any], key: str, allowed: tuple[str, ...],
            default: str | None = None) -> str:
    value = _text(data, key).strip()
    if not value:
        return allowed[0] if default is None else default
    if value not in allowed:
        raise BadInput(f"field {key!r}: {value!r} is not one of {', '.join(allowed)}")
    return value
