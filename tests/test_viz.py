"""Validation grids (labelled, several patches, nodata kept out of the stretch, named by step), LPIPS
without torchvision deprecation warnings, and notebook 02 on a store without the experiment asked for."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from torch import nn
from torch.nn import functional as F

from srgan.config import PROJECT_ROOT
from srgan.engine.validation import validate
from srgan.models.blocks import upsample_image
from srgan.viz import NODATA_RGB, PANEL_LABELS, comparison_grid, composite, detail_score, grid_artifact_file

RGB = [0, 1, 2]


def tile(seed: int, texture: float, size: int = 32, nodata_cols: int = 0) -> dict[str, torch.Tensor]:
    """A 4-band HR tile (reflectance-like), its 4x box LR, and the validity mask; nodata zero-filled."""
    g = torch.Generator().manual_seed(seed)
    hr = 0.1 + 0.1 * torch.rand(4, 1, 1, generator=g) + texture * torch.rand(4, size, size, generator=g)
    valid = torch.ones(size, size, dtype=torch.bool)
    valid[:, :nodata_cols] = False
    hr = hr * valid
    return {"lr": F.avg_pool2d(hr[None], 4)[0], "hr": hr, "hr_valid": valid}


def grid_rows(*tiles: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    rows = []
    for t in tiles:
        bicubic = upsample_image(t["lr"][None], 4, "bicubic")[0]
        rows.append({"lr": t["lr"], "bicubic": bicubic, "sr": bicubic, "hr": t["hr"], "valid": t["hr_valid"]})
    return rows


def test_composite_stretch_ignores_nodata_and_paints_it():
    t = tile(0, texture=0.05, nodata_cols=12)
    # Zero-filled nodata in the stretch: the 1st percentile is 0 and the data sit in a narrow band.
    without = composite([t["hr"]], RGB)[0][:, 12:]
    (with_mask,) = composite([t["hr"]], RGB, valid=t["hr_valid"])
    data = with_mask[:, 12:].astype(int)
    assert np.percentile(data, 1) <= 3 and np.percentile(data, 99) >= 252  # the valid pixels fill the range
    assert without.min() > 100  # before: nodata took the dark end of the stretch
    assert (with_mask[:, :12] == NODATA_RGB).all()
    with pytest.raises(ValueError, match="no valid pixel"):
        composite([t["hr"]], RGB, valid=torch.zeros(32, 32, dtype=torch.bool))


def test_grid_has_labelled_columns_and_one_row_per_patch():
    rows = grid_rows(tile(0, 0.05), tile(1, 0.05, nodata_cols=8), tile(2, 0.05))
    grid = comparison_grid(rows, RGB, gap=4)
    header = grid.shape[0] - 3 * (32 + 4)
    assert grid.dtype == np.uint8 and grid.shape[1:] == (4 * 32 + 3 * 4, 3) and 10 <= header <= 30
    # Dark label text over each of the four columns, white elsewhere in the header.
    for k in range(len(PANEL_LABELS)):
        column = grid[:header, k * 36 : k * 36 + 32]
        assert (column < 100).any(), f"no label over column {k} ({PANEL_LABELS[k]})"
    with pytest.raises(ValueError, match="lacks"):
        comparison_grid([{"lr": rows[0]["lr"], "hr": rows[0]["hr"]}], RGB)


def test_grid_artifact_file_is_named_by_step_in_one_folder():
    assert grid_artifact_file(100) == "val_grids/val_grid_step000100.png"
    assert not {"+", "=", "%"} & set(grid_artifact_file(1250))


class Bicubic(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return upsample_image(lr, 4, "bicubic")


def test_validation_grid_shows_the_most_detailed_patches():
    # Flat tiles, detailed tiles, and a mostly-nodata tile whose nodata edge must not count as detail.
    tiles = [tile(i, 0.001) for i in range(4)] + [tile(10, 0.2), tile(11, 0.1), tile(12, 0.2, nodata_cols=28)]
    scores = detail_score(torch.stack([t["hr"] for t in tiles]), torch.stack([t["hr_valid"] for t in tiles]))
    assert scores.argsort(descending=True)[:2].tolist() == [4, 5]
    _, grid = validate(Accelerator(cpu=True), Bicubic(), tiles, 4, ["B1", "B2", "B3", "B4"], RGB, 3, 0, grid_rows=2)
    header = grid.shape[0] - 2 * 36
    assert 10 <= header <= 30  # two rows
    shown_hr = grid[header + 4 : header + 36, 3 * 36 : 3 * 36 + 32]
    expected = composite([tiles[4]["hr"]], RGB, valid=tiles[4]["hr_valid"])[0]
    assert (shown_hr == expected).all()  # the most detailed tile first (validation order), HR column


def test_lpips_builds_and_runs_without_torchvision_deprecation_warnings():
    lpips = pytest.importorskip("lpips")
    from srgan.losses.perceptual import LPIPSLoss

    x = torch.rand(1, 4, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = LPIPSLoss(num_bands=4, net="alex")
        value = loss(x, x.flip(-1))
    pretrained = [w for w in caught if "pretrained" in str(w.message) or "weight enum" in str(w.message)]
    assert not pretrained, [str(w.message) for w in pretrained]
    assert torch.isfinite(value) and value > 0
    # The same network as lpips builds itself (which warns: what the test above would have caught).
    with warnings.catch_warnings(record=True) as legacy_warnings:
        warnings.simplefilter("always")
        legacy = lpips.LPIPS(net="alex", verbose=False)
    assert any("pretrained" in str(w.message) for w in legacy_warnings)
    ours = loss._net.net.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in legacy.state_dict().items())


# -- notebook 02 and srgan.runs against a real (SQLite) MLflow store --------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An MLflow store with one experiment ('other') holding one run with grids under both namings."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlruns.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("other", artifact_location=str(root / "artifacts"))
    run = client.create_run(experiment).info.run_id
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    for step in (750, 1250):
        client.log_image(run, image, key="val_grid", step=step)  # the naming before val_grids/
    client.log_image(run, image, artifact_file=grid_artifact_file(500))
    return uri, client, run


def test_runs_name_the_missing_experiment_store_and_command(store, tmp_path):
    from srgan.runs import RunsError, find_experiment, latest_grid, tracking_client, training_runs

    uri, client, run = store
    with pytest.raises(RunsError, match=r"'demo' does not exist at sqlite:///.*`make demo`.*other"):
        find_experiment(client, "demo")
    with pytest.raises(RunsError, match="`make sweep SWEEP=loss_weights`"):
        find_experiment(client, "sweep-loss-weights")
    with pytest.raises(RunsError, match="'other' .* has no training run"):
        training_runs(client, find_experiment(client, "other"))
    with pytest.raises(RunsError, match="no MLflow store at"):
        tracking_client(f"sqlite:///{tmp_path}/absent.db")
    assert not (tmp_path / "absent.db").exists()
    # By step: 1250 (legacy name) is newer than 750, and than val_grids/ step 500.
    assert "+step+1250+" in latest_grid(client, run)


def test_compare_notebook_says_which_experiment_is_missing_and_how_to_make_it(store, monkeypatch):
    # The notebook's first code cell as committed, run in this process (a kernel costs ~10 s):
    # before, it failed with "'NoneType' object has no attribute 'experiment_id'".
    import nbformat

    from srgan.runs import RunsError

    notebook = nbformat.read(PROJECT_ROOT / "notebooks" / "02_compare_runs.ipynb", as_version=4)
    setup = next(c for c in notebook.cells if c.cell_type == "code")
    uri, _, _ = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SRGAN_EXPERIMENT", "demo")
    with pytest.raises(RunsError, match=r"'demo' does not exist at sqlite:///.*Make it with `make demo`"):
        exec(compile(setup.source, "02_compare_runs.ipynb[1]", "exec"), {})
