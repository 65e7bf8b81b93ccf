"""Benchmark: how much later a step that references an already-cached package starts its script.

Target (packages issue): "Cache hit: a step that references an already-cached 50 MB package
starts its script within 5% of the time of a step with no package."

Starts its own embedded Redis and one real pool worker (concurrency 1) in a temp dir, pushes a
~50 MB zip of mixed content (incompressible binaries, compressible text, a few thousand small
files) to the built-in feed, runs one step that references it (the download, so it is cached),
one discarded round of warm-up, then N rounds of three steps in rotating order:

    (a) no package   (b) the cached package, extract=true   (c) the same, extract=false

The script's first action prints ``date +%s.%N``. Per step: enqueue -> script start (that first
stdout line minus the time just before ``client.run``), worker setup (first line minus the
record's ``started_at``, the claim), and for (b)/(c) the claim -> "extracted to"/"placed at"
system line. Between steps the bench waits until the worker has removed the previous working
directory (timed: "cleanup") and syncs dirty pages, so no step pays for the one before.
Then, in this process and on the same file system, it times the pieces a faster design would
use: a cache hit lookup, ``extract()``, hard-linking an extracted tree, and removing it.

    .venv/bin/python tasks/bench_cache_hit.py [--runs 15] [--dir /dev/shm] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType

from bench_packages import build_tree  # this folder is on sys.path when run as a script

from workerpool import Client, ScriptStep
from workerpool.bench.harness import BenchFailed, wait_until
from workerpool.cluster import read_snapshot
from workerpool.embedded import EmbeddedRedis
from workerpool.packages import FeedRegistry, PackageCache, PackageRef, extract, push
from workerpool.settings import Settings
from workerpool.stack import die_with_parent
from workerpool.steps import LogEntry, StepResult

POOL = "Cache Hit Bench"
PACKAGE_ID, VERSION = "Bench.CacheHit", "1.0.0"
ZIP_NAME = f"{PACKAGE_ID}.{VERSION}.zip"
TARGET = 1.05
STEP_TIMEOUT = 120.0


# -- the package -------------------------------------------------------------------------------

def build_zip(tree: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(p for p in tree.rglob("*") if p.is_file()):
            zf.write(path, str(path.relative_to(tree)))
    return out


# -- Redis and the worker ----------------------------------------------------------------------



@dataclass
class Stack:
    """The embedded Redis and the pool worker; ``close()`` stops both (idempotent)."""

    scratch: Path
    server: EmbeddedRedis | None = None
    worker: subprocess.Popen[bytes] | None = None
    client: Client | None = None
    worker_log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.worker_log = self.scratch / "worker.log"

    @property
    def steps_dir(self) -> Path:
        return self.scratch / "tmp" / "workerpool"  # the worker's TMPDIR/workerpool/<instance>/

    def start(self) -> Client:
        self.server = EmbeddedRedis(self.scratch / "redis", extra_args=("--appendonly", "no"))
        self.server.start()
        settings = Settings.from_env({"WORKERPOOL_HOME": str(self.scratch / "home"),
                                      "WORKERPOOL_HEARTBEAT_INTERVAL": "0.5"})
        self.client = Client(redis_url=self.server.url, settings=settings)
        self.client.pools.add(POOL)
        (self.scratch / "tmp").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERPOOL_")}
        env.update({"WORKERPOOL_REDIS_URL": self.server.url,
                    "WORKERPOOL_HOME": str(self.scratch / "home"),
                    "TMPDIR": str(self.scratch / "tmp"),
                    "WORKERPOOL_HEARTBEAT_INTERVAL": "0.5", "WORKERPOOL_KILL_GRACE": "1"})
        with open(self.worker_log, "wb") as out:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "workerpool", "worker", "start", "--pool", POOL,
                 "--concurrency", "1", "--loglevel", "INFO"],
                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent)
        client, worker = self.client, self.worker

        def healthy() -> bool:
            self.check_worker()
            return any(w.pid == worker.pid and w.state == "Healthy"
                       for w in read_snapshot(client.redis).workers)

        wait_until(healthy, 60, "the pool worker to be Healthy", interval=0.05)
        return self.client

    def check_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is not None:
            tail = self.worker_log.read_text(errors="replace")[-2000:]
            raise BenchFailed(f"the worker exited with code {self.worker.returncode}:\n{tail}")

    def close(self) -> None:
        if self.worker is not None:
            for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
                if self.worker.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        self.worker.send_signal(sig)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.worker.wait(grace)
            self.worker = None
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.server is not None:
            self.server.stop()
            self.server = None


# -- one step ----------------------------------------------------------------------------------

@dataclass
class Sample:
    to_script: float  # enqueue -> script's first action
    setup: float  # claim (started_at) -> script's first action
    queue: float  # enqueue -> claim
    to_package: float | None  # claim -> "extracted to" / "placed at" line
    cleanup: float  # finished -> working directory removed


VARIANTS = {
    "a": ("(a) no package", None, "true"),
    "b": ("(b) cached, extract=true", True, "test -f pkg/bin/lib00.so"),
    "c": ("(c) cached, extract=false", False, f"test -f {ZIP_NAME}"),
}


def first(log: tuple[LogEntry, ...], stream: str, needle: str = "") -> LogEntry | None:
    return next((e for e in log if e.stream == stream and needle in e.text), None)


def run_step(stack: Stack, client: Client, variant: str, hit: bool = True) -> Sample:
    label, extract_flag, check = VARIANTS[variant]
    packages = () if extract_flag is None else (
        PackageRef("pkg", PACKAGE_ID, VERSION, extract=extract_flag),)
    step = ScriptStep(script=f"date +%s.%N\n{check}\n", pool=POOL, name=f"bench {variant}",
                      packages=packages)
    enqueued = time.time()
    handle = client.run(step)
    result: StepResult = handle.wait(timeout=STEP_TIMEOUT)
    stack.check_worker()
    if not result.succeeded or result.started_at is None or result.finished_at is None:
        text = "\n".join(e.text for e in result.log[-10:])
        raise BenchFailed(f"{label}: step {result.id} ended {result.state} "
                          f"({result.message}):\n{text}")
    script_line = first(result.log, "stdout")
    if script_line is None:
        raise BenchFailed(f"{label}: step {result.id} printed nothing")
    started = float(script_line.text)
    to_package = None
    if extract_flag is not None:
        line = first(result.log, "system", "extracted to ./" if extract_flag else "placed at ./")
        if line is None or hit != ("(from cache)" in line.text):
            kind = "cache-hit" if hit else "download"
            raise BenchFailed(f"{label}: step {result.id} has no {kind} line in its log")
        to_package = line.time - result.started_at
    # The worker removes the working directory after it records the end; wait for that, so
    # the next step does not queue behind it, and time it.
    wait_until(lambda: not any(stack.steps_dir.glob(f"*/{result.id}-*")), 60,
               f"the worker to remove the working directory of {result.id}", interval=0.002)
    cleanup = time.time() - result.finished_at
    return Sample(started - enqueued, started - result.started_at,
                  result.started_at - enqueued, to_package, cleanup)


# -- in-process reference timings --------------------------------------------------------------

def link_tree(source: Path, target: Path) -> None:
    """What a cache of extracted trees would do per step: directories made, files hard-linked."""
    for folder, dirs, files in os.walk(source):
        rel = Path(folder).relative_to(source)
        (target / rel).mkdir(exist_ok=True)
        for name in dirs:
            (target / rel / name).mkdir()
        for name in files:
            os.link(Path(folder) / name, target / rel / name)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def reference_timings(client: Client, scratch: Path, runs: int) -> dict[str, list[float]]:
    cache = PackageCache(scratch / "home" / "package-cache", 10 * 1024**3, client.redis)
    feed = FeedRegistry(client.redis).get("builtin")
    ref = PackageRef("pkg", PACKAGE_ID, VERSION)
    work = scratch / "tmp" / "reference"
    work.mkdir()
    with cache.fetch(ref, feed) as cached:
        assert not cached.downloaded, "the reference expects a cache hit"
        archive = cached.path
    extract(archive, work / "tree")  # the extracted tree a cache of trees would keep
    out: dict[str, list[float]] = {k: [] for k in
                                   ("lookup", "extract", "copy", "link", "cp -al", "rm")}

    def lookup() -> None:
        with cache.fetch(ref, feed) as hit:
            assert not hit.downloaded

    for index in range(runs):
        os.sync()
        fresh, linked, copied = work / f"x{index}", work / f"l{index}", work / f"c{index}"
        out["lookup"].append(timed(lookup))
        out["extract"].append(timed(partial(extract, archive, fresh)))
        out["rm"].append(timed(partial(shutil.rmtree, fresh)))
        out["copy"].append(timed(partial(shutil.copyfile, archive, work / ZIP_NAME)))
        (work / ZIP_NAME).unlink()
        out["link"].append(timed(partial(link_tree, work / "tree", linked)))
        shutil.rmtree(linked)
        out["cp -al"].append(timed(partial(subprocess.run, ["cp", "-al", str(work / "tree"),
                                                             str(copied)], check=True)))
        shutil.rmtree(copied)
    shutil.rmtree(work)
    return out


# -- report ------------------------------------------------------------------------------------

def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def ms(value: float) -> str:
    return f"{value * 1000:7.1f}"


def report(samples: dict[str, list[Sample]], ref: dict[str, list[float]]) -> float:
    print(f"\n{'ms':28} {'enqueue->script':>17} {'claim->script':>17} {'enqueue->claim':>17}"
          f" {'cleanup':>8}")
    print(f"{'':28} {'median':>8} {'p90':>8} {'median':>8} {'p90':>8} {'median':>8} {'p90':>8}"
          f" {'median':>8}")
    med: dict[str, dict[str, float]] = {}
    for key, rows in samples.items():
        cols = {name: [getattr(s, name) for s in rows]
                for name in ("to_script", "setup", "queue", "cleanup")}
        med[key] = {name: statistics.median(v) for name, v in cols.items()}
        print(f"{VARIANTS[key][0]:28} {ms(med[key]['to_script'])}  {ms(p90(cols['to_script']))}"
              f"  {ms(med[key]['setup'])}  {ms(p90(cols['setup']))}"
              f"  {ms(med[key]['queue'])}  {ms(p90(cols['queue']))}  {ms(med[key]['cleanup'])}")
    base = med["a"]["to_script"]
    ratio_b, ratio_c = med["b"]["to_script"] / base, med["c"]["to_script"] / base
    print(f"\nratio (b)/(a) = {ratio_b:.2f}x   ratio (c)/(a) = {ratio_c:.2f}x   "
          f"(target <= {TARGET:.2f}x: (b) {'meets' if ratio_b <= TARGET else 'misses'} it, "
          f"(c) {'meets' if ratio_c <= TARGET else 'misses'} it)")

    lookup = statistics.median(ref["lookup"])
    for key, line, what, work in (("b", "extracted to", "extract()", ref["extract"]),
                                  ("c", "placed at", "copy", ref["copy"])):
        to_pkg = statistics.median([s.to_package or 0.0 for s in samples[key]])
        after = statistics.median([s.setup - (s.to_package or 0.0) for s in samples[key]])
        print(f"\n{VARIANTS[key][0]} split (medians, ms): enqueue->claim "
              f"{ms(med[key]['queue']).strip()}; download 0 (cache hit);\n"
              f"  claim->'{line}' line {ms(to_pkg).strip()} (in-process: cache hit lookup "
              f"{ms(lookup).strip()} + {what} {ms(statistics.median(work)).strip()});\n"
              f"  '{line}' line->script start {ms(after).strip()} "
              f"(vs (a) claim->script {ms(med['a']['setup']).strip()})")
    print(f"\nin-process on the same file system, median of {len(ref['lookup'])} (ms): "
          + ", ".join(f"{name} {statistics.median(v) * 1000:.1f}" for name, v in (
              ("cache hit lookup", ref["lookup"]), ("extract()", ref["extract"]),
              ("rmtree of the extracted tree", ref["rm"]), ("copy of the zip", ref["copy"]),
              ("hard-link the extracted tree (os.link walk)", ref["link"]),
              ("cp -al", ref["cp -al"]))))
    return ratio_b


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="steps of each kind (default 15)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where Redis, the worker's cache and working directories live "
                             "(default: the temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-cache-hit-", dir=args.dir))
    stack = Stack(scratch)
    try:
        with sigterm_as_interrupt():
            content, files = build_tree(scratch / "tree", seed=11, images=40)
            archive = build_zip(scratch / "tree", scratch / ZIP_NAME)
            shutil.rmtree(scratch / "tree")
            client = stack.start()
            push(client.redis, archive)
            print(f"package {ZIP_NAME}: {archive.stat().st_size / 1e6:.1f} MB zip, "
                  f"{content / 1e6:.1f} MB in {files} files; {args.runs} runs of each step, "
                  f"rotating order; 1 worker, concurrency 1; {os.cpu_count()} CPUs; "
                  f"{scratch.parent}", flush=True)
            download = timed(lambda: run_step(stack, client, "b", hit=False))
            print(f"warm-up: first step with the package (downloads it) {download:.2f}s",
                  flush=True)
            for key in VARIANTS:  # one discarded round: imports, page cache, bash
                run_step(stack, client, key)
            samples: dict[str, list[Sample]] = {key: [] for key in VARIANTS}
            order = list(VARIANTS)
            for index in range(args.runs):
                for key in order[index % 3:] + order[:index % 3]:
                    os.sync()
                    time.sleep(0.05)
                    samples[key].append(run_step(stack, client, key))
            print(f"measured {3 * args.runs} steps", flush=True)
            ref = reference_timings(client, scratch, args.runs)
            ratio = report(samples, ref)
            return 0 if ratio <= TARGET else 1
    except KeyboardInterrupt:
        print("interrupted; stopping the worker and Redis", file=sys.stderr)
        return 130
    except BenchFailed as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2
    finally:
        stack.close()
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
