"""``status`` and ``pool list`` count each pool's workers by state from its live index;
``status --pool NAME`` shows one pool with its workers one by one (real workers, real CLI)."""

from __future__ import annotations

import json
import signal

from conftest import wait_for


def row_of(text: str, prefix: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(prefix))


def test_status_counts_workers_by_state_and_one_pool_lists_them(client, start_worker, cli):
    client.pools.add("Database Pool")
    client.pools.add("Empty Pool")
    first, second = start_worker("Database Pool"), start_worker("Database Pool")

    table = cli("status").stdout
    assert "2 Healthy" in row_of(table, "Database Pool"), table
    assert row_of(table, "Empty Pool").split()[2] == "-", table  # WORKERS: none
    assert first.name not in table  # names only with --pool
    listed = cli("pool", "list").stdout
    assert "2/2" in row_of(listed, "Database Pool").split(), listed  # HEALTHY/registered

    one = cli("status", "--pool", "database pool")
    assert one.returncode == 0, one.stderr
    assert "Empty Pool" not in one.stdout and "built-in worker" not in one.stdout
    states = {ln.split()[0]: ln.split()[1] for ln in one.stdout.splitlines()
              if ln.startswith((first.name, second.name))}
    assert states == {first.name: "Healthy", second.name: "Healthy"}, one.stdout
    shown = json.loads(cli("status", "--pool", "Database Pool", "--json").stdout)
    assert shown["slug"] == "database-pool"
    assert sorted(w["name"] for w in shown["workers"]) == sorted([first.name, second.name])

    second.proc.send_signal(signal.SIGKILL)  # no deregistration: Offline once its beat lapses
    second.proc.wait(30)
    wait_for(lambda: "1 Healthy, 1 Offline" in row_of(cli("status").stdout, "Database Pool"),
             30, "the killed worker to count Offline")
    assert "1/2" in row_of(cli("pool", "list").stdout, "Database Pool").split()


def test_status_of_an_unknown_pool_is_refused_naming_the_pools(client, cli):
    client.pools.add("Database Pool")
    done = cli("status", "--pool", "No Such Pool")
    assert done.returncode == 2
    assert "no pool named 'No Such Pool'" in done.stderr and "Database Pool" in done.stderr
    assert "Traceback" not in done.stderr
    builtin = cli("status", "--pool", "builtin")
    assert builtin.returncode == 0 and "built-in worker: enabled" in builtin.stdout
