"""The deployment files: docker-compose.yml, deploy/ and docs/running-workers.md.

No Docker engine runs here, so these tests check what can be checked without one. Every
workerpool command in the compose file and in the systemd unit is a valid invocation (its
subcommand path and options pass ``--help``, and click parses its arguments). Every file
mounted from the host exists. A real redis-server accepts deploy/redis.conf. (The ``init``
script runs against a real Redis in tests/e2e/test_deploy_files.py.)
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import redis
from conftest import REPO
from deployfiles import (
    SEED_POOLS,
    WORKERS,
    Unset,
    as_argv,
    compose,
    dockerfile_instructions,
    header_commands,
    image_entrypoint,
    interpolated,
    seconds,
    service_argv,
    services,
)
from ruamel.yaml import YAML

import workerpool.cli
from workerpool.core import credentials
from workerpool.core.pools import slugify
from workerpool.core.settings import Settings
from workerpool.server.embedded import free_port, redis_server_binary
from workerpool.server.metrics import SIGNAL

REDIS_CONF = REPO / "deploy" / "redis.conf"
UNIT = REPO / "deploy" / "workerpool-worker@.service"
ENV_EXAMPLE = REPO / "deploy" / "worker.env.example"
DOCS = REPO / "docs" / "running-workers.md"
KEDA = REPO / "deploy" / "keda-scaledobject.yaml"

# What .env holds once the top of docker-compose.yml has been followed.
DOT_ENV = {
    "WORKERPOOL_ADMIN_PASSWORD": "admin-pw",
    "WORKERPOOL_SECRET_KEY": "the-master-key",
    **{f"{prefix}_{name}": f"{prefix}-{name}" for prefix in ("KUBERNETES", "AZURE", "DATABASE")
       for name in ("REDIS_URL", "POOL_KEY")},
}
ADMIN_URL = "redis://:admin-pw@redis:6379/0"
ADMIN_SERVICES = {"init", "server", "flower"}
SHELL_OPERATORS = {"||", "&&", ";", "|", "&"}
UNIT_INSTANCE = "database-worker-pool"  # what %i becomes: a pool's slug






def workerpool_services() -> dict[str, dict[str, Any]]:
    """Services that run the image built from deploy/Dockerfile."""
    return {name: s for name, s in services().items() if "build" in s}








def shell_invocations(script: str) -> list[list[str]]:
    """The arguments of each ``workerpool ...`` command in a shell script."""
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token not in SHELL_OPERATORS:
                command.append(token)
                continue
            if command and command[0] == "workerpool":
                found.append(command[1:])
            command = []
    return found


def invocations_of(argv: list[str]) -> list[list[str]]:
    """The workerpool arguments an argv runs: directly, or inside ``sh -c SCRIPT``."""
    if argv and Path(argv[0]).name == "workerpool":
        return [argv[1:]]
    if len(argv) == 3 and Path(argv[0]).name in ("sh", "bash") and argv[1].startswith("-") \
            and "c" in argv[1]:
        return shell_invocations(argv[2])
    raise AssertionError(f"{argv!r} runs neither workerpool nor a shell script")




def unit_directives() -> dict[str, list[str]]:
    """``Key`` -> values of deploy/workerpool-worker@.service (a key may repeat)."""
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def unit_args() -> list[str]:
    argv = shlex.split(unit_directives()["ExecStart"][0].replace("%i", UNIT_INSTANCE))
    assert Path(argv[0]).is_absolute() and Path(argv[0]).name == "workerpool", argv
    return argv[1:]


def all_invocations() -> list[Any]:
    found = []
    for name, service in workerpool_services().items():
        for args in invocations_of(service_argv(service)):
            found.append(pytest.param(args, id=f"{name}: {' '.join(args[:3])}"))
    for args in header_commands():
        found.append(pytest.param(args, id=f"compose header: {' '.join(args[:3])}"))
    found.append(pytest.param(unit_args(), id="systemd unit"))
    return found


def cli_root() -> click.Group:
    """The click group with every command registered, as ``workerpool.cli.main`` does."""
    for module in pkgutil.iter_modules(workerpool.cli.__path__):
        importlib.import_module(f"workerpool.cli.{module.name}")
    return workerpool.cli.cli


def split_command(args: list[str]) -> tuple[list[str], click.Command]:
    """The subcommand path at the front of *args* (``worker start``) and its command."""
    command: click.Command = cli_root()
    path: list[str] = []
    for token in args:
        if not isinstance(command, click.Group) or token not in command.commands:
            break
        command = command.commands[token]
        path.append(token)
    return path, command


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m workerpool ARGS`` with no WORKERPOOL_* setting from the caller's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERPOOL_")}
    return subprocess.run([sys.executable, "-m", "workerpool", *args], env=env,
                          capture_output=True, text=True, timeout=60)




def stop_budget() -> float:
    """What a warm stop may take by default: the shutdown grace, then the kill grace."""
    defaults = Settings()
    return defaults.shutdown_grace + defaults.kill_grace


# --- docker-compose.yml ----------------------------------------------------------------------

def test_compose_has_redis_server_a_service_per_seed_pool_and_flower() -> None:
    assert set(services()) == {"redis", "init", "server", *WORKERS, "flower"}
    assert set(workerpool_services()) == {"init", "server", *WORKERS, "flower"}
    assert services()["database-worker"]["deploy"]["replicas"] == 2
    flower = services()["flower"]
    assert {str(p).split(":")[-1] for p in flower["ports"]} == {"5555", "5556"}  # + pools page
    flower_args = as_argv(flower["command"])
    # Flower defaults to 127.0.0.1, which a published port cannot reach inside a container.
    assert flower_args[flower_args.index("--address") + 1] == "0.0.0.0"


@pytest.mark.parametrize("name", sorted(workerpool_services()))
def test_workerpool_services_build_the_image_and_use_the_compose_redis(name: str) -> None:
    service = services()[name]
    assert service["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
    assert (REPO / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    if name in WORKERS:
        assert service["depends_on"]["init"]["condition"] == "service_completed_successfully"
    if name != "init":
        assert seconds(service["stop_grace_period"]) > stop_budget()


@pytest.mark.parametrize("name", sorted(ADMIN_SERVICES))
def test_the_admin_services_log_in_as_the_admin_and_hold_the_master_key(name: str) -> None:
    environment = interpolated(services()[name]["environment"], DOT_ENV)
    assert environment == {"WORKERPOOL_REDIS_URL": ADMIN_URL,
                           "WORKERPOOL_SECRET_KEY": "the-master-key"}


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_a_worker_gets_its_pools_login_and_key_and_nothing_of_the_admins(name: str) -> None:
    prefix = name.split("-")[0].upper()
    environment = interpolated(services()[name]["environment"], DOT_ENV)
    assert environment == {"WORKERPOOL_REDIS_URL": f"{prefix}-REDIS_URL",
                           "WORKERPOOL_POOL_KEY": f"{prefix}-POOL_KEY"}
    assert not any("admin-pw" in v or "the-master-key" in v for v in environment.values())
    # `pool credentials` runs in the server's container: the URL it prints reaches the same
    # Redis as the admin's, as the pool's own user.
    url = credentials.url_for(ADMIN_URL, credentials.user_name("pool"), "pw")
    assert url == f"redis://{credentials.user_name('pool')}:pw@redis:6379/0"


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_a_worker_without_its_credentials_names_the_command_that_makes_them(name: str) -> None:
    prefix = name.split("-")[0].upper()
    incomplete = {k: v for k, v in DOT_ENV.items() if not k.startswith(prefix)}
    with pytest.raises(Unset, match=f"pool credentials --prefix {prefix}_"):
        interpolated(services()[name]["environment"], incomplete)
    made = {args[2]: args[args.index("--prefix") + 1] for args in header_commands()
            if args[:2] == ["pool", "credentials"]}
    assert made[WORKERS[name]] == f"{prefix}_"


def test_without_an_admin_password_nothing_starts() -> None:
    for name in ("redis", *ADMIN_SERVICES):
        with pytest.raises(Unset, match="WORKERPOOL_ADMIN_PASSWORD"):
            interpolated(services()[name], {"WORKERPOOL_SECRET_KEY": "k"})


def test_redis_service_runs_the_mounted_config_with_a_volume_and_a_healthcheck() -> None:
    redis_service = interpolated(services()["redis"], DOT_ENV)
    assert redis_service["image"] == "redis:7"
    # Redis 7: per-pool ACL users with key and channel patterns (docs/security.md).
    assert as_argv(redis_service["command"]) == ["redis-server",
                                                 "/usr/local/etc/redis/redis.conf",
                                                 "--requirepass", "admin-pw"]
    assert redis_service["environment"]["REDISCLI_AUTH"] == "admin-pw"  # for the healthcheck
    source_of = {target: source for source, target in
                 (str(v).split(":")[:2] for v in redis_service["volumes"])}
    assert (REPO / source_of["/usr/local/etc/redis/redis.conf"]).resolve() == REDIS_CONF
    assert source_of["/data"] in compose()["volumes"]
    assert "ping" in as_argv(redis_service["healthcheck"]["test"])


def test_every_mounted_host_file_exists_and_named_volumes_are_declared() -> None:
    declared = compose().get("volumes") or {}
    checked = 0
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else str(volume).split(":")[0]
            if source.startswith((".", "/", "~")):
                assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"
                checked += 1
            else:
                assert source in declared, f"{name} uses volume {source!r}; declare it"
        for env_file in as_argv(service.get("env_file")):
            assert (REPO / env_file).is_file(), f"{name} reads {env_file}, which does not exist"
    assert checked, "the compose file mounts no host file (deploy/redis.conf?)"


@pytest.mark.parametrize("args", all_invocations())
def test_command_is_a_valid_workerpool_invocation(args: list[str]) -> None:
    path, command = split_command(args)
    shown = shlex.join(["workerpool", *args])
    assert path, f"`{shown}`: no such command"
    assert not isinstance(command, click.Group), f"`{shown}`: a command group, not a command"

    usage = run_cli(*path, "--help")
    assert usage.returncode == 0, f"`workerpool {' '.join(path)} --help`: {usage.stderr}"
    assert usage.stdout.startswith(f"Usage: workerpool {' '.join(path)} ")

    # click handles --help after parsing: unknown options exit 2, valid ones show the help.
    with_options = run_cli(*args, "--help")
    assert with_options.returncode == 0, f"`{shown} --help`: {with_options.stderr}"

    # ...but --help skips values and arguments; parse them too, without running anything.
    try:
        command.make_context(" ".join(["workerpool", *path]), list(args[len(path):]))
    except click.ClickException as exc:
        pytest.fail(f"`{shown}`: {exc.format_message()}")


def test_init_creates_exactly_the_pools_the_workers_consume() -> None:
    init = invocations_of(service_argv(services()["init"]))
    added = {args[2] for args in init if args[:2] == ["pool", "add"]}
    consumed = {name: as_argv(services()[name]["command"]) for name in WORKERS}
    assert added == SEED_POOLS
    for name, args in consumed.items():
        assert args[:2] == ["worker", "start"]
        assert args[args.index("--pool") + 1] == WORKERS[name]


# --- deploy/redis.conf ------------------------------------------------------------------------

def redis_conf() -> dict[str, str]:
    found = {}
    for line in REDIS_CONF.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            found[key.lower()] = value.strip()
    return found


def test_redis_conf_keeps_every_key() -> None:
    conf = redis_conf()
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "everysec"
    assert conf["maxmemory-policy"] == "noeviction"
    assert conf["dir"] == "/data"  # the named volume in docker-compose.yml
    assert "requirepass" not in conf
    assert re.search(r"^#\s*requirepass\s", REDIS_CONF.read_text(), re.MULTILINE)


def test_a_real_redis_server_accepts_redis_conf(tmp_path: Path) -> None:
    conf = tmp_path / "redis.conf"
    conf.write_text(re.sub(r"^dir .*$", f"dir {tmp_path}", REDIS_CONF.read_text(),
                           flags=re.MULTILINE))
    port = free_port()
    log = tmp_path / "redis.log"
    with log.open("wb") as out:
        server = subprocess.Popen([redis_server_binary(), str(conf), "--port", str(port),
                                   "--bind", "127.0.0.1", "--daemonize", "no"],
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(port=port, socket_connect_timeout=1, decode_responses=True)
        deadline = time.monotonic() + 10
        while True:
            assert server.poll() is None, f"redis-server refused the config: {log.read_text()}"
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not answer"
                time.sleep(0.05)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        client.close()
    finally:
        server.terminate()
        server.wait(10)


# --- deploy/Dockerfile ------------------------------------------------------------------------

def test_dockerfile_installs_the_wheel_and_runs_the_worker_as_root_with_scripts_apart() -> None:
    steps = dockerfile_instructions()
    stages = [i for i, (kind, _) in enumerate(steps) if kind == "FROM"]
    assert [steps[i][1] for i in stages] == ["python:3.11-slim AS wheel", "python:3.11-slim"]
    build, image = steps[:stages[1]], steps[stages[1]:]
    copied = {src for kind, rest in build if kind == "COPY" for src in shlex.split(rest)[:-1]}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert {"pyproject.toml", pyproject["project"]["readme"], "workerpool"} == copied
    for source in copied:
        assert (REPO / source).exists(), f"the Dockerfile copies {source}, which does not exist"
    assert any(kind == "RUN" and re.search(r"pip wheel .*--no-deps .*\.$", rest)
               for kind, rest in build)
    # The image holds the installed wheel only: no sources, and the shipped templates.
    assert [rest for kind, rest in image if kind == "COPY"] == ["--from=wheel /wheels /wheels"]
    installs = [rest for kind, rest in image if kind == "RUN" and "pip install" in rest]
    assert installs and "pip install /wheels/workerpool-*.whl" in installs[0]
    assert not any("WORKERPOOL_TEMPLATES" in rest for _, rest in image)
    # The worker is root in the container, so that its scripts run as users of their own.
    assert [rest for kind, rest in image if kind == "USER"] == []
    assert ("ENV", "WORKERPOOL_HOME=/var/lib/workerpool") in image
    assert image_entrypoint() == ["workerpool"]


# --- deploy/workerpool-worker@.service ---------------------------------------------------------

def test_systemd_unit_runs_a_pool_worker_that_stops_warmly() -> None:
    unit = unit_directives()
    assert unit_args()[:2] == ["worker", "start"]
    assert "--pool" in unit_args()
    assert unit["EnvironmentFile"] == ["/etc/workerpool/worker.env"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["KillSignal"] == ["SIGTERM"]
    assert unit["KillMode"] == ["mixed"]  # scripts' process groups get no SIGTERM from systemd
    assert seconds(unit["TimeoutStopSec"][0]) > stop_budget()
    # Root, so that scripts run as users of their own; its home is private to it.
    assert unit["User"] == ["root"] and unit["StateDirectoryMode"] == ["0700"]
    example = ENV_EXAMPLE.read_text()
    settings = dict(line.split("=", 1) for line in example.splitlines()
                    if line and not line.startswith("#"))
    # A worker's environment: its pool's own login and key, nothing of the admin's.
    assert set(settings) == {"WORKERPOOL_REDIS_URL", "WORKERPOOL_POOL_KEY"}
    user = credentials.user_name(UNIT_INSTANCE)
    assert settings["WORKERPOOL_REDIS_URL"].startswith(f"redis://{user}:")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    instance = tmp_path / f"workerpool-worker@{UNIT_INSTANCE}.service"
    workerpool_bin = Path(sys.executable).parent / "workerpool"
    instance.write_text(UNIT.read_text().replace("/opt/workerpool/bin/workerpool",
                                                 str(workerpool_bin)))
    done = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True,
                          text=True, timeout=60)
    complaints = [ln for ln in (done.stdout + done.stderr).splitlines() if instance.name in ln]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


# --- deploy/keda-scaledobject.yaml ----------------------------------------------------------

def test_the_keda_scaledobject_scales_a_seed_pools_workers_on_the_signal_served() -> None:
    text = KEDA.read_text()
    assert text.startswith("# KEDA scales one pool's worker Deployment")
    scaled = YAML(typ="safe").load(text)
    assert (scaled["apiVersion"], scaled["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "database-worker")
    assert target["name"] in WORKERS  # the compose service of the same pool
    [trigger] = scaled["spec"]["triggers"]
    assert (trigger["type"], trigger["metricType"]) == ("prometheus", "Value")
    query = trigger["metadata"]["query"]
    assert re.fullmatch(rf'max\({SIGNAL}\{{pool="([a-z0-9-]+)"\}}\)', query), query
    assert f'pool="{slugify(WORKERS[target["name"]])}"' in query
    assert float(trigger["metadata"]["threshold"]) == 1.0  # the signal is 1 at a fit
    assert float(trigger["metadata"]["activationThreshold"]) == 0.0
    assert trigger["metadata"]["serverAddress"].startswith("http")
    assert scaled["spec"]["minReplicaCount"] == 0
    assert scaled["spec"]["maxReplicaCount"] >= 1


# --- docs -------------------------------------------------------------------------------------

def test_running_workers_page_covers_what_a_worker_machine_needs() -> None:
    page = DOCS.read_text()
    assert page.startswith("## Running workers on other machines")
    for needed in ("Python 3.11", "pip install", "WORKERPOOL_REDIS_URL", "rediss://", "kubectl",
                   "`az`", "sqlcmd", "<type>-worker-NN", "workerpool-worker@.service",
                   "--scale database-worker=3"):
        assert needed in page, f"docs/running-workers.md does not mention {needed}"
