"""Deployment progress: plain lines when not a terminal, a live line in a terminal."""

from __future__ import annotations

from workerpool.cli.deployments import Progress
from workerpool.spec.deployment import DeploymentResult, Run, StepOutcome


def result(state: str, runs: list[tuple[str, str]], step_state: str = "Running"
           ) -> DeploymentResult:
    return DeploymentResult("d1", state, "Test", "P", (StepOutcome("Warm up", step_state, tuple(
        Run(f"r{n}", target, "pool", "w-01", run_state, None)
        for n, (target, run_state) in enumerate(runs))),))


def test_plain_lines_name_each_target_once(capsys):
    progress = Progress(tty=False)
    progress(result("Running", [("web-01", "Running"), ("web-02", "Queued")]))
    progress(result("Running", [("web-01", "Running"), ("web-02", "Queued")]))
    progress(result("Success", [("web-01", "Success"), ("web-02", "Success")], "Success"))
    lines = capsys.readouterr().err.splitlines()
    assert "workerpool:   Warm up [web-01] Running on w-01" in lines
    assert "workerpool:   Warm up [web-02] Success on w-01" in lines
    assert lines.count("workerpool: step 'Warm up': Running") == 1
    assert "workerpool: step 'Warm up': Success" in lines
    assert lines[0] == "workerpool: deployment d1 Running"
    assert "\r" not in "".join(lines) and "\x1b" not in "".join(lines)


def test_terminal_shows_a_live_count_and_only_unsuccessful_runs(capsys):
    progress = Progress(tty=True)
    progress(result("Running", [("web-01", "Running"), ("web-02", "Queued")]))
    progress(result("Running", [("web-01", "Success"), ("web-02", "Failed")]))
    progress(result("Failed", [("web-01", "Success"), ("web-02", "Failed")], "Failed"))
    err = capsys.readouterr().err
    assert "Warm up: 0 done, 1 running, 1 queued" in err
    assert "Warm up [web-02] Failed on w-01" in err
    assert "[web-01] Success" not in err
    assert err.endswith("\r\x1b[K")  # the live line is cleared at the end
