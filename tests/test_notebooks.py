"""The notebooks execute end to end: 01 on the bundled sample, 02 on a real (tiny) sweep in MLflow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from srgan.config import PROJECT_ROOT

pytestmark = pytest.mark.slow
NOTEBOOKS = PROJECT_ROOT / "notebooks"


def execute(name: str, env: dict[str, str]) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    old = dict(os.environ)
    os.environ.update(env)
    try:
        NotebookClient(
            notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
        ).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return notebook


def images(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for cell in notebook.cells for out in cell.get("outputs", []))


def test_data_notebook_draws_bands_splits_and_degradations(tmp_path):
    assert images(execute("01_data.ipynb", {"SRGAN_CACHE_DIR": str(tmp_path)})) == 2


def test_compare_notebook_reads_a_sweep_from_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    sweep = [sys.executable, "-m", "srgan.train", "sweep=smoke", "discriminator.n_stages=2"]
    sweep += ["discriminator.head_features=16", "generator.reduction=4", f"tracking.uri={uri}"]
    sweep += [f"tracking.artifact_location={tmp_path}/art", f"hydra.sweep.dir={tmp_path}/sweep"]
    out = subprocess.run(sweep, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    notebook = execute("02_compare_runs.ipynb", {"MLFLOW_TRACKING_URI": uri, "SRGAN_EXPERIMENT": "sweep-smoke"})
    assert images(notebook) == 2
    table = notebook.cells[3]["outputs"][0]["data"]["text/plain"]
    assert "val/psnr" in table and "loss.weights.adversarial=0.01" in table
    printed = "".join(o.get("text", "") for o in notebook.cells[1]["outputs"] if o.get("name") == "stdout")
    assert "2 runs" in printed
    assert Path(NOTEBOOKS / "02_compare_runs.ipynb").read_text().count('"outputs": []') >= 4  # committed clean
