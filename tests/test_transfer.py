"""Transfer across sensors: ``check_band_map``, srgan-eval's ``band_map`` and ``normalize_as``, the
MLflow keys of an evaluation on another dataset, the water / land split of the index errors, and
``init.band_map`` of ``init_from``.

One tiny model trained on the bundled Sentinel-2 sample (bands B04, B03, B02, B08) is shared by the
module; the "other sensor" is a small 4-band uint8 GeoTIFF whose bands are called R, G, B, NIR (as
NAIP's), placed away from the training area.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from srgan.config import ConfigError, EvalConfig, check_band_map, validate_entry_config, validate_training_config
from srgan.engine.init_from import load_generator, resolve_source, summary
from srgan.evaluate import GROUPS, evaluation_data
from srgan.evaluate import main as evaluate_main
from srgan.evaluation.downstream import SWIR_WATER_BELOW, index_errors, normalized_difference, water_mask
from srgan.evaluation.regions import check_compatible
from srgan.evaluation.report import summary_metrics
from srgan.models import RCABGenerator
from srgan.train import train
from tests.conftest import TINY_GENERATOR, compose_config, train_tracked, write_geotiff
from tests.test_cli import run
from tests.test_init_from import _random_source

S2 = ["B04", "B03", "B02", "B08"]
NAIP = ["R", "G", "B", "NIR"]
MAP = "{R:B04,G:B03,B:B02,NIR:B08}"
# Learning rates 0 (as in test_init_from): what a run exports is what it loaded.
FROZEN = ["trainer.max_steps=1", "schedule.optimizer_g.lr=0", "schedule.optimizer_d.lr=0"]


# -- check_band_map ----------------------------------------------------------------------------------


def test_check_band_map_renames_ours_by_the_map():
    assert check_band_map({}, S2, S2, "k", "theirs") == S2
    assert check_band_map({"R": "B04", "NIR": "B08"}, ["R", "B03", "NIR"], S2, "k", "theirs") == ["B04", "B03", "B08"]
    full = dict(zip(NAIP, S2))
    assert check_band_map(full, NAIP, S2, "band_map", "the model's") == S2


def test_check_band_map_names_the_key_and_every_unknown_band():
    with pytest.raises(ConfigError) as err:
        check_band_map({"X": "B04"}, NAIP, S2, "band_map", "the model's")
    assert str(err.value) == "band_map: 'X' is not a band of this dataset ['R', 'G', 'B', 'NIR']"
    with pytest.raises(ConfigError) as err:
        check_band_map({"R": "B05"}, NAIP, S2, "init.band_map", "the source's bands")
    assert str(err.value) == "init.band_map: 'B05' is not one of the source's bands ['B04', 'B03', 'B02', 'B08']"
    with pytest.raises(ConfigError) as err:  # both at once, in one message
        check_band_map({"X": "B05"}, NAIP, S2, "band_map", "the model's")
    assert "'X' is not a band" in str(err.value) and "; 'B05' is not one of the model's" in str(err.value)


def test_check_band_map_refuses_two_bands_under_one_name():
    # R renamed to B04 collides with the dataset's own B04; two keys onto one value likewise.
    with pytest.raises(ConfigError, match=r"^band_map: maps two bands to one name: \['B04', 'B04'\]$"):
        check_band_map({"R": "B04"}, ["R", "B04"], S2, "band_map", "the model's")
    with pytest.raises(ConfigError, match=r"maps two bands to one name: \['B04', 'B04', 'B02', 'B08'\]"):
        check_band_map({"R": "B04", "G": "B04", "B": "B02", "NIR": "B08"}, NAIP, S2, "band_map", "the model's")


def test_check_compatible_with_and_without_band_map():
    model = SimpleNamespace(scale=4, band_names=S2, directory=Path("/m"))
    data = SimpleNamespace(scale=4, band_names=NAIP, path="/naip.tif")
    with pytest.raises(ValueError, match=r"expects bands \['B04'.*gives \['R', 'G', 'B', 'NIR'\]; band_map=") as err:
        check_compatible(model, data)
    assert "through band_map" not in str(err.value)
    check_compatible(model, data, dict(zip(NAIP, S2)))  # no error
    # The right names in another order: still refused, and the message shows what the map made of them.
    with pytest.raises(ValueError, match=r"\(as \['B03', 'B04', 'B02', 'B08'\] through band_map\)"):
        check_compatible(model, data, {"R": "B03", "G": "B04", "B": "B02", "NIR": "B08"})
    with pytest.raises(ValueError, match="is x4 but dataset.scale=2"):
        check_compatible(model, SimpleNamespace(scale=2, band_names=NAIP, path="/x"), dict(zip(NAIP, S2)))


# -- a model of Sentinel-2 bands, and a raster of other names ------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run on the Sentinel-2 sample (s2_rgbn_x4: B04, B03, B02, B08), tracked in SQLite."""
    return train_tracked(tmp_path_factory.mktemp("transfer"), 3)


def _rgbn_data() -> np.ndarray:
    """4 x 128 x 640 uint8, R, G, B, NIR: smooth land (NIR bright) with a strip of water (NIR dark,
    green above NIR: NDWI > 0) across the top rows."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:128, 0:640]
    base = 90 + 40 * np.sin(xx / 6.0) * np.cos(yy / 9.0)
    nir = np.where(yy < 40, 0.4 * base, 1.6 * base)
    data = np.stack([base, base + 10, base - 20, nir]) + rng.normal(0, 2, (4, 128, 640))
    return np.clip(data, 1, 254).astype(np.uint8)


@pytest.fixture(scope="module")
def rgbn_tif(tmp_path_factory) -> Path:
    path = write_geotiff(tmp_path_factory.mktemp("rgbn") / "rgbn.tif", _rgbn_data(), NAIP)
    # conftest puts every raster on the Sentinel-2 sample's corner; moved away from its training area.
    with rasterio.open(path, "r+") as dst:
        dst.transform = Affine(10.0, 0, 600000.0, 0, -10.0, 4100000.0)
    return path


def _eval_cfg(trained, rgbn_tif, *extra: str):
    cfg = compose_config(
        "eval",
        [
            f"model={trained.run_dir}",
            f"tracking.uri={trained.uri}",
            "dataset=raster",
            f"dataset.path={rgbn_tif}",
            "dataset.bands=[R,G,B,NIR]",
            "dataset/normalization=uint8",
            *extra,
        ],
    )
    return cfg, validate_entry_config(EvalConfig, cfg, GROUPS)


def _test_dn(path: Path, data) -> np.ndarray:
    row, col, rows, cols = data.extent(0, "test")
    with rasterio.open(path) as src:
        return src.read(window=rasterio.windows.Window(col, row, cols, rows)).astype(np.float64)


@pytest.mark.slow
def test_evaluation_data_band_map_and_what_the_model_sees(trained, rgbn_tif, capsys):
    from srgan.engine.checkpoint import load_model

    model = load_model(trained.run_dir)
    cfg, options = _eval_cfg(trained, rgbn_tif)
    with pytest.raises(ValueError) as err:
        evaluation_data(cfg, options, model)
    assert f"model {trained.run_dir / 'model'} expects bands ['B04', 'B03', 'B02', 'B08'], dataset " in str(err.value)
    assert str(err.value).endswith(
        "gives ['R', 'G', 'B', 'NIR']; band_map={<dataset band>: <model band>} names the same bands under other names"
    )
    # normalize_as=model: the model's reflectance scale (DN / 10000) replaces the dataset's DN / 255.
    cfg, options = _eval_cfg(trained, rgbn_tif, f"band_map={MAP}")
    assert options.band_map == dict(zip(NAIP, S2)) and options.normalize_as == "model"
    data = evaluation_data(cfg, options, model)
    out = capsys.readouterr().out
    assert "band_map: the dataset's bands ['R', 'G', 'B', 'NIR'] are the model's ['B04', 'B03', 'B02', 'B08']" in out
    assert "using the model's normalisation LinearScale(scale=10000.0, offset=0.0)" in out
    dn = _test_dn(rgbn_tif, data)
    (region,) = data.regions("test")
    np.testing.assert_allclose(region.hr.double().numpy(), dn / 10000.0, rtol=1e-6)
    # normalize_as=dataset: the model sees the dataset's own DN / 255.
    cfg, options = _eval_cfg(trained, rgbn_tif, f"band_map={MAP}", "normalize_as=dataset")
    data = evaluation_data(cfg, options, model)
    out = capsys.readouterr().out
    assert (
        "normalize_as=dataset: the model sees LinearScale(scale=255.0, offset=0.0) "
        "(trained on LinearScale(scale=10000.0, offset=0.0))" in out
    )
    assert "using the model's normalisation" not in out
    (region,) = data.regions("test")
    np.testing.assert_allclose(region.hr.double().numpy(), dn / 255.0, rtol=1e-6)
    # box degradation: LR is the 4 x 4 mean of those values
    lr = dn[:, : dn.shape[1] // 4 * 4, : dn.shape[2] // 4 * 4] / 255.0
    lr = lr.reshape(4, lr.shape[1] // 4, 4, lr.shape[2] // 4, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(region.lr.double().numpy(), lr, rtol=1e-5)


@pytest.mark.slow
def test_normalize_as_must_be_model_or_dataset(trained, rgbn_tif):
    with pytest.raises(ConfigError, match="normalize_as must be model or dataset, got 'sensor'"):
        _eval_cfg(trained, rgbn_tif, "normalize_as=sensor")


# -- srgan-eval end to end: the home test area, then the other sensor --------------------------------


def _eval(*overrides: str) -> SimpleNamespace:
    """srgan-eval in this process through its Hydra main (a composed config passes straight through
    to the task), with what it prints."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        evaluate_main(compose_config("eval", list(overrides)))
    return SimpleNamespace(stdout=printed.getvalue())


@pytest.fixture(scope="module")
def evaluations(trained, rgbn_tif):
    """srgan-eval, in this order: the model's own test area; the R, G, B, NIR raster with a bad
    band_map (as a command: its one-line error), with band_map (normalize_as=model,
    dataset=raster), and with band_map and normalize_as=dataset (dataset=naip_rgbn_x4 on the same
    file). The refusal without band_map is checked by test_evaluation_data_band_map_and_what_the_model_sees."""
    tmp = trained.tmp
    common = [f"model={trained.run_dir}", f"tracking.uri={trained.uri}", "lpips=null", "figure=false"]
    raster = ["dataset=raster", f"dataset.path={rgbn_tif}", "dataset.bands=[R,G,B,NIR]", "dataset/normalization=uint8"]
    out = SimpleNamespace(tmp=tmp)
    out.home = _eval(*common, f"output={tmp}/home/eval.json")
    out.home_before = MlflowClient(trained.uri).get_run(trained.run_id).data.metrics
    out.bad_key = run("srgan.evaluate", *common, *raster, "band_map={X:B04}", f"output={tmp}/bad/eval.json", ok=False)
    out.as_model = _eval(*common, *raster, f"band_map={MAP}", f"output={tmp}/as_model/eval.json")
    out.as_dataset = _eval(
        *common,
        "dataset=naip_rgbn_x4",
        f"dataset.path={rgbn_tif}",
        f"band_map={MAP}",
        "normalize_as=dataset",
        f"output={tmp}/as_dataset/eval.json",
    )
    return out


def _report(evaluations, name: str) -> dict:
    return json.loads((evaluations.tmp / name / "eval.json").read_text())


@pytest.mark.slow
def test_eval_with_a_bad_band_map_key_is_one_line_naming_band_map(evaluations):
    out = evaluations.bad_key
    assert out.returncode == 2, out.stdout + out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line == "srgan-eval: error: band_map: 'X' is not a band of this dataset ['R', 'G', 'B', 'NIR']"
    assert not (evaluations.tmp / "bad").exists()


@pytest.mark.slow
def test_eval_with_band_map_runs_on_the_other_names(evaluations):
    out = evaluations.as_model
    assert "band_map: the dataset's bands ['R', 'G', 'B', 'NIR'] are the model's" in out.stdout
    assert "using the model's normalisation LinearScale(scale=10000.0, offset=0.0)" in out.stdout
    report = _report(evaluations, "as_model")
    assert report["bands"] == NAIP and report["dataset"] == "raster"
    sr = report["results"]["sr"]
    assert math.isfinite(sr["psnr"]) and sr["pixels"] > 0
    # The strip of water (NDWI > 0) and the land both lie in the test area: both halves are measured.
    for index in ("ndvi", "ndwi"):
        assert {f"{index}_mae_water", f"{index}_mae_land"} <= set(sr)
    assert "nbr2_mae" not in sr  # no SWIR bands


@pytest.mark.slow
def test_eval_normalize_as_dataset_changes_what_the_model_sees(evaluations):
    out = evaluations.as_dataset
    assert (
        "normalize_as=dataset: the model sees LinearScale(scale=255.0, offset=0.0) "
        "(trained on LinearScale(scale=10000.0, offset=0.0))" in out.stdout
    )
    assert "using the model's normalisation" not in out.stdout
    as_model, as_dataset = _report(evaluations, "as_model"), _report(evaluations, "as_dataset")
    assert as_dataset["dataset"] == "naip_rgbn_x4" and as_dataset["bands"] == NAIP
    a, b = as_model["results"], as_dataset["results"]
    # The same pixels; bicubic's scale-free measures do not depend on the normalisation, SR's do
    # (the model's input is 10000 / 255 times larger).
    assert a["sr"]["pixels"] == b["sr"]["pixels"]
    assert b["bicubic"]["sam_deg"] == pytest.approx(a["bicubic"]["sam_deg"], rel=1e-4)
    assert b["bicubic"]["ergas"] == pytest.approx(a["bicubic"]["ergas"], rel=1e-4)
    assert b["sr"]["sam_deg"] != pytest.approx(a["sr"]["sam_deg"], rel=1e-3)
    assert b["sr"]["psnr"] != pytest.approx(a["sr"]["psnr"], abs=1e-3)


@pytest.mark.slow
def test_eval_units_are_the_datasets_whatever_normalize_as(evaluations):
    # Was a bug (issue 22): docs/evaluation.md: values "in the data's physical units (... DN / 255 for
    # 8-bit; the model's own normalisation is used to feed it)". evaluate.evaluation_data replaced
    # data.normalization by the model's, and regions.physical_units(data.normalization, ...) measured uint8 data in
    # DN / 10000: bicubic's PSNR gains 20 log10(10000 / 255) = 31.9 dB over normalize_as=dataset.
    assert "values in LinearScale(scale=255.0, offset=0.0) units" in evaluations.as_model.stdout
    a, b = _report(evaluations, "as_model")["results"], _report(evaluations, "as_dataset")["results"]
    assert a["bicubic"]["psnr"] == pytest.approx(b["bicubic"]["psnr"], abs=1e-3)
    assert a["bicubic"]["ssim"] == pytest.approx(b["bicubic"]["ssim"], abs=1e-4)


@pytest.mark.slow
def test_mlflow_keys_of_the_home_area_and_of_other_datasets(trained, evaluations):
    client = MlflowClient(trained.uri)
    metrics = client.get_run(trained.run_id).data.metrics
    home, as_model, as_dataset = (_report(evaluations, n)["results"] for n in ("home", "as_model", "as_dataset"))
    # The model's own data (s2_rgbn_x4, as its card names it): plain eval_test_*.
    assert "evaluating on the data the model was trained on" in evaluations.home.stdout
    assert evaluations.home_before["eval_test_psnr"] == pytest.approx(home["sr"]["psnr"], rel=1e-6)
    assert "eval_raster_test_psnr" not in evaluations.home_before
    water = evaluations.home_before["eval_test_ndwi_mae_water"]
    assert water == pytest.approx(home["sr"]["ndwi_mae_water"], rel=1e-6)
    # Other datasets: eval_<dataset name>_test_*, and the home numbers are not overwritten.
    assert metrics["eval_raster_test_psnr"] == pytest.approx(as_model["sr"]["psnr"], rel=1e-6)
    assert metrics["eval_naip_rgbn_x4_test_psnr"] == pytest.approx(as_dataset["sr"]["psnr"], rel=1e-6)
    assert metrics["eval_raster_test_ndwi_mae_water"] == pytest.approx(as_model["sr"]["ndwi_mae_water"], rel=1e-6)
    gain = as_model["sr"]["ndvi_mae_land"] - as_model["bicubic"]["ndvi_mae_land"]
    assert metrics["eval_raster_test_ndvi_mae_land_gain"] == pytest.approx(gain, rel=1e-5, abs=1e-9)
    history = client.get_metric_history(trained.run_id, "eval_test_psnr")
    assert [m.value for m in history] == [pytest.approx(home["sr"]["psnr"], rel=1e-6)]
    assert metrics["eval_test_psnr"] == pytest.approx(home["sr"]["psnr"], rel=1e-6)
    # Artifacts: the home evaluation under evaluation/, the others under evaluation/<dataset name>.
    top = {f.path for f in client.list_artifacts(trained.run_id, "evaluation")}
    assert {"evaluation/eval.json", "evaluation/raster", "evaluation/naip_rgbn_x4"} <= top
    for name in ("raster", "naip_rgbn_x4"):
        files = {f.path for f in client.list_artifacts(trained.run_id, f"evaluation/{name}")}
        assert {f"evaluation/{name}/eval.json", f"evaluation/{name}/eval_table.csv"} <= files


def test_summary_metrics_include_the_water_and_land_index_errors():
    keys = ["psnr", "ndvi_mae", "ndvi_mae_water", "ndvi_mae_land", "nbr2_mae_water", "ndmi_mae_land", "pixels"]
    sr = {k: float(i + 1) for i, k in enumerate(keys)}
    sr.update({"ndvi_rmse": 9.0, "ndvi_mae_sea": 9.0, "water_iou": 9.0, "ndwi_mae_water": math.nan})
    bicubic = {k: v / 2 for k, v in sr.items()}
    out = summary_metrics({"sr": sr, "bicubic": bicubic}, "naip_test")
    expected = {}
    for k in ("psnr", "ndvi_mae", "ndvi_mae_water", "ndvi_mae_land", "nbr2_mae_water", "ndmi_mae_land"):
        expected[f"eval_naip_test_{k}"] = sr[k]
        expected[f"eval_naip_test_{k}_gain"] = sr[k] / 2
    expected["eval_naip_test_pixels"] = sr["pixels"]
    assert out == expected  # no rmse, no unknown suffix, no water_iou, no NaN


# -- the water / land split of the index errors ---------------------------------------------------------


def _image(**bands: list[list[float]]) -> tuple[torch.Tensor, list[str]]:
    return torch.tensor(list(bands.values()), dtype=torch.float32), list(bands)


def test_water_mask_is_ndwi_above_zero_with_green_and_nir():
    # NDWI = (G - NIR) / (G + NIR): > 0, = 0, < 0, > 0
    hr, names = _image(B04=[[0.1, 0.1, 0.1, 0.1]], B03=[[0.2, 0.1, 0.05, 0.1]], B08=[[0.1, 0.1, 0.3, 0.05]])
    assert water_mask(hr, names).tolist() == [[True, False, False, True]]
    # NAIP's names too, and NDWI wins over a SWIR band when both exist.
    hr, names = _image(G=[[0.2, 0.05]], NIR=[[0.1, 0.3]], B11=[[0.5, 0.001]])
    assert water_mask(hr, names).tolist() == [[True, False]]


def test_water_mask_of_swir_only_bands_is_dark_swir1():
    below, at = SWIR_WATER_BELOW - 1e-4, SWIR_WATER_BELOW
    hr, names = _image(B11=[[below, at, 0.2, 0.0]], B12=[[0.5, 0.5, 0.5, 0.5]])
    assert water_mask(hr, names).tolist() == [[True, False, False, True]]
    assert SWIR_WATER_BELOW == 0.03


def test_no_water_mask_without_ndwi_or_swir1_bands():
    assert water_mask(*_image(B04=[[0.1]], B03=[[0.2]], B02=[[0.1]])) is None
    assert water_mask(*_image(B12=[[0.01]], B08=[[0.3]])) is None  # SWIR2 alone is not SWIR1


def test_index_errors_split_into_water_and_land_exactly():
    # NBR2 = (B11 - B12) / (B11 + B12); pixels 0 and 1 are water (B11 < 0.03), 2 and 3 land.
    hr, names = _image(B11=[[0.01, 0.02, 0.3, 0.4]], B12=[[0.01, 0.01, 0.1, 0.2]])
    pred = hr.clone()
    pred[0] = torch.tensor([[0.03, 0.02, 0.3, 0.2]])
    hr_nbr2 = normalized_difference(hr, 0, 1).double()
    pred_nbr2 = normalized_difference(pred, 0, 1).double()
    err = (pred_nbr2 - hr_nbr2).abs()[0]
    # by hand: hr (0, 1/3, 1/2, 1/3), pred (1/2, 1/3, 1/2, 0)
    torch.testing.assert_close(err, torch.tensor([0.5, 0.0, 0.0, 1 / 3], dtype=torch.float64), atol=1e-6, rtol=0)
    water = water_mask(hr, names)
    assert water.tolist() == [[True, True, False, False]]
    out = index_errors(pred, hr, names, water=water)
    assert set(out) == {"nbr2_mae", "nbr2_rmse", "nbr2_mae_water", "nbr2_mae_land"}
    assert out["nbr2_mae_water"] == pytest.approx(float(err[:2].mean()), abs=1e-7)  # 0.25
    assert out["nbr2_mae_land"] == pytest.approx(float(err[2:].mean()), abs=1e-7)  # 1/6
    assert out["nbr2_mae"] == pytest.approx(float(err.mean()), abs=1e-7)
    assert out["nbr2_mae_water"] == pytest.approx(0.25, abs=1e-6)
    assert out["nbr2_mae_land"] == pytest.approx(1 / 6, abs=1e-6)
    # Without a water mask: no split; with valid pixels: each part over its valid pixels only.
    assert set(index_errors(pred, hr, names)) == {"nbr2_mae", "nbr2_rmse"}
    valid = torch.tensor([[False, True, True, True]])
    out = index_errors(pred, hr, names, valid=valid, water=water)
    assert out["nbr2_mae_water"] == pytest.approx(0.0, abs=1e-7)
    assert out["nbr2_mae_land"] == pytest.approx(1 / 6, abs=1e-6)
    # A part with no pixel is left out, not NaN.
    out = index_errors(pred, hr, names, water=torch.zeros(1, 4, dtype=torch.bool))
    assert "nbr2_mae_water" not in out and out["nbr2_mae_land"] == pytest.approx(out["nbr2_mae"])


def test_index_errors_of_ndvi_and_ndwi_over_ndwi_water():
    # B04, B03, B08: NDWI > 0 at pixels 0 and 2.
    hr, names = _image(B04=[[0.1, 0.1, 0.1, 0.1]], B03=[[0.3, 0.1, 0.2, 0.1]], B08=[[0.1, 0.3, 0.1, 0.4]])
    pred = hr.clone()
    pred[0] = torch.tensor([[0.3, 0.1, 0.1, 0.2]])  # red changed at pixels 0 and 3
    water = water_mask(hr, names)
    assert water.tolist() == [[True, False, True, False]]
    out = index_errors(pred, hr, names, water=water)
    ndvi = (normalized_difference(pred, 2, 0) - normalized_difference(hr, 2, 0)).double().abs()[0]
    assert out["ndvi_mae_water"] == pytest.approx(float(ndvi[[0, 2]].mean()), abs=1e-7)
    assert out["ndvi_mae_land"] == pytest.approx(float(ndvi[[1, 3]].mean()), abs=1e-7)
    # by hand: NDVI error 0.5 at pixel 0 (0 -> -0.5), 0.6 - 1/3 at pixel 3 (0.6 -> 1/3)
    assert out["ndvi_mae_water"] == pytest.approx(0.25, abs=1e-6)
    assert out["ndvi_mae_land"] == pytest.approx((0.6 - 1 / 3) / 2, abs=1e-6)
    # NDWI does not use red: no error anywhere.
    assert out["ndwi_mae_water"] == out["ndwi_mae_land"] == 0.0


# -- init_from with init.band_map ---------------------------------------------------------------------------


def _load_into_naip(tmp_path: Path, **options):
    folder = _random_source(tmp_path)  # B04, B03, B02, B08, random weights everywhere
    src = load_file(str(folder / "generator.safetensors"))
    generator = RCABGenerator(**{k: v for k, v in TINY_GENERATOR.items() if k != "_target_"})
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    report = load_generator(generator, resolve_source(str(folder)), dict(TINY_GENERATOR), NAIP, **options)
    return src, before, generator.state_dict(), report


def test_init_band_map_loads_the_source_exactly(tmp_path):
    src, _, state, report = _load_into_naip(tmp_path, band_map=dict(zip(NAIP, S2)))
    assert set(state) == set(src)
    for key in src:
        assert torch.equal(state[key], src[key]), key
    assert report["bands"] == {"band_map": dict(zip(NAIP, S2))}
    assert report["generator"]["loaded"] == report["generator"]["of"] == len(src)


def test_without_init_band_map_the_other_names_start_from_the_mean(tmp_path):
    src, _, state, report = _load_into_naip(tmp_path)  # adapt_bands=true by default
    assert report["bands"]["copied"] == [] and report["bands"]["mean"] == NAIP and report["bands"]["input_scale"] == 1
    for i in range(4):
        torch.testing.assert_close(state["head.weight"][:, i], src["head.weight"].mean(1), rtol=0, atol=1e-6)
        torch.testing.assert_close(state["tail.weight"][i], src["tail.weight"].mean(0), rtol=0, atol=1e-6)
        torch.testing.assert_close(state["tail.bias"][i], src["tail.bias"].mean(), rtol=0, atol=1e-6)
    assert not torch.equal(state["head.weight"], src["head.weight"])
    assert torch.equal(state["head.bias"], src["head.bias"])
    # A partial map: NIR is the source's B08, the others still start from the mean.
    src, _, state, report = _load_into_naip(tmp_path, band_map={"NIR": "B08"})
    assert report["bands"]["copied"] == ["B08"] and report["bands"]["mean"] == ["R", "G", "B"]
    assert torch.equal(state["tail.weight"][3], src["tail.weight"][3])
    torch.testing.assert_close(state["head.weight"][:, 3], src["head.weight"][:, 3], rtol=0, atol=0)
    torch.testing.assert_close(state["tail.weight"][0], src["tail.weight"].mean(0), rtol=0, atol=1e-6)


def test_init_band_map_errors_name_the_key_and_load_nothing(tmp_path):
    for band_map, problem in (
        ({"R": "B05"}, "'B05' is not one of the source's bands ['B04', 'B03', 'B02', 'B08']"),
        ({"X": "B04"}, "'X' is not a band of this dataset ['R', 'G', 'B', 'NIR']"),
        ({"R": "B04", "G": "B04"}, "maps two bands to one name"),
    ):
        folder = _random_source(tmp_path)
        generator = RCABGenerator(**{k: v for k, v in TINY_GENERATOR.items() if k != "_target_"})
        before = {k: v.clone() for k, v in generator.state_dict().items()}
        with pytest.raises(ConfigError) as err:
            load_generator(generator, resolve_source(str(folder)), dict(TINY_GENERATOR), NAIP, band_map=band_map)
        assert str(err.value).startswith("init.band_map: ") and problem in str(err.value), str(err.value)
        for key, value in generator.state_dict().items():
            assert torch.equal(value, before[key]), key


def test_init_band_map_is_a_checked_config_key():
    settings = validate_training_config(compose_config("train", ["init_from=runs:/abc/model", f"init.band_map={MAP}"]))
    assert settings.init.band_map == dict(zip(NAIP, S2))
    assert validate_training_config(compose_config("train", [])).init.band_map is None


# Was a bug (found by these tests): a band_map that makes the names equal to the source's gives the
# report bands={"band_map": {...}}, which summary() read as an adaptation report (bands["copied"]):
# KeyError, so every such run failed in initialise() before its first step.


def test_the_init_from_summary_of_a_band_map_load():
    loaded = {"generator": {"loaded": 20, "of": 20, "missing": [], "unexpected": [], "mismatched": []}}
    line = summary({**loaded, "bands": {"band_map": dict(zip(NAIP, S2))}, "discriminator": None})
    assert line.startswith("G 20/20 tensors; ") and line.endswith("; D fresh")


@pytest.mark.slow
def test_a_run_on_the_other_names_from_init_from_with_init_band_map(trained, rgbn_tif, tmp_path):
    data = [
        "dataset=raster",
        f"dataset.path={rgbn_tif}",
        "dataset.bands=[R,G,B,NIR]",
        "dataset/normalization=uint8",
        "dataset.rgb_bands=[R,G,B]",
        # the raster is small: patches and validation tiles of 32 px fit its 56 px wide val area
        "dataset.patch_size=32",
        "dataset.val_tile=32",
    ]
    cfg = compose_config(
        "train", trained.overrides + data + [f"init_from={trained.run_dir}", f"init.band_map={MAP}", *FROZEN]
    )
    result = train(cfg, tmp_path / "naip")
    src = load_file(str(trained.run_dir / "model" / "generator.safetensors"))
    new = load_file(str(Path(result["run_dir"]) / "model" / "generator.safetensors"))
    assert set(new) == set(src)
    for key in src:
        assert torch.equal(new[key], src[key]), key
    report = json.loads((Path(result["run_dir"]) / "init_from.json").read_text())
    assert report["bands"] == {"band_map": dict(zip(NAIP, S2))}


@pytest.mark.parametrize(
    ("dtype", "target", "expected"),
    [
        ("uint8", "srgan.data.normalization.ByDataType", 255.0),  # the uint8 convention
        ("uint16", "srgan.data.normalization.ByDataType", 10000.0),
        ("float32", "srgan.data.normalization.LinearScale", 10000.0),  # declared: dataset/normalization=reflectance
        ("float32", "srgan.data.normalization.ByDataType", None),  # float under auto: the model's units
        ("float32", "srgan.data.normalization.ZScore", None),
    ],
)
def test_own_units_only_where_the_config_or_the_integer_type_says_them(dtype, target, expected):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from srgan.data.normalization import LinearScale
    from srgan.evaluate import own_units

    normalization = LinearScale(10000.0 if dtype != "uint8" else 255.0) if "ZScore" not in target else object()
    if dtype == "float32" and target.endswith("ByDataType"):
        normalization = LinearScale(1.0)  # what auto resolves float data to
    cfg = OmegaConf.create({"dataset": {"normalization": {"_target_": target}}})
    units = own_units(cfg, SimpleNamespace(normalization=normalization, dtype=dtype))
    assert (units.scale if units is not None else None) == expected
