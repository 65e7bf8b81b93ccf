"""A deployment as stored in Redis: the client writes it, the server runs it, both read it back.

The record (``keys.deployment(id)``) holds the process as JSON with its sensitive values sealed,
the environment, extra variables, the deployment's state, and per step its state and the ids
of its runs. Each run has a deterministic step id (deployment, step, target, attempt), so a
restarted server finds the runs it already enqueued.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from workerpool.core.packageref import PackageRef
from workerpool.core.steps import FAILED, SUCCESS
from workerpool.core.targets import Target
from workerpool.spec.processes import Process, ProcessStep, ProjectVariable

SKIPPED, PENDING = "Skipped", "Pending"  # a deployment step's states beyond a step's own


def process_to_json(process: Process) -> str:
    return json.dumps(asdict(process), default=str)


def reseal(process: Process, extra: dict[str, str], change: Callable[[str], str]
           ) -> tuple[Process, dict[str, str]]:
    """*process* and *extra* with *change* applied to every sensitive value: sealing them
    before the deployment record is stored, opening them in the server that runs it."""
    secret = {v.name.casefold() for v in process.variables if v.sensitive}
    variables = tuple(replace(v, value=change(v.value)) if v.sensitive else v
                      for v in process.variables)
    # A template's parameters became the step's variables when the file was loaded; they are
    # not kept (a sensitive one may have been overridden by a plain variable of the same name).
    steps = [replace(step, parameters={},
                     sensitive_variables={k: change(v)
                                          for k, v in step.sensitive_variables.items()})
             for step in process.steps]
    extra = {k: change(v) if k.strip().casefold() in secret else v for k, v in extra.items()}
    return replace(process, variables=variables, steps=tuple(steps)), extra


def process_from_json(raw: str) -> Process:
    data = json.loads(raw)
    steps = []
    for s in data["steps"]:
        s["packages"] = tuple(PackageRef(**p) for p in s["packages"])
        for field in ("roles", "substitute", "structured"):
            s[field] = tuple(s[field])
        steps.append(ProcessStep(**s))
    variables = tuple(ProjectVariable(**{**v, **{k: tuple(v[k]) for k in
                                                 ("environments", "roles", "targets")}})
                      for v in data["variables"])
    return Process(name=data["name"], source=data["source"], steps=tuple(steps),
                   variables=variables)


@dataclass(frozen=True)
class Run:
    id: str
    target: str | None
    pool: str
    worker: str | None
    state: str
    exit_code: int | None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class StepOutcome:
    name: str
    state: str
    runs: tuple[Run, ...]

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "state": self.state, "runs": [r.to_json() for r in self.runs]}


@dataclass(frozen=True)
class DeploymentResult:
    id: str
    state: str
    environment: str
    process: str
    steps: tuple[StepOutcome, ...]
    message: str = ""

    @property
    def done(self) -> bool:
        return self.state in (SUCCESS, FAILED)

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "state": self.state, "environment": self.environment,
                "message": self.message, "steps": [s.to_json() for s in self.steps]}


def run_from_record(rid: str, target: str | None, rec: dict[str, str]) -> Run:
    code = rec.get("exit_code")
    return Run(rid, target, rec.get("pool", ""), rec.get("worker") or None,
               rec.get("state", "Expired"), int(code) if code else None)


def run_id(deployment_id: str, index: int, target: Target | None, attempt: int) -> str:
    return f"{deployment_id}.{index}.{target.slug if target else '-'}.{attempt}"
