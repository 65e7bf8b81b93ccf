"""The ``workerpool`` command line: one click group; errors become exit codes in one place."""

from __future__ import annotations

import sys
from typing import Any

import click
import redis

from workerpool.errors import WorkerPoolError

EXIT_USAGE = 2
EXIT_REDIS = 3


class Group(click.Group):
    """Turns workerpool errors into one line on stderr and the documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WorkerPoolError as exc:
            click.echo(f"workerpool: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except redis.RedisError as exc:
            click.echo(f"workerpool: error: Redis failed: {exc}; check that it is running and "
                       "WORKERPOOL_REDIS_URL", err=True)
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
    from workerpool.cli import (  # noqa: F401  (register commands)
        bench,
        deployments,
        flower,
        packages,
        pools,
        stack,
        steps,
        templates,
        workers,
    )

    try:
        code = cli.main(prog_name="workerpool", standalone_mode=False)
    except click.UsageError as exc:
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        click.echo(f"workerpool: error: {exc.format_message()}{where}", err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        click.echo(f"workerpool: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.Abort):
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
