"""The "Run a Script" step: what a caller asks for, its states, and the result it ends with."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from workerpool.core import keys
from workerpool.core.errors import BadInput
from workerpool.core.packageref import PackageRef
from workerpool.core.syntaxes import SYNTAXES

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
MAX_NAME_CHARS = 200
MAX_SECONDS = 365 * 24 * 3600.0  # a timeout longer than a year is a mistake
# A variable reaches the script as one environment entry "NAME=value"; Linux takes at most
# 128 KiB per entry (MAX_ARG_STRLEN) and about 2 MiB for all of them with the arguments.
MAX_VARIABLE_BYTES = 128 * 1024 - 2
MAX_VARIABLES_BYTES = 1024 * 1024
MAX_VARIABLES = 10_000
_VAR_NAME = re.compile(r"^[^\x00-\x1f=]{1,200}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
    priority: str = keys.NORMAL  # high, normal or low: a free worker takes high steps first

    def validate(self) -> ScriptStep:
        """Raise BadInput naming the first thing wrong with this step; return it unchanged."""
        self._validate_types()
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
        check_priority(self.priority)
        if self.location not in LOCATIONS:
            raise BadInput(f"unknown location {self.location!r}; use one of {', '.join(LOCATIONS)}")
        if self.location == LOCATION_SERVER and self.pool:
            raise BadInput("a step runs either on the server or on a pool; drop --pool or --server")
        if len(self.name) > MAX_NAME_CHARS or _CONTROL.search(self.name):
            raise BadInput(f"the step name must be at most {MAX_NAME_CHARS} characters on one "
                           f"line (got {len(self.name)} characters: {self.name[:40]!r})")
        for label, seconds in (("timeout", self.timeout), ("lease timeout", self.lease_timeout)):
            if seconds is not None and not (0 < seconds <= MAX_SECONDS):
                raise BadInput(f"the {label} must be a number of seconds greater than 0 and at "
                               f"most {MAX_SECONDS:.0f} (a year); got {seconds}")
        check_variables({**self.variables, **self.sensitive_variables})
        return self

    def _validate_types(self) -> None:
        """What a Python caller passed, checked field by field (the CLI cannot get these
        wrong), so a mistake is one BadInput naming the field, not an AttributeError later."""
        for label in ("script", "syntax", "location", "name", "priority"):
            _expect(isinstance(getattr(self, label), str), label, "text (str)", self)
        for label in ("pool", "script_path"):
            value = getattr(self, label)
            _expect(value is None or isinstance(value, str), label, "text (str) or None", self)
        for label in ("variables", "sensitive_variables"):
            _expect(isinstance(getattr(self, label), Mapping), label,
                    "a dict of names to text values", self)
            for name, item in getattr(self, label).items():
                if not (isinstance(name, str) and isinstance(item, str)):
                    raise BadInput(f"ScriptStep.{label}[{name!r}] must be text (str), not "
                                   f"{type(item).__name__}; pass str(value)")
        for label in ("timeout", "lease_timeout"):
            value = getattr(self, label)
            _expect(value is None or (isinstance(value, int | float) and
                                      not isinstance(value, bool)),
                    label, "a number of seconds or None", self)
        _expect(isinstance(self.retry_on_worker_lost, bool), "retry_on_worker_lost",
                "True or False", self)
        _expect_items(self, "packages", PackageRef, "a tuple of PackageRef (e.g. "
                      "PackageRef.parse('name=db,id=Acme,version=1.0'))")
        for label in ("substitute", "structured"):
            _expect_items(self, label, str, "a tuple of glob patterns (str)")

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
                "structured": json.dumps(list(self.structured)), "priority": self.priority}


def _expect(ok: bool, label: str, what: str, step: ScriptStep) -> None:
    if not ok:
        value = getattr(step, label)
        raise BadInput(f"ScriptStep.{label} must be {what}, not {type(value).__name__} "
                       f"({value!r:.60})")


def _expect_items(step: ScriptStep, label: str, kind: type, what: str) -> None:
    value = getattr(step, label)
    _expect(isinstance(value, tuple | list), label, what, step)
    for index, item in enumerate(value):
        if not isinstance(item, kind):
            raise BadInput(f"ScriptStep.{label} must be {what}; item {index} is "
                           f"{type(item).__name__} ({item!r:.60})")


def check_step(step: object) -> ScriptStep:
    """*step* validated; BadInput if it is not a ScriptStep at all (a Python caller's slip)."""
    if not isinstance(step, ScriptStep):
        raise BadInput(f"run() takes a ScriptStep, not {type(step).__name__}; e.g. "
                       "client.run(ScriptStep(script='echo hi', pool='Database Worker Pool'))")
    return step.validate()


def check_priority(priority: str) -> str:
    """*priority*, or BadInput naming the three there are."""
    if priority not in keys.PRIORITIES:
        raise BadInput(f"unknown priority {priority[:40]!r}; use one of "
                       f"{', '.join(keys.PRIORITIES)}")
    return priority


def check_variables(variables: Mapping[str, str]) -> None:
    """Each name and value, then the sizes the script's environment can take."""
    if len(variables) > MAX_VARIABLES:
        raise BadInput(f"the step has {len(variables)} variables; the limit is {MAX_VARIABLES} "
                       "(put bulk data in a package or a file instead)")
    total = 0
    for name, value in variables.items():
        check_variable(name, value)
        size = len(name.encode()) + len(value.encode()) + 1
        if size > MAX_VARIABLE_BYTES:
            raise BadInput(f"variable {name!r} is {size} bytes; the limit is {MAX_VARIABLE_BYTES} "
                           "for a name and value (one environment entry); put large content "
                           "in a package or a file instead")
        total += size
    if total > MAX_VARIABLES_BYTES:
        raise BadInput(f"the step's variables total {total} bytes; the limit is "
                       f"{MAX_VARIABLES_BYTES} (the script's environment); put large content "
                       "in a package or a file instead")


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
    priority: str = keys.NORMAL

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
                "started_at": iso(self.started_at), "finished_at": iso(self.finished_at),
                "priority": self.priority}

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
                   name=record.get("name", ""), message=record.get("message", ""),
                   priority=record.get("priority") or keys.NORMAL)
