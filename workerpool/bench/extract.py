"""Benchmark: workerpool's safe ``extract()`` against ``unzip -q`` and ``tar xzf``.

Builds a ~50 MB zip and tar.gz of mixed files (incompressible blobs, compressible text, many
small source files, executables), then times each extractor on the same archives in the same
run, median of 5, into fresh directories (runs alternate; dirty pages are synced before each).
The goal: extract() at least 0.8x their speed.

    .venv/bin/python -m workerpool.bench.extract [--runs 5] [--dir /dev/shm] [--keep]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from workerpool.worker.packages.formats import extract

WORDS = ["deploy", "database", "schema", "migration", "customer", "order", "invoice", "worker",
         "pool", "step", "package", "feed", "cache", "extract", "variable", "release", "tenant",
         "environment", "production", "staging"]
GOAL = 0.8


def build_tree(root: Path, seed: int = 7, images: int = 0) -> tuple[int, int]:
    """Mixed content, about 65 MB (plus *images* of 20-120 KB): what a deployment package of a
    service tends to hold. Returns (bytes, files)."""
    rng = random.Random(seed)
    total = files = 0

    def write(rel: str, data: bytes, mode: int = 0o644) -> None:
        nonlocal total, files
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
        total += len(data)
        files += 1

    for i in range(12):  # binaries, images: already compressed
        write(f"bin/lib{i:02d}.so", rng.randbytes(3 * 1024 * 1024), 0o755)
    for i in range(images):
        write(f"wwwroot/img/asset{i:02d}.png", rng.randbytes(rng.randint(20_000, 120_000)))
    for i in range(10):  # logs, SQL, data files: compress about 4:1
        lines = (" ".join(rng.choices(WORDS, k=12)) + f" {rng.random():.6f}\n"
                 for _ in range(30_000))
        write(f"data/seed-{i:02d}.sql", "".join(lines).encode())
    for i in range(3000):  # source files, configs: small
        body = "\n".join(" ".join(rng.choices(WORDS, k=rng.randint(4, 14)))
                         for _ in range(rng.randint(10, 120)))
        write(f"src/module{i // 100:02d}/file{i:04d}.py", body.encode())
    for i in range(40):
        write(f"scripts/step{i:02d}.sh", b"#!/bin/sh\necho step\n", 0o755)
    return total, files


def build_archives(tree: Path, out: Path) -> tuple[Path, Path]:
    zip_path, tgz_path = out / "Bench.Package.1.0.0.zip", out / "Bench.Package.1.0.0.tar.gz"
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in files:
            zf.write(path, str(path.relative_to(tree)))
    with tarfile.open(tgz_path, "w:gz", compresslevel=6) as tf:
        tf.add(tree, arcname=".")
    return zip_path, tgz_path


def medians(runners: list[Callable[[Path], None]], scratch: Path, runs: int) -> list[float]:
    """Median seconds of each runner; runs alternate between runners, and dirty pages of the
    previous run are flushed first, so one extractor never pays for another's writeback."""
    times: list[list[float]] = [[] for _ in runners]
    for index in range(runs):
        for slot, run in enumerate(runners):
            target = scratch / f"run{index}-{slot}"
            os.sync()
            started = time.perf_counter()
            run(target)
            times[slot].append(time.perf_counter() - started)
            shutil.rmtree(target)
    return [statistics.median(t) for t in times]


def tool(*argv: str) -> Callable[[Path], None]:
    def run(target: Path) -> None:
        target.mkdir(parents=True)
        subprocess.run([a.replace("{target}", str(target)) for a in argv], check=True)
    return run


def ours(archive: Path) -> Callable[[Path], None]:
    def run(target: Path) -> None:
        extract(archive, target, max_bytes=1 << 30, max_entries=100_000)
    return run


def ensure_unzip() -> None:
    if shutil.which("unzip"):
        return
    print("installing unzip (apt-get install -y unzip) ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "unzip"], check=True,
                   stdout=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to build and extract (default: the temp dir; /dev/shm "
                             "measures CPU cost without disk noise)")
    args = parser.parse_args()
    ensure_unzip()
    scratch = Path(tempfile.mkdtemp(prefix="bench-packages-", dir=args.dir))
    try:
        content, _ = build_tree(scratch / "tree")
        zip_path, tgz_path = build_archives(scratch / "tree", scratch)
        print(f"content {content / 1e6:.1f} MB in {sum(1 for _ in (scratch / 'tree').rglob('*'))}"
              f" paths; zip {zip_path.stat().st_size / 1e6:.1f} MB, tar.gz "
              f"{tgz_path.stat().st_size / 1e6:.1f} MB; median of {args.runs} runs in "
              f"{scratch.parent}")
        cases = [("zip", ours(zip_path), "unzip -q", tool("unzip", "-q", str(zip_path), "-d",
                                                         "{target}")),
                 ("tar.gz", ours(tgz_path), "tar xzf", tool("tar", "xzf", str(tgz_path), "-C",
                                                            "{target}"))]
        worst = float("inf")
        print(f"{'format':8} {'extract()':>10} {'reference':>22} {'speed ratio':>12}")
        for name, mine, ref_name, reference in cases:
            ref_time, my_time = medians([reference, mine], scratch, args.runs)
            ratio = ref_time / my_time
            worst = min(worst, ratio)
            print(f"{name:8} {my_time:9.3f}s {ref_name:>12} {ref_time:8.3f}s {ratio:11.2f}x")
        verdict = "meets" if worst >= GOAL else "misses"
        print(f"slowest ratio {worst:.2f}x: {verdict} the {GOAL}x goal "
              f"({os.cpu_count()} CPUs, Python {sys.version.split()[0]})")
        return 0 if worst >= GOAL else 1
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
