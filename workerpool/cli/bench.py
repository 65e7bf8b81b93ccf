"""``workerpool bench``: measure this machine, print a table, write docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

import click

from workerpool.cli import cli
from workerpool.core.settings import Settings


@cli.command()
@click.option("--quick", is_flag=True, help="Small counts (about a minute) instead of the "
              "issue's full shape (several minutes).")
@click.option("--output-dir", default="docs", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Where benchmarks.md and benchmarks.png are written.")
@click.option("--plan", "plan_name", default=None, hidden=True,
              type=click.Choice(["full", "quick", "tiny"]), help="Counts to use (tests: tiny).")
def bench(quick: bool, output_dir: Path, plan_name: str | None) -> None:
    """Benchmark workerpool against plain Celery on the same Redis.

    Uses a throwaway embedded Redis, or WORKERPOOL_REDIS_URL if set (it must name an empty
    database: the bench flushes it). Starts its own workers and stops them at the end.
    """
    from workerpool.bench import report, runner  # loads Celery only for this command

    plan = runner.PLANS[plan_name or ("quick" if quick else "full")]
    click.echo(f"workerpool bench ({plan.name}): {plan.runs} run(s) of each figure", err=True)
    try:
        result = runner.run(plan, Settings.from_env(),
                            lambda line: click.echo(f"  {line}", err=True))
    except KeyboardInterrupt:
        click.echo("workerpool bench: interrupted; stopped the Redis and workers it started",
                   err=True)
        raise
    click.echo(report.text_table(result))
    doc, image = report.write(result, output_dir)
    missed = [row for row in result.goals() if not row.met]
    click.echo(f"\n{len(result.goals()) - len(missed)} of {len(result.goals())} goals met; "
               f"wrote {doc} and {image} ({result.seconds:.0f} s)")
