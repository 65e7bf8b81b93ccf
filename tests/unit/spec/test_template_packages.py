"""The shipped step templates (workerpool/spec/templates), each run once through `workerpool run
--template` on a real worker; `workerpool template list|show`; and what `run --template` refuses.
"""

from __future__ import annotations

import pytest

from workerpool.core.errors import BadInput
from workerpool.core.packageref import PackageRef
from workerpool.spec.templates import default_templates_dir, load_template, parse_template

# --- packages whose id and version are parameters (no Redis) ------------------------------------

SLOTTED = """\
name: Slotted
parameters:
  - {name: PackageId}
  - {name: PackageVersion}
  - {name: Feed, default: acme-nuget}
script: ls
packages:
  - {name: tools, id: Acme.Tools, version: 2.0.0}
  - {name: app, id: "#{PackageId}", version: "#{PackageVersion}", feed: "#{Feed}", extract: false}
"""


def test_a_template_package_takes_its_id_and_version_from_parameters(tmp_path):
    path = tmp_path / "slotted.yaml"
    path.write_text(SLOTTED)
    template = parse_template(path)
    assert template.packages == (PackageRef("tools", "Acme.Tools", "2.0.0"),)
    _, _, variables, _ = template.instantiate({"PackageId": "Acme.App", "packageversion": "1.0.0"})
    assert template.package_refs(variables) == (
        PackageRef("tools", "Acme.Tools", "2.0.0"),
        PackageRef("app", "Acme.App", "1.0.0", "acme-nuget", extract=False))
    # Given by the caller instead (run --package), or left out when its id is not given.
    assert template.package_refs(variables, leave_out={"APP"}) == template.packages
    _, _, variables, _ = template.instantiate({})
    assert template.package_refs(variables) == template.packages
    _, _, variables, _ = template.instantiate({"PackageId": "Acme.App"})
    with pytest.raises(BadInput, match=r"template 'slotted': package 'app' \(Acme.App\) needs a "
                                       "version; give PackageVersion"):
        template.package_refs(variables)
    _, _, variables, _ = template.instantiate({"PackageId": "bad id!", "PackageVersion": "1"})
    with pytest.raises(BadInput, match="package 'app': package id 'bad id!' must"):
        template.package_refs(variables)


def test_a_package_may_refer_only_to_declared_parameters(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(SLOTTED.replace('"#{PackageVersion}"', '"#{Version}"'))
    with pytest.raises(BadInput, match=r"field 'packages': package 'app': version refers to "
                                       r"#\{Version\}, which is not a parameter"):
        parse_template(path)
    path.write_text(SLOTTED.replace("extract: false", "extract: maybe"))
    with pytest.raises(BadInput, match="extract must be true or false"):
        parse_template(path)


def test_shipped_templates_with_packages_take_them_as_parameters():
    package = {"PackageId": "Acme.X", "PackageVersion": "1.0.0"}
    for slug, name, params in (
            ("sql-migrations", "migrations", {**package, "ConnectionString": "x.db"}),
            ("database-deployment", "db", {**package, "ConnectionString": "x.db"}),
            ("kubectl-apply", "manifests", package)):
        template = load_template(slug, default_templates_dir())
        _, _, variables, _ = template.instantiate(params)
        assert template.package_refs(variables) == (PackageRef(name, "Acme.X", "1.0.0"),)






