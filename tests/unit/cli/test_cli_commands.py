"""The CLI loads each command's module on demand; the map and the modules must agree."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import workerpool.cli
from workerpool.cli import COMMAND_MODULES, cli


def test_every_command_is_mapped_to_the_module_that_defines_it():
    for module in pkgutil.iter_modules(workerpool.cli.__path__):
        importlib.import_module(f"workerpool.cli.{module.name}")
    assert set(cli.commands) == set(COMMAND_MODULES)
    for name, command in cli.commands.items():
        assert command.callback is not None
        assert command.callback.__module__ == f"workerpool.cli.{COMMAND_MODULES[name]}", name


def test_a_quick_command_loads_only_its_own_module():
    code = ("import sys\nfrom workerpool.cli import main\nsys.argv = ['workerpool', 'status', "
            "'--help']\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('workerpool.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()[-1]
    loaded = eval(out)  # a printed list of module names
    assert "workerpool.cli.workers" in loaded
    for heavy in ("workerpool.cli.deployments", "workerpool.spec.processes",
                  "workerpool.worker.packages", "workerpool.cli.flower", "workerpool.bench",
                  "workerpool.client.deployments"):
        assert heavy not in loaded, heavy
