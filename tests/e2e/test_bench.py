"""``workerpool bench``: its smallest plan end to end (real Redis, real workers, a real
`workerpool server` running a deployment), and its refusal to flush a database that holds
anything. Asserts the output's shape, never timings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

from workerpool.bench.report import FIGURES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def bench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workerpool", "bench", *args], env=env,
                          capture_output=True, text=True, timeout=110, stdin=subprocess.DEVNULL)


def test_tiny_plan_prints_every_figure_and_writes_the_docs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERPOOL_")}
    env["WORKERPOOL_HOME"] = str(tmp_path / "home")  # no WORKERPOOL_REDIS_URL: embedded Redis
    env["TMPDIR"] = str(tmp_path / "tmp")  # the bench's Redis, workers and scripts run in here
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "docs"

    done = bench(env, "--plan", "tiny", "--output-dir", str(out))

    assert done.returncode == 0, done.stderr[-3000:]
    for number, title in FIGURES.items():
        assert f"{number} {title}" in done.stdout
    for metric in ("enqueue -> start p50", "steps per second", "backlog parked",
                   "Celery with workerpool's transport and event batching vs plain Celery",
                   "steps per second vs that tuned Celery",
                   "plain Celery: queue B p99, queue A draining, same CPUs",
                   "workerpool's ratio vs plain Celery's",
                   "deployment: submit -> end vs ideal", "efficiency (ideal / wall)",
                   "first run start -> last run end", "individual steps",
                   "plain Celery tasks vs ideal", "Redis memory per queued step",
                   "`workerpool status` vs `--version`", "`workerpool status --pool NAME` vs",
                   "Redis busy with heartbeats and reaping", "spawn `bash -c true` p50",
                   "vs --script-user same", "one sealed variable vs none",
                   "open it (worker) p50", "every figure's workers log in as",
                   "as deployed (scripts as users of their own) vs plain Celery",
                   "enqueue -> start p50, with a cap and priorities vs without",
                   "requests Redis receives per step (MONITOR; a script call is one)",
                   "RQ: enqueue -> result p50", "Dramatiq: enqueue -> result p99",
                   "tuned Celery: throughput", "workerpool p50 vs best peer",
                   "workerpool throughput vs best peer",
                   "workerpool throughput vs tuned Celery", "best peer by p50",
                   "enqueue -> start p50, through Sentinel vs direct redis://",
                   "enqueue -> result p50, through Sentinel vs direct"):
        assert metric in done.stdout
    assert "its pool's own Redis user" in done.stdout  # figure 7: Redis 7, real ACL users
    sentinel_goal = next(line for line in done.stdout.splitlines()
                         if "start p50, through Sentinel vs direct" in line)
    assert "ratio <= 1.1x" in sentinel_goal  # figure 10's goal, judged like the others
    assert "goals met" in done.stdout
    doc = (out / "benchmarks.md").read_text()
    assert "## Machine" in doc and "| cores |" in doc and "| date |" in doc
    assert "| Celery |" in doc and "| Redis server |" in doc
    assert "![" in doc and "benchmarks.png" in doc
    assert "`worker-per-target` step" in doc and "`workerpool server`" in doc  # figure 4
    assert "`redis-server --sentinel`" in doc and "has no replica" in doc  # figure 10
    assert "until deployments" not in doc
    assert (out / "benchmarks.png").read_bytes().startswith(PNG_SIGNATURE)
    assert processes_mentioning(str(tmp_path)) == [], "the bench left processes running"
    assert list((tmp_path / "tmp").glob("workerpool-bench-*")) == [], "the bench left files"


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line or environment contains *text*."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            seen = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in seen:
            found.append(int(entry.name))
    return found


def test_refuses_a_database_that_holds_keys(env: dict[str, str], raw: redis.Redis,
                                            tmp_path: Path) -> None:
    raw.set("someone-elses-key", "1")

    done = bench(env, "--plan", "tiny", "--output-dir", str(tmp_path / "docs"))

    assert done.returncode == 2
    assert "needs an empty Redis database" in done.stderr
    assert raw.get("someone-elses-key") == "1"
    assert not (tmp_path / "docs").exists()
