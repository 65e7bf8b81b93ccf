"""``workerpool feed ...`` and ``workerpool package ...``: package feeds and the built-in feed."""

from __future__ import annotations

from pathlib import Path

import click

from workerpool.cli import cli
from workerpool.cli.output import client, clock, echo, emit_json, table
from workerpool.worker.packages.builtin import list_packages, push
from workerpool.worker.packages.registry import FEED_TYPES, FeedRegistry


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


@cli.group()
def feed() -> None:
    """Add, list and remove package feeds (the built-in feed always exists)."""


@feed.command("add")
@click.argument("name")
@click.option("--type", "feed_type", required=True, type=click.Choice(sorted(FEED_TYPES)),
              help="directory: a folder of <id>.<version>.<ext> files; http: the same over "
                   "HTTP; nuget: a NuGet v3 service index.")
@click.option("--uri", required=True, help="Folder path, base URL, or NuGet index.json URL.")
@click.option("--json", "as_json", is_flag=True)
def feed_add(name: str, feed_type: str, uri: str, as_json: bool) -> None:
    """Add a feed that steps can download packages from."""
    c = client()
    added = c.guard(lambda: FeedRegistry(c.redis).add(name, feed_type, uri))
    emit_json(added.to_json()) if as_json else echo(
        f"added {feed_type} feed {name!r} at {added.uri}")


@feed.command("list")
@click.option("--json", "as_json", is_flag=True)
def feed_list(as_json: bool) -> None:
    """List feeds."""
    c = client()
    feeds = c.guard(lambda: FeedRegistry(c.redis).list())
    if as_json:
        emit_json([f.to_json() for f in feeds])
        return
    table(["NAME", "TYPE", "URI"], [[f.name, f.type, f.uri] for f in feeds])


@feed.command("remove")
@click.argument("name")
def feed_remove(name: str) -> None:
    """Remove a feed (steps that reference it then fail to start)."""
    c = client()
    c.guard(lambda: FeedRegistry(c.redis).remove(name))
    echo(f"removed feed {name!r}")


@cli.group()
def package() -> None:
    """Push packages to the built-in feed (stored in Redis) and list them."""


@package.command("push")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def package_push(file: Path, as_json: bool) -> None:
    """Store FILE in the built-in feed; name it <id>.<version>.<ext> (zip nupkg tar.gz tgz tar)."""
    c = client()
    pushed = c.guard(lambda: push(c.redis, file))
    if as_json:
        emit_json(pushed.to_json())
        return
    echo(f"pushed {pushed.package_id} {pushed.version} ({_size(pushed.size)}, sha256 "
         f"{pushed.sha256[:12]}) to the built-in feed")


@package.command("list")
@click.option("--json", "as_json", is_flag=True)
def package_list(as_json: bool) -> None:
    """List the packages in the built-in feed."""
    c = client()
    packages = c.guard(lambda: list_packages(c.redis))
    if as_json:
        emit_json([p.to_json() for p in packages])
        return
    table(["ID", "VERSION", "FILE", "SIZE", "SHA256", "PUSHED"],
          [[p.package_id, p.version, p.file_name, _size(p.size), p.sha256[:12],
            clock(p.pushed_at)] for p in packages])
