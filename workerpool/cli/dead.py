"""``workerpool dead ...``: the messages that crashed a worker's consumer twice."""

from __future__ import annotations

import click

from workerpool.cli import cli
from workerpool.cli.output import client, clock, emit_json, table
from workerpool.core import deadletters, keys
from workerpool.core.pools import find
from workerpool.core.snapshot import all_pools


@cli.group()
def dead() -> None:
    """List, show and drop dead letters (docs/reliability.md)."""


def _read(pool: str) -> list[deadletters.DeadLetter]:
    c = client()
    return c.guard(lambda: deadletters.read(c.redis, pool))


def _drop(pool: str, tag: str | None) -> int:
    c = client()
    return c.guard(lambda: deadletters.drop(c.redis, pool, tag))


def _pools(pool: str | None) -> list[str]:
    """The pool keys to read: *pool* (a name, a slug or ``builtin``), or every pool."""
    c = client()
    if pool is None:
        return c.guard(lambda: all_pools(c.redis))
    if pool == keys.BUILTIN_POOL:
        return [pool]
    return [find(c.guard(c.pools.read), pool).slug]


@dead.command("list")
@click.option("--pool", default=None, help="Only this pool's (name, slug or 'builtin').")
@click.option("--json", "as_json", is_flag=True)
def dead_list(pool: str | None, as_json: bool) -> None:
    """Dead letters, newest first, with the reason each was set aside."""
    letters = [(p, letter) for p in _pools(pool)
               for letter in _read(p)]
    if as_json:
        emit_json([{"pool": p, **letter.to_json()} for p, letter in letters])
        return
    table(["POOL", "TAG", "AT", "WORKER", "REASON"],
          [[p, letter.tag, clock(letter.at), letter.worker, letter.reason]
           for p, letter in letters])


@dead.command("show")
@click.argument("tag")
@click.option("--pool", default=None, help="The letter's pool (default: any).")
def dead_show(tag: str, pool: str | None) -> None:
    """One dead letter as JSON, with the message as it was on the queue."""
    for p in _pools(pool):
        found = [letter for letter in _read(p) if letter.tag == tag]
        if found:
            emit_json({"pool": p, **found[0].to_json()})
            return
    raise deadletters.UnknownDeadLetter(f"no dead letter {tag!r}; `workerpool dead list` "
                                        "shows them")


@dead.command("drop")
@click.argument("tag", required=False)
@click.option("--all", "every", is_flag=True, help="Drop every dead letter of the pool(s).")
@click.option("--pool", default=None, help="The letters' pool (default: any).")
def dead_drop(tag: str | None, every: bool, pool: str | None) -> None:
    """Drop one dead letter (TAG) or all of them (--all)."""
    if every == (tag is not None):
        raise click.UsageError("give exactly one of TAG or --all")
    dropped = 0
    for p in _pools(pool):
        letters = _read(p)
        if every or any(letter.tag == tag for letter in letters):
            dropped += _drop(p, tag)
    if tag is not None and not dropped:
        raise deadletters.UnknownDeadLetter(f"no dead letter {tag!r}; `workerpool dead list` "
                                            "shows them")
    click.echo(f"dropped {dropped} dead letter(s)")
