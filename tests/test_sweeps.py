"""`make sweep`: a Hydra multirun whose jobs are MLflow runs nested under one parent."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TINY

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
    assert "dataset.patch_size=16,18" in parent.data.tags["sweep_overrides"]
    assert len(children) == 4 and all(c.data.tags["sweep_id"] == "grid-1" for c in children)
    by_status = sorted((c.info.status, c.info.run_name) for c in children)
    assert [s for s, _ in by_status] == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    assert all("dataset.patch_size=18" in name for s, name in by_status if s == "FAILED")
    assert all("loss.weights.adversarial=" in name and "sweep=" not in name for _, name in by_status)
    assert all(c.data.tags["git_commit"] and "dataset.patch_size=" in c.data.tags["overrides"] for c in children)
    failed = [c for c in children if c.info.status == "FAILED"]
    assert all("multiple of dataset.scale" in c.data.tags["error"] for c in failed)


# The tiny model and schedule of the other tests; the sweep config picks the experiment.
TINY_JOB = [o for o in TINY if not o.startswith("experiment=")]


def test_optuna_search_maximises_validation_psnr_and_tracks_each_trial(tmp_path):
    import yaml

    uri = f"sqlite:///{tmp_path}/mlruns.db"
    cmd = [sys.executable, "-m", "srgan.train", "sweep=optuna", "hydra.sweeper.n_trials=2", *TINY_JOB]
    cmd += [f"tracking.uri={uri}", f"tracking.artifact_location={tmp_path}/art", f"hydra.sweep.dir={tmp_path}/opt"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "opt" / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"schedule.optimizer_g.lr", "loss.weights.adversarial"}
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("sweep-optuna").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and all("val/psnr" in r.data.metrics for r in children)
    assert max(r.data.metrics["val/psnr"] for r in children) == pytest.approx(best["best_value"], abs=1e-6)
