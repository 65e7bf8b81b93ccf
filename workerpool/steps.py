"""The "Run a Script" step: what a caller asks for, its states, and the result it ends with."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from workerpool.errors import BadInput
from workerpool.packageref import PackageRef
from workerpool.syntaxes import SYNTAXES

QUEUED = "Queued"
RUNNING = "Running"
SUCCESS = "Success"
FAILED = "Failed"
CANCELLED = "Cancelled"
TIMED_OUT = "TimedOut"
WORKER_LOST = "WorkerLost"
LEASE_TIMEOUT = "LeaseTimeout"
TERMINAL = frozenset({SUCCESS, FAILED, CANCELLED, TIMED_OUT, WORKER_LOST, LEASE_TIMEOUT})

LOCATION_WORKER = "worker"
LOCATION_SERVER = "server"
LOCATIONS = (LOCATION_WORKER, LOCATION_SERVER)

MAX_SCRIPT_BYTES = 1_000_000
_VAR_NAME = re.compile(r"^[^\x00-\x1f=]{1,200}$")


@dataclass(frozen=True)
class ScriptStep:
    """A script to run on a worker: where, how, with which variables and limits."""

    script: str = ""
    syntax: str = "bash"
    pool: str | None = None
    location: str = LOCATION_WORKER
    name: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    sensitive_variables: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    lease_timeout: float | None = None
    retry_on_worker_lost: bool = False
    packages: tuple[PackageRef, ...] = ()
    script_path: str | None = None  # a script file inside an extracted package: "db/deploy.sh"
    substitute: tuple[str, ...] = ()  # globs of files to run #{...} substitution on
    structured: tuple[str, ...] = ()  # globs of JSON/YAML files for structured variables

    def validate(self) -> ScriptStep:
        """Raise BadInput naming the first thing wrong with this step; return it unchanged."""
        self._validate_packages()
        if self.script_path is None and not self.script.strip():
            raise BadInput("the script is empty; pass --script TEXT or --script-file FILE")
        if len(self.script.encode()) > MAX_SCRIPT_BYTES:
            raise BadInput(f"the script is {len(self.script.encode())} bytes; the limit is "
                           f"{MAX_SCRIPT_BYTES} (put large content in a package instead)")
        if "\x00" in self.script:
            raise BadInput("the script contains a NUL byte; scripts must be text")
        if self.syntax not in SYNTAXES:
            raise BadInput(f"unknown syntax {self.syntax!r}; use one of {', '.join(SYNTAXES)}")
        if self.location not in LOCATIONS:
            raise BadInput(f"unknown location {self.location!r}; use one of {', '.join(LOCATIONS)}")
        if self.location == LOCATION_SERVER and self.pool:
            raise BadInput("a step runs either on the server or on a pool; drop --pool or --server")
        for label, seconds in (("timeout", self.timeout), ("lease timeout", self.lease_timeout)):
            if seconds is not None and not seconds > 0:
                raise BadInput(f"the {label} must be a number of seconds greater than 0")
        for name, value in {**self.variables, **self.sensitive_variables}.items():
            check_variable(name, value)
        return self


    def _validate_packages(self) -> None:
        names = [ref.name for ref in self.packages]
        if len(set(names)) != len(names):
            raise BadInput(f"package reference names must be unique (got {', '.join(names)})")
        if self.script_path is None:
            return
        if self.script.strip():
            raise BadInput("give a script or a script file inside a package, not both")
        first = self.script_path.replace("\\", "/").split("/")[0]
        extracted = {ref.name for ref in self.packages if ref.extract}
        if first not in extracted or ".." in self.script_path.split("/"):
            raise BadInput(f"script file {self.script_path!r} must be inside an extracted "
                           f"package: <name>/path, with <name> one of {sorted(extracted)}")

    def to_record(self) -> dict[str, str]:
        """The step's package and feature fields as stored in its record."""
        return {"packages": json.dumps([ref.to_json() for ref in self.packages]),
                "script_path": self.script_path or "",
                "substitute": json.dumps(list(self.substitute)),
                "structured": json.dumps(list(self.structured))}


def check_variable(name: str, value: str) -> None:
    if not _VAR_NAME.match(name):
        raise BadInput(f"variable name {name!r} is invalid; names are 1-200 characters "
                       "without '=' or control characters")
    if "\x00" in value:
        raise BadInput(f"variable {name!r} contains a NUL byte")


def parse_assignment(text: str) -> tuple[str, str]:
    """``K=V`` -> (K, V), or BadInput explaining the expected form."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise BadInput(f"variable {text!r} is not of the form NAME=VALUE (e.g. --var Env=Test)")
    name = name.strip()
    check_variable(name, value)
    return name, value


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class LogEntry:
    time: float
    stream: str
    text: str

    def to_json(self) -> dict[str, object]:
        return {"time": iso(self.time), "stream": self.stream, "text": self.text}


@dataclass(frozen=True)
class StepResult:
    """Where a step ran and how it ended; ``to_json`` is the CLI's ``--json`` object."""

    id: str
    state: str
    pool: str
    worker: str | None
    exit_code: int | None
    output_variables: dict[str, str]
    log: tuple[LogEntry, ...]
    started_at: float | None
    finished_at: float | None
    name: str = ""
    message: str = ""

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    @property
    def succeeded(self) -> bool:
        return self.state == SUCCESS

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "pool": self.pool, "worker": self.worker,
                "exit_code": self.exit_code, "output_variables": self.output_variables,
                "log": [entry.to_json() for entry in self.log],
                "started_at": iso(self.started_at), "finished_at": iso(self.finished_at)}

    @classmethod
    def from_record(cls, step_id: str, record: dict[str, str],
                    log: tuple[LogEntry, ...]) -> StepResult:
        def number(key: str) -> float | None:
            raw = record.get(key)
            return float(raw) if raw else None

        exit_code = record.get("exit_code")
        return cls(id=step_id, state=record.get("state", QUEUED), pool=record.get("pool", ""),
                   worker=record.get("worker") or None,
                   exit_code=int(exit_code) if exit_code not in (None, "") else None,
                   output_variables=json.loads(record.get("outputs") or "{}"), log=log,
                   started_at=number("started_at"), finished_at=number("finished_at"),
                   name=record.get("name", ""), message=record.get("message", ""))
