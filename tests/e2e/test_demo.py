"""`workerpool demo` (what `make demo` runs) keeps working, shipped examples included."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_runs_the_seed_scenario(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERPOOL_")}
    env["TMPDIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-m", "workerpool", "demo"], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "Notify Slack         builtin" in out
    assert "database deployment to Test" in out and ": Success" in out
    assert "Password=********" in out and "s3cret" not in out
    assert "built-in worker is disabled" in out
    # Only the shared parent of worker directories may stay, empty: every worker's own
    # directory and the demo's data are gone.
    assert [p.name for p in tmp_path.iterdir()] in ([], ["workerpool"])
    assert list(tmp_path.glob("workerpool/*")) == []
