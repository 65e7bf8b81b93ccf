"""What each console page shows, read from Redis in as few round trips as its screen needs.

The pools page reads the counted overview (``core/overview.py``: one call that grows with the
pools, never with the workers); one pool's page reads that pool's workers one by one. Nothing
here renders HTML: the templates do, escaping every value.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

import redis

from workerpool.client import Client
from workerpool.core import keys
from workerpool.core.artifacts import Artifact, list_artifacts, read_artifact
from workerpool.core.errors import BadInput
from workerpool.core.overview import Overview, Section, read_overview
from workerpool.core.packageref import PackageRef
from workerpool.core.pools import Pool, ordered, slugify
from workerpool.core.printable import printable
from workerpool.core.recent import StepSummary, recent_steps
from workerpool.core.steps import LOCATION_SERVER, LOCATION_WORKER, TERMINAL, LogEntry, ScriptStep
from workerpool.core.syntaxes import SYNTAXES
from workerpool.core.workers import WorkerInfo
from workerpool.spec.deployment import DeploymentResult

# The seed's warning, shown before the built-in worker is disabled.
BUILTIN_WARNING = ("Only do this after you have added worker pools and changed existing "
                   "projects to use them, otherwise you run the risk of breaking many "
                   "deployments.")
STATES = ("Queued", "Running", "Success", "Failed", "Cancelled", "TimedOut", "LeaseTimeout",
          "WorkerLost")


def package_dir() -> Path:
    """Where the templates and static files are: package data, so a wheel has them."""
    return Path(str(files("workerpool.console")))


@dataclass(frozen=True)
class PoolRow:
    pool: Pool
    section: Section

    @property
    def healthy(self) -> int:
        return self.section.workers.healthy

    @property
    def total(self) -> int:
        return self.section.workers.registered

    @property
    def running(self) -> int:
        return len(self.section.leases)


@dataclass(frozen=True)
class PoolsPage:
    rows: list[PoolRow]
    builtin_enabled: bool
    builtin: Section


def pools_page(client: redis.Redis) -> PoolsPage:
    """Every pool with its counts and the built-in worker's, in one round trip."""
    overview = read_overview(client)
    rows = [PoolRow(p, overview.section(p.slug)) for p in ordered(overview.pools.values())]
    return PoolsPage(rows, overview.builtin_enabled, overview.section(keys.BUILTIN_POOL))


@dataclass(frozen=True)
class PoolPage:
    pool: Pool
    section: Section
    workers: tuple[WorkerInfo, ...]

    def leases_of(self, worker: WorkerInfo) -> list[str]:
        return [le.step_id for le in self.section.leases if le.worker == worker.name]


def pool_page(client: redis.Redis, slug: str) -> PoolPage | None:
    overview: Overview = read_overview(client, only=slug)
    pool = overview.pools.get(slug)
    if pool is None:
        return None
    section = overview.section(slug)
    return PoolPage(pool, section, section.members)


@dataclass(frozen=True)
class BuiltinPage:
    enabled: bool
    section: Section
    default_pool: Pool | None
    default_live: int  # workers of the default pool that heartbeat

    @property
    def would_refuse(self) -> list[str]:
        """What disabling it refuses, by the routing rules, as things stand now."""
        refused = ["every step that runs on the server (execution location: server)"]
        name = self.default_pool.name if self.default_pool else "the default pool"
        if self.default_live:
            refused.append(f"steps for {name!r} whenever it has no live workers (it has "
                           f"{self.default_live} now)")
        else:
            refused.append(f"every step for {name!r}: it has no live workers now")
        return refused


def builtin_page(client: redis.Redis) -> BuiltinPage:
    overview = read_overview(client)
    default = next((p for p in overview.pools.values() if p.is_default), None)
    live = sum(overview.section(default.slug).workers.live.values()) if default else 0
    return BuiltinPage(overview.builtin_enabled, overview.section(keys.BUILTIN_POOL), default,
                       live)


@dataclass(frozen=True)
class StepsPage:
    steps: list[StepSummary]
    pools: list[Pool]
    pool: str
    state: str
    states: tuple[str, ...] = STATES


def steps_page(client: redis.Redis, pool: str, state: str, limit: int = 100) -> StepsPage:
    overview = read_overview(client)
    pools = ordered(overview.pools.values())
    if pool and pool != keys.BUILTIN_POOL and pool not in overview.pools:
        raise BadInput(f"no pool with slug {pool!r}")
    if state and state not in STATES:
        raise BadInput(f"unknown state {state!r}; use one of {', '.join(STATES)}")
    chosen = [pool] if pool else [*(p.slug for p in pools), keys.BUILTIN_POOL]
    return StepsPage(recent_steps(client, chosen, state or None, limit), pools, pool, state)


@dataclass(frozen=True)
class StepPage:
    id: str
    record: dict[str, str]
    artifacts: list[Artifact]
    variables: dict[str, str]
    sealed: bool  # sensitive values were given: sealed to the pool, shown to no one
    outputs: dict[str, str]

    @property
    def state(self) -> str:
        return self.record.get("state", "Queued")

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL

    def field(self, name: str) -> str:
        return self.record.get(name, "")


def step_page(client: Client, step_id: str) -> StepPage | None:
    """A step's record, plain variables, whether it has sensitive ones (sealed to its pool's
    key: not even their names are readable here), its output variables and artifacts."""
    try:
        key = keys.step(step_id)
    except ValueError:
        return None
    record: dict[str, str] = client.redis.hgetall(key)  # type: ignore[assignment]
    if not record:
        return None
    sealed = record.pop("secrets", "")
    outputs = json.loads(record.get("outputs") or "{}")
    return StepPage(step_id, record, list_artifacts(client.redis, step_id),
                    json.loads(record.get("variables") or "{}"), bool(sealed), outputs)


def step_exists(client: redis.Redis, step_id: str) -> bool:
    try:
        return bool(client.exists(keys.step(step_id)))
    except ValueError:
        return False


def step_state(client: redis.Redis, step_id: str) -> str:
    return str(client.hget(keys.step(step_id), "state") or "Expired")


def has_ended(state: str) -> bool:
    """A state no step leaves (``Expired``: its record is gone)."""
    return state in (*TERMINAL, "Expired")


def log_line(entry: LogEntry) -> dict[str, object]:
    """A log line for the page: control characters (ANSI escapes among them) made visible."""
    return {"t": entry.time, "s": entry.stream, "x": printable(entry.text)}


def artifact(client: Client, step_id: str, name: str) -> bytes | None:
    return read_artifact(client.url, step_id, name)


@dataclass(frozen=True)
class DeploymentsPage:
    deployments: list[DeploymentResult]


def deployments_page(client: Client) -> DeploymentsPage:
    return DeploymentsPage(client.deployments.list(limit=50))


def deployment_page(client: Client, deployment_id: str) -> DeploymentResult:
    return client.deployments.result(deployment_id)


@dataclass(frozen=True)
class RunChoices:
    pools: list[Pool]
    builtin_enabled: bool
    syntaxes: tuple[str, ...] = tuple(SYNTAXES)


def run_choices(client: redis.Redis) -> RunChoices:
    overview = read_overview(client)
    return RunChoices(ordered(overview.pools.values()), overview.builtin_enabled)


SERVER_CHOICE = "@server"  # the run form's pool choice for the built-in worker


@dataclass
class RunForm:
    """The run form's fields as typed; sensitive values are never kept here."""

    pool: str = ""
    syntax: str = "bash"
    name: str = ""
    script: str = ""
    variables: str = ""
    packages: str = ""
    sensitive_names: list[str] = field(default_factory=list)

    @classmethod
    def from_arguments(cls, arg: Callable[[str, str], str]) -> RunForm:
        return cls(pool=arg("pool", ""), syntax=arg("syntax", "bash"), name=arg("name", ""),
                   script=arg("script", ""), variables=arg("variables", ""),
                   packages=arg("packages", ""))

    def step(self, sensitive: str) -> ScriptStep:
        secret = assignments(sensitive, "sensitive variable")
        self.sensitive_names = sorted(secret)
        server = self.pool == SERVER_CHOICE
        return ScriptStep(
            script=self.script.replace("\r\n", "\n"), syntax=self.syntax, name=self.name,
            pool=None if server or not self.pool else self.pool,
            location=LOCATION_SERVER if server else LOCATION_WORKER,
            variables=assignments(self.variables, "variable"), sensitive_variables=secret,
            packages=tuple(PackageRef.parse(line.strip())
                           for line in self.packages.splitlines() if line.strip()))


def assignments(text: str, what: str) -> dict[str, str]:
    """``NAME=VALUE`` lines (blank lines skipped) -> {NAME: VALUE}."""
    result: dict[str, str] = {}
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise BadInput(f"{what} line {number} is not NAME=VALUE; write one per line, "
                           "e.g. DbName=orders")
        result[name.strip()] = value
    return result


def words(text: str) -> list[str]:
    """The pool form's ``requires``: tools separated by commas or spaces."""
    return [w for w in text.replace(",", " ").split() if w]


def number(text: str, what: str) -> int:
    text = text.strip() or "0"
    if not (text.isascii() and text.isdigit()):
        raise BadInput(f"{what} must be a whole number (0: no cap), not {text!r}")
    return int(text)


def change_detail(action: str, request: Any) -> str:
    """The audit entry's detail for a pool change: the fields sent (no secret is among them)."""
    if action != "edit":
        return ""
    sent = {k: request.body_arguments[k][0].decode(errors="replace")[:200]
            for k in ("name", "description", "default", "requires", "health_check",
                      "max_running") if k in request.body_arguments}
    return json.dumps(sent, sort_keys=True)


def ago(timestamp: float | str | None, now: float) -> str:
    try:
        value = float(timestamp or 0)
    except ValueError:
        return "-"
    return "-" if not value else f"{max(0.0, now - value):.0f}s ago"


def slug_of(name: str) -> str:
    return slugify(name)


def when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")
