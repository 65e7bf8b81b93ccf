"""``workerpool pool ...``, ``workerpool builtin-worker ...`` and the credentials of each role."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from workerpool.cli import cli
from workerpool.cli.output import client, echo, emit_json, table
from workerpool.client import Client
from workerpool.core import credentials, keys
from workerpool.core.errors import BadInput
from workerpool.core.overview import read_overview
from workerpool.core.pools import Pool, ordered

F = TypeVar("F", bound=Callable[..., object])


@cli.group()
def pool() -> None:
    """Add, list, show, edit and remove worker pools (name or slug accepted)."""


def _show(p: Pool) -> None:
    table(["NAME", "SLUG", "DEFAULT", "QUEUE", "DESCRIPTION"],
          [[p.name, p.slug, "yes" if p.is_default else "", p.queue, p.description]])
    if p.paused:
        echo(f"paused{paused_note(p)}")
    if p.max_running:
        echo(f"max running: {p.max_running} at once across its workers")
    if p.requires:
        echo(f"requires: {', '.join(p.requires)}")
    if p.health_check:
        echo("health check:")
        for line in p.health_check.splitlines():
            echo(f"  {line}".rstrip())
    if p.cleanup_script:
        echo("cleanup script (exclusive workers, after each step):")
        for line in p.cleanup_script.splitlines():
            echo(f"  {line}".rstrip())


def _health_options(command: F) -> F:
    """``--requires``, ``--health-check``, ``--health-check-file`` and ``--cleanup-script``,
    shared by add and edit."""
    options = [
        click.option("--requires", default=None, metavar="TOOLS",
                     help="Tools every worker must find on its PATH, comma-separated "
                          "(kubectl,az); '' clears."),
        click.option("--health-check", default=None, metavar="SCRIPT",
                     help="A bash script every worker runs at start and every "
                          "WORKERPOOL_HEALTH_INTERVAL seconds: exit 0 is healthy, otherwise its "
                          "first line of output is the reason; '' clears."),
        click.option("--health-check-file", default=None,
                     type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Read the health check script from this file."),
        click.option("--cleanup-script", default=None, metavar="SCRIPT",
                     help="A bash script each exclusive worker (worker start --exclusive) runs "
                          "after every step, before it takes the next; a failure makes the "
                          "worker Unhealthy; '' clears."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _health_check(script: str | None, path: Path | None) -> str | None:
    if path is None:
        return script
    if script is not None:
        raise BadInput("give --health-check or --health-check-file, not both")
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise BadInput(f"{path} is not UTF-8 text; the health check is a bash script") from None
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None


@pool.command("add")
@click.argument("name")
@click.option("--description", default="", help="What this pool's machines are for.")
@click.option("--default", "is_default", is_flag=True, help="Make it the default pool.")
@_health_options
@click.option("--json", "as_json", is_flag=True)
def pool_add(name: str, description: str, is_default: bool, requires: str | None,
             health_check: str | None, health_check_file: Path | None,
             cleanup_script: str | None, as_json: bool) -> None:
    """Create a pool."""
    created = client().pools.add(name, description, is_default, [requires or ""],
                                 _health_check(health_check, health_check_file) or "",
                                 cleanup_script or "")
    emit_json(created.to_json()) if as_json else _show(created)


@pool.command("list")
@click.option("--json", "as_json", is_flag=True)
def pool_list(as_json: bool) -> None:
    """List pools with their workers and queue depth (workers counted from each pool's live
    index, so the cost grows with the pools, not the workers)."""
    c = client()
    overview = c.guard(lambda: read_overview(c.redis))
    pools = ordered(overview.pools.values())
    if as_json:
        emit_json([{**p.to_json(), "workers": overview.section(p.slug).workers.registered,
                    "queued": overview.section(p.slug).queued.records} for p in pools])
        return
    rows = []
    for p in pools:
        section = overview.section(p.slug)
        rows.append([p.name, p.slug, "yes" if p.is_default else "",
                     f"{section.workers.healthy}/{section.workers.registered}",
                     section.queued.records, p.description])
    table(["NAME", "SLUG", "DEFAULT", "HEALTHY", "QUEUED", "DESCRIPTION"], rows)


@pool.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def pool_show(name: str, as_json: bool) -> None:
    """Show one pool and its workers."""
    c = client()
    p = c.pools.get(name)
    members = c.workers.list(p.slug)
    if as_json:
        emit_json({**p.to_json(), "workers": [w.to_json() for w in members]})
        return
    _show(p)
    echo("")
    table(["WORKER", "STATE", "RUNNING", "CONCURRENCY", "REASON"],
          [[w.name, w.state, w.heartbeat.running if w.heartbeat else 0, w.concurrency,
            w.heartbeat.reason if w.heartbeat else ""] for w in members])


@pool.command("edit")
@click.argument("name")
@click.option("--name", "new_name", default=None, help="Rename (only while it has no workers).")
@click.option("--description", default=None)
@click.option("--default", "make_default", is_flag=True, help="Make it the default pool.")
@_health_options
@click.option("--max-running", default=None, type=click.IntRange(0), metavar="N",
              help="Steps running at once across all the pool's workers, whatever their "
                   "concurrency; 0: no cap.")
@click.option("--json", "as_json", is_flag=True)
def pool_edit(name: str, new_name: str | None, description: str | None, make_default: bool,
              requires: str | None, health_check: str | None, health_check_file: Path | None,
              cleanup_script: str | None, max_running: int | None, as_json: bool) -> None:
    """Change a pool's name, description, health requirements, cleanup script, or make it the
    default.

    Running workers apply new requirements at their next health check, and a new cleanup
    script after their next step."""
    edited = client().pools.edit(name, new_name, description, make_default,
                                 None if requires is None else [requires],
                                 _health_check(health_check, health_check_file),
                                 max_running, cleanup_script)
    emit_json(edited.to_json()) if as_json else _show(edited)


def paused_note(p: Pool) -> str:
    """`` since <time>: <reason>`` of a paused pool."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.paused_since))
    return f" since {since}" + (f": {p.paused_reason}" if p.paused_reason else "")


@pool.command("pause")
@click.argument("name")
@click.option("--reason", default="", help="Why, shown with the pool (one line).")
@click.option("--json", "as_json", is_flag=True)
def pool_pause(name: str, reason: str, as_json: bool) -> None:
    """Pause a pool: steps are still accepted and stay Queued, no worker of it starts one,
    running steps go on, and waiting steps do not run out their lease timeout."""
    paused = client().pools.pause(name, reason)
    emit_json(paused.to_json()) if as_json else echo(f"paused pool {paused.name!r}"
                                                     f"{paused_note(paused)}")


@pool.command("resume")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def pool_resume(name: str, as_json: bool) -> None:
    """Resume a paused pool: its workers take its waiting steps again, oldest first."""
    resumed = client().pools.resume(name)
    emit_json(resumed.to_json()) if as_json else echo(f"resumed pool {resumed.name!r}")


@pool.command("remove")
@click.argument("name")
def pool_remove(name: str) -> None:
    """Remove a pool (not the default; not while it has workers or queued steps)."""
    removed = client().pools.remove(name)
    echo(f"removed pool {removed.name!r}")


@cli.group("builtin-worker")
def builtin_worker() -> None:
    """Enable, disable or inspect the built-in worker."""


@builtin_worker.command("enable")
def builtin_enable() -> None:
    """Let steps run on the built-in worker again."""
    client().builtin.enable()
    echo("built-in worker enabled")


@builtin_worker.command("disable")
def builtin_disable() -> None:
    """Stop routing steps to the built-in worker; it refuses any that still reach it."""
    client().builtin.disable()
    echo("built-in worker disabled: scripts run only on pool workers now")


@builtin_worker.command("status")
@click.option("--json", "as_json", is_flag=True)
def builtin_status(as_json: bool) -> None:
    """Whether the built-in worker is enabled and which built-in workers are online."""
    snap = client().snapshot(detail=True)
    members = snap.workers_in("builtin")
    data = {"enabled": snap.builtin_enabled, "queued": snap.counts("builtin").records,
            "workers": [w.to_json() for w in members]}
    if as_json:
        emit_json(data)
        return
    echo(f"built-in worker: {'enabled' if snap.builtin_enabled else 'disabled'}; "
         f"{len(members)} registered ({', '.join(f'{w.name} {w.state}' for w in members)})"
         f"; {data['queued']} queued")


def rotate_key_option(command: F) -> F:
    return click.option("--rotate-key", is_flag=True,
                        help="Make the next generation of the pool's sealing key: new values "
                             "are sealed to it; give workers both keys printed until the older "
                             "steps have ended.")(command)


def _credentials_options(command: F) -> F:
    command = click.option("--json", "as_json", is_flag=True)(command)
    command = click.option("--prefix", default="WORKERPOOL_", show_default=True,
                           help="Name the lines PREFIX + REDIS_URL and PREFIX + POOL_KEY : one "
                                "compose .env holds several pools' lines).")(command)
    command = click.option("--acl-file", type=click.Path(dir_okay=False, path_type=Path),
                           default=None,
                           help="Append the user to this ACL file (redis.conf's aclfile) "
                                "instead of setting it in the running Redis.")(command)
    return click.option("--revoke", is_flag=True,
                        help="Drop the user's earlier passwords: whoever still logs in with "
                             "one is refused.")(command)


def issue_credentials(pool: str, who: str, revoke: bool, acl_file: Path | None,
                      rotate_key: bool, as_json: bool, prefix: str = "WORKERPOOL_") -> None:
    """Make (or give a new password to) the Redis user of *pool*, make sure the pool has its
    sealing key (the next one, with *rotate_key*), and print both as environment lines."""
    c = client()
    if acl_file is None:
        made = c.guard(lambda: credentials.issue(c.redis, c.url, pool, revoke))
    else:
        made = credentials.offline(c.url, pool)
        try:
            with acl_file.open("a") as fh:
                fh.write(credentials.acl_line(pool, made.password,
                                             credentials.database(c.url)) + "\n")
        except OSError as exc:
            raise BadInput(f"cannot write {acl_file}: {exc.strerror or exc}") from None
    key = None if pool == credentials.RUNNER else _pool_key(c, pool, rotate_key)
    if as_json:
        emit_json({"user": made.user, "url": made.url, "pool_key": key})
        return
    where = f"appended to {acl_file} (load it with ACL LOAD)" if acl_file else "set in Redis"
    echo(f"# {who} logs in as Redis user {made.user} ({where}) and opens its steps' "
         "sensitive values with its pool's key; put these lines in its environment "
         "(worker.env, compose's .env), and nothing else of the admin's:")
    echo(f"{prefix}REDIS_URL={made.url}")
    if key:
        echo(f"{prefix}POOL_KEY={key}")
    else:
        echo("# WORKERPOOL_POOL_KEY: run this where the admin's master key "
             "(WORKERPOOL_SECRET_KEY) is set, e.g. beside `workerpool server`")


def _pool_key(c: Client, pool: str, rotate: bool) -> str | None:
    """The pool's private key(s) as WORKERPOOL_POOL_KEY: the newest, and after a rotation the
    one before it too; None without the admin's master key."""
    keyring = c.store.keyring
    if not keyring.has_master:
        if rotate:
            raise BadInput("--rotate-key needs the admin's master key (WORKERPOOL_SECRET_KEY)")
        return None
    newest = c.guard(lambda: keyring.publish(c.redis, pool, rotate))
    held = [newest] + ([k] if rotate and (k := keyring.key_for(pool, newest.generation - 1))
                       else [])
    return ",".join(k.to_text() for k in held)


@pool.command("credentials")
@click.argument("name")
@_credentials_options
@rotate_key_option
def pool_credentials(name: str, revoke: bool, acl_file: Path | None, prefix: str,
                     rotate_key: bool, as_json: bool) -> None:
    """The Redis credentials of a pool's workers: they reach only this pool's queue and steps,
    and cannot change pools (docs/security.md). Each call gives a new password."""
    found = client().pools.get(name)
    issue_credentials(found.slug, f"A worker of {found.name}", revoke, acl_file, rotate_key,
                      as_json, prefix)


@builtin_worker.command("credentials")
@_credentials_options
@rotate_key_option
def builtin_credentials(revoke: bool, acl_file: Path | None, prefix: str,
                        rotate_key: bool, as_json: bool) -> None:
    """The Redis credentials of the built-in worker (it reaches only its own queue and steps)."""
    issue_credentials(keys.BUILTIN_POOL, "The built-in worker", revoke, acl_file, rotate_key,
                      as_json, prefix)


@cli.command("runner-credentials")
@_credentials_options
def runner_credentials(revoke: bool, acl_file: Path | None, prefix: str,
                       as_json: bool) -> None:
    """Redis credentials for clients that run steps and deployments but may not change pools,
    feeds, targets or the built-in worker's switch."""
    issue_credentials(credentials.RUNNER, "A client that runs steps", revoke, acl_file, False,
                      as_json, prefix)
