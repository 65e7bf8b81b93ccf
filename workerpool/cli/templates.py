"""``workerpool template list|show``, the step that ``run --template NAME`` builds, and
``workerpool examples``."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import click

from workerpool.cli import cli
from workerpool.cli.output import echo, emit_json, table
from workerpool.core.errors import BadInput
from workerpool.core.packageref import PackageRef
from workerpool.core.steps import check_variable
from workerpool.spec.shipped import example_packages, example_processes
from workerpool.spec.templates import (
    Template,
    default_templates_dir,
    load_template,
    parse_template,
    template_files,
)


@dataclass(frozen=True)
class TemplateStep:
    """What a template gives ``run``: the script and the step's name, syntax, packages and
    variables (sensitive parameters apart)."""

    name: str
    script: str
    syntax: str
    packages: tuple[PackageRef, ...]
    variables: dict[str, str]
    sensitive_variables: dict[str, str]


def parse_param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise BadInput(f"--param {text!r} is not of the form NAME=VALUE (e.g. --param Url=https://"
                       "example.com/health)")
    check_variable(name.strip(), value)
    return name.strip(), value


def template_step(name: str | None, params: tuple[str, ...], packages: tuple[PackageRef, ...],
                  other_script: bool) -> TemplateStep:
    """The template *name* with ``--param`` values; ``--package`` refs replace the template's
    packages of the same name and add the others. BadInput on any conflict or bad value."""
    if name is None:
        raise BadInput("--param is for a template; give --template NAME as well (see "
                       "`workerpool template list`)")
    if other_script:
        raise BadInput("give exactly one of --script, --script-file or --template")
    template = load_template(name)
    script, syntax, variables, sensitive = template.instantiate(dict(map(parse_param, params)))
    refs = template.package_refs(variables, leave_out={ref.name for ref in packages})
    return TemplateStep(
        name=template.name, script=script, syntax=syntax, packages=(*refs, *packages),
        variables={k: v for k, v in variables.items() if k not in sensitive},
        sensitive_variables={k: v for k, v in variables.items() if k in sensitive})


def _package_text(template: Template) -> list[str]:
    fixed = [(r.name, r.package_id, r.version, r.feed, r.extract) for r in template.packages]
    slots = [(s.name, s.package_id, s.version, s.feed, s.extract) for s in template.slots]
    return [f"{name}: {package_id} {version} from feed {feed}"
            + (", extracted to ./" + name + "/" if extract else ", not extracted")
            for name, package_id, version, feed, extract in (*fixed, *slots)]


def to_json(template: Template, with_script: bool = True) -> dict[str, object]:
    data: dict[str, object] = {
        "slug": template.slug, "name": template.name, "description": template.description,
        "syntax": template.syntax, "source": template.source,
        "parameters": [{"name": p.name, "description": p.description, "default": p.default,
                        "required": p.required, "sensitive": p.sensitive}
                       for p in template.parameters],
        "packages": [*(r.to_json() for r in template.packages),
                     *({"name": s.name, "package_id": s.package_id, "version": s.version,
                        "feed": s.feed, "extract": s.extract} for s in template.slots)],
    }
    if with_script:
        data["script"] = template.script
    return data


def _short(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[:width - 3].rstrip() + "..."


@cli.group()
def template() -> None:
    """Step templates: ready steps shipped in the package (or $WORKERPOOL_TEMPLATES); run one with
    `workerpool run --template NAME --param K=V`."""


@template.command("list")
@click.option("--json", "as_json", is_flag=True)
def template_list(as_json: bool) -> None:
    """List the step templates; a broken template file is reported and skipped."""
    found: list[Template] = []
    for path in template_files(default_templates_dir()):
        try:
            found.append(parse_template(path))
        except BadInput as exc:
            echo(f"workerpool: warning: skipped {exc}", err=True)
    if as_json:
        emit_json([to_json(t, with_script=False) for t in found])
        return
    table(["TEMPLATE", "NAME", "SYNTAX", "PARAMETERS", "DESCRIPTION"],
          [[t.slug, t.name, t.syntax, ", ".join(p.name + ("*" if p.required else "")
                                                 for p in t.parameters),
            _short(t.description)] for t in found])


@template.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def template_show(name: str, as_json: bool) -> None:
    """Show a template: parameters (description, default, required, sensitive), packages,
    syntax and script."""
    found = load_template(name)
    if as_json:
        emit_json(to_json(found))
        return
    echo(f"{found.name} ({found.slug}), {found.syntax}, from {found.source}")
    if found.description:
        echo(found.description)
    echo("\nParameters:")
    table(["NAME", "REQUIRED", "SENSITIVE", "DEFAULT", "DESCRIPTION"],
          [[p.name, "yes" if p.required else "", "yes" if p.sensitive else "",
            "" if p.default is None else p.default, p.description] for p in found.parameters])
    if found.packages or found.slots:
        echo("\nPackages:")
        for line in _package_text(found):
            echo(f"  {line}")
    echo("\nScript:")
    echo(found.script.rstrip("\n"))


@cli.command("examples")
@click.option("--copy", "copy_to", type=click.Path(file_okay=False, path_type=Path),
              help="Write the example processes, and their packages as zips, into this folder.")
@click.option("--json", "as_json", is_flag=True)
def examples(copy_to: Path | None, as_json: bool) -> None:
    """The example deployment processes shipped with workerpool, and the packages they use;
    with --copy DIR, written out ready for `workerpool package push` and `workerpool deploy`."""
    processes, packages = example_processes(), example_packages()
    if copy_to is None:
        rows = [{"kind": "process", "name": path.stem, "path": str(path)} for path in processes]
        rows += [{"kind": "package", "name": f"{p.package_id} {p.version}", "path": str(p.source)}
                 for p in packages]
        if as_json:
            emit_json(rows)
        else:
            table(["KIND", "NAME", "PATH"], [[r["kind"], r["name"], r["path"]] for r in rows])
        return
    try:
        copy_to.mkdir(parents=True, exist_ok=True)
        written = [Path(shutil.copy(path, copy_to)) for path in processes]
        written += [package.zip_to(copy_to) for package in packages]
    except OSError as exc:
        raise BadInput(f"cannot write the examples into {copy_to}: {exc.strerror or exc}"
                       ) from None
    if as_json:
        emit_json([str(path) for path in written])
        return
    for path in written:
        echo(f"wrote {path}")
    zips = " ".join(str(copy_to / p.file_name) for p in packages)
    echo(f"next: workerpool package push {zips}; then workerpool deploy "
         f"{copy_to / processes[0].name} --environment Test (see its comments)")
