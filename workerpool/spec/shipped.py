"""What ships in the package for users to start from: example deployment processes, and the
packages they reference, each a folder (with a ``VERSION`` file) to zip for the built-in feed.

They sit in ``examples/`` beside this module, so a wheel installed anywhere has them;
``workerpool examples --copy DIR`` writes them out.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path


def examples_dir() -> Path:
    return Path(__file__).parent / "examples"


def example_processes() -> list[Path]:
    return sorted(examples_dir().glob("*.yaml"))


@dataclass(frozen=True)
class ExamplePackage:
    """A package folder an example process references: its id and version."""

    source: Path
    package_id: str
    version: str

    @property
    def file_name(self) -> str:
        """The name the built-in feed reads the id and version from."""
        return f"{self.package_id}.{self.version}.zip"

    def zip_to(self, directory: Path) -> Path:
        """Zip the folder (keeping exec bits) as ``<id>.<version>.zip`` in *directory*."""
        target = directory / self.file_name
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(self.source.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(self.source).as_posix())
        return target


def example_packages() -> list[ExamplePackage]:
    return [ExamplePackage(folder, folder.name, (folder / "VERSION").read_text().strip())
            for folder in sorted((examples_dir() / "packages").iterdir()) if folder.is_dir()]
