"""Pure functions: names, slugs, service messages, masking, steps, messages, settings. No Redis."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from workerpool.core import messages
from workerpool.core.errors import BadInput, UnknownPool
from workerpool.core.pools import Pool, find, slugify, validate_name, worker_type
from workerpool.core.settings import Settings
from workerpool.core.steps import ScriptStep, parse_assignment
from workerpool.core.variables import MASK, Masker, env_name, script_environment

# --- pool names and slugs ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "slug"), [
    ("Database Worker Pool", "database-worker-pool"),
    ("Kubernetes   Worker  Pool", "kubernetes-worker-pool"),
    ("  AWS / Azure: Cloud Pool!  ", "aws-azure-cloud-pool"),
    ("linux", "linux"),
    ("Pool 2", "pool-2"),
    ("ALREADY-a-slug", "already-a-slug"),
])
def test_slugify(name: str, slug: str) -> None:
    assert slugify(name) == slug


def test_validate_name_returns_the_trimmed_name() -> None:
    assert validate_name("  Database Worker Pool \n") == "Database Worker Pool"
    assert validate_name("x" * 100) == "x" * 100


@pytest.mark.parametrize("name", [
    "", "   ", "\t\n", "x" * 101, "Data\x00base", "Data\x07base", "Data\nbase", "Data\x7fbase",
    "!!!", "--- ...", "builtin", "Builtin!", " BUILTIN ",
], ids=["empty", "spaces", "whitespace", "101-chars", "nul", "bell", "newline", "del",
        "no-letters", "punctuation", "builtin", "builtin-slug", "builtin-upper"])
def test_validate_name_refuses(name: str) -> None:
    with pytest.raises(BadInput):
        validate_name(name)


def test_validate_name_messages_say_what_is_wrong() -> None:
    with pytest.raises(BadInput, match="empty"):
        validate_name("  ")
    with pytest.raises(BadInput, match="101 characters; the limit is 100"):
        validate_name("y" * 101)
    with pytest.raises(BadInput, match="control characters"):
        validate_name("a\x01b")
    with pytest.raises(BadInput, match="no ASCII letters or digits"):
        validate_name("!!!")
    with pytest.raises(BadInput, match="reserved for the built-in worker"):
        validate_name("Builtin")


@pytest.mark.parametrize(("slug", "kind"), [
    ("database-worker-pool", "database"),
    ("kubernetes-workers", "kubernetes"),
    ("azure-pool", "azure"),
    ("linux", "linux"),
    ("default-worker-pool", "default"),
    ("worker-pool", "worker"),
    ("pool", "pool"),
])
def test_worker_type(slug: str, kind: str) -> None:
    assert worker_type(slug) == kind


def _pools(*pools: Pool) -> dict[str, Pool]:
    return {p.slug: p for p in pools}


POOLS = _pools(Pool("Default Worker Pool", "default-worker-pool", is_default=True),
               Pool("Database Worker Pool", "database-worker-pool", "migrations"),
               Pool("AWS: Cloud", "aws-cloud"))


@pytest.mark.parametrize("ident", [
    "Database Worker Pool", "database worker pool", "DATABASE WORKER POOL",
    "database-worker-pool", "Database-Worker-Pool", "  Database Worker Pool  ",
])
def test_find_by_name_or_slug_ignoring_case(ident: str) -> None:
    assert find(POOLS, ident).slug == "database-worker-pool"


def test_find_punctuated_name_by_name_and_by_slug() -> None:
    assert find(POOLS, "aws: cloud").name == "AWS: Cloud"
    assert find(POOLS, "aws-cloud").name == "AWS: Cloud"


@pytest.mark.parametrize("ident", ["Web Worker Pool", "", "database_worker_pool", "aws cloud"])
def test_find_unknown_pool_names_it(ident: str) -> None:
    with pytest.raises(UnknownPool) as info:
        find(POOLS, ident)
    message = str(info.value)
    assert repr(ident.strip()) in message
    assert "Database Worker Pool" in message  # lists what does exist
    assert "workerpool pool add" in message


def test_find_in_empty_registry() -> None:
    with pytest.raises(UnknownPool, match=r"'Anything'.*pools: none"):
        find({}, "Anything")


def test_pool_queue_and_json() -> None:
    pool = POOLS["database-worker-pool"]
    assert pool.queue == "workerpool.pool.database-worker-pool"
    assert pool.to_json() == {"name": "Database Worker Pool", "slug": "database-worker-pool",
                              "description": "migrations", "is_default": False,
                              "queue": "workerpool.pool.database-worker-pool",
                              "requires": [], "health_check": "", "paused": False,
                              "paused_reason": "", "paused_since": None,
                              "max_running": 0, "cleanup_script": ""}


# --- masking and the script environment ----------------------------------------------------------


def test_masker_masks_every_occurrence() -> None:
    mask = Masker(["hunter2"])
    assert mask("pw=hunter2 again hunter2, hunter2hunter2") == \
        f"pw={MASK} again {MASK}, {MASK}{MASK}"


def test_masker_prefers_the_longest_secret() -> None:
    mask = Masker(["abc", "abcdef"])
    assert mask("x abcdef y abc z") == f"x {MASK} y {MASK} z"
    assert "def" not in mask("abcdef")
    assert Masker(["abcdef", "abc"])("abcdefabc") == MASK * 2


def test_masker_hides_secrets_that_overlap_in_the_text() -> None:
    mask = Masker(["abcd", "cdef"])
    assert mask("abcdef") == MASK
    assert mask("--cdef--abcd--") == f"--{MASK}--{MASK}--"
    assert Masker(["aba"])("ababa") == MASK


def test_masker_ignores_empty_secrets() -> None:
    assert Masker(["", ""])("nothing to hide") == "nothing to hide"
    assert Masker([])("nothing to hide") == "nothing to hide"
    assert Masker(["", "s3cret"])("a s3cret b") == f"a {MASK} b"


@pytest.mark.parametrize("secret", ["a.b*c", "(x|y)", "[ab]+", "$^\\d", "p@ss?w0rd{2}"])
def test_masker_treats_secrets_literally(secret: str) -> None:
    mask = Masker([secret])
    assert mask(f"value: {secret}!") == f"value: {MASK}!"
    assert mask("axbbbc xy a1 d2") == "axbbbc xy a1 d2"


def test_masker_leaves_text_without_secrets_alone() -> None:
    assert Masker(["topsecret"])("top secret") == "top secret"


@pytest.mark.parametrize(("name", "env"), [
    ("Version", "Version"),
    ("Octopus.Action.Name", "Octopus_Action_Name"),
    ("Package[Db].ExtractedPath", "Package_Db__ExtractedPath"),
    ("my var-1", "my_var_1"),
    ("1stValue", "_1stValue"),
    ("_ok_", "_ok_"),
])
def test_env_name(name: str, env: str) -> None:
    assert env_name(name) == env


def test_script_environment_drops_workerpool_settings() -> None:
    base = {"PATH": "/usr/bin", "HOME": "/root", "WORKERPOOL_REDIS_URL": "redis://secret@x/0",
            "WORKERPOOL_HOME": "/srv", "WORKERPOOLISH": "kept"}
    env = script_environment({"Db.Name": "app", "Version": "2"}, {"WORKERPOOL_STEP": "s1"}, base)
    assert env == {"PATH": "/usr/bin", "HOME": "/root", "WORKERPOOLISH": "kept",
                   "WORKERPOOL_STEP": "s1", "Db_Name": "app", "Version": "2"}
    assert base["WORKERPOOL_HOME"] == "/srv"  # the caller's mapping is not changed


def test_script_environment_step_variables_override_base() -> None:
    env = script_environment({"LANG": "C"}, {}, {"LANG": "en_US.UTF-8"})
    assert env["LANG"] == "C"


# --- steps ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "pair"), [
    ("Env=Test", ("Env", "Test")),
    ("Env=", ("Env", "")),
    ("Conn=a=b;c=d", ("Conn", "a=b;c=d")),
    ("  Spaced Name =value ", ("Spaced Name", "value ")),
    ("Octopus.Action.Name=Run", ("Octopus.Action.Name", "Run")),
])
def test_parse_assignment(text: str, pair: tuple[str, str]) -> None:
    assert parse_assignment(text) == pair


@pytest.mark.parametrize("text", ["Env", "", "=value", "  =value", "a\nb=1", "Env=x\x00y"])
def test_parse_assignment_refuses(text: str) -> None:
    with pytest.raises(BadInput):
        parse_assignment(text)


def test_parse_assignment_explains_the_form() -> None:
    with pytest.raises(BadInput, match="NAME=VALUE"):
        parse_assignment("Env")


def test_valid_step_validates_to_itself() -> None:
    step = ScriptStep("echo hi", syntax="python", pool="Database Worker Pool",
                      variables={"Db.Name": "app"}, sensitive_variables={"Password": "p"},
                      timeout=1.5, lease_timeout=10)
    assert step.validate() is step
    assert ScriptStep("echo hi", location="server").validate().location == "server"


@pytest.mark.parametrize(("step", "words"), [
    (ScriptStep(""), "empty"),
    (ScriptStep("  \n\t"), "empty"),
    (ScriptStep("echo a\x00b"), "NUL"),
    (ScriptStep("echo", syntax="cmd"), "unknown syntax 'cmd'"),
    (ScriptStep("echo", syntax="Bash"), "unknown syntax"),
    (ScriptStep("echo", location="target"), "unknown location 'target'"),
    (ScriptStep("echo", location="server", pool="Database Worker Pool"), "--server"),
    (ScriptStep("echo", timeout=0), "timeout"),
    (ScriptStep("echo", timeout=-5), "timeout"),
    (ScriptStep("echo", timeout=float("nan")), "timeout"),
    (ScriptStep("echo", lease_timeout=0), "lease timeout"),
    (ScriptStep("echo", lease_timeout=-1.0), "lease timeout"),
    (ScriptStep("echo", variables={"": "x"}), "variable name"),
    (ScriptStep("echo", variables={"a=b": "x"}), "variable name"),
    (ScriptStep("echo", variables={"a\nb": "x"}), "variable name"),
    (ScriptStep("echo", variables={"v" * 201: "x"}), "variable name"),
    (ScriptStep("echo", sensitive_variables={"Pass\tword": "x"}), "variable name"),
    (ScriptStep("echo", variables={"Ok": "a\x00b"}), "NUL"),
    (ScriptStep("x" * 1_000_001), "limit"),
])
def test_step_validate_refuses(step: ScriptStep, words: str) -> None:
    with pytest.raises(BadInput, match=re.escape(words)):
        step.validate()


# --- Celery messages -----------------------------------------------------------------------------


def test_build_is_a_celery_protocol_2_message() -> None:
    label = messages.label("Migrate database", "Database Worker Pool", "s-123")
    raw = messages.build("s-123", 0, "workerpool.pool.database-worker-pool", label)
    message = json.loads(raw)
    assert json.loads(message["body"]) == [["s-123", 0], {}, {}]
    assert message["headers"] == {"task": "workerpool.run_step", "id": "s-123",
                                  "argsrepr": label, "kwargsrepr": "{}"}
    assert message["content-type"] == "application/json"
    assert message["properties"] == {
        "delivery_info": {"exchange": "", "routing_key": "workerpool.pool.database-worker-pool"},
        "priority": 3, "delivery_tag": "s-123"}  # no body_encoding: the body is plain JSON


def test_build_retry_attempt_has_its_own_task_id() -> None:
    message = json.loads(messages.build("s-9", 2, "workerpool.builtin", "label"))
    assert json.loads(message["body"])[0] == ["s-9", 2]
    assert message["headers"]["id"] == message["properties"]["delivery_tag"] == "s-9-r2"
    assert message["headers"]["retries"] == 2
    assert message["properties"]["delivery_info"]["routing_key"] == "workerpool.builtin"


def test_build_is_deterministic() -> None:
    assert messages.build("s-1", 1, "q", "l") == messages.build("s-1", 1, "q", "l")


def test_label_names_step_pool_and_id_only() -> None:
    label = messages.label("Deploy", "Kubernetes Worker Pool", "s-42")
    assert label == "step='Deploy' pool='Kubernetes Worker Pool' id=s-42"
    assert messages.label("", "built-in worker", "s-1") == \
        "step='script' pool='built-in worker' id=s-1"


def test_settings_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.redis_url is None
    assert settings.home == Path.home() / ".workerpool"
    assert settings.heartbeat_interval == 2.0
    assert settings.heartbeat_ttl == 4.0
    assert settings.lease_timeout == settings.step_timeout == 3600.0
    assert settings.log_max_lines == 10_000
    assert settings.log_max_line_bytes == 16_384
    assert settings.result_ttl == 7 * 24 * 3600
    assert settings.kill_grace == 3.0
    assert settings.keep_workdirs is False
    assert Settings.from_env({"WORKERPOOL_REDIS_URL": "", "WORKERPOOL_LEASE_TIMEOUT": ""}) == \
        settings


def test_settings_from_environment(tmp_path: Path) -> None:
    settings = Settings.from_env({
        "WORKERPOOL_REDIS_URL": "redis://:pw@db:6380/3", "WORKERPOOL_HOME": str(tmp_path),
        "WORKERPOOL_HEARTBEAT_INTERVAL": "0.5", "WORKERPOOL_LEASE_TIMEOUT": "30",
        "WORKERPOOL_STEP_TIMEOUT": "12.5", "WORKERPOOL_LOG_MAX_LINES": "50",
        "WORKERPOOL_LOG_MAX_LINE_BYTES": "256", "WORKERPOOL_RESULT_TTL": "60",
        "WORKERPOOL_KILL_GRACE": "1", "WORKERPOOL_KEEP_WORKDIRS": "1"})
    assert settings.redis_url == "redis://:pw@db:6380/3"
    assert settings.home == tmp_path
    assert settings.heartbeat_interval == 0.5
    assert settings.heartbeat_ttl == 1.0
    assert (settings.lease_timeout, settings.step_timeout) == (30.0, 12.5)
    assert (settings.log_max_lines, settings.log_max_line_bytes) == (50, 256)
    assert (settings.result_ttl, settings.kill_grace, settings.keep_workdirs) == (60, 1.0, True)


def test_heartbeat_ttl_is_twice_the_interval() -> None:
    for interval in ("0.25", "2", "7.5"):
        settings = Settings.from_env({"WORKERPOOL_HEARTBEAT_INTERVAL": interval})
        assert settings.heartbeat_ttl == 2 * float(interval)


@pytest.mark.parametrize(("name", "value"), [
    ("HEARTBEAT_INTERVAL", "fast"), ("HEARTBEAT_INTERVAL", "0"), ("HEARTBEAT_INTERVAL", "-1"),
    ("HEARTBEAT_INTERVAL", "nan"), ("LEASE_TIMEOUT", "inf"), ("STEP_TIMEOUT", "1h"),
    ("KILL_GRACE", "-0.5"), ("LOG_MAX_LINES", "1.5"), ("LOG_MAX_LINES", "0"),
    ("LOG_MAX_LINE_BYTES", "big"), ("RESULT_TTL", "-3"), ("RESULT_TTL", "week"),
])
def test_settings_refuse_bad_numbers(name: str, value: str) -> None:
    with pytest.raises(BadInput, match=f"WORKERPOOL_{name}"):
        Settings.from_env({f"WORKERPOOL_{name}": value})
