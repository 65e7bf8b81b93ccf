"""Staged package copies on real workers: a cache hit takes a spare tree by one rename, each
step's tree is its own, and the spares go with the worker."""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import pytest
from archives import make_zip
from conftest import pid_alive, wait_for

from workerpool import ScriptStep
from workerpool.core.packageref import PackageRef
from workerpool.worker.packages.builtin import push

POOL = "Database Worker Pool"
DB = PackageRef("db", "Acme.Database", "1.2.0")
STAGED = "from a staged copy"
# Waits (at most 20 s) until the worker has staged a spare tree again, then prints its inode.

@pytest.fixture
def acme(client, tmp_path) -> Path:
    package = make_zip(tmp_path / "Acme.Database.1.2.0.zip", {
        "VERSION": "1.2.0\n", "app.config": "Server=#{DbServer}\n", "bin/run.sh": "echo run\n"})
    push(client.redis, package)
    return package


@pytest.fixture
def worker(client, start_worker):
    client.pools.add(POOL)

    def start(spares: int = 1, concurrency: int = 1):
        return start_worker(POOL, concurrency=concurrency,
                            extra_env={"WORKERPOOL_PACKAGE_SPARES": str(spares)})

    return start


def run(client, script: str, ref: PackageRef = DB, **extra):
    result = client.run(ScriptStep(script=script, pool=POOL, packages=(ref,), **extra)).wait(30)
    assert result.state == "Success", [e.text for e in result.log]
    return result


def placed(result) -> str:
    [line] = [e.text for e in result.log if e.text.startswith("package Acme.Database")]
    return line


def stdout(result) -> list[str]:
    return [e.text for e in result.log if e.stream == "stdout"]


def ready_spares(root: Path, kind: str = "tree") -> list[Path]:
    return [p for p in root.glob(f".staged/*.{kind}/*") if not p.name.startswith(".")]


def test_a_cache_hit_takes_a_staged_tree_and_scripts_change_only_their_own(
        client, worker, acme) -> None:
    worker()
    first = run(client, "pwd")
    assert "extracted to ./db/" in placed(first) and STAGED not in placed(first)
    workdir = Path(stdout(first)[0])
    root = workdir.parent
    wait_for(lambda: ready_spares(root), 20, "a spare tree staged")
    # The second step gets the spare: a private copy (one link to each file, an inode no other
    # tree has); it writes into it, and the worker stages the next spare meanwhile (in a folder
    # the script cannot enter: the test looks at it).
    second = run(client, "pwd\nstat -c '%i %h' db/VERSION\nls ../.staged 2>&1\n"
                 "echo tampered > db/VERSION\ntouch db/extra\nrm db/app.config\n"
                 "cat '#{Package[db].ExtractedPath}/VERSION'", variables={"DbServer": "sql-01"},
                 substitute=("db/*.config",))
    assert "extracted to ./db/" in placed(second) and STAGED in placed(second)
    own_dir, own, staged, after = stdout(second)
    _, links = own.split()
    assert "Permission denied" in staged
    assert links == "1" and after == "tampered"
    [spare] = wait_for(lambda: ready_spares(root), 20, "the next spare staged")
    assert (spare / "VERSION").read_text() == "1.2.0\n"  # what the script changed was its own
    assert sorted(p.name for p in spare.iterdir()) == ["VERSION", "app.config", "bin"]
    wait_for(lambda: not Path(own_dir).exists(), 10, "the staged tree removed with the workdir")
    # The next step's tree is untouched by what the second script did.
    third = run(client, "cat db/VERSION db/app.config\nls db")
    assert STAGED in placed(third)
    assert stdout(third)[:2] == ["1.2.0", "Server=#{DbServer}"]
    assert sorted(stdout(third)[2:]) == ["VERSION", "app.config", "bin"]


def test_concurrent_steps_each_get_their_own_staged_tree(client, worker, acme,
                                                         tmp_path) -> None:
    worker(spares=2, concurrency=2)
    root = Path(stdout(run(client, "pwd"))[0]).parent
    wait_for(lambda: len(ready_spares(root)) == 2, 20, "two spare trees staged")
    meet = tmp_path / "meet"
    meet.mkdir(mode=0o777)
    meet.chmod(0o777)  # both steps' users mark their start in it
    # Both scripts run at once: each marks its tree, then waits for the other to start.
    script = (f"touch db/mine-$WORKERPOOL_STEP_ID {meet}/$WORKERPOOL_STEP_ID\n"
              f"for _ in $(seq 400); do [ $(ls {meet} | wc -l) -ge 2 ] && break; sleep 0.05; done\n"
              "stat -c %i db/VERSION\nls db | grep -c mine-\nls db | grep mine-")
    handles = [client.run(ScriptStep(script=script, pool=POOL, packages=(DB,)))
               for _ in range(2)]
    results = [h.wait(30) for h in handles]
    assert [r.state for r in results] == ["Success", "Success"]
    assert all(STAGED in placed(r) for r in results)
    inodes = {stdout(r)[0] for r in results}
    assert len(inodes) == 2
    for result in results:
        assert stdout(result)[1:] == ["1", f"mine-{result.id}"]


def test_extract_false_takes_a_staged_copy_of_the_file(client, worker, acme) -> None:
    worker()
    ref = PackageRef("db", "Acme.Database", "1.2.0", extract=False)
    root = Path(stdout(run(client, "pwd", ref))[0]).parent
    wait_for(lambda: ready_spares(root, "file"), 20, "a spare file staged")
    result = run(client, "sha256sum Acme.Database.1.2.0.zip\nstat -c %h Acme.Database.1.2.0.zip",
                 ref)
    assert placed(result).endswith(f"placed at ./Acme.Database.1.2.0.zip {STAGED}")
    digest, links = stdout(result)
    assert digest.split()[0] == hashlib.sha256(acme.read_bytes()).hexdigest() and links == "1"


def test_with_spares_disabled_every_step_extracts(client, worker, acme) -> None:
    worker(spares=0)
    results = [run(client, "pwd\ncat db/VERSION") for _ in range(3)]
    assert all("extracted to ./db/" in placed(r) and STAGED not in placed(r) for r in results)
    assert all(stdout(r)[1] == "1.2.0" for r in results)
    assert not (Path(stdout(results[0])[0]).parent / ".staged").exists()


def stager_pids(worker_pid: int) -> list[int]:
    """The worker's staging helper process (``packages.stager``), found in /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"workerpool.worker.packages.stager" in a for a in argv) and \
                argv[-2:-1] == [str(worker_pid).encode()]:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_staged_copies_and_the_helper_go_when_the_worker_stops_or_dies(client, worker, acme,
                                                                        sig) -> None:
    pool_worker = worker()
    root = Path(stdout(run(client, "pwd"))[0]).parent
    wait_for(lambda: ready_spares(root), 20, "a spare tree staged")
    [helper] = stager_pids(pool_worker.pid)
    pool_worker.proc.send_signal(sig)
    pool_worker.proc.wait(30)
    wait_for(lambda: not pid_alive(helper), 10, "the staging helper gone")
    wait_for(lambda: not (root / ".staged").exists(), 10, "the staged copies removed")
