"""A researcher's own rasters: nodata, units by data type, another CRS, and what eval reuses.

Each test builds the small raster that shows one problem (nodata wedges, a NIR = 0 lake, uint8,
a reprojected file) and checks what the tools do with it (issue 19, items 1-5 and 13).
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS

from srgan.data.card import CardDataError, check_held_out, dataset_from_card, dataset_record
from srgan.data.datasets import RasterSRData
from srgan.data.degradation import Resample
from srgan.data.normalization import ByDataType, LinearScale
from srgan.data.rasters import RasterError, read_raster
from srgan.engine.checkpoint import ExportedModel, export_model, load_model
from srgan.evaluation.regions import evaluate_regions
from srgan.infer import super_resolve_file
from srgan.models import RCABGenerator
from tests.conftest import TINY_GENERATOR, model_card

BANDS = ["red", "green", "blue", "nir"]
SPLIT = {"fractions": {"train": 0.5, "val": 0.1, "test": 0.4}, "gap": 8, "axis": "columns"}


def _write(path: Path, data: np.ndarray, nodata=None, names=BANDS, crs=32614, pixel=1.0) -> Path:
    bands, rows, cols = data.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=cols,
        height=rows,
        count=bands,
        dtype=data.dtype,
        crs=CRS.from_epsg(crs) if crs else None,
        transform=Affine(pixel, 0, 500000.0, 0, -pixel, 5200000.0),
        nodata=nodata,
    ) as dst:
        dst.write(data)
        if names:
            dst.descriptions = tuple(names)
    return path


def _scene(rows: int = 64, cols: int = 160, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    base = 0.5 + 0.25 * np.sin(xx / 4.0) * np.cos(yy / 5.0)
    image = np.stack([base + 0.05 * b + 0.02 * rng.standard_normal(base.shape) for b in range(4)])
    scale = 200 if dtype == np.uint8 else 5000
    return np.clip(image * scale, 1, None).astype(dtype)


def _with_wedges(data: np.ndarray, nodata: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Nodata wedges in two corners (about 10 % of the pixels, all bands)."""
    rows, cols = data.shape[1:]
    yy, xx = np.mgrid[0:rows, 0:cols]
    wedge = (xx + yy < 0.35 * rows) | ((cols - 1 - xx) + (rows - 1 - yy) < 0.9 * rows)
    out = data.copy()
    out[:, wedge] = nodata
    return out, ~wedge


def _tiny_model(tmp_path: Path, normalization: dict, data=None, name: str = "model") -> ExportedModel:
    card = model_card(normalization=normalization, dtype="uint8")
    card["data"]["bands"] = card["data"]["band_names"] = BANDS
    if data is not None:
        card["data"]["degradation"] = {"_target_": "srgan.data.degradation.Resample", "scale": 4, "method": "box"}
        card["data"].update(dataset_record(data.config_for_test, data))
    torch.manual_seed(0)
    kwargs = {k: v for k, v in TINY_GENERATOR.items() if k != "_target_"}
    return load_model(export_model(RCABGenerator(**kwargs), card, tmp_path / name))


def _raster(path: Path, split=SPLIT, normalization=None, **kwargs) -> RasterSRData:
    config = {
        "path": str(path),
        "bands": BANDS,
        "num_bands": 4,
        "scale": 4,
        "split": split,
        "patch_size": 16,
        "val_tile": 32,
        "name": path.stem,
        **kwargs,
    }
    data = RasterSRData(degradation=Resample(4, "box"), normalization=normalization or ByDataType(), **config)
    data.config_for_test = {"_target_": "srgan.data.datasets.RasterSRData", **config}
    return data


# 1. srgan-eval on valid pixels only -----------------------------------------------------------


def test_eval_measures_only_pixels_with_data_and_counts_them(tmp_path):
    clean = _scene(64, 192)
    holed, valid = _with_wedges(clean)
    model = _tiny_model(tmp_path, {"_target_": "srgan.data.normalization.LinearScale", "scale": 255.0})
    split = {"fractions": {"test": 1.0}, "gap": 0, "axis": "columns"}
    data = _raster(_write(tmp_path / "holed.tif", holed, nodata=0), split=split)
    (region,) = data.regions("test")
    options = {"border": 4, "tile": 64, "overlap": 8, "batch_size": 4, "device": torch.device("cpu")}
    results, _ = evaluate_regions(model, [region], data, **options, lpips_net=None)
    for method in ("sr", "bicubic", "nearest"):  # before: NaN for every method (zeros have no angle)
        assert math.isfinite(results[method]["sam_deg"]), method
    # The counted pixels are those with data in HR and under a valid LR pixel, inside the border.
    hr_valid = region.hr_valid
    lr_valid = region.lr_valid.repeat_interleave(4, 0).repeat_interleave(4, 1)
    expected = (hr_valid & lr_valid)[4:-4, 4:-4]
    assert results["sr"]["pixels"] == int(expected.sum()) < results["sr"]["pixels_total"] == expected.numel()
    assert results["sr"]["pixels_total"] - results["sr"]["pixels"] > 0.05 * expected.numel()
    # Bicubic PSNR recomputed independently on those pixels (reflectance = DN / 255).
    lr = region.lr[None]
    up = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)[0]
    from srgan.models.blocks import upsample_image

    up = upsample_image(lr, 4, "bicubic")[0]
    diff = (up - region.hr)[:, 4:-4, 4:-4][:, expected]
    psnr = 10 * math.log10(1.0 / float(diff.double().pow(2).mean()))
    assert results["bicubic"]["psnr"] == pytest.approx(psnr, abs=1e-3)
    # The nodata pixels would have pulled PSNR down (zeros against a valid bicubic neighbour).
    everything = (up - region.hr)[:, 4:-4, 4:-4]
    assert psnr > 10 * math.log10(1.0 / float(everything.double().pow(2).mean())) + 1.0


def test_eval_without_nodata_equals_the_unmasked_measures(tmp_path):
    from srgan.evaluation.metrics import SRMetrics

    torch.manual_seed(0)
    hr = torch.rand(1, 4, 48, 64)
    pred = (hr + 0.05 * torch.randn_like(hr)).clamp(0, 1)
    plain, masked = SRMetrics(BANDS, 4, per_band_ssim=True), SRMetrics(BANDS, 4, per_band_ssim=True, masked=True)
    plain.update(pred, hr)
    masked.update(pred, hr, torch.ones(1, 48, 64, dtype=torch.bool))
    a, b = plain.compute(), masked.compute()
    for key in a:
        assert b[key] == pytest.approx(a[key], abs=1e-6), key


# 2. srgan-infer: nodata only where every band is ------------------------------------------------


def _lake_scene(tmp_path: Path) -> tuple[Path, np.ndarray]:
    data = _scene(32, 48)
    data[3, 8:20, 8:24] = 0  # NIR = 0 over a lake: valid data
    data[:, 24:28, 32:40] = 0  # a real nodata hole: every band 0
    return _write(tmp_path / "lake.tif", data, nodata=0), data


def test_infer_keeps_a_lake_where_only_nir_is_zero(tmp_path):
    src, _ = _lake_scene(tmp_path)
    model = _tiny_model(tmp_path, {"_target_": "srgan.data.normalization.LinearScale", "scale": 255.0})
    out = tmp_path / "sr.tif"
    super_resolve_file(model, src, out, tile=16, overlap=4, progress=False)
    sr = read_raster(out)
    assert sr.nodata == 0
    lake = sr.valid[8 * 4 : 20 * 4, 8 * 4 : 24 * 4]
    assert lake.all(), "before: NIR = 0 blanked the whole 4x4 block in every band"
    hole = sr.valid[24 * 4 : 28 * 4, 32 * 4 : 40 * 4]
    assert not hole.any()
    assert (~sr.valid).sum() == 4 * 8 * 16  # exactly the hole's blocks


def test_infer_nodata_override(tmp_path):
    src, _ = _lake_scene(tmp_path)
    model = _tiny_model(tmp_path, {"_target_": "srgan.data.normalization.LinearScale", "scale": 255.0})
    super_resolve_file(model, src, tmp_path / "none.tif", tile=16, overlap=4, progress=False, nodata="none")
    assert read_raster(tmp_path / "none.tif").valid.all()  # 0 is data: no pixel is blanked
    with pytest.raises(ValueError, match="nodata must be null"):
        super_resolve_file(model, src, tmp_path / "x.tif", progress=False, nodata="zero")


def test_a_mask_band_marks_nodata(tmp_path):
    data = _scene(32, 48)
    path = tmp_path / "masked.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        _write(path, data)
        with rasterio.open(path, "r+") as dst:
            mask = np.full((32, 48), 255, np.uint8)
            mask[:8, :8] = 0
            dst.write_mask(mask)
    raster = read_raster(path)
    assert not raster.valid[:8, :8].any() and raster.valid.sum() == 32 * 48 - 64


# 3. srgan-degrade keeps nodata, and the box mean leaves it out ----------------------------------


def test_degrade_keeps_nodata_and_masks_the_box_mean(tmp_path):
    clean = _scene(64, 160)
    holed, _ = _with_wedges(clean)
    src = _write(tmp_path / "scene.tif", holed, nodata=0)
    lr_path, hr_path = tmp_path / "lr.tif", tmp_path / "hr.tif"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "srgan.degrade",
            "dataset=raster",
            f"dataset.path={src}",
            f"dataset.bands=[{','.join(BANDS)}]",
            "dataset.patch_size=16",
            "dataset.val_tile=32",
            "split=test",
            f"output={lr_path}",
            f"hr_output={hr_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lr, hr = read_raster(lr_path), read_raster(hr_path)
    assert lr.nodata == 0 and hr.nodata == 0  # before: the tag was dropped
    assert (~hr.valid).any() and (~lr.valid).any()
    # Every valid LR pixel is the mean of the valid HR pixels of its block: no zero pulled it down.
    block = hr.data.astype(np.float64).reshape(4, hr.data.shape[1] // 4, 4, hr.data.shape[2] // 4, 4)
    weight = hr.valid.reshape(hr.valid.shape[0] // 4, 4, hr.valid.shape[1] // 4, 4)
    mean = (block * weight[None]).sum((2, 4)) / np.maximum(weight.sum((1, 3)), 1)[None]
    assert np.abs(lr.data[:, lr.valid] - mean[:, lr.valid]).max() <= 1.0
    partial = lr.valid & (weight.sum((1, 3)) < 16)
    assert partial.any()  # edge pixels of the wedges are kept, with their valid part's mean
    # a second run refuses to overwrite, in one line
    again = subprocess.run(out.args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert again.stderr.strip().count("\n") == 0 and "exists; pass overwrite=true" in again.stderr


# 4. units follow the data type ---------------------------------------------------------------


def test_units_follow_the_data_type(tmp_path, caplog):
    u8 = _raster(_write(tmp_path / "naip.tif", _scene(dtype=np.uint8)))
    assert isinstance(u8.normalization, LinearScale) and u8.normalization.scale == 255.0
    assert 0.2 < float(u8.region("test").hr.mean()) < 1.0  # before: DN / 10000, i.e. ~0.01
    f32 = _raster(_write(tmp_path / "refl.tif", (_scene(dtype=np.uint16) / 10000).astype(np.float32)))
    assert f32.normalization.scale == 1.0
    with caplog.at_level(logging.INFO, logger="srgan.data.normalization"):
        u16 = _raster(_write(tmp_path / "s2.tif", _scene(dtype=np.uint16)))
    assert u16.normalization.scale == 10000.0 and "reflectance x 10000" in caplog.text
    with pytest.raises(ValueError, match="int16 has no conventional unit scale.*dataset/normalization"):
        _raster(_write(tmp_path / "dem.tif", _scene(dtype=np.uint16).astype(np.int16)))


# 5. eval reuses the model's data and refuses an overlapping test area --------------------------


def test_model_card_records_the_data_and_eval_rebuilds_it(tmp_path):
    path = _write(tmp_path / "naip_2019.tif", _scene())
    data = _raster(path)
    model = _tiny_model(tmp_path, data.normalization.to_config(), data=data)
    rebuilt = dataset_from_card(model)
    assert rebuilt.path == path.resolve() and rebuilt.band_names == BANDS and rebuilt.scale == 4
    assert rebuilt.extent(0, "test") == data.extent(0, "test")
    assert rebuilt.normalization is model.normalization
    assert check_held_out(model, rebuilt, "test") == 1  # the model's own split passes
    # Other split fractions move the test area onto the training area: refused.
    other = _raster(path, split={"fractions": {"train": 0.2, "val": 0.1, "test": 0.7}, "gap": 8, "axis": "columns"})
    with pytest.raises(CardDataError, match="overlaps the area model .* was trained on"):
        check_held_out(model, other, "test")


def test_overlap_is_found_across_files_in_one_crs(tmp_path):
    """A crop of the training scene written as another file still overlaps it on the ground."""
    scene = _scene(64, 160)
    path = _write(tmp_path / "scene.tif", scene)
    data = _raster(path)
    model = _tiny_model(tmp_path, data.normalization.to_config(), data=data)
    crop = _write(tmp_path / "crop.tif", scene[:, :, :96])  # same origin: its test area lies in training
    with pytest.raises(CardDataError, match="overlaps"):
        check_held_out(model, _raster(crop), "test")
    # The same pixels in another CRS (a reprojected scene) are not compared: no common ground truth
    assert check_held_out(model, _raster(_write(tmp_path / "utm15.tif", scene, crs=32615)), "test") == 1


def test_a_card_without_data_record_or_with_hostile_values_is_refused(tmp_path):
    model = _tiny_model(tmp_path, {"_target_": "srgan.data.normalization.LinearScale", "scale": 255.0})
    with pytest.raises(CardDataError, match="does not record the data it was trained on"):
        dataset_from_card(model)
    model.config["data"]["dataset"] = {"kind": "os.system", "path": "x"}
    with pytest.raises(CardDataError, match="kind='os.system' is not one of"):
        dataset_from_card(model)
    model.config["data"]["dataset"] = {"kind": "raster", "path": "/x.tif", "split": {"_target_": "os.system"}}
    with pytest.raises(CardDataError, match="split._target_ is not allowed"):
        dataset_from_card(model)


# 13. errors that say what to do --------------------------------------------------------------


def test_band_name_error_suggests_indices_when_the_file_has_no_names(tmp_path):
    path = _write(tmp_path / "plain.tif", _scene(), names=None)
    with pytest.raises(RasterError, match=r"no band named 'red'; .*1-based index.*bands=\[1,2,3,4\]"):
        read_raster(path, ["red"])


def test_a_nir_band_tagged_alpha_is_data_and_outputs_are_not_rgba(tmp_path):
    """GDAL's default for 4-band uint8 is RGBA: a NAIP-like file without nodata has NIR as 'alpha'."""
    data = _scene(32, 48)
    data[3, 8:20, 8:24] = 0  # NIR = 0 over a lake
    path = _write(tmp_path / "rgba.tif", data)  # no nodata tag: GDAL's mask would be the NIR band
    with rasterio.open(path) as src:
        assert src.colorinterp[3] == rasterio.enums.ColorInterp.alpha  # the trap is real
    assert read_raster(path).valid.all()
    model = _tiny_model(tmp_path, {"_target_": "srgan.data.normalization.LinearScale", "scale": 255.0})
    super_resolve_file(model, path, tmp_path / "sr.tif", tile=16, overlap=4, progress=False)
    with rasterio.open(tmp_path / "sr.tif") as out:
        assert rasterio.enums.ColorInterp.alpha not in out.colorinterp
        assert (out.dataset_mask() > 0).all()  # any GDAL reader sees the lake
