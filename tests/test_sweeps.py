"""`make sweep`: a Hydra multirun whose jobs are MLflow runs nested under one parent."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def test_sweep_nests_jobs_and_survives_a_failed_one(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    cmd = [
        sys.executable,
        "-m",
        "srgan.train",
        "sweep=smoke",
        "discriminator.n_stages=2",
        "discriminator.head_features=16",
        "generator.reduction=4",
        # A second sweep axis from the command line; patch_size 18 is not a multiple of x4: that job fails.
        "dataset.patch_size=16,18",
        f"tracking.uri={uri}",
        f"tracking.artifact_location={tmp_path}/art",
        f"hydra.sweep.dir={tmp_path}/multirun/grid-1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sweep-smoke")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "sweep_grid" in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.data.tags["sweep_id"] == "grid-1" and parent.info.status == "FAILED"
    assert parent.data.tags["sweep_jobs"] == "4" and parent.data.tags["sweep_failed_jobs"] == "2"
    assert len(children) == 4 and all(c.data.tags["sweep_id"] == "grid-1" for c in children)
    by_status = sorted((c.info.status, c.info.run_name) for c in children)
    assert [s for s, _ in by_status] == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    assert all("dataset.patch_size=18" in name for s, name in by_status if s == "FAILED")
    assert {c.data.tags["git_commit"] for c in children} != {""}
