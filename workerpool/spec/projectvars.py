"""Project variables scoped like Octopus: which value of each variable a deployment run sees.

A value may be scoped to environments, roles and targets. Within one dimension the listed names
are alternatives (any matches); across dimensions all must match. Among the values of a variable
that apply, the most specific wins: target, then role, then environment, then unscoped; a value
with more of those dimensions beats one with fewer at the same level, and on a full tie the value
declared later wins (so a separate variables file overrides the process file). Names, environments,
roles and targets all compare case-insensitively.

Also here: reading the ``variables:`` section of a process or variables file, and the load-time
check that references form no cycle in any scope.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workerpool.core.errors import BadInput
from workerpool.core.steps import check_variable
from workerpool.core.substitution import Resolver, substitute
from workerpool.spec.fields import check_keys, name_list, text_value

VALUE_KEYS = ("value", "sensitive", "environment", "environments", "role", "roles", "target",
              "targets")
SCOPES = (("environments", "environment"), ("roles", "role"), ("targets", "target"))

if TYPE_CHECKING:
    from workerpool.spec.processes import Process, ProcessStep


@dataclass(frozen=True)
class Scope:
    """What variable scoping sees of a deployment target: its name, environment and roles."""

    name: str
    environment: str
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProjectVariable:
    """One value of a project variable, with the scope in which it applies."""

    name: str
    value: str
    sensitive: bool = False
    environments: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()

    def applies(self, environment: str | None, target: Scope | None) -> bool:
        if self.environments and not _member(environment, self.environments):
            return False
        if self.roles and not (target and any(_member(r, self.roles) for r in target.roles)):
            return False
        return not self.targets or (target is not None and _member(target.name, self.targets))

    @property
    def specificity(self) -> tuple[bool, bool, bool]:
        """Compared in order: target beats role beats environment beats unscoped."""
        return bool(self.targets), bool(self.roles), bool(self.environments)


def _member(name: str | None, names: tuple[str, ...]) -> bool:
    return name is not None and name.casefold() in {n.casefold() for n in names}


def select(variables: Iterable[ProjectVariable], environment: str | None,
           target: Scope | None = None) -> tuple[dict[str, str], set[str]]:
    """The winning value of each variable for this environment and target, and the sensitive
    names. A variable is reported under the spelling of its first declaration."""
    spelling: dict[str, str] = {}
    winner: dict[str, tuple[tuple[bool, bool, bool], int, ProjectVariable]] = {}
    for index, variable in enumerate(variables):
        key = variable.name.casefold()
        spelling.setdefault(key, variable.name)
        if not variable.applies(environment, target):
            continue
        rank = (variable.specificity, index, variable)
        if key not in winner or rank[:2] >= winner[key][:2]:
            winner[key] = rank
    values = {spelling[key]: chosen.value for key, (_, _, chosen) in winner.items()}
    sensitive = {spelling[key] for key, (_, _, chosen) in winner.items() if chosen.sensitive}
    return values, sensitive


def variables_for(process: Process, environment: str, target: Scope | None = None,
                  extra: Mapping[str, str] | None = None) -> tuple[dict[str, str], set[str]]:
    """Values and sensitive names for one run of *process*; *extra* (``--var``) overrides all.

    An *extra* value for a variable declared sensitive anywhere stays sensitive.
    """
    values, sensitive = select(process.variables, environment, target)
    declared = {v.name.casefold(): v.name for v in reversed(process.variables)}
    secret = {v.name.casefold() for v in process.variables if v.sensitive}
    for name, value in (extra or {}).items():
        key = name.strip().casefold()
        spelled = declared.get(key, name.strip())
        values[spelled] = value
        if key in secret:
            sensitive.add(spelled)
    return values, sensitive


def pool_for(step: ProcessStep, variables: Mapping[str, str]) -> str | None:
    """The step's pool: ``pool``, else the resolved value of ``pool_variable``, else None
    (the default pool). BadInput when ``pool_variable`` has no value in *variables*."""
    if step.pool:
        return step.pool
    if not step.pool_variable:
        return None
    value = Resolver(variables).value(step.pool_variable)
    if value is None or not value.strip():
        raise BadInput(f"step {step.name!r}: field 'pool_variable': variable "
                       f"{step.pool_variable!r} has no value for this environment (give it a "
                       f"value scoped to the environment, or pass --var "
                       f"'{step.pool_variable}=POOL')")
    return value.strip()


# -- reading them from YAML ----------------------------------------------------------------

def parse_variables(raw: object) -> list[ProjectVariable]:
    """``{Name: value | {value, sensitive, environment(s), role(s), target(s)} | [those]}``."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise BadInput("must be a mapping of variable names to values")
    result: list[ProjectVariable] = []
    seen: dict[str, str] = {}
    for name, spec in raw.items():
        name = text_value(name, "a variable name").strip()
        check_variable(name, "")
        if name.casefold() in seen:
            raise BadInput(f"{seen[name.casefold()]!r} and {name!r} differ only in case; names "
                           "are case-insensitive (give one name a list of values)")
        seen[name.casefold()] = name
        values = [_value(name, item) for item in (spec if isinstance(spec, list) else [spec])]
        if not values:
            raise BadInput(f"variable {name!r} has an empty list of values (give at least one)")
        scopes = [_scope_key(v) for v in values]
        for index, scope in enumerate(scopes):
            if scope in scopes[:index]:
                raise BadInput(f"variable {name!r} has two values with the same scope "
                               f"({_describe_scope(values[index])}); keep one of them")
        result += values
    return result


def _value(name: str, spec: object) -> ProjectVariable:
    if not isinstance(spec, dict):
        value = text_value(spec, f"variable {name!r}")
        check_variable(name, value)
        return ProjectVariable(name, value)
    check_keys(spec, VALUE_KEYS, f"variable {name!r}", nested=True)
    if "value" not in spec:
        raise BadInput(f"variable {name!r}: a value given as a mapping needs 'value'")
    value = text_value(spec["value"], f"variable {name!r}")
    check_variable(name, value)
    sensitive = spec.get("sensitive", False)
    if not isinstance(sensitive, bool):
        raise BadInput(f"variable {name!r}: sensitive must be true or false")
    scopes: dict[str, tuple[str, ...]] = {}
    for plural, singular in SCOPES:
        if plural in spec and singular in spec:
            raise BadInput(f"variable {name!r}: give {singular} or {plural}, not both")
        raw = spec.get(plural, spec.get(singular))
        scopes[plural] = () if raw is None else name_list(raw, f"variable {name!r}: {plural}")
    return ProjectVariable(name, value, sensitive, **scopes)


def _scope_key(variable: ProjectVariable) -> tuple[frozenset[str], ...]:
    return tuple(frozenset(n.casefold() for n in names) for names in
                 (variable.environments, variable.roles, variable.targets))


def _describe_scope(variable: ProjectVariable) -> str:
    parts = [f"{label} {', '.join(names)}" for label, names in
             (("environment", variable.environments), ("role", variable.roles),
              ("target", variable.targets)) if names]
    return "; ".join(parts) or "unscoped"


# -- load-time checks ----------------------------------------------------------------------

Graph = Callable[[str], Iterable[str]]


def check_cycles(source: str, variables: list[ProjectVariable],
                 steps: Iterable[ProcessStep]) -> None:
    """BadInput ``SOURCE: variables: SCOPE: ...`` (or ``SOURCE: step 'S': field 'F': ...``) when
    references form a cycle in some environment, alone or with one role or one target, or
    through a step's own variables.

    A cycle in any scope is also a cycle in the graph of every value's references, so scopes
    are resolved only for the variables on such a cycle; most files have none.
    """
    project = _edges((v.name, v.value) for v in variables)
    cyclic = _cyclic(lambda name: project.get(name, ()), list(project))
    if cyclic:
        _check_scopes([v for v in variables if v.name.casefold() in cyclic], {},
                      f"{source}: variables")
    for step in steps:
        own = {**step.variables, **step.sensitive_variables}
        own_edges = _edges(own.items())

        def children(name: str, own_edges: dict[str, set[str]] = own_edges) -> set[str]:
            return project.get(name, set()) | own_edges.get(name, set())

        cyclic = _cyclic(children, list(own_edges))
        if cyclic & own_edges.keys():
            field = "parameters" if step.template else "variables"
            _check_scopes([v for v in variables if v.name.casefold() in cyclic], own,
                          f"{source}: step {step.name!r}: field {field!r}")


def _edges(pairs: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    """Each name (case-folded) to the names its values refer to, whatever their scope."""
    edges: dict[str, set[str]] = {}
    for name, value in pairs:
        edges.setdefault(name.strip().casefold(), set()).update(
            ref.casefold() for ref in substitute(value, {})[1])
    return edges


def _cyclic(children: Graph, starts: list[str]) -> set[str]:
    """Names on a cycle reachable from *starts* (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[str] = set()

    def visit(node: str) -> Iterator[str]:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        return iter(children(node))

    for root in starts:
        if root in index:
            continue
        work = [(root, visit(root))]
        while work:
            node, pending = work[-1]
            child = next(pending, None)
            if child is not None:
                if child not in index:
                    work.append((child, visit(child)))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = {node}
                while stack[-1] != node:
                    component.add(stack.pop())
                stack.pop()
                on_stack.difference_update(component)
                if len(component) > 1 or node in children(node):
                    found |= component
    return found


def _check_scopes(variables: list[ProjectVariable], own: Mapping[str, str], where: str) -> None:
    """Resolve every name in each scope the values mention; BadInput naming the scope."""
    def distinct(names: Iterable[str]) -> list[str]:
        return list({n.casefold(): n for n in reversed(list(names))}.values())[::-1]

    roles = distinct(r for v in variables for r in v.roles)
    targets = distinct(t for v in variables for t in v.targets)
    for env in (None, *distinct(e for v in variables for e in v.environments)):
        label = f"in environment {env!r}" if env else "unscoped"
        scopes: list[tuple[str, Scope | None]] = [(label, None)]
        scopes += [(f"{label}, role {r!r}", Scope("", env or "", (r,))) for r in roles]
        scopes += [(f"{label}, target {t!r}", Scope(t, env or "")) for t in targets]
        for scope, target in scopes:
            view = {**select(variables, env, target)[0], **own}
            resolver = Resolver(view)
            for name in own or view:
                try:
                    resolver.value(name)
                except BadInput as exc:
                    raise BadInput(f"{where}: {scope}: {exc}") from None
