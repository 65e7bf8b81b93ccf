"""The wheel works outside the source tree: built from pyproject.toml, installed into a fresh
virtual environment in a temporary folder, and run from there as a new user would, with a
clean environment (no WORKERPOOL_*, no source tree on any path)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import REPO, start_up
from consolehttp import Session

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a fresh venv holding only the wheel (and what it depends on)."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(root / "dist"), str(REPO)], check=True, timeout=600)
    [wheel] = (root / "dist").glob("workerpool-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    subprocess.run([str(root / "venv" / "bin" / "pip"), "install", "--quiet", str(wheel)],
                   check=True, timeout=900)
    return root / "venv" / "bin"


@pytest.fixture
def run(installed: Path, tmp_path: Path) -> Run:
    """``workerpool ARGS`` from the installed wheel, in an empty folder, with a clean
    environment whose home is a fresh folder."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": f"{installed}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home),
           "LANG": "C.UTF-8"}

    def workerpool(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(installed / "workerpool"), *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=timeout)

    workerpool.env = env  # type: ignore[attr-defined]
    return workerpool


def test_the_installed_package_is_not_the_source_tree(installed: Path) -> None:
    found = subprocess.run([str(installed / "python"), "-c",
                            "import workerpool; print(workerpool.__file__)"],
                           capture_output=True, text=True, check=True, cwd=installed)
    assert not Path(found.stdout.strip()).is_relative_to(REPO)


def test_demo_runs_from_the_wheel(run: Run) -> None:
    done = run("demo")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "The seed's database deployment to Test" in done.stdout
    assert "Success" in done.stdout


def test_the_five_templates_ship_in_the_wheel(run: Run) -> None:
    done = run("template", "list", "--json")
    assert done.returncode == 0, done.stderr
    assert sorted(t["slug"] for t in json.loads(done.stdout)) == [
        "database-deployment", "http-health-check", "kubectl-apply", "notify-webhook",
        "sql-migrations"]


@pytest.fixture
def stack(run: Run, tmp_path: Path) -> Iterator[Run]:
    """``workerpool up`` from the wheel with the example process's two pools, until Ctrl-C."""
    env = dict(run.env, WORKERPOOL_HEARTBEAT_INTERVAL="0.5")  # type: ignore[attr-defined]
    up, _ = start_up([str(Path(env["PATH"].split(":")[0]) / "workerpool"), "up", "--pools",
                      "Database Worker Pool=1,Kubernetes Worker Pool=1"], env, tmp_path)
    try:
        yield run
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0


def test_the_shipped_example_process_deploys(stack: Run, tmp_path: Path) -> None:
    out = tmp_path / "examples"
    copied = stack("examples", "--copy", str(out), "--json")
    assert copied.returncode == 0, copied.stderr
    assert sorted(Path(p).name for p in json.loads(copied.stdout)) == [
        "Acme.Database.1.0.0.zip", "database-deployment.yaml"]
    pushed = stack("package", "push", str(out / "Acme.Database.1.0.0.zip"))
    assert pushed.returncode == 0, pushed.stderr
    for name in ("web-01", "web-02"):
        added = stack("target", "add", name, "--environment", "Test", "--role", "web")
        assert added.returncode == 0, added.stderr
    done = stack("deploy", str(out / "database-deployment.yaml"), "--environment", "Test",
                 "--json")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["state"] == "Success"
    assert [(s["name"], s["state"]) for s in result["steps"]] == [
        ("Migrate", "Success"), ("Warm up", "Success"), ("Notify failure", "Skipped")]
    assert sorted(r["target"] for r in result["steps"][1]["runs"]) == ["web-01", "web-02"]


def test_the_console_serves_its_templates_script_and_styles_from_the_wheel(
        run: Run, tmp_path: Path) -> None:
    env = run.env  # type: ignore[attr-defined]
    up, printed = start_up([str(Path(env["PATH"].split(":")[0]) / "workerpool"), "up",
                            "--no-builtin"], env, tmp_path)
    try:
        password = re.search(r"console login: admin / (\S+)", printed)
        url = re.search(r"console on (http://\S+)", printed)
        assert password and url, printed
        browser = Session(url.group(1).rstrip("/"))
        assert browser.get("/login").status == 200
        assert browser.login("admin", password.group(1)).status == 302
        page = browser.get("/")
        assert page.status == 200 and "Add Worker Pool" in page.body, page.body[:2000]
        for asset, marker in (("console.js", "EventSource"), ("console.css", "dialog")):
            path = re.search(rf'"(/static/{asset}\?v=[^"]+)"', page.body)
            assert path, page.body[:2000]
            served = browser.get(path.group(1))
            assert served.status == 200 and marker in served.body
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
