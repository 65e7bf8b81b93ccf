"""Preparing a step's working directory on the worker, before its script starts.

Order: system variables; packages (download through the cache, extract or copy, or take a copy
staged in advance; package variables); ``#{...}`` substitution in the script body; configuration
features on files; the script itself, inline or a file inside an extracted package. Any failure
here ends the step Failed with one line, before the script runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workerpool.core.errors import BadInput
from workerpool.core.packageref import PackageRef
from workerpool.core.settings import Settings
from workerpool.core.substitution import resolve_all, substitute
from workerpool.core.syntaxes import SYNTAXES, Syntax, syntax_for_path
from workerpool.worker.packages.archive import Ratio
from workerpool.worker.packages.budget import DiskBudget
from workerpool.worker.packages.cache import PackageCache
from workerpool.worker.packages.install import PreparedPackage, prepare
from workerpool.worker.packages.registry import FeedRegistry
from workerpool.worker.packages.spares import Spares
from workerpool.worker.step.features import apply_features

EXTRACT_MAX_BYTES = 4 * 1024**3
PROGRESS_EVERY = 1.0  # seconds between download progress lines
EXTRACT_MAX_ENTRIES = 200_000


@dataclass(frozen=True)
class Prepared:
    script: str
    syntax: Syntax
    variables: dict[str, str]
    held: tuple[PreparedPackage, ...] = ()  # kept from cache eviction while the step runs

    def release(self) -> None:
        for package in self.held:
            package.release()


def system_variables(step_id: str, record: dict[str, str], worker: str,
                     host: str) -> dict[str, str]:
    """The variables workerpool sets for every step."""
    return {
        "Step.Id": step_id, "Step.Name": record.get("name", ""),
        "WorkerPool.Name": record.get("pool_name", ""), "WorkerPool.Slug": record.get("pool", ""),
        "Worker.Name": worker, "Worker.Host": host,
    }


DEFAULTS = Settings()


class StepSetup:
    """Everything before the script: shared by all steps of one worker process.

    With a *staging* directory (on the working directories' file system) and *spares* > 0, a
    package a step used is staged again in the background, so the next step takes it by one
    rename (``packages.spares``), within the disk budget; ``close()`` stops that and removes
    the staged copies. *settings* give the archives' ratio and the disk budget.
    """

    def __init__(self, feeds: FeedRegistry, cache: PackageCache, staging: Path | None = None,
                 spares: int = 0, settings: Settings = DEFAULTS) -> None:
        self.feeds = feeds
        self.cache = cache
        self.ratio = Ratio.of(settings)
        self.spares = Spares(staging, cache, spares, budget=DiskBudget.of(settings)) \
            if staging is not None and spares else None

    def close(self) -> None:
        if self.spares is not None:
            self.spares.close()

    def prepare(self, workdir: Path, record: dict[str, str], variables: dict[str, str],
                log: Callable[[str], None]) -> Prepared:
        held: list[PreparedPackage] = []
        if self.spares is not None:
            self.spares.step_starting()
        try:
            for raw in json.loads(record.get("packages") or "[]"):
                package = self._place(PackageRef.from_json(raw), workdir, log)
                held.append(package)
                variables.update(package.variables())
            # Values may refer to other variables (#{Other}); the environment gets them resolved.
            variables = resolve_all(variables)
            script, syntax = self._script(workdir, record)
            script, missing = substitute(script, variables)
            for name in missing:
                log(f"warning: variable #{{{name}}} is not defined; left as written in the script")
            apply_features(workdir, variables, json.loads(record.get("substitute") or "[]"),
                           json.loads(record.get("structured") or "[]"), log)
        except BaseException:
            for package in held:
                package.release()
            raise
        return Prepared(script, syntax, variables, tuple(held))

    def _place(self, ref: PackageRef, workdir: Path,
               log: Callable[[str], None]) -> PreparedPackage:
        last = [0.0]

        def progress(done: int, total: int | None) -> None:
            """At most one line a second, and the last one."""
            now = time.monotonic()
            if now - last[0] < PROGRESS_EVERY and done != total:
                return
            last[0] = now
            size = f" of {total / 1e6:.1f} MB" if total else ""
            log(f"downloading {ref.package_id} {ref.version}: {done / 1e6:.1f} MB{size}")

        package = prepare(ref, self.feeds, self.cache, workdir, EXTRACT_MAX_BYTES,
                          EXTRACT_MAX_ENTRIES, progress, self.spares, self.ratio)
        how = "downloaded" if package.cached.downloaded else "from cache"
        placed = f"extracted to ./{ref.name}/" if ref.extract else \
            f"placed at ./{package.cached.file_name}"
        staged = " from a staged copy" if package.staged else ""
        log(f"package {ref.package_id} {ref.version} ({how}) {placed}{staged}")
        return package

    @staticmethod
    def _script(workdir: Path, record: dict[str, str]) -> tuple[str, Syntax]:
        path = record.get("script_path")
        if not path:
            return record["script"], SYNTAXES[record.get("syntax") or "bash"]
        target = (workdir / path).resolve()
        if not target.is_relative_to(workdir.resolve()) or not target.is_file():
            raise BadInput(f"script file {path!r} is not in the extracted packages; check the "
                           "package name and the path inside it")
        syntax = SYNTAXES.get(record.get("syntax") or "") or syntax_for_path(path)
        return target.read_text(errors="replace"), syntax
