"""Routing as a pure function of a step and a hand-built cluster snapshot. No Redis."""

from __future__ import annotations

import time

import pytest

from workerpool.core.errors import BadInput, NoWorker, UnknownPool
from workerpool.core.pools import Pool
from workerpool.core.routeview import RouteView
from workerpool.core.routing import BUILTIN_ROUTE, Route, route
from workerpool.core.snapshot import Snapshot
from workerpool.core.steps import ScriptStep
from workerpool.core.workers import HEALTHY, UNHEALTHY, Heartbeat, WorkerInfo

ALL_SYNTAXES = ("bash", "sh", "python", "powershell")
NO_PWSH = ("bash", "sh", "python")

DEFAULT = Pool("Default Worker Pool", "default-worker-pool", is_default=True)
DATABASE = Pool("Database Worker Pool", "database-worker-pool", "migrations")
KUBERNETES = Pool("Kubernetes Worker Pool", "kubernetes-worker-pool")


def worker(pool: str, number: int = 1, online: bool = True, state: str = HEALTHY,
           syntaxes: tuple[str, ...] = NO_PWSH) -> WorkerInfo:
    """A registered worker; *online* False means its heartbeat expired (Offline)."""
    beat = Heartbeat(time=time.time(), state=state) if online else None
    kind = pool.split("-")[0]
    return WorkerInfo(name=f"{kind}-worker-{number:02d}", pool=pool, instance=f"{pool}-{number}",
                      pid=1000 + number, syntaxes=syntaxes, heartbeat=beat)


def snapshot(*workers: WorkerInfo, builtin_enabled: bool = True,
             pools: tuple[Pool, ...] = (DEFAULT, DATABASE, KUBERNETES)) -> Snapshot:
    assert sum(p.is_default for p in pools) == 1, "a snapshot has exactly one default pool"
    return Snapshot(pools={p.slug: p for p in pools}, builtin_enabled=builtin_enabled,
                    workers=workers, leases=())


BUILTIN = worker("builtin")


# --- rule 1: a named pool ------------------------------------------------------------------------


@pytest.mark.parametrize("ident", ["Database Worker Pool", "database worker pool",
                                   "database-worker-pool", "DATABASE-WORKER-POOL"])
def test_pool_by_name_or_slug_goes_to_its_queue(ident: str) -> None:
    chosen = route(ScriptStep("echo", pool=ident), snapshot(worker("database-worker-pool")))
    assert chosen == Route("workerpool.pool.database-worker-pool", "database-worker-pool",
                           "Database Worker Pool")
    assert not chosen.builtin


def test_named_pool_is_used_even_with_no_workers_and_builtin_disabled() -> None:
    chosen = route(ScriptStep("echo", pool="Kubernetes Worker Pool"),
                   snapshot(builtin_enabled=False))
    assert chosen.queue == "workerpool.pool.kubernetes-worker-pool"


def test_named_default_pool_without_workers_stays_on_the_default_pool() -> None:
    chosen = route(ScriptStep("echo", pool="Default Worker Pool"), snapshot(BUILTIN))
    assert chosen.queue == "workerpool.pool.default-worker-pool"


def test_workers_of_other_pools_do_not_count() -> None:
    snap = snapshot(worker("kubernetes-worker-pool"), BUILTIN)
    assert route(ScriptStep("echo", pool="database-worker-pool"), snap).pool == \
        "database-worker-pool"
    assert route(ScriptStep("echo"), snap) == BUILTIN_ROUTE


def test_a_snapshot_lists_each_pools_workers_in_its_own_order() -> None:
    db1, k8s, db2 = (worker("database-worker-pool", 1), worker("kubernetes-worker-pool"),
                     worker("database-worker-pool", 2))
    snap = snapshot(db1, k8s, db2, BUILTIN)
    assert snap.workers_in("database-worker-pool") == [db1, db2]
    assert snap.workers_in("kubernetes-worker-pool") == [k8s]
    assert snap.workers_in("default-worker-pool") == []
    snap.workers_in("database-worker-pool").clear()  # a caller's list is its own
    assert snap.workers_in("database-worker-pool") == [db1, db2]


@pytest.mark.parametrize("ident", ["Web Worker Pool", "database_worker_pool", "builtin"])
def test_unknown_pool_is_refused(ident: str) -> None:
    with pytest.raises(UnknownPool) as info:
        route(ScriptStep("echo", pool=ident), snapshot(worker("database-worker-pool"), BUILTIN))
    assert repr(ident) in str(info.value)


# --- rule 2: no pool, the default pool -----------------------------------------------------------


def test_no_pool_goes_to_the_default_pool_when_it_has_workers() -> None:
    chosen = route(ScriptStep("echo"), snapshot(worker("default-worker-pool"), BUILTIN))
    assert chosen == Route("workerpool.pool.default-worker-pool", "default-worker-pool",
                           "Default Worker Pool")


def test_no_pool_follows_whichever_pool_is_the_default() -> None:
    pools = (Pool("Default Worker Pool", "default-worker-pool"),
             Pool("Database Worker Pool", "database-worker-pool", is_default=True))
    snap = snapshot(worker("database-worker-pool"), pools=pools)
    assert route(ScriptStep("echo"), snap).queue == "workerpool.pool.database-worker-pool"


def test_empty_default_pool_sends_the_step_to_the_builtin_worker() -> None:
    chosen = route(ScriptStep("echo"), snapshot(worker("database-worker-pool")))
    assert chosen == BUILTIN_ROUTE
    assert (chosen.queue, chosen.pool, chosen.builtin) == ("workerpool.builtin", "builtin", True)


@pytest.mark.parametrize("state", [HEALTHY, UNHEALTHY])
def test_default_pool_with_only_offline_workers_sends_the_step_to_the_builtin_worker(
        state: str) -> None:
    """Only live workers count: registered but Offline ones (their heartbeat expired) are not
    "the default pool has workers" (it used to be so; routing now reads the live index)."""
    snap = snapshot(worker("default-worker-pool", 1, online=False),
                    worker("default-worker-pool", 2, online=False, state=state), BUILTIN)
    assert route(ScriptStep("echo"), snap) == BUILTIN_ROUTE


def test_default_pool_with_one_live_worker_among_offline_ones_keeps_the_step() -> None:
    snap = snapshot(worker("default-worker-pool", 1, online=False),
                    worker("default-worker-pool", 2), BUILTIN)
    assert route(ScriptStep("echo"), snap).pool == "default-worker-pool"


def test_offline_workers_without_pwsh_refuse_no_syntax() -> None:
    snap = snapshot(worker("database-worker-pool", 1, online=False))
    chosen = route(ScriptStep("Write-Output hi", syntax="powershell",
                              pool="Database Worker Pool"), snap)
    assert chosen.pool == "database-worker-pool"


def test_only_live_workers_decide_whether_a_syntax_is_refused() -> None:
    snap = snapshot(worker("database-worker-pool", 1, online=False, syntaxes=ALL_SYNTAXES),
                    worker("database-worker-pool", 2))
    with pytest.raises(NoWorker, match="pwsh"):
        route(ScriptStep("Write-Output hi", syntax="powershell", pool="Database Worker Pool"),
              snap)


def test_default_pool_with_only_unhealthy_workers_keeps_the_step() -> None:
    snap = snapshot(worker("default-worker-pool", state=UNHEALTHY), builtin_enabled=False)
    assert route(ScriptStep("echo"), snap).pool == "default-worker-pool"


def test_empty_default_pool_and_disabled_builtin_is_refused_with_a_fix() -> None:
    with pytest.raises(NoWorker) as info:
        route(ScriptStep("echo"), snapshot(worker("database-worker-pool"), builtin_enabled=False))
    message = str(info.value)
    assert "Default Worker Pool" in message
    assert "built-in worker is disabled" in message
    assert "workerpool worker start --pool 'default-worker-pool'" in message
    assert "workerpool builtin-worker enable" in message
    assert "--pool" in message


def test_refusal_names_the_current_default_pool() -> None:
    pools = (Pool("Default Worker Pool", "default-worker-pool"),
             Pool("Linux", "linux", is_default=True))
    with pytest.raises(NoWorker, match="'Linux'"):
        route(ScriptStep("echo"), snapshot(pools=pools, builtin_enabled=False))


# --- rule 3: location server ---------------------------------------------------------------------


def test_server_location_goes_to_the_builtin_worker() -> None:
    snap = snapshot(worker("default-worker-pool"), worker("database-worker-pool"), BUILTIN)
    assert route(ScriptStep("echo", location="server"), snap) == BUILTIN_ROUTE


def test_server_location_without_any_builtin_worker_registered_still_routes() -> None:
    assert route(ScriptStep("echo", location="server"), snapshot()) == BUILTIN_ROUTE


def test_server_location_while_builtin_disabled_is_refused() -> None:
    snap = snapshot(worker("default-worker-pool"), BUILTIN, builtin_enabled=False)
    with pytest.raises(NoWorker) as info:
        route(ScriptStep("echo", location="server"), snap)
    message = str(info.value)
    assert "server" in message
    assert "built-in worker is disabled" in message
    assert "workerpool builtin-worker enable" in message


def test_server_with_pool_is_bad_input_before_routing() -> None:
    with pytest.raises(BadInput):
        ScriptStep("echo", location="server", pool="Database Worker Pool").validate()


# --- syntaxes ------------------------------------------------------------------------------------


def test_powershell_on_a_pool_without_pwsh_is_refused() -> None:
    snap = snapshot(worker("database-worker-pool", 1), worker("database-worker-pool", 2))
    with pytest.raises(NoWorker) as info:
        route(ScriptStep("Write-Output hi", syntax="powershell", pool="Database Worker Pool"),
              snap)
    message = str(info.value)
    assert "pwsh" in message
    assert "'Database Worker Pool'" in message
    assert "powershell" in message


def test_powershell_goes_to_a_pool_where_one_worker_has_pwsh() -> None:
    snap = snapshot(worker("database-worker-pool", 1),
                    worker("database-worker-pool", 2, syntaxes=ALL_SYNTAXES))
    chosen = route(ScriptStep("Write-Output hi", syntax="powershell", pool="database-worker-pool"),
                   snap)
    assert chosen.queue == "workerpool.pool.database-worker-pool"


def test_powershell_on_the_builtin_worker_without_pwsh_is_refused() -> None:
    with pytest.raises(NoWorker, match="pwsh"):
        route(ScriptStep("Write-Output hi", syntax="powershell", location="server"),
              snapshot(BUILTIN))


@pytest.mark.parametrize("syntax", ["bash", "sh", "python", "powershell"])
def test_pool_with_no_registered_workers_accepts_any_syntax(syntax: str) -> None:
    chosen = route(ScriptStep("x", syntax=syntax, pool="Kubernetes Worker Pool"),
                   snapshot(worker("database-worker-pool"), BUILTIN))
    assert chosen.queue == "workerpool.pool.kubernetes-worker-pool"


@pytest.mark.parametrize("syntax", ["bash", "sh", "python"])
def test_common_syntaxes_route_to_workers_without_pwsh(syntax: str) -> None:
    chosen = route(ScriptStep("x", syntax=syntax, pool="Database Worker Pool"),
                   snapshot(worker("database-worker-pool")))
    assert chosen.pool == "database-worker-pool"


def test_route_does_not_depend_on_worker_order() -> None:
    workers = (worker("default-worker-pool", 1, online=False), BUILTIN,
               worker("database-worker-pool", 3), worker("default-worker-pool", 2))
    for ordering in (workers, tuple(reversed(workers))):
        assert route(ScriptStep("echo"), snapshot(*ordering)).pool == "default-worker-pool"


# --- what Client.run reads: only the step's pool (routeview.RouteView) ---------------------------


def view(*workers: WorkerInfo, pools: tuple[Pool, ...] = (DEFAULT, DATABASE),
         builtin_enabled: bool = True) -> RouteView:
    live: dict[str, tuple[WorkerInfo, ...]] = {}
    for w in workers:
        live[w.pool] = (*live.get(w.pool, ()), w)
    return RouteView(pools={p.slug: p for p in pools}, builtin_enabled=builtin_enabled,
                     live=live)


def test_a_route_view_of_the_step_pool_alone_routes_as_a_snapshot_does() -> None:
    step = ScriptStep("echo", pool="Database Worker Pool")
    assert route(step, view(worker("database-worker-pool"))) == \
        route(step, snapshot(worker("database-worker-pool")))
    assert route(ScriptStep("echo"), view(BUILTIN)) == BUILTIN_ROUTE
    assert route(ScriptStep("echo"), view(worker("default-worker-pool"))).pool == \
        "default-worker-pool"


def test_a_route_view_refuses_a_syntax_no_live_worker_has() -> None:
    with pytest.raises(NoWorker, match="pwsh"):
        route(ScriptStep("Write-Output hi", syntax="powershell", pool="database-worker-pool"),
              view(worker("database-worker-pool")))


def test_a_route_view_without_the_pool_raises_unknown_pool() -> None:
    with pytest.raises(UnknownPool, match="'Kubernetes Worker Pool'"):
        route(ScriptStep("echo", pool="Kubernetes Worker Pool"), view())
