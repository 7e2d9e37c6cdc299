"""The console entry points end to end: train, evaluate, degrade, infer, as a user runs them."""

from __future__ import annotations

import json
import math
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import write_geotiff

pytestmark = pytest.mark.slow


def run(module: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300)
    if ok:
        assert out.returncode == 0, f"{module} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, str]:
    from tests.conftest import TINY

    tmp = tmp_path_factory.mktemp("cli")
    uri = f"sqlite:///{tmp}/mlruns.db"
    run(
        "srgan.train",
        *TINY,
        "trainer.max_steps=4",
        f"tracking.uri={uri}",
        f"tracking.artifact_location={tmp}/art",
        f"hydra.run.dir={tmp}/run",
    )
    return tmp, uri


def test_training_cli_tags_the_run_with_its_overrides(trained_run):
    tmp, uri = trained_run
    (run_info,) = MlflowClient(uri).search_runs(MlflowClient(uri).get_experiment_by_name("demo").experiment_id)
    assert "generator.n_channels=8" in run_info.data.tags["overrides"]
    # Named after generator and data, not MLflow's random name (which repeats under a fixed seed).
    assert re.fullmatch(r"rcab-s2_rgbn_x4-\d{4}-\d{6}", run_info.info.run_name), run_info.info.run_name
    assert (tmp / "run" / "model" / "generator.safetensors").is_file()
    assert (tmp / "run" / ".hydra" / "overrides.yaml").is_file()


def test_eval_cli_writes_metrics_and_logs_them_to_the_run(trained_run):
    tmp, uri = trained_run
    out = run("srgan.evaluate", f"model={tmp}/run", f"tracking.uri={uri}")
    assert "bicubic" in out.stdout and "SR-bicubic" in out.stdout
    report = json.loads((tmp / "run" / "eval.json").read_text())
    assert set(report["results"]) == {"sr", "bicubic", "nearest"}
    for method in report["results"].values():
        assert {"psnr", "ssim", "sam_deg", "psnr_B04", "psnr_B08"} <= set(method)
        assert math.isfinite(method["psnr"]) and 20 < method["psnr"] < 60
    # The nearest-neighbour baseline is worse than bicubic on real imagery.
    assert report["results"]["nearest"]["psnr"] < report["results"]["bicubic"]["psnr"]
    bands = ["B04", "B03", "B02", "B08"]
    sr = report["results"]["sr"]
    expected = {
        "lpips",
        "ergas",
        "synthesis_l1",
        "synthesis_ratio",
        "improvement_share",
        "omission_share",
        "hallucination_share",
    }
    expected |= {"consistency_reflectance_l1", "consistency_spectral_sam_deg", "consistency_spatial_shift_px"}
    expected |= {f"{m}_{b}" for m in ("ssim", "lpips", "ergas") for b in bands}
    expected |= {"ndvi_mae", "ndvi_rmse", "ndwi_mae", "ndwi_rmse", "kmeans6_agreement", "water_agreement", "water_iou"}
    assert expected <= set(sr)
    assert 0 < sr["kmeans6_agreement"] <= 1 and 0 <= sr["ndvi_mae"] < 0.5
    assert sr["improvement_share"] + sr["omission_share"] + sr["hallucination_share"] == pytest.approx(1.0)
    assert report["results"]["bicubic"]["synthesis_l1"] < 1e-6  # bicubic adds nothing over bicubic
    assert (tmp / "run" / "eval.png").stat().st_size > 10_000
    client = MlflowClient(uri)
    (run_info,) = client.search_runs(client.get_experiment_by_name("demo").experiment_id)
    # A few summary metrics, not one single-point chart per method and measure; the table is an artifact.
    metrics = run_info.data.metrics
    assert metrics["eval_test_psnr"] == pytest.approx(sr["psnr"]) and "eval_test_lpips_gain" in metrics
    assert not [k for k in metrics if k.startswith("test/")]
    from srgan.evaluation.report import INDEX_ERROR, SUMMARY_METRICS

    summarised = [*SUMMARY_METRICS, *(k for k in sr if INDEX_ERROR.fullmatch(k))]
    assert "ndvi_mae_water" in summarised and "ndvi_mae_land" in summarised
    expected = {f"eval_test_{k}{g}" for k in summarised for g in ("", "_gain")} | {"eval_test_pixels"}
    assert {k for k in metrics if "eval_" in k} == expected
    logged = {f.path for f in client.list_artifacts(run_info.info.run_id, "evaluation")}
    assert {"evaluation/eval.json", "evaluation/eval.png", "evaluation/eval_table.csv"} <= logged
    # Without dataset=..., srgan-eval measured the data and split the model trained on (its card).
    assert "evaluating on the data the model was trained on" in out.stdout
    assert report["path"].endswith("s2_l1c_T18SVG_20160112_10m_B02_B03_B04_B08.tif")
    assert run_info.info.status == "FINISHED"  # the training run keeps its status
    # The same model through its MLflow URI, without a local path.
    out = run(
        "srgan.evaluate",
        f"model=runs:/{run_info.info.run_id}/model",
        f"tracking.uri={uri}",
        f"output={tmp}/by_uri.json",
        "figure=false",
        "lpips=null",
        "log_to_mlflow=false",
    )
    by_uri = json.loads((tmp / "by_uri.json").read_text())
    assert by_uri["results"]["sr"]["psnr"] == pytest.approx(sr["psnr"], abs=1e-9)
    # An earlier evaluation is kept: a second one into the same place is refused before any work.
    before = (tmp / "run" / "eval.json").read_bytes()
    out = run("srgan.evaluate", f"model={tmp}/run", f"tracking.uri={uri}", "split=val", ok=False)
    assert out.returncode == 2 and f"{tmp}/run/eval.json exists" in out.stderr and "overwrite=true" in out.stderr
    assert (tmp / "run" / "eval.json").read_bytes() == before


def _second_member(tmp: Path) -> Path:
    """The trained model with perturbed weights, exported as another ensemble member."""
    import yaml

    from srgan.engine.checkpoint import export_model, load_model

    model = load_model(tmp / "run")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(0.02 * torch.randn_like(p))
    card = yaml.safe_load((tmp / "run" / "model" / "config.yaml").read_text())
    return export_model(model.generator, card, tmp / "member")


def test_uncertainty_in_eval_and_infer(trained_run):
    tmp, uri = trained_run
    member = _second_member(tmp)
    common = ["uncertainty=ensemble", f"uncertainty.members=[{member}]"]
    out = run(
        "srgan.evaluate", f"model={tmp}/run", *common, f"tracking.uri={uri}", f"output={tmp}/u.json", "lpips=null"
    )
    assert "uncertainty (ensemble, 2 samples)" in out.stdout
    report = json.loads((tmp / "u.json").read_text())["uncertainty"]
    assert report["samples"] == 2 and 0 <= report["coverage_68"] <= report["coverage_95"] <= 1
    assert math.isfinite(report["spread_error_corr"]) and report["cost_factor"] > 0
    assert [p for p, _ in report["reliability"]][-2:] == [0.95, 0.99]
    # The spread factor was fitted on the validation split and applied to the test split.
    assert "spread scale fitted on the val split" in out.stdout and report["std_scale"] > 0
    assert 0 <= report["recalibrated_coverage_68"] <= 1 and len(report["recalibrated_reliability"]) == 11
    assert (tmp / "u_reliability.png").stat().st_size > 5_000
    client = MlflowClient(uri)
    (run_info,) = client.search_runs(client.get_experiment_by_name("demo").experiment_id)
    assert run_info.data.metrics["eval_test_uncertainty_coverage_95"] == pytest.approx(report["coverage_95"])
    logged = {f.path for f in client.list_artifacts(run_info.info.run_id, "evaluation")}
    assert "evaluation/u_reliability.png" in logged

    run("srgan.degrade", "split=test", f"output={tmp}/u_lr.tif")
    run("srgan.infer", f"model={tmp}/run", f"input={tmp}/u_lr.tif", f"output={tmp}/u_sr.tif", *common)
    run("srgan.infer", f"model={tmp}/run", f"input={tmp}/u_lr.tif", f"output={tmp}/a.tif")
    run("srgan.infer", f"model={member}", f"input={tmp}/u_lr.tif", f"output={tmp}/b.tif")
    with rasterio.open(tmp / "u_sr.tif") as m, rasterio.open(tmp / "u_sr_std.tif") as sd:
        mean, std = m.read().astype(float), sd.read()
        assert sd.dtypes[0] == "float32" and sd.descriptions[0] == "B04_std" and sd.crs == m.crs
        assert sd.transform == m.transform and sd.tags()["uncertainty_samples"] == "2"
    with rasterio.open(tmp / "a.tif") as a, rasterio.open(tmp / "b.tif") as b:
        a, b = a.read().astype(float), b.read().astype(float)
    # Two members: mean (a + b) / 2 (rounded to uint16 on both sides), std |a - b| / sqrt(2).
    np.testing.assert_allclose(mean, (a + b) / 2, atol=1.01)
    np.testing.assert_allclose(std, np.abs(a - b) / np.sqrt(2), atol=1.0)
    assert std.mean() > 1
    run(
        "srgan.infer",
        f"model={tmp}/run",
        f"input={tmp}/u_lr.tif",
        f"output={tmp}/x2.tif",
        *common,
        "uncertainty.std_scale=2",
    )
    with rasterio.open(tmp / "x2_std.tif") as sd:
        np.testing.assert_allclose(sd.read(), 2 * std, rtol=1e-5, atol=1e-3)
    # The std file is not overwritten silently, and nothing is written then.
    failed = run(
        "srgan.infer",
        f"model={tmp}/run",
        f"input={tmp}/u_lr.tif",
        f"output={tmp}/c.tif",
        *common,
        f"std_output={tmp}/u_sr_std.tif",
        ok=False,
    )
    assert failed.returncode != 0 and "u_sr_std.tif exists" in failed.stderr and not (tmp / "c.tif").exists()
    # A deterministic generator has no noise to sample: said so, naming the way out.
    failed = run(
        "srgan.infer", f"model={tmp}/run", f"input={tmp}/u_lr.tif", f"output={tmp}/d.tif", "uncertainty=noise", ok=False
    )
    assert failed.returncode != 0 and "generator=stochastic" in failed.stderr


def test_degrade_then_infer_keeps_georeference_units_and_dtype(trained_run):
    tmp, _ = trained_run
    run("srgan.degrade", "split=test", f"output={tmp}/lr.tif", f"hr_output={tmp}/hr.tif")
    run("srgan.infer", f"model={tmp}/run", f"input={tmp}/lr.tif", f"output={tmp}/sr.tif", "tile=16", "overlap=4")
    with rasterio.open(tmp / "lr.tif") as lr, rasterio.open(tmp / "sr.tif") as sr, rasterio.open(tmp / "hr.tif") as hr:
        assert sr.crs == lr.crs == hr.crs
        assert sr.res == (lr.res[0] / 4, lr.res[1] / 4) == hr.res
        assert sr.bounds == lr.bounds == hr.bounds
        assert (sr.width, sr.height) == (lr.width * 4, lr.height * 4)
        assert sr.dtypes == lr.dtypes == ("uint16",) * 4
        assert sr.descriptions == ("B04", "B03", "B02", "B08")
        # Back in digital numbers: close to the real HR, not in reflectance units.
        err = np.abs(sr.read().astype(float) - hr.read().astype(float)).mean()
        assert err < 300 and sr.read().mean() > 100


def test_infer_refuses_to_overwrite_and_names_bad_input(trained_run, tmp_path):
    tmp, _ = trained_run
    target = tmp_path / "exists.tif"
    target.write_bytes(b"keep me")
    out = run("srgan.infer", f"model={tmp}/run", f"input={tmp}/lr.tif", f"output={target}", ok=False)
    assert out.returncode != 0 and "exists" in out.stderr and target.read_bytes() == b"keep me"
    three = write_geotiff(tmp_path / "rgb.tif", np.ones((3, 16, 16), np.uint16), ["B04", "B03", "B02"])
    out = run("srgan.infer", f"model={tmp}/run", f"input={three}", f"output={tmp_path}/o.tif", ok=False)
    assert out.returncode != 0 and "rgb.tif" in out.stderr and "B08" in out.stderr
    out = run("srgan.infer", f"model={tmp_path}", f"input={three}", f"output={tmp_path}/o.tif", ok=False)
    assert out.returncode != 0 and "not a model folder" in out.stderr


def _sample_images(rows: slice, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 128 px HR chips of the bundled Sentinel-2 sample (B04, B03, B02, B08) and their 4x4 means."""
    with rasterio.open(Path(__file__).parents[1] / "data/sample/s2_l1c_T18SVG_20160112_10m_B02_B03_B04_B08.tif") as src:
        data = src.read([3, 2, 1, 4])[:, rows]
    hr = np.stack([data[:, :128, 128 * i : 128 * (i + 1)] for i in range(n)])
    lr = hr.reshape(n, 4, 32, 4, 32, 4).mean(axis=(3, 5)).round().astype(np.uint16)
    return lr, hr


def test_eval_on_an_opensr_test_set_runs_the_package_beside_srgan_own_measures(trained_run, tmp_path):
    import opensr_test

    from srgan.models.blocks import upsample_image

    tmp, uri = trained_run
    lr, hr = _sample_images(slice(0, 128), n=4)
    hr = hr.astype(np.float32)
    lr = lr.astype(np.float32)
    hr[3, :, 10:14, 20:30] = np.nan  # an image with pixels without data: opensr-test cannot mask them
    root = tmp_path / "opensr"
    root.mkdir()
    (root / "naip.pkl").write_bytes(pickle.dumps({"L2A": lr, "HRharm": hr}))
    out = run(
        "srgan.evaluate",
        f"model={tmp}/run",
        "dataset=opensr_test",
        "dataset.name=naip",
        f"dataset.root={root}",
        "benchmark=opensr_test",
        f"output={tmp_path}/eval.json",
        f"tracking.uri={uri}",
        "lpips=null",
    )
    assert "opensr-test 1.3.3, mean ± std over 3 image(s); 1 image(s) with nodata left out" in out.stdout
    assert "4 images of 128x128" in out.stdout
    report = json.loads((tmp_path / "eval.json").read_text())
    bench = report["benchmark"]
    assert bench["version"] == "1.3.3" and bench["left_out_with_nodata"] == [f"{root}/naip.pkl[3]"]
    assert set(bench["summary"]) == {"sr", "bicubic", "nearest"}
    # srgan's own measures stay beside them, under their own names
    assert {"improvement_share", "synthesis_l1", "psnr"} <= set(report["results"]["sr"])
    # The baseline's numbers are the package's own on the same arrays, with its defaults.
    for i in range(3):
        lr_i, hr_i = torch.from_numpy(lr[i] / 10000), torch.from_numpy(hr[i] / 10000)
        bicubic = upsample_image(lr_i[None], 4, "bicubic")[0]
        expected = opensr_test.Metrics().compute(lr=lr_i, sr=bicubic, hr=hr_i)
        got = bench["per_image"]["bicubic"][i]
        assert got["image"] == f"{root}/naip.pkl[{i}]"
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
    client = MlflowClient(uri)
    (run_info,) = client.search_runs(client.get_experiment_by_name("demo").experiment_id)
    logged = run_info.data.metrics
    assert logged["eval_naip_test_opensr_test_im_metric"] == pytest.approx(bench["summary"]["sr"]["im_metric"]["mean"])
    assert "eval_naip_test_opensr_test_ha_metric_gain" in logged


def test_eval_on_opensr_test_geotiff_folders_refuses_the_training_area(trained_run, tmp_path):
    tmp, uri = trained_run
    with rasterio.open(Path(__file__).parents[1] / "data/sample/s2_l1c_T18SVG_20160112_10m_B02_B03_B04_B08.tif") as src:
        crs, transform = src.crs, src.transform
    lr, hr = _sample_images(slice(0, 128), n=2)
    root = tmp_path / "sets" / "spot"
    for folder, stack, factor in (("L2A", lr, 4), ("hr_harmonized", hr, 1)):
        (root / folder).mkdir(parents=True)
        for i, image in enumerate(stack):
            # where the chip lies in the sample (in its training columns), on the LR / HR grid
            t = rasterio.transform.Affine(
                transform.a * factor, 0, transform.c + 128 * i * transform.a, 0, transform.e * factor, transform.f
            )
            profile = dict(driver="GTiff", width=image.shape[2], height=image.shape[1], count=4, dtype="uint16")
            with rasterio.open(root / folder / f"ROI_{i:02d}.tif", "w", **profile, crs=crs, transform=t) as dst:
                dst.write(image)
    common = [f"model={tmp}/run", "dataset=opensr_test", "dataset.name=spot", f"dataset.root={tmp_path / 'sets'}"]
    refused = tmp_path / "refused.json"
    out = run("srgan.evaluate", *common, f"tracking.uri={uri}", f"output={refused}", "log_to_mlflow=false", ok=False)
    assert out.returncode == 2 and "overlaps the area model" in out.stderr and "ROI_00.tif" in out.stderr
    assert not refused.exists()
    out = run(
        "srgan.evaluate",
        *common,
        "allow_train_overlap=true",
        "benchmark=opensr_test",
        "benchmark.methods=[sr]",
        "lpips=null",
        "figure=false",
        f"output={tmp_path}/eval.json",
        "log_to_mlflow=false",
    )
    bench = json.loads((tmp_path / "eval.json").read_text())["benchmark"]
    assert list(bench["summary"]) == ["sr"] and bench["images"] == 2
    assert bench["per_image"]["sr"][1]["image"].endswith("spot/hr_harmonized/ROI_01.tif")
