"""Benchmark: how much later a step that references an already-cached package starts its script.

Target (packages issue): "Cache hit: a step that references an already-cached 50 MB package
starts its script within 5% of the time of a step with no package."

On each file system measured (by default /dev/shm, a tmpfs, and the temp dir's, when they
differ), starts an embedded Redis and one real pool worker (concurrency 1), pushes a ~50 MB zip
of mixed content (incompressible binaries, compressible text, a few thousand small files) to the
built-in feed, runs one step that references it (the download), one discarded round of warm-up,
then N rounds of these steps in rotating order:

    (a) no package
    (b) the cached package, extract=true, with a staged spare ready: the steady state of
        sequential steps (the bench waits until the worker has staged the spare again)
    (c) the same with extract=false
    (d) extract=true, back to back: the second of two steps enqueued together, which finds no
        spare ready (the first took it; the next is not staged yet) and extracts inline, as
        every cache hit did before spares
    (e) the same with extract=false

The script's first action prints ``date +%s.%N``. Per step: enqueue -> script start (that first
stdout line minus the time just before ``client.run``), claim -> script start (minus the
record's ``started_at``), and claim -> the "extracted to"/"placed at" line. (d)/(e) queue behind
the step enqueued with them, so only their claim -> script counts. Before every step the bench
waits until the worker has removed the previous working directory and has a spare of each kind
staged (no copy in progress, which would warm the CPUs up for a step or compete with it), and
syncs dirty pages, so every step starts from the same idle machine. Then, in this process on
the same file system, it times the pieces: a cache hit lookup (what a step without a spare
pays), the rename that places a spare, ``extract()``, and removing a tree.

    .venv/bin/python -m workerpool.bench.cache_hit [--runs 15] [--dir DIR ...] [--keep]
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

from workerpool import Client, ScriptStep
from workerpool.bench.extract import build_tree
from workerpool.bench.harness import BenchFailed, wait_until
from workerpool.core.children import die_with_parent
from workerpool.core.packageref import PackageRef
from workerpool.core.pools import slugify
from workerpool.core.settings import Settings
from workerpool.core.snapshot import read_snapshot
from workerpool.core.steps import LogEntry, StepResult
from workerpool.server.embedded import EmbeddedRedis
from workerpool.worker.packages.builtin import push
from workerpool.worker.packages.cache import PackageCache
from workerpool.worker.packages.formats import extract
from workerpool.worker.packages.registry import FeedRegistry

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
    kinds: set[bool] = field(default_factory=set)  # extract values used: spares to wait for

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

    def workdir_removed(self, step_id: str) -> bool:
        return not any(self.steps_dir.glob(f"*/{step_id}-*"))

    def spare_ready(self, extracted: bool) -> bool:
        """Whether the worker holds a staged spare of the package (``<root>/.staged``)."""
        kind = "tree" if extracted else "file"
        return any(not p.name.startswith(".")
                   for p in self.steps_dir.glob(f"*/.staged/*.{kind}/*"))


# -- one step ----------------------------------------------------------------------------------

@dataclass
class Sample:
    to_script: float | None  # enqueue -> script's first action; None when queued behind another
    setup: float  # claim (started_at) -> script's first action
    queue: float | None  # enqueue -> claim
    to_package: float | None  # claim -> "extracted to" / "placed at" line
    cleanup: float  # finished -> working directory removed
    staged: bool  # the package was a staged spare


@dataclass(frozen=True)
class Variant:
    label: str
    extract: bool | None  # None: no package
    spare: bool  # must take a staged spare (for a pair: the first step takes it)
    pair: bool = False  # the second of two steps enqueued together (no spare ready)


VARIANTS = {
    "a": Variant("(a) no package", None, False),
    "b": Variant("(b) hit, spare ready", True, True),
    "c": Variant("(c) hit, file, spare ready", False, True),
    "d": Variant("(d) hit, back to back", True, True, pair=True),
    "e": Variant("(e) hit, file, back to back", False, True, pair=True),
}
DOWNLOAD = Variant("(first use: download)", True, False)
FIRST_FILE = Variant("(first use, extract=false)", False, False)
STAGED = "from a staged copy"


def first(log: tuple[LogEntry, ...], stream: str, needle: str = "") -> LogEntry | None:
    return next((e for e in log if e.stream == stream and needle in e.text), None)


def bench_step(variant: Variant) -> ScriptStep:
    if variant.extract is None:
        return ScriptStep(script="date +%s.%N\ntrue\n", pool=POOL, name="bench")
    check = "test -f pkg/bin/lib00.so" if variant.extract else f"test -f {ZIP_NAME}"
    return ScriptStep(script=f"date +%s.%N\n{check}\n", pool=POOL, name="bench",
                      packages=(PackageRef("pkg", PACKAGE_ID, VERSION,
                                           extract=variant.extract),))


def checked(result: StepResult, variant: Variant, hit: bool) -> tuple[float, float | None, bool]:
    """(script start, claim -> package line, staged) of a finished step, or BenchFailed."""
    if not result.succeeded or result.started_at is None or result.finished_at is None:
        text = "\n".join(e.text for e in result.log[-10:])
        raise BenchFailed(f"{variant.label}: step {result.id} ended {result.state} "
                          f"({result.message}):\n{text}")
    script_line = first(result.log, "stdout")
    if script_line is None:
        raise BenchFailed(f"{variant.label}: step {result.id} printed nothing")
    if variant.extract is None:
        return float(script_line.text), None, False
    line = first(result.log, "system", "extracted to ./" if variant.extract else "placed at ./")
    if line is None or hit != ("(from cache)" in line.text):
        kind = "cache-hit" if hit else "download"
        raise BenchFailed(f"{variant.label}: step {result.id} has no {kind} line in its log")
    return float(script_line.text), line.time - result.started_at, STAGED in line.text


def run_step(stack: Stack, client: Client, variant: Variant, hit: bool = True) -> Sample:
    # Every step starts from the same idle machine: no staging in progress (a staging copy
    # would warm the CPUs up for a step, or compete with it), dirty pages written.
    for kind in sorted(stack.kinds):
        wait_until(partial(stack.spare_ready, kind), 120,
                   "the worker to stage a spare copy", interval=0.002)
    os.sync()
    time.sleep(0.05)
    enqueued = time.time()
    handles = [client.run(bench_step(variant)) for _ in range(2 if variant.pair else 1)]
    results = [h.wait(timeout=STEP_TIMEOUT) for h in handles]
    stack.check_worker()
    for result in results[:-1]:
        checked(result, variant, hit)
    result = results[-1]
    started, to_package, staged = checked(result, variant, hit)
    if variant.extract is not None:
        stack.kinds.add(variant.extract)
    if variant.spare and not variant.pair and not staged:
        raise BenchFailed(f"{variant.label}: step {result.id} found no staged spare")
    assert result.started_at is not None and result.finished_at is not None
    # The worker removes the working directory after it records the end; wait for that, so
    # the next step does not queue behind it, and time it.
    for each in results:
        wait_until(partial(stack.workdir_removed, each.id), 60,
                   f"the worker to remove the working directory of {each.id}", interval=0.002)
    cleanup = time.time() - result.finished_at
    alone = not variant.pair
    return Sample(started - enqueued if alone else None, started - result.started_at,
                  result.started_at - enqueued if alone else None, to_package, cleanup, staged)


# -- in-process reference timings --------------------------------------------------------------

def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def reference_timings(client: Client, scratch: Path, runs: int) -> dict[str, list[float]]:
    cache = PackageCache(scratch / "home" / "package-cache", 10 * 1024**3, client.redis,
                         slugify(POOL))
    feed = FeedRegistry(client.redis).get("builtin")
    ref = PackageRef("pkg", PACKAGE_ID, VERSION)
    work = scratch / "tmp" / "reference"
    work.mkdir()
    with cache.fetch(ref, feed) as cached:
        assert not cached.downloaded, "the reference expects a cache hit"
        archive = cached.path
    out: dict[str, list[float]] = {k: [] for k in ("lookup", "rename", "extract", "rm", "copy")}

    def lookup() -> None:
        with cache.fetch(ref, feed) as hit:
            assert not hit.downloaded

    for index in range(runs):
        os.sync()
        fresh, moved = work / f"x{index}", work / f"m{index}"
        out["lookup"].append(timed(lookup))
        out["extract"].append(timed(partial(extract, archive, fresh)))
        out["rename"].append(timed(partial(os.rename, fresh, moved)))
        out["rm"].append(timed(partial(shutil.rmtree, moved)))
        out["copy"].append(timed(partial(shutil.copyfile, archive, work / ZIP_NAME)))
        (work / ZIP_NAME).unlink()
    shutil.rmtree(work)
    return out


# -- report ------------------------------------------------------------------------------------

def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def ms(value: float | None) -> str:
    return "      -" if value is None else f"{value * 1000:7.2f}"


def med(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass
class Outcome:
    where: str
    no_package: float  # (a) enqueue -> script, median
    spare: float  # (b) enqueue -> script, median
    spare_file: float  # (c)
    fallback: float  # (d) claim -> script, median
    no_package_setup: float  # (a) claim -> script, median

    @property
    def ratio(self) -> float:
        return self.spare / self.no_package


def report(where: str, samples: dict[str, list[Sample]], ref: dict[str, list[float]]) -> Outcome:
    print(f"\n{where}\n{'ms':28} {'enqueue->script':>17} {'claim->script':>17} "
          f"{'enqueue->claim':>8} {'claim->pkg':>10} {'cleanup':>8} {'staged':>7}")
    print(f"{'':28} {'median':>8} {'p90':>8} {'median':>8} {'p90':>8} {'median':>8} "
          f"{'median':>10} {'median':>8}")
    m: dict[str, dict[str, float | None]] = {}
    for key, rows in samples.items():
        cols = {name: [getattr(s, name) for s in rows]
                for name in ("to_script", "setup", "queue", "to_package", "cleanup")}
        m[key] = {name: med(v) for name, v in cols.items()}
        to_script = [v for v in cols["to_script"] if v is not None]
        print(f"{VARIANTS[key].label:28} {ms(m[key]['to_script'])}  "
              f"{ms(p90(to_script) if to_script else None)}  {ms(m[key]['setup'])}  "
              f"{ms(p90(cols['setup']))}  {ms(m[key]['queue'])}  {ms(m[key]['to_package']):>9}"
              f"  {ms(m[key]['cleanup'])}  {sum(s.staged for s in rows):3}/{len(rows)}")

    def get(key: str, name: str) -> float:
        value = m[key][name]
        assert value is not None
        return value

    outcome = Outcome(where.split(": ")[0], get("a", "to_script"), get("b", "to_script"),
                      get("c", "to_script"), get("d", "setup"), get("a", "setup"))
    ratio_c = outcome.spare_file / outcome.no_package
    print(f"\nenqueue->script: (b)/(a) = {outcome.ratio:.3f}x, (c)/(a) = {ratio_c:.3f}x "
          f"(target <= {TARGET:.2f}x: (b) {'meets' if outcome.ratio <= TARGET else 'misses'}"
          f" it, (c) {'meets' if ratio_c <= TARGET else 'misses'} it)")
    print(f"claim->script: (b) - (a) = {(get('b', 'setup') - get('a', 'setup')) * 1000:+.2f} ms;"
          f" back to back, no spare ready: (d)/(a) = {get('d', 'setup') / get('a', 'setup'):.1f}x,"
          f" (e)/(a) = {get('e', 'setup') / get('a', 'setup'):.1f}x")
    print(f"in-process, median of {len(ref['lookup'])} (ms): " + ", ".join(
        f"{name} {statistics.median(v) * 1000:.2f}" for name, v in (
            ("cache hit lookup", ref["lookup"]), ("rename of the tree (a spare's placement)",
                                                  ref["rename"]),
            ("extract()", ref["extract"]), ("rmtree", ref["rm"]),
            ("copy of the zip", ref["copy"]))))
    return outcome


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def file_system(path: Path) -> str:
    """``type (mount point)`` of the file system holding *path*."""
    real, best = os.path.realpath(path), ("", "?")
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _, mount, kind = line.split()[:3]
            mount = mount.replace("\\040", " ")
            inside = real == mount or real.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best[0]):
                best = (mount, kind)
    return f"{best[1]} ({best[0]})"


def default_dirs() -> list[Path]:
    """/dev/shm (tmpfs) and the temp dir, when they are different file systems."""
    dirs = [Path(tempfile.gettempdir())]
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and file_system(shm) != file_system(dirs[0]):
        dirs.insert(0, shm)
    return dirs


def machine() -> str:
    """The bench report's description of this machine, on one line."""
    from workerpool.bench.report import machine as described

    found = described("?")
    return (f"{found['cores']} CPUs ({found['CPU']}), {found['memory']}, {found['OS']}, "
            f"Python {found['Python']}")


def measure(where: Path, archive: Path, runs: int, keep: bool) -> Outcome:
    scratch = Path(tempfile.mkdtemp(prefix="bench-cache-hit-", dir=where))
    stack = Stack(scratch)
    try:
        client = stack.start()
        push(client.redis, archive)
        label = f"{file_system(scratch)}: {scratch}"
        download = timed(lambda: run_step(stack, client, DOWNLOAD, hit=False))
        print(f"\n{label}\nwarm-up: first step with the package (download) {download:.2f}s",
              flush=True)
        run_step(stack, client, FIRST_FILE)  # so a spare of each kind gets staged
        for key in VARIANTS:  # one discarded round: imports, page cache, bash
            run_step(stack, client, VARIANTS[key])
        samples: dict[str, list[Sample]] = {key: [] for key in VARIANTS}
        order = list(VARIANTS)
        for index in range(runs):
            for key in order[index % len(order):] + order[:index % len(order)]:
                samples[key].append(run_step(stack, client, VARIANTS[key]))
        print(f"measured {len(VARIANTS) * runs} steps", flush=True)
        return report(label, samples, reference_timings(client, scratch, runs))
    finally:
        stack.close()
        if keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="steps of each kind (default 15)")
    parser.add_argument("--dir", type=Path, action="append", default=None,
                        help="where Redis, the worker's cache and working directories live; "
                             "repeat to measure several file systems (default: /dev/shm and "
                             "the temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directories")
    args = parser.parse_args()
    build = Path(tempfile.mkdtemp(prefix="bench-cache-hit-package-"))
    try:
        with sigterm_as_interrupt():
            content, files = build_tree(build / "tree", seed=11, images=40)
            archive = build_zip(build / "tree", build / ZIP_NAME)
            shutil.rmtree(build / "tree")
            print(f"package {ZIP_NAME}: {archive.stat().st_size / 1e6:.1f} MB zip, "
                  f"{content / 1e6:.1f} MB in {files} files; {args.runs} runs of each step, "
                  f"rotating order; 1 worker, concurrency 1, 1 spare per version; {machine()}",
                  flush=True)
            outcomes = [measure(where, archive, args.runs, args.keep)
                        for where in (args.dir or default_dirs())]
    except KeyboardInterrupt:
        print("interrupted; stopping the worker and Redis", file=sys.stderr)
        return 130
    except BenchFailed as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(build, ignore_errors=True)
    print(f"\n{'summary (medians, ms)':24} {'(a) none':>9} {'(b) spare':>10} {'ratio':>7} "
          f"{'(d) no spare, claim->script':>28}")
    for o in outcomes:
        print(f"{o.where:24} {o.no_package * 1000:9.2f} {o.spare * 1000:10.2f} "
              f"{o.ratio:6.3f}x {o.fallback * 1000:10.1f} (vs (a) {o.no_package_setup * 1000:.2f})")
    return 0 if all(o.ratio <= TARGET for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
