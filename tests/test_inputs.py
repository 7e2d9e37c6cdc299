"""Rasters a user feeds in that used to give exit 0 and a wrong result: NaN without a nodata tag,
data types that lose information, bands selected twice, files without georeference."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import rasterio

from srgan.data.datasets import GeoTiffSource
from srgan.data.rasters import RasterError
from srgan.infer import super_resolve_file
from tests.conftest import wait_until, write_geotiff


def smooth(rows: int = 40, cols: int = 48, bands: int = 4) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:cols]
    base = 1500 + 600 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    return np.stack([base + 100 * b for b in range(bands)])


def test_nan_without_a_nodata_tag_stays_nan_in_the_output(model_dir, tmp_path):
    data = smooth().astype(np.float32)
    data[:, 10:14, 20:25] = np.nan  # a hole in every band
    data[2, 30, 5] = np.nan  # and one in one band
    src = write_geotiff(tmp_path / "float.tif", data, ["B04", "B03", "B02", "B08"])
    with rasterio.open(src) as f:
        assert f.nodata is None
    out = super_resolve_file(model_dir, src, tmp_path / "sr.tif", tile=16, overlap=4, progress=False)["output"]
    with rasterio.open(out) as f:
        sr = f.read()
        assert f.nodata is not None and math.isnan(f.nodata)
    hole = np.zeros(data.shape[1:], bool)
    hole[10:14, 20:25] = True
    hole[30, 5] = True
    blocks = np.repeat(np.repeat(hole, 4, 0), 4, 1)
    assert np.isnan(sr[:, blocks]).all()
    assert np.isfinite(sr[:, ~blocks]).all()
    # The untrained generator is bicubic: valid output stays in the input's range, nothing invented.
    assert np.nanmin(sr) > 0.5 * np.nanmin(data)


@pytest.mark.parametrize("dtype", ["complex64", "int8"])
def test_infer_and_training_refuse_the_same_data_types(model_dir, tmp_path, dtype):
    data = smooth().astype(np.float32)
    values = (data / 100).astype(dtype) if dtype == "int8" else (data + 1j * data).astype(dtype)
    src = write_geotiff(tmp_path / f"{dtype}.tif", values, ["B04", "B03", "B02", "B08"])
    with pytest.raises(RasterError, match=rf"{src}.*unsupported data type {dtype}"):
        super_resolve_file(model_dir, src, tmp_path / "sr.tif", tile=16, overlap=4, progress=False)
    assert not (tmp_path / "sr.tif").exists()
    with pytest.raises(RasterError, match=rf"{src}.*unsupported data type {dtype}"):
        GeoTiffSource(src, None)


def test_a_band_selected_twice_is_refused(model_dir, tmp_path):
    src = write_geotiff(tmp_path / "in.tif", smooth().astype(np.uint16), ["B04", "B03", "B02", "B08"])
    with pytest.raises(RasterError, match=rf"{src}: band 1 is selected twice"):
        super_resolve_file(model_dir, src, tmp_path / "sr.tif", bands=[1, 1, 1, 1], progress=False)
    with pytest.raises(RasterError, match="selected twice"):
        GeoTiffSource(src, ["B04", "B03", 1, "B08"])


def test_a_png_renamed_tif_is_named_in_a_warning(model_dir, tmp_path, caplog):
    png = tmp_path / "picture.tif"
    data = (smooth() / 20).astype(np.uint8)
    with rasterio.open(png, "w", driver="PNG", width=48, height=40, count=4, dtype="uint8") as dst:
        dst.write(data)
    with caplog.at_level(logging.WARNING, logger="srgan.data.rasters"):
        super_resolve_file(model_dir, png, tmp_path / "sr.tif", bands=[1, 2, 3, 4], tile=16, overlap=4, progress=False)
    assert any(str(png) in r.message and "no CRS" in r.message and "PNG" in r.message for r in caplog.records)


@pytest.mark.parametrize(
    "override, message",
    [
        ("dataset.patch_size=-32", "dataset.patch_size must be a positive integer"),
        ("schedule.ramp.shape=sigmoidd", "schedule.ramp.shape must be one of"),
        ("dataset.val_tile=0", "dataset.val_tile must be a positive integer"),
        ("dataset.split.fractions.test=1.0", "dataset.split.fractions must be positive and sum to 1"),
    ],
)
def test_impossible_values_fail_before_any_mlflow_run(tmp_path, tiny_overrides, override, message):
    from mlflow.tracking import MlflowClient

    from srgan.train import train
    from tests.conftest import compose_config

    # Hydra wraps a constructor's ValueError in InstantiationException; the message is the same.
    with pytest.raises(Exception, match=message):
        train(compose_config("train", tiny_overrides + [override]), tmp_path / "run")
    db = tmp_path / "mlruns.db"
    if db.exists():
        client = MlflowClient(f"sqlite:///{db}")
        assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_stale_work_folders_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    import json
    import os
    import socket
    import subprocess
    import sys
    import time

    from srgan.infer import _process_start, remove_stale_work_dirs

    output = tmp_path / "scene_sr.tif"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folders = {}
    for name, owner in {
        "dead": {"pid": dead.pid, "host": socket.gethostname(), "started": "1"},
        "alive": {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid())},
        "reused_pid": {"pid": os.getpid(), "host": socket.gethostname(), "started": "0"},
        "other_host": {"pid": 1, "host": "elsewhere", "started": "1"},
    }.items():
        folders[name] = tmp_path / f".{output.name}.{name}"
        folders[name].mkdir()
        (folders[name] / "owner.json").write_text(json.dumps(owner))
        (folders[name] / "final.tif").write_bytes(b"x" * 1000)
    old = tmp_path / f".{output.name}.unowned"
    old.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    unrelated = tmp_path / ".other.tif.abc"
    unrelated.mkdir()
    removed = {p.name for p in remove_stale_work_dirs(output)}
    assert removed == {f".{output.name}.{n}" for n in ("dead", "reused_pid", "unowned")}
    assert folders["alive"].exists() and folders["other_host"].exists() and unrelated.exists()


@pytest.mark.slow
def test_a_sigkilled_srgan_infer_leaves_nothing_after_the_next_run(model_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    data = np.tile(smooth(), (1, 8, 8)).astype(np.uint16)  # 320 x 384 LR
    src = write_geotiff(tmp_path / "scene.tif", data, ["B04", "B03", "B02", "B08"])
    out = tmp_path / "scene_sr.tif"
    cmd = [
        sys.executable,
        "-m",
        "srgan.infer",
        f"model={model_dir}",
        f"input={src}",
        f"output={out}",
        "tile=16",
        "overlap=4",
        "batch_size=1",
        "progress=false",
    ]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: bool(list(tmp_path.glob(".scene_sr.tif.*/final.tif"))), proc, "it started writing its output")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".scene_sr.tif.*")) and not out.exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "left behind by an interrupted srgan-infer" in done.stdout + done.stderr
    assert out.exists() and not list(tmp_path.glob(".scene_sr.tif.*"))


@pytest.mark.slow
def test_a_paired_folder_run_with_zscore_trains_exports_and_infers(tmp_path, tiny_overrides):
    """Real pairs (no degradation), statistics fitted on the train regions, carried into the model."""
    from srgan.engine.checkpoint import load_model
    from srgan.train import train
    from tests.conftest import compose_config

    rng = np.random.default_rng(0)
    root = tmp_path / "pairs"
    for i in range(24):
        folder = root / f"ROI_{i:04d}"
        folder.mkdir(parents=True)
        hr = (1000 + 400 * rng.random((4, 64, 64))).astype(np.uint16)
        write_geotiff(folder / "hr.tif", hr, None, pixel=2.5)
        write_geotiff(folder / "lr.tif", hr.reshape(4, 16, 4, 16, 4).mean((2, 4)).astype(np.uint16), None)
    overrides = [
        "dataset=paired_folder",
        f"dataset.root={root}",
        "dataset/normalization=zscore",
        "dataset.patch_size=32",
        "dataset.val_tile=32",
        "dataset.cache_dir=null",
        "trainer.max_steps=2",
    ]
    result = train(compose_config("train", tiny_overrides + overrides), tmp_path / "run")
    model = load_model(result["run_dir"])
    assert type(model.normalization).__name__ == "ZScore"
    assert 1000 < model.normalization.center[0] < 1400
    lr = write_geotiff(tmp_path / "lr.tif", (1000 + 400 * rng.random((4, 20, 20))).astype(np.uint16), None)
    out = super_resolve_file(model, lr, tmp_path / "sr.tif", bands=[1, 2, 3, 4], tile=16, overlap=4, progress=False)
    with rasterio.open(out["output"]) as f:
        assert f.shape == (80, 80) and 900 < f.read().mean() < 1500
