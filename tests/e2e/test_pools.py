"""The pool registry against a real Redis, through the Python API and the real CLI."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest
import redis

from workerpool import Client
from workerpool.core.errors import BadInput, PoolConflict, UnknownPool
from workerpool.core.pools import Pool
from workerpool.core.steps import ScriptStep

Cli = Callable[..., subprocess.CompletedProcess[str]]

DEFAULT_SLUG = "default-worker-pool"


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Assert the CLI refused with exit 2 and one ``workerpool: error:`` line; return it."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("workerpool: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def defaults(pools: list[Pool]) -> list[str]:
    return [p.name for p in pools if p.is_default]


# --- the default pool ----------------------------------------------------------------------------


def test_default_pool_exists_on_first_use(client: Client, raw: redis.Redis) -> None:
    assert raw.exists("workerpool:pools") == 0
    pools = client.pools.list()
    assert pools == [Pool("Default Worker Pool", DEFAULT_SLUG, "", True)]
    assert pools[0].queue == "workerpool.pool.default-worker-pool"
    assert raw.get("workerpool:default-pool") == DEFAULT_SLUG


def test_default_pool_is_created_once(client: Client) -> None:
    client.pools.list()
    client.pools.add("Database Worker Pool", is_default=True)
    client.pools.edit("Default Worker Pool", description="kept")
    for _ in range(3):
        client.pools.ensure_default()
    other = Client(redis_url=client.url)
    try:
        pools = other.pools.list()
    finally:
        other.close()
    assert [p.name for p in pools] == ["Database Worker Pool", "Default Worker Pool"]
    assert defaults(pools) == ["Database Worker Pool"]
    assert client.pools.get("Default Worker Pool").description == "kept"


def test_cli_list_on_a_fresh_database_shows_the_default(cli: Cli) -> None:
    data = json.loads(ok(cli("pool", "list", "--json")))
    assert [(p["name"], p["slug"], p["is_default"]) for p in data] == \
        [("Default Worker Pool", DEFAULT_SLUG, True)]


# --- add -----------------------------------------------------------------------------------------


def test_add_pool(client: Client) -> None:
    created = client.pools.add("Database Worker Pool", "Machines with the database tools")
    assert created == Pool("Database Worker Pool", "database-worker-pool",
                           "Machines with the database tools", False)
    assert created.queue == "workerpool.pool.database-worker-pool"
    assert client.pools.get("database-worker-pool") == created
    assert [p.name for p in client.pools.list()] == ["Default Worker Pool",
                                                     "Database Worker Pool"]
    assert defaults(client.pools.list()) == ["Default Worker Pool"]


def test_add_trims_the_name(client: Client) -> None:
    assert client.pools.add("  Linux  ").name == "Linux"


def test_add_as_default_moves_the_default(client: Client, raw: redis.Redis) -> None:
    client.pools.add("Kubernetes Worker Pool", is_default=True)
    assert defaults(client.pools.list()) == ["Kubernetes Worker Pool"]
    assert raw.get("workerpool:default-pool") == "kubernetes-worker-pool"


@pytest.mark.parametrize("duplicate", [
    "Database Worker Pool", "database worker pool", "DATABASE WORKER POOL",
    "Database-Worker-Pool", "database_worker_pool", "  Database   Worker Pool!  ",
])
def test_duplicate_names_are_refused(client: Client, duplicate: str) -> None:
    client.pools.add("Database Worker Pool", "original")
    with pytest.raises(PoolConflict, match="'Database Worker Pool' already exists"):
        client.pools.add(duplicate, "copy")
    pools = client.pools.list()
    assert len(pools) == 2
    assert client.pools.get("database-worker-pool").description == "original"


def test_default_pool_name_cannot_be_added_again(client: Client) -> None:
    with pytest.raises(PoolConflict):
        client.pools.add("default worker pool")
    assert len(client.pools.list()) == 1


def test_duplicate_as_default_does_not_move_the_default(client: Client) -> None:
    client.pools.add("Database Worker Pool")
    with pytest.raises(PoolConflict):
        client.pools.add("database worker pool", is_default=True)
    assert defaults(client.pools.list()) == ["Default Worker Pool"]


def test_cli_duplicate_is_refused_with_one_line(cli: Cli) -> None:
    ok(cli("pool", "add", "Database Worker Pool"))
    for duplicate in ("database worker pool", "DATABASE-WORKER-POOL"):
        result = cli("pool", "add", duplicate)
        refused(result, "'Database Worker Pool' already exists")
        assert result.stdout == ""


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "!!!", "Builtin"],
                         ids=["empty", "blank", "101-chars", "no-letters", "reserved"])
def test_cli_refuses_bad_names(cli: Cli, client: Client, name: str) -> None:
    refused(cli("pool", "add", name), "pool name")
    assert len(client.pools.list()) == 1


def test_101_character_name_is_refused_and_100_accepted(cli: Cli) -> None:
    refused(cli("pool", "add", "p" * 101), "101 characters", "100")
    created = json.loads(ok(cli("pool", "add", "p" * 100, "--json")))
    assert created["name"] == "p" * 100


def test_bad_names_through_the_api(client: Client) -> None:
    for name in ("", "x" * 101, "tab\there", "builtin"):
        with pytest.raises(BadInput):
            client.pools.add(name)


# --- edit and the default ------------------------------------------------------------------------


def test_cli_edit_default_moves_it(cli: Cli, client: Client, raw: redis.Redis) -> None:
    ok(cli("pool", "add", "Database Worker Pool"))
    ok(cli("pool", "add", "Kubernetes Worker Pool"))
    edited = json.loads(ok(cli("pool", "edit", "database-worker-pool", "--default", "--json")))
    assert edited["is_default"] is True
    assert defaults(client.pools.list()) == ["Database Worker Pool"]
    ok(cli("pool", "edit", "KUBERNETES WORKER POOL", "--default"))
    listed = json.loads(ok(cli("pool", "list", "--json")))
    assert [p["name"] for p in listed if p["is_default"]] == ["Kubernetes Worker Pool"]
    assert listed[0]["name"] == "Kubernetes Worker Pool"  # the default is listed first
    assert raw.get("workerpool:default-pool") == "kubernetes-worker-pool"


def test_edit_default_on_the_default_keeps_it(client: Client) -> None:
    client.pools.edit("Default Worker Pool", make_default=True)
    assert defaults(client.pools.list()) == ["Default Worker Pool"]


def test_edit_description_and_rename(client: Client) -> None:
    client.pools.add("Databse Pool", "typo")
    renamed = client.pools.edit("databse-pool", name="Database Worker Pool",
                                description="fixed")
    assert renamed == Pool("Database Worker Pool", "database-worker-pool", "fixed", False)
    with pytest.raises(UnknownPool):
        client.pools.get("Databse Pool")
    assert client.pools.edit("Database Worker Pool", name="DATABASE worker pool").name == \
        "DATABASE worker pool"


def test_renaming_the_default_keeps_it_the_default(client: Client) -> None:
    renamed = client.pools.edit("Default Worker Pool", name="Main Pool")
    assert renamed.is_default
    assert [(p.name, p.is_default) for p in client.pools.list()] == [("Main Pool", True)]


def test_rename_onto_another_pool_is_refused(client: Client) -> None:
    client.pools.add("Database Worker Pool")
    with pytest.raises(PoolConflict, match="already has that name"):
        client.pools.edit("Database Worker Pool", name="default worker pool")
    assert sorted(p.slug for p in client.pools.list()) == ["database-worker-pool", DEFAULT_SLUG]


def test_cli_edit_unknown_pool(cli: Cli) -> None:
    refused(cli("pool", "edit", "Nope", "--default"), "'Nope'")


# --- remove --------------------------------------------------------------------------------------


def test_default_pool_cannot_be_removed(client: Client) -> None:
    with pytest.raises(PoolConflict, match="make another pool the default first"):
        client.pools.remove("Default Worker Pool")
    client.pools.add("Database Worker Pool", is_default=True)
    with pytest.raises(PoolConflict, match="'Database Worker Pool' is the default pool"):
        client.pools.remove("database-worker-pool")
    assert len(client.pools.list()) == 2


def test_cli_remove_default_is_refused(cli: Cli, client: Client) -> None:
    refused(cli("pool", "remove", "Default Worker Pool"), "default",
            "make another pool the default first", "--default")
    refused(cli("pool", "remove", DEFAULT_SLUG), "make another pool the default first")
    assert [p.name for p in client.pools.list()] == ["Default Worker Pool"]


def test_remove_old_default_after_moving_it(cli: Cli, client: Client) -> None:
    ok(cli("pool", "add", "Linux"))
    ok(cli("pool", "edit", "linux", "--default"))
    assert "removed pool 'Default Worker Pool'" in ok(cli("pool", "remove", DEFAULT_SLUG))
    assert [(p.name, p.is_default) for p in client.pools.list()] == [("Linux", True)]


@pytest.mark.parametrize("ident", ["Database Worker Pool", "database-worker-pool",
                                   "database WORKER pool"])
def test_cli_remove_another_pool_by_name_or_slug(cli: Cli, client: Client, ident: str) -> None:
    ok(cli("pool", "add", "Database Worker Pool"))
    assert ok(cli("pool", "remove", ident)).strip() == "removed pool 'Database Worker Pool'"
    assert [p.name for p in client.pools.list()] == ["Default Worker Pool"]
    refused(cli("pool", "show", "Database Worker Pool"), "'Database Worker Pool'")
    refused(cli("pool", "remove", ident), repr(ident))


def test_removed_name_can_be_added_again(client: Client) -> None:
    client.pools.add("Database Worker Pool", "first")
    client.pools.remove("Database Worker Pool")
    assert client.pools.add("database worker pool", "second").description == "second"


def test_pool_with_waiting_steps_cannot_be_removed(client: Client, raw: redis.Redis) -> None:
    client.pools.add("Database Worker Pool")
    client.run(ScriptStep("echo waiting", pool="Database Worker Pool"))
    assert raw.llen("workerpool.pool.database-worker-pool") == 1
    with pytest.raises(PoolConflict, match="steps are waiting"):
        client.pools.remove("Database Worker Pool")
    with pytest.raises(PoolConflict, match="steps are waiting"):
        client.pools.edit("Database Worker Pool", name="Renamed Pool")
    assert client.pools.get("database-worker-pool").name == "Database Worker Pool"


# --- show and list -------------------------------------------------------------------------------


@pytest.mark.parametrize("ident", ["Database Worker Pool", "database-worker-pool",
                                   "DATABASE WORKER POOL"])
def test_cli_show_json_by_name_or_slug(cli: Cli, ident: str) -> None:
    ok(cli("pool", "add", "Database Worker Pool", "--description", "db tools"))
    shown = json.loads(ok(cli("pool", "show", ident, "--json")))
    assert shown == {"name": "Database Worker Pool", "slug": "database-worker-pool",
                     "description": "db tools", "is_default": False,
                     "queue": "workerpool.pool.database-worker-pool", "workers": [],
                     "requires": [], "health_check": "", "paused": False,
                     "paused_reason": "", "paused_since": None,
                     "max_running": 0, "cleanup_script": ""}


def test_cli_show_table(cli: Cli) -> None:
    out = ok(cli("pool", "show", "default-worker-pool"))
    assert "Default Worker Pool" in out
    assert "workerpool.pool.default-worker-pool" in out
    assert "yes" in out


def test_cli_show_unknown_pool(cli: Cli) -> None:
    result = cli("pool", "show", "Web Worker Pool")
    refused(result, "'Web Worker Pool'", "Default Worker Pool", "workerpool pool add")
    assert result.stdout == ""


def test_cli_list_json(cli: Cli, client: Client) -> None:
    ok(cli("pool", "add", "Kubernetes Worker Pool", "--description", "kubectl"))
    ok(cli("pool", "add", "Database Worker Pool"))
    client.run(ScriptStep("echo", pool="kubernetes-worker-pool"))
    listed = json.loads(ok(cli("pool", "list", "--json")))
    assert [p["name"] for p in listed] == ["Default Worker Pool", "Database Worker Pool",
                                           "Kubernetes Worker Pool"]
    for entry in listed:
        assert set(entry) == {"name", "slug", "description", "is_default", "queue", "workers",
                              "queued", "requires", "health_check", "paused",
                              "paused_reason", "paused_since", "max_running",
                              "cleanup_script"}
        assert entry["queue"] == f"workerpool.pool.{entry['slug']}"
        assert entry["workers"] == 0
    kubernetes = listed[2]
    assert (kubernetes["slug"], kubernetes["description"], kubernetes["queued"]) == \
        ("kubernetes-worker-pool", "kubectl", 1)
    assert [p["is_default"] for p in listed] == [True, False, False]


def test_cli_list_table(cli: Cli) -> None:
    ok(cli("pool", "add", "Database Worker Pool", "--description", "db tools"))
    lines = ok(cli("pool", "list")).splitlines()
    assert lines[0].split() == ["NAME", "SLUG", "DEFAULT", "HEALTHY", "QUEUED", "DESCRIPTION"]
    assert lines[2].startswith("Default Worker Pool")
    assert "database-worker-pool" in lines[3]
    assert "db tools" in lines[3]


def test_cli_add_json(cli: Cli) -> None:
    created = json.loads(ok(cli("pool", "add", "Azure Pool", "--default", "--json")))
    assert created == {"name": "Azure Pool", "slug": "azure-pool", "description": "",
                       "is_default": True, "queue": "workerpool.pool.azure-pool",
                       "requires": [], "health_check": "", "paused": False,
                       "paused_reason": "", "paused_since": None,
                       "max_running": 0, "cleanup_script": ""}


# --- the built-in worker switch ------------------------------------------------------------------


def test_cli_builtin_worker_round_trip(cli: Cli, client: Client, raw: redis.Redis) -> None:
    status = json.loads(ok(cli("builtin-worker", "status", "--json")))
    assert status == {"enabled": True, "queued": 0, "workers": []}

    assert "disabled" in ok(cli("builtin-worker", "disable"))
    assert json.loads(ok(cli("builtin-worker", "status", "--json")))["enabled"] is False
    assert client.builtin.enabled() is False
    assert raw.exists("workerpool:builtin:disabled") == 1
    assert "disabled" in ok(cli("builtin-worker", "status"))

    ok(cli("builtin-worker", "disable"))  # idempotent
    assert json.loads(ok(cli("builtin-worker", "status", "--json")))["enabled"] is False

    assert "enabled" in ok(cli("builtin-worker", "enable"))
    assert json.loads(ok(cli("builtin-worker", "status", "--json"))) == status
    assert client.builtin.enabled() is True
    assert raw.exists("workerpool:builtin:disabled") == 0
    ok(cli("builtin-worker", "enable"))
    assert client.builtin.enabled() is True


def test_builtin_worker_switch_through_the_api(client: Client) -> None:
    client.builtin.disable()
    assert client.snapshot().builtin_enabled is False
    client.builtin.enable()
    assert client.snapshot().builtin_enabled is True
