"""Script syntaxes: each knows its interpreter, how to run a script and its helper functions."""

from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path

BASH_HELPERS = r"""
__workerpool_escape() {
  local s=$1
  s=${s//|/||}; s=${s//\'/|\'}; s=${s//]/|]}; s=${s//$'\n'/|n}; s=${s//$'\r'/|r}
  printf '%s' "$s"
}
set_workerpool_variable() {
  printf "##workerpool[setVariable name='%s' value='%s']\n" \
    "$(__workerpool_escape "$1")" "$(__workerpool_escape "$2")"
}
"""

SH_HELPERS = r"""
__workerpool_escape() {
  printf '%s' "$1" | awk 'BEGIN { ORS = "" } {
    gsub(/\|/, "||"); gsub(/'"'"'/, "|'"'"'"); gsub(/\]/, "|]"); gsub(/\r/, "|r")
    if (NR > 1) printf "|n"; print }'
}
set_workerpool_variable() {
  printf "##workerpool[setVariable name='%s' value='%s']\n" \
    "$(__workerpool_escape "$1")" "$(__workerpool_escape "$2")"
}
"""

PYTHON_BOOTSTRAP = r"""
import runpy, sys

def _escape(text):
    text = str(text)
    for raw, escaped in (("|", "||"), ("'", "|'"), ("]", "|]"), ("\n", "|n"), ("\r", "|r")):
        text = text.replace(raw, escaped)
    return text

def set_workerpool_variable(name, value):
    print(f"##workerpool[setVariable name='{_escape(name)}' value='{_escape(value)}']", flush=True)

script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, init_globals={"set_workerpool_variable": set_workerpool_variable},
               run_name="__main__")
"""

POWERSHELL_HELPERS = r"""
function Set-WorkerPoolVariable([string]$Name, [string]$Value) {
  $e = { param($s) $s.Replace('|','||').Replace("'","|'").Replace(']','|]').
                          Replace("`n",'|n').Replace("`r",'|r') }
  Write-Output ("##workerpool[setVariable name='{0}' value='{1}']" -f (& $e $Name), (& $e $Value))
}
"""


HELPER_FILES = {"workerpool-helpers.sh": BASH_HELPERS, "workerpool-helpers-sh.sh": SH_HELPERS,
                "workerpool_bootstrap.py": PYTHON_BOOTSTRAP,
                "workerpool-helpers.ps1": POWERSHELL_HELPERS}


def write_script(path: Path, script: str) -> None:
    """Write a step's script (UTF-8) into a new file: one open, write and close."""
    data = memoryview(script.encode())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def install_helpers(directory: Path) -> Path:
    """Write every syntax's helper files once per worker; steps refer to them by path."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in HELPER_FILES.items():
        (directory / name).write_text(text)
    return directory


class Syntax:
    """One script language; subclasses override the interpreter and command."""

    name = ""
    program = ""

    def available(self) -> bool:
        return _which(self.program)

    def prepare(self, workdir: Path, script: str,
                support: Path) -> tuple[list[str], dict[str, str]]:
        """Write the script into *workdir*; return argv and extra environment. *support* holds
        the helper files from ``install_helpers``."""
        raise NotImplementedError


@functools.cache
def _which(program: str) -> bool:
    return shutil.which(program) is not None


class Bash(Syntax):
    name, program = "bash", "bash"

    def prepare(self, workdir: Path, script: str,
                support: Path) -> tuple[list[str], dict[str, str]]:
        write_script(workdir / "script.sh", script)
        # BASH_ENV loads the helpers before the script without shifting its line numbers.
        return (["bash", "script.sh"], {"BASH_ENV": str(support / "workerpool-helpers.sh")})


class Sh(Syntax):
    name, program = "sh", "sh"

    def prepare(self, workdir: Path, script: str,
                support: Path) -> tuple[list[str], dict[str, str]]:
        write_script(workdir / "script.sh", script)
        return (["sh", "-c", '. "$0" && . ./script.sh', str(support / "workerpool-helpers-sh.sh")],
                {})


class Python(Syntax):
    name, program = "python", "python"
    # The worker's own interpreter; a worker whose script users cannot reach it picks another
    # (``worker/isolation/users.py``), or None: then it runs no Python steps.
    interpreter: str | None = sys.executable

    def available(self) -> bool:
        return self.interpreter is not None

    def prepare(self, workdir: Path, script: str,
                support: Path) -> tuple[list[str], dict[str, str]]:
        write_script(workdir / "script.py", script)
        assert self.interpreter is not None
        return ([self.interpreter, "-u", str(support / "workerpool_bootstrap.py"), "script.py"],
                {"PYTHONUNBUFFERED": "1"})


class PowerShell(Syntax):
    name, program = "powershell", "pwsh"

    def prepare(self, workdir: Path, script: str,
                support: Path) -> tuple[list[str], dict[str, str]]:
        write_script(workdir / "script.ps1", script)
        helpers = support / "workerpool-helpers.ps1"
        return (["pwsh", "-NoLogo", "-NoProfile", "-NonInteractive", "-Command",
                 f". '{helpers}'; & ./script.ps1; exit $LASTEXITCODE"], {})


PYTHON = Python()
SYNTAXES: dict[str, Syntax] = {s.name: s for s in (Bash(), Sh(), PYTHON, PowerShell())}


EXTENSIONS = {".sh": "bash", ".bash": "bash", ".py": "python", ".ps1": "powershell"}


def syntax_for_path(path: str) -> Syntax:
    """The syntax a script file's extension implies (bash when unknown)."""
    return SYNTAXES[EXTENSIONS.get(Path(path).suffix.lower(), "bash")]


def available_syntaxes() -> tuple[str, ...]:
    """The syntaxes this machine can run: what a worker advertises when it registers."""
    return tuple(name for name, syntax in SYNTAXES.items() if syntax.available())
