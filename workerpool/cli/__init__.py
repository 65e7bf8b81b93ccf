"""The ``workerpool`` command line: one click group; errors become exit codes in one place."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click
import redis

from workerpool.core.errors import WorkerPoolError
from workerpool.core.printable import printable

EXIT_USAGE = 2
EXIT_REDIS = 3


# Each command's module, loaded only when the command runs (or help lists them all), so a quick
# command such as `status` does not import deployments, packages, Flower or the benchmarks.
COMMAND_MODULES = {
    "pool": "pools", "builtin-worker": "pools", "runner-credentials": "pools",
    "worker": "workers", "status": "workers",
    "run": "steps", "logs": "steps", "cancel": "steps", "artifacts": "steps", "up": "stack",
    "server": "stack", "demo": "stack", "secret-key": "stack", "feed": "packages",
    "package": "packages",
    "target": "deployments", "agent": "deployments", "deploy": "deployments",
    "deployments": "deployments", "template": "templates", "examples": "templates",
    "flower": "flower", "bench": "bench", "dead": "dead", "metrics": "metrics",
    "audit": "audit", "console-user": "console",
}


class Group(click.Group):
    """Loads commands on demand; turns workerpool errors into one line on stderr and the
    documented exit code."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(f"workerpool.cli.{COMMAND_MODULES[cmd_name]}")
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMAND_MODULES))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WorkerPoolError as exc:
            click.echo(f"workerpool: error: {printable(str(exc))}", err=True)
            ctx.exit(exc.exit_code)
        except redis.exceptions.NoPermissionError as exc:
            click.echo(f"workerpool: error: this Redis login may not do this "
                       f"({printable(str(exc))}); it is a worker's or a runner's: use the "
                       "admin's URL in WORKERPOOL_REDIS_URL", err=True)
            ctx.exit(EXIT_USAGE)
        except redis.RedisError as exc:
            click.echo(f"workerpool: error: Redis failed: {printable(str(exc))}; check that it "
                       "is running and WORKERPOOL_REDIS_URL", err=True)
            ctx.exit(EXIT_REDIS)


@click.group(cls=Group, context_settings={"auto_envvar_prefix": "WORKERPOOL",
                                          "help_option_names": ["-h", "--help"]})
@click.version_option(package_name="workerpool")
def cli() -> None:
    """Worker pools for script steps on Celery and Redis.

    Exit codes: 0 success; 1 the step ran and did not succeed; 2 refused before anything ran
    (bad input, unknown pool, no worker); 3 Redis unreachable.
    """


def main() -> None:
    try:
        code = cli.main(prog_name="workerpool", standalone_mode=False)
    except click.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        click.echo(f"workerpool: error: {printable(exc.format_message())}{where}", err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        click.echo(f"workerpool: error: {printable(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.Abort):
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
