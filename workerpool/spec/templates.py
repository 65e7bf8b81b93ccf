"""Step templates: reusable scripts with declared parameters, one YAML file each in a directory.

A template's parameters become the step's variables (sensitive ones sensitive variables), so its
script refers to them as ``#{Param}`` or reads them from the environment; values are never
pasted into the script text, which keeps secrets out of stored steps and Flower. A template's
package may take its id, version or feed from parameters (``id: "#{PackageId}"``); it is left
out when its id comes out empty, so the script can work on a path of the worker's instead.

This module also holds the YAML reading that process files share: a size limit, a node limit
on alias expansion (a "billion laughs" document is refused before it is built), and one-line
errors that name the file, line and column.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import ruamel.yaml
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from workerpool.core.errors import BadInput, one_line
from workerpool.core.packageref import PackageRef
from workerpool.core.steps import check_variable
from workerpool.core.syntaxes import SYNTAXES

MAX_FILE_BYTES = 1_000_000
# Nodes a document may hold once every alias is expanded; real files hold a few thousand.
MAX_NODES = 100_000
T = TypeVar("T")
TEMPLATES_ENV = "WORKERPOOL_TEMPLATES"
TEMPLATE_KEYS = ("name", "description", "syntax", "parameters", "script", "packages")
PARAMETER_KEYS = ("name", "description", "default", "required", "sensitive")
PACKAGE_KEYS = ("name", "id", "version", "feed", "extract")
_COMMENTED_REFERENCE = re.compile(r"[ \t]+#\{")
_TEMPLATE_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_PARAMETER_REFERENCE = re.compile(r"#\{([^}\n]*)\}")
_SLOT_FIELDS = ("id", "version", "feed")


# -- YAML files ----------------------------------------------------------------------------

def read_yaml(path: Path, what: str = "file") -> Any:
    """Load one YAML document safely; BadInput ``PATH: ...`` on any problem, in one line."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:  # bounded: a device or pipe has no size to check first
            data = fh.read(MAX_FILE_BYTES + 1)
        if size > MAX_FILE_BYTES or len(data) > MAX_FILE_BYTES:
            raise BadInput(f"{path}: the {what} is {max(size, len(data))}"
                           f"{'' if size > MAX_FILE_BYTES else ' or more'} bytes; the limit is "
                           f"{MAX_FILE_BYTES} (move large content into a package)")
        text = data.decode("utf-8")
    except OSError as exc:
        raise BadInput(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path}: the {what} is not UTF-8 text") from None
    yaml = ruamel.yaml.YAML(typ="safe", pure=True)
    try:
        node = yaml.compose(text)
        if node is None:
            return None
        _check_nodes(path, text, node)
        return yaml.constructor.construct_document(node)
    except MarkedYAMLError as exc:
        raise BadInput(f"{path}: {_describe(exc)}") from None
    except YAMLError as exc:
        raise BadInput(f"{path}: not valid YAML: {one_line(str(exc))}") from None


def _describe(exc: MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
    problem = one_line(" ".join(p for p in (exc.context, exc.problem) if p)) or "invalid YAML"
    if isinstance(exc, ruamel.yaml.constructor.DuplicateKeyError):
        return f"{where}{problem} (each key may appear once in a mapping)"
    return f"{where}{problem} (fix the YAML syntax there)"


def _check_nodes(path: Path, text: str, root: Node) -> None:
    """Count nodes as if every alias were expanded, without expanding; refuse past the limit.

    Also refuse a plain scalar cut short by `` #{``: YAML reads it as a comment, so
    ``script: echo #{Name}`` would silently run ``echo``.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            active.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_NODES:
                raise BadInput(f"{path}: aliases expand to more than {MAX_NODES} nodes; "
                               "refusing a document that grows when expanded (an alias bomb)")
            continue
        if key in sizes:
            continue
        if key in active:
            raise BadInput(f"{path}: line {node.start_mark.line + 1}: an alias refers to a node "
                           "that contains it; recursive documents are not supported")
        active.add(key)
        if isinstance(node, ScalarNode) and node.style is None:
            _check_plain_scalar(path, text, node)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def _check_plain_scalar(path: Path, text: str, node: ScalarNode) -> None:
    end = node.end_mark
    match = _COMMENTED_REFERENCE.match(text, end.index)
    if match:
        column = end.column + (match.end() - 2 - end.index) + 1
        raise BadInput(f"{path}: line {end.line + 1} column {column}: ' #{{' starts a YAML "
                       "comment, so the rest of the line is dropped (quote the value, or write "
                       "it as a block: `script: |` with the text on the lines below)")


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def text_value(raw: object, what: str) -> str:
    """A YAML scalar as text: strings as written, integers and booleans spelled out.

    Floats, dates and binary values are refused: YAML has already changed how they were
    written (``1.10`` -> ``1.1``), so the fix is to quote them.
    """
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str):
        return raw
    if isinstance(raw, int):
        return str(raw)
    if raw is None:
        raise BadInput(f"{what} has no value (write \"\" for an empty value)")
    if isinstance(raw, list | dict):
        kind = "list" if isinstance(raw, list) else "mapping"
        raise BadInput(f"{what} must be text, not a {kind}")
    raise BadInput(f"{what} is a {type(raw).__name__} in YAML; quote it so it keeps its exact "
                   "text (e.g. \"1.10\")")


def name_list(raw: object, what: str) -> tuple[str, ...]:
    """A name or a list of names, each non-empty text."""
    items = raw if isinstance(raw, list) else [raw]
    names = tuple(text_value(item, what).strip() for item in items)
    if not names or not all(names):
        raise BadInput(f"{what} must be a name or a non-empty list of names")
    return names


def check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], what: str,
               nested: bool = False) -> None:
    """BadInput naming the first key of *data* not in *allowed*, with the allowed ones: as
    ``field 'KEY': ...``, or, for a mapping inside a field (*nested*), ``... key 'KEY' ...``."""
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            where = f"unknown {what} key {key!r}" if nested else \
                f"field {key!r}: unknown {what} key"
            raise BadInput(f"{where} ({hint}allowed: {', '.join(allowed)})")


def parse_packages(raw: object) -> tuple[PackageRef, ...]:
    """A ``packages:`` list of ``{name, id, version, feed?, extract?}``; BadInput saying why."""
    if not isinstance(raw, list):
        raise BadInput("must be a list of {name, id, version, feed, extract} mappings")
    refs: list[PackageRef] = []
    for index, item in enumerate(raw, 1):
        refs.append(_package(item, f"package {index}"))
        if any(ref.name.lower() == refs[-1].name.lower() for ref in refs[:-1]):
            raise BadInput(f"package {index}: the name {refs[-1].name!r} is used twice; each "
                           "package needs its own name (it is the directory it extracts to)")
    return tuple(refs)


def _package(item: object, where: str) -> PackageRef:
    if not isinstance(item, dict):
        raise BadInput(f"{where} must be a mapping like {{name: db, id: Acme.Database, "
                       "version: 1.0.0}")
    unknown = [key for key in item if key not in PACKAGE_KEYS]
    if unknown:
        raise BadInput(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(PACKAGE_KEYS)}")
    missing = [key for key in ("name", "id", "version") if item.get(key) in (None, "")]
    if missing:
        raise BadInput(f"{where} lacks {', '.join(missing)}; give name, id and version")
    extract = item.get("extract", True)
    if not isinstance(extract, bool):
        raise BadInput(f"{where}: extract must be true or false")
    try:
        return PackageRef(name=text_value(item["name"], "name"),
                          package_id=text_value(item["id"], "id"),
                          version=text_value(item["version"], "version"),
                          feed=text_value(item.get("feed", "builtin"), "feed"), extract=extract)
    except BadInput as exc:
        raise BadInput(f"{where}: {exc}") from None


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


def parse_field(data: Mapping[str, Any], key: str, parse: Callable[[Any], T], default: T) -> T:
    """``parse(data[key])`` with errors prefixed by the field, or *default* when absent."""
    if data.get(key) is None:
        return default
    try:
        return parse(data[key])
    except BadInput as exc:
        raise BadInput(f"field {key!r}: {exc}") from None


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
