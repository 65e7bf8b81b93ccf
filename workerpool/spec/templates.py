"""Step templates: reusable scripts with declared parameters, one YAML file each in a directory.

A template's parameters become the step's variables (sensitive ones sensitive variables), so its
script refers to them as ``#{Param}`` or reads them from the environment; values are never
pasted into the script text, which keeps secrets out of stored steps and Flower. A template's
package may take its id, version or feed from parameters (``id: "#{PackageId}"``); it is left
out when its id comes out empty, so the script can work on a path of the worker's instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from workerpool.core.errors import BadInput
from workerpool.core.packageref import PackageRef
from workerpool.core.steps import check_variable
from workerpool.core.syntaxes import SYNTAXES
from workerpool.spec.fields import check_keys, parse_field, parse_packages, text_value
from workerpool.spec.yamlfile import read_yaml

T = TypeVar("T")
TEMPLATES_ENV = "WORKERPOOL_TEMPLATES"
TEMPLATE_KEYS = ("name", "description", "syntax", "parameters", "script", "packages")
PARAMETER_KEYS = ("name", "description", "default", "required", "sensitive")
_TEMPLATE_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_PARAMETER_REFERENCE = re.compile(r"#\{([^}\n]*)\}")
_SLOT_FIELDS = ("id", "version", "feed")


# -- templates -----------------------------------------------------------------------------

def default_templates_dir() -> Path:
    """``$WORKERPOOL_TEMPLATES``, else the templates shipped in the package (``templates/``
    beside this module)."""
    configured = os.environ.get(TEMPLATES_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path(__file__).parent / "templates"


@dataclass(frozen=True)
class Parameter:
    name: str
    description: str = ""
    default: str | None = None
    required: bool = False
    sensitive: bool = False


@dataclass(frozen=True)
class PackageSlot:
    """A template package whose id, version or feed refer to parameters
    (``id: "#{PackageId}"``); it becomes a PackageRef once the parameters have values."""

    name: str
    package_id: str
    version: str
    feed: str
    extract: bool

    def resolve(self, values: Mapping[str, str], template: str) -> PackageRef | None:
        """The reference, or None when the id comes out empty (the package is optional)."""
        folded = {name.casefold(): value for name, value in values.items()}

        def fill(text: str) -> str:
            return _PARAMETER_REFERENCE.sub(
                lambda m: folded.get(m.group(1).strip().casefold(), ""), text).strip()

        package_id, version = fill(self.package_id), fill(self.version)
        if not package_id:
            return None
        if not version:
            names = ", ".join(_PARAMETER_REFERENCE.findall(self.version)) or "a version"
            raise BadInput(f"template {template!r}: package {self.name!r} ({package_id}) needs a "
                           f"version; give {names}")
        try:
            return PackageRef(self.name, package_id, version, fill(self.feed) or "builtin",
                              self.extract)
        except BadInput as exc:
            raise BadInput(f"template {template!r}: package {self.name!r}: {exc}") from None


@dataclass(frozen=True)
class Template:
    """A step template loaded from ``<directory>/<slug>.yaml``."""

    slug: str
    name: str
    description: str
    syntax: str
    parameters: tuple[Parameter, ...]
    script: str
    packages: tuple[PackageRef, ...]  # the fixed ones; those with #{Param} are in slots
    source: str
    slots: tuple[PackageSlot, ...] = ()

    def package_refs(self, variables: Mapping[str, str],
                     leave_out: Collection[str] = ()) -> tuple[PackageRef, ...]:
        """The template's packages with its parameter values (``instantiate``'s variables)
        filled in, without those named in *leave_out* (the caller references them itself)."""
        skip = {name.casefold() for name in leave_out}
        refs = [*self.packages, *(slot.resolve(variables, self.slug) for slot in self.slots
                                  if slot.name.casefold() not in skip)]
        return tuple(ref for ref in refs if ref is not None and ref.name.casefold() not in skip)

    def instantiate(self, params: Mapping[str, str]
                    ) -> tuple[str, str, dict[str, str], set[str]]:
        """(script, syntax, variables, sensitive names) for these parameter values.

        Names match case-insensitively; an optional parameter without value or default is "".
        BadInput for an unknown parameter or a required one without a value.
        """
        declared = {p.name.casefold(): p for p in self.parameters}
        given: dict[str, str] = {}
        for name, text in params.items():
            parameter = declared.get(name.strip().casefold())
            if parameter is None:
                allowed = ", ".join(p.name for p in self.parameters) or "none"
                raise BadInput(f"template {self.slug!r} has no parameter {name!r}; "
                               f"its parameters: {allowed}")
            given[parameter.name] = text
        variables: dict[str, str] = {}
        for parameter in self.parameters:
            value: str | None = given.get(parameter.name, parameter.default)
            if parameter.required and not value:
                raise BadInput(f"template {self.slug!r} needs parameter {parameter.name!r}"
                               + (f" ({parameter.description})" if parameter.description else "")
                               + "; give it a value (under parameters: in a process, "
                               f"--param {parameter.name}=VALUE on the command line)")
            variables[parameter.name] = value or ""
        sensitive = {p.name for p in self.parameters if p.sensitive}
        return self.script, self.syntax, variables, sensitive


def template_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if p.suffix in (".yaml", ".yml") and p.is_file())


def list_templates(directory: Path | None = None) -> list[Template]:
    """Every template in *directory* (default: ``default_templates_dir()``), by slug."""
    directory = default_templates_dir() if directory is None else directory
    return [parse_template(path) for path in template_files(directory)]


def load_template(name: str, directory: Path | None = None) -> Template:
    """The template whose file is ``<name>.yaml`` (or whose ``name:`` is *name*, any case)."""
    directory = default_templates_dir() if directory is None else directory
    files = template_files(directory)
    if _TEMPLATE_FILE.fullmatch(name):
        for path in files:
            if path.stem == name:
                return parse_template(path)
    for path in files:
        try:
            template = parse_template(path)
        except BadInput:
            continue  # a broken template elsewhere must not hide the one asked for
        if name.casefold() in (template.name.casefold(), template.slug.casefold()):
            return template
    if not directory.is_dir():
        raise BadInput(f"no step template {name!r}: the templates directory {directory} does "
                       f"not exist (set {TEMPLATES_ENV} to the directory that holds them)")
    available = ", ".join(p.stem for p in files) or "none"
    raise BadInput(f"no step template {name!r} in {directory}; available: {available}")


def parse_template(path: Path) -> Template:
    """Load and check one template file; BadInput ``PATH: field 'F': ...``."""
    data = read_yaml(path, "step template")
    if not isinstance(data, dict):
        raise BadInput(f"{path}: a step template is a mapping with {', '.join(TEMPLATE_KEYS)}")
    try:
        return _template(path, data)
    except BadInput as exc:
        raise BadInput(f"{path}: {exc}") from None


def _template(path: Path, data: dict[str, Any]) -> Template:
    check_keys(data, TEMPLATE_KEYS, "template")
    name = _required_text(data, "name")
    script = _required_text(data, "script")
    syntax = parse_field(data, "syntax", lambda raw: text_value(raw, "it"), "bash")
    if syntax not in SYNTAXES:
        raise BadInput(f"field 'syntax': unknown syntax {syntax!r}; use one of "
                       f"{', '.join(SYNTAXES)}")
    description = parse_field(data, "description", lambda raw: text_value(raw, "it"), "")
    no_parameters: tuple[Parameter, ...] = ()
    parameters = parse_field(data, "parameters", _parameters, no_parameters)
    no_packages: tuple[tuple[PackageRef, ...], tuple[PackageSlot, ...]] = ((), ())
    packages, slots = parse_field(data, "packages",
                                  lambda raw: _template_packages(raw, parameters), no_packages)
    return Template(path.stem, name, description, syntax, parameters, script, packages,
                    str(path), slots)


def _template_packages(raw: object, parameters: tuple[Parameter, ...]
                       ) -> tuple[tuple[PackageRef, ...], tuple[PackageSlot, ...]]:
    """Fixed packages, and slots whose id, version or feed refer to declared parameters."""
    if not isinstance(raw, list):
        return parse_packages(raw), ()
    declared = {p.name.casefold() for p in parameters}
    # Each reference checked as a placeholder, so a slot gets the same checks as a package.
    checked = parse_packages([_placeholders(item, declared) for item in raw])
    fixed: list[PackageRef] = []
    slots: list[PackageSlot] = []
    for item, ref in zip(raw, checked, strict=True):
        texts = [str(item.get(key, "")) for key in _SLOT_FIELDS]
        if any(_PARAMETER_REFERENCE.search(text) for text in texts):
            slots.append(PackageSlot(ref.name, texts[0], texts[1], texts[2] or ref.feed,
                                     ref.extract))
        else:
            fixed.append(ref)
    return tuple(fixed), tuple(slots)


def _placeholders(item: object, declared: set[str]) -> object:
    if not isinstance(item, dict):
        return item
    copy = dict(item)
    for key in _SLOT_FIELDS:
        value = item.get(key)
        if not isinstance(value, str):
            continue
        for name in _PARAMETER_REFERENCE.findall(value):
            if name.strip().casefold() not in declared:
                raise BadInput(f"package {item.get('name')!r}: {key} refers to #{{{name}}}, "
                               "which is not a parameter of this template")
        copy[key] = _PARAMETER_REFERENCE.sub("0", value)
    return copy


def _required_text(data: dict[str, Any], key: str) -> str:
    value = parse_field(data, key, lambda raw: text_value(raw, "it"), "")
    if not str(value).strip():
        raise BadInput(f"field {key!r}: missing or empty; every template needs one")
    return str(value)


def _parameters(raw: object) -> tuple[Parameter, ...]:
    if not isinstance(raw, list):
        raise BadInput("must be a list of {name, description, default, required, sensitive}")
    parameters: list[Parameter] = []
    for index, item in enumerate(raw, 1):
        if not isinstance(item, dict):
            raise BadInput(f"parameter {index} must be a mapping with a name")
        unknown = [key for key in item if key not in PARAMETER_KEYS]
        if unknown:
            raise BadInput(f"parameter {index}: unknown key {unknown[0]!r}; allowed: "
                           f"{', '.join(PARAMETER_KEYS)}")
        parameter = _parameter(item, f"parameter {index}")
        if any(p.name.casefold() == parameter.name.casefold() for p in parameters):
            raise BadInput(f"parameter {parameter.name!r} is declared twice")
        parameters.append(parameter)
    return tuple(parameters)


def _parameter(item: dict[str, Any], where: str) -> Parameter:
    name = text_value(item.get("name"), f"{where} name").strip()
    check_variable(name, "")
    flags = {key: item.get(key, False) for key in ("required", "sensitive")}
    for key, flag in flags.items():
        if not isinstance(flag, bool):
            raise BadInput(f"parameter {name!r}: {key} must be true or false")
    default = item.get("default")
    return Parameter(name=name,
                     description=text_value(item.get("description", ""), f"{where} description"),
                     default=None if default is None else text_value(default, f"{name} default"),
                     required=flags["required"], sensitive=flags["sensitive"])
