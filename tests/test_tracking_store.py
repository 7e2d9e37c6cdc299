"""Two runs that start together on a fresh SQLite store (two `srgan-train` in two terminals)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

# Each process imports what srgan-train imports, says "ready", and waits for "go" on stdin; the test
# sends "go" to both once both are ready, so they open the store and start a run together, as two
# srgan-train started in two terminals do. Without the store lock one of them failed in MLflow's
# table set-up ("table latest_metrics already exists" / "duplicate column name: step") every time here.
STARTER = """
import sys
from srgan.tracking import MlflowTracker
db, artifacts = sys.argv[1], sys.argv[2]
print("ready", flush=True)
sys.stdin.readline()
tracker = MlflowTracker(f"sqlite:///{db}", "race", artifact_location=artifacts)
tracker.start({"p": 1})
tracker.finish()
"""


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(3))
def test_two_runs_starting_together_on_a_fresh_store_both_succeed(tmp_path, attempt):
    db = tmp_path / "mlruns.db"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, str(db), str(tmp_path / "art")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:  # a barrier: both have imported mlflow and wait on their stdin
        assert p.stdout.readline().strip() == "ready", p.stderr.read()[-2000:]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-2000:] for e in errors)
    client = MlflowClient(f"sqlite:///{db}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "race"]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert experiment.artifact_location == (tmp_path / "art").resolve().as_uri()


def test_a_resumed_run_does_not_log_a_step_twice(tmp_path):
    """Killed after its checkpoint at step 8 had delivered steps up to 10; resumed from step 8."""
    from srgan.tracking import MlflowTracker

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    first = MlflowTracker(uri, "resume", artifact_location=str(tmp_path / "art"))
    run_id = first.start({})
    for step in range(1, 11):
        first.log_metrics({"train/l1": 1.0 / step}, step)
    first.flush(30)  # then SIGKILL: the run stays RUNNING
    resumed = MlflowTracker(uri, "resume")
    assert resumed.attach(run_id, reopen=True)
    for step in range(9, 13):
        resumed.log_metrics({"train/l1": 1.0 / step, "val/psnr": 30.0}, step)
    resumed.finish()
    client = MlflowClient(uri)
    steps = sorted(m.step for m in client.get_metric_history(run_id, "train/l1"))
    assert steps == list(range(1, 13))
    assert [m.step for m in client.get_metric_history(run_id, "val/psnr")] == [9, 10, 11, 12]
