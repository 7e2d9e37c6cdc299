"""The opensr-test benchmark through the real package, and opensr-test's sets read from both of the
forms they are distributed in (files made here, in those formats)."""

from __future__ import annotations

import collections
import math
import pickle
import random
import sys

import numpy as np
import opensr_test
import pytest
import rasterio
import torch
from affine import Affine
from omegaconf import OmegaConf
from rasterio.crs import CRS

from srgan.data.opensr_test import OpenSRTestData
from srgan.data.rasters import RasterError
from srgan.evaluation.benchmark import MEASURES, OpenSRTest, load_benchmark
from srgan.safe_pickle import UnsafePickleError, load_numpy_pickle

BANDS = ["B04", "B03", "B02", "B08"]


def images(n: int = 3, size: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` LR / HR pairs like opensr-test's: uint16 reflectance x 10000, RGBN, x4; HR with detail."""
    g = np.random.default_rng(seed)
    smooth = g.uniform(500, 3000, (n, 4, size // 8, size // 8)).repeat(8, -1).repeat(8, -2)
    hr = (smooth + g.normal(0, 120, smooth.shape)).clip(0, 10000).astype(np.uint16)
    lr = hr.reshape(n, 4, size // 4, 4, size // 4, 4).mean(axis=(3, 5)).round().astype(np.uint16)
    return lr, hr


def reflectance(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.astype(np.float32) / 10000)


def bilinear(lr: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.interpolate(lr[None], scale_factor=4, mode="bilinear")[0]


# -- the package's measures, passed through -----------------------------------------------------------


def test_each_image_gets_the_package_own_numbers_with_its_defaults_and_mean_std_over_images():
    lr, hr = images()
    run = OpenSRTest().build(rgb=[0, 1, 2])
    for i in range(len(hr)):
        run.update("sr", reflectance(lr[i]), bilinear(reflectance(lr[i])), reflectance(hr[i]), f"roi{i}")
        run.update("perfect", reflectance(lr[i]), reflectance(hr[i]), reflectance(hr[i]), f"roi{i}")
    # Straight from the package, default Config, the same images.
    direct = [
        opensr_test.Metrics().compute(lr=reflectance(lr[i]), sr=bilinear(reflectance(lr[i])), hr=reflectance(hr[i]))
        for i in range(len(hr))
    ]
    for i, expected in enumerate(direct):
        for key in MEASURES:
            assert run.images["sr"][i][key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key
    summary = run.summary()
    for key in MEASURES:
        values = np.array([d[key] for d in direct])
        assert summary["sr"][key]["mean"] == pytest.approx(values.mean(), rel=1e-6)
        assert summary["sr"][key]["std"] == pytest.approx(values.std(ddof=1), rel=1e-6)
        assert summary["sr"][key]["images"] == 3
    # SR = HR is all improvement; upsampling adds less of the real detail.
    assert summary["perfect"]["im_metric"]["mean"] > 0.9 > summary["sr"]["im_metric"]["mean"]
    record = run.record()
    assert record["version"] == opensr_test.__version__ == "1.3.3"
    assert record["config"]["correctness_distance"] == "nd" and record["config"]["border_mask"] == 16
    assert record["config"]["ha_score"] == 0.05 and record["config"]["correctness_temperature"] == 0.25
    table = run.table()
    assert "opensr-test 1.3.3, mean ± std over 3 image(s)" in table and "im_metric ↑" in table
    first = summary["sr"]["reflectance"]
    assert f"{first['mean']:.4f} ± {first['std']:.4f}" in table


def test_the_global_generators_and_cudnn_flags_are_as_before_each_call():
    lr, hr = images(1)
    run = OpenSRTest().build(rgb=[0, 1, 2])
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(9)
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    expected = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    run.update("sr", reflectance(lr[0]), reflectance(hr[0]), reflectance(hr[0]), "roi0")  # it seeds 42
    assert torch.equal(torch.get_rng_state(), expected[0])
    assert np.array_equal(np.random.get_state()[1], expected[1]) and random.getstate() == expected[2]
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == flags


def test_bad_benchmark_settings_are_named():
    with pytest.raises(ValueError, match=r"unknown opensr_test.Config key\(s\) \['corectness_distance'\]"):
        OpenSRTest({"corectness_distance": "l1"}).build(rgb=[0, 1, 2])
    with pytest.raises(ValueError, match="benchmark.config"):
        OpenSRTest({"correctness_distance": "cosine"}).build(rgb=[0, 1, 2])
    for junk in ("median", "auto999", "autoXYZ", float("nan"), -1, True):
        with pytest.raises(ValueError, match="benchmark.gradient_threshold="):
            OpenSRTest(gradient_threshold=junk).build(rgb=[0, 1, 2])
    for methods in (["sr", "bicubik"], "sr", []):
        with pytest.raises(ValueError, match="benchmark.methods="):
            OpenSRTest(methods=methods).build(rgb=[0, 1, 2])
    # settings the package checks only while measuring come back as one error naming the image
    lr, hr = images(1)
    run = OpenSRTest({"rgb_bands": [0, 1, 9]}).build(rgb=[0, 1, 2])
    with pytest.raises(ValueError, match="opensr-test failed on roi0 .*check benchmark.config"):
        run.update("sr", reflectance(lr[0]), reflectance(hr[0]), reflectance(hr[0]), "roi0")
    with pytest.raises(ValueError, match="not one of the benchmark options"):
        load_benchmark(OmegaConf.create({"_target_": "os.system", "command": "echo hi"}), [0, 1, 2])
    # rgb_bands: the dataset's, unless set
    assert OpenSRTest().build(rgb=[2, 1, 0]).config.rgb_bands == [2, 1, 0]
    assert OpenSRTest({"rgb_bands": [0, 1, 2]}).build(rgb=[2, 1, 0]).config.rgb_bands == [0, 1, 2]


def test_without_the_package_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "opensr_test", None)
    with pytest.raises(ImportError, match=r"pip install 'srgan\[benchmark\]'"):
        OpenSRTest().build(rgb=[0, 1, 2])


# -- the restricted unpickler ---------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_numpy_pickles_of_every_protocol_are_read(tmp_path, protocol):
    lr, hr = images(2)
    path = tmp_path / "naip.pkl"
    odd = {"big_endian": hr.astype(">f4"), "fortran": np.asfortranarray(lr), "bool": hr > 1000, "empty": lr[:0]}
    content = {"L2A": lr, "HRharm": hr, "meta": [1, "a", 2.5], "s": np.float32(1), **odd}
    path.write_bytes(pickle.dumps(collections.OrderedDict(content), protocol))
    loaded = load_numpy_pickle(path)
    assert np.array_equal(loaded["L2A"], lr) and loaded["HRharm"].dtype == np.uint16 and loaded["s"] == 1
    for key, value in odd.items():
        assert np.array_equal(loaded[key], value) and loaded[key].dtype.kind == value.dtype.kind, key


def _op(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


# Hand-written pickles that pass only the names check: each would turn a file's bytes into pointers
# to Python objects (a crash, or a forged object), or allocate without bound (hostile review, issue 21).
_OBJECT_ARRAY = _op("numpy", "ndarray") + b"((I1\ntS'O8'\nS'AAAAAAAA'\ntR"
_DTYPE_O = _op("numpy", "dtype") + b"(S'O8'\nI00\nI01\ntR"
_DTYPE_F8 = _op("numpy", "dtype") + b"(S'f8'\nI00\nI01\ntR(I3\nS'<'\nNNNI-1\nI-1\nI0\ntb"
_VOID_WITH_OBJECT_FIELD = (
    _op("numpy", "dtype")
    + b"(S'V16'\nI00\nI01\ntR(I3\nS'|'\nN(S'a'\ntp1\n(dS'a'\n("
    + _DTYPE_O
    + b"(I3\nS'|'\nNNNI-1\nI-1\nI63\ntbI0\ntsI16\nI1\nI0\ntb"
)
_RECONSTRUCT = _op("numpy._core.multiarray", "_reconstruct") + _op("numpy", "ndarray") + b"(I0\ntC\x01b\x87R"


@pytest.mark.parametrize(
    "payload,named",
    [
        (_OBJECT_ARRAY, "not callable"),  # ndarray(shape, 'O8', bytes): pointers from the file
        (_RECONSTRUCT + b"(I1\n(I1\nt" + _DTYPE_O + b"I00\nC\x08AAAAAAAAtb", "'O'"),  # object array by state
        (_RECONSTRUCT + b"(I1\n(I1\nt" + _VOID_WITH_OBJECT_FIELD + b"I00\nC\x10AAAAAAAAAAAAAAAAtb", "V16"),
        (_RECONSTRUCT + b"(I1\n(I100000000000\nt" + _DTYPE_F8 + b"I00\nC\x08AAAAAAAAtb", "does not fit"),  # 800 GB
        (_op("numpy._core.multiarray", "scalar") + b"(" + _DTYPE_O + b"S'AAAAAAAA'\ntR", "'O'"),
        (_op("collections", "OrderedDict") + b")R(dS'x'\nI1\nsb", "state of a OrderedDict"),
        (_op("_codecs", "encode") + b"(S'x'\nS'zlib'\ntR", "latin1"),
    ],
)
def test_pickles_that_would_forge_objects_from_bytes_are_refused(tmp_path, payload, named):
    path = tmp_path / "naip.pkl"
    path.write_bytes(b"(dS'L2A'\n" + payload + b"s.")
    with pytest.raises(UnsafePickleError, match=named):
        load_numpy_pickle(path)


def test_a_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "naip.pkl"
    path.write_bytes(pickle.dumps({"L2A": _Payload(marker)}))
    with pytest.raises(UnsafePickleError, match=r"naip.pkl: refusing to load io\.open"):
        OpenSRTestData(root=str(tmp_path), name="naip", band_names=BANDS, normalization=_reflectance())
    assert not marker.exists()
    (tmp_path / "naip.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(UnsafePickleError, match="naip.pkl: not a readable pickle"):
        load_numpy_pickle(tmp_path / "naip.pkl")


# -- opensr-test's sets ---------------------------------------------------------------------------------


def _reflectance():
    from srgan.data.normalization import LinearScale

    return LinearScale(10000.0)


def write_pickle(root, name="naip", **arrays):
    (root / f"{name}.pkl").write_bytes(pickle.dumps(arrays, protocol=4))


def write_roi_folders(root, lr, hr, folders=("L2A", "hr_harmonized"), georef=None):
    """``<root>/{L2A,hr_harmonized}/roi_<i>.tif`` with a CRS and 10 m / 2.5 m grids."""
    crs, x0, y0 = georef or (CRS.from_epsg(32614), 500000.0, 5200000.0)
    for folder, stack, pixel in ((folders[0], lr, 10.0), (folders[1], hr, 2.5)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(stack):
            profile = dict(driver="GTiff", width=image.shape[2], height=image.shape[1], count=image.shape[0])
            transform = Affine(pixel, 0, x0 + i * 10_000, 0, -pixel, y0)
            with rasterio.open(
                root / folder / f"roi_{i:04d}.tif", "w", **profile, dtype=image.dtype, crs=crs, transform=transform
            ) as dst:
                dst.write(image)


def test_a_pickled_set_gives_one_test_region_per_image(tmp_path):
    lr, hr = images(3)
    write_pickle(tmp_path, L2A=lr, L1C=lr + 5, HRharm=hr, HR=hr + 7)
    data = OpenSRTestData(root=str(tmp_path), name="naip", band_names=BANDS, normalization=_reflectance())
    regions = data.regions("test")
    assert len(regions) == 3 and data.scale == 4 and data.band_names == BANDS and data.format == "pickle"
    torch.testing.assert_close(regions[1].hr, reflectance(hr[1]))
    torch.testing.assert_close(regions[1].lr, reflectance(lr[1]))
    assert regions[2].source.endswith("naip.pkl[2]") and bool(regions[0].hr_valid.all())
    other = OpenSRTestData(
        root=str(tmp_path), name="naip", band_names=BANDS, normalization=_reflectance(), lr="L1C", hr="HR"
    )
    torch.testing.assert_close(other.regions("test")[0].hr, reflectance(hr[0] + 7))
    # channels chosen by position or by name
    picked = OpenSRTestData(
        root=str(tmp_path), name="naip", band_names=["B08", "B04"], normalization=_reflectance(), bands=[3, 0]
    )
    torch.testing.assert_close(picked.regions("test")[0].hr, reflectance(hr[0][[3, 0]]))
    with pytest.raises(ValueError, match="naip is a test set"):
        data.regions("val")
    with pytest.raises(ValueError, match="benchmark"):
        data.train_dataset(10, 0)


def test_a_geotiff_set_is_read_per_roi_with_its_georeference(tmp_path):
    lr, hr = images(2)
    write_roi_folders(tmp_path / "naip", lr, hr)
    data = OpenSRTestData(root=str(tmp_path), name="naip", band_names=BANDS, normalization=_reflectance())
    assert data.format == "geotiff"
    regions = data.regions("test")
    torch.testing.assert_close(regions[1].hr, reflectance(hr[1]))
    torch.testing.assert_close(regions[1].lr, reflectance(lr[1]))
    assert regions[0].crs == CRS.from_epsg(32614) and regions[1].hr_transform.c == 510000.0
    areas = data.areas("test")
    assert areas[1].bounds == (510000.0, 5200000.0 - 96 * 2.5, 510000.0 + 96 * 2.5, 5200000.0)


def test_broken_sets_are_named(tmp_path):
    lr, hr = images(2)
    with pytest.raises(RasterError, match="no opensr-test set 'naip'"):
        OpenSRTestData(root=str(tmp_path), name="naip", band_names=BANDS, normalization=_reflectance())
    with pytest.raises(ValueError, match=r"dataset.name='../naip': a set's file or folder name \(opensr-test's: naip"):
        OpenSRTestData(root=str(tmp_path), name="../naip", band_names=BANDS, normalization=_reflectance())
    write_pickle(tmp_path, L2A=lr, HR=hr)
    with pytest.raises(RasterError, match=r"naip.pkl: no 'HRharm' array \(it has L2A, HR\)"):
        OpenSRTestData(root=str(tmp_path), name="naip", band_names=BANDS, normalization=_reflectance())
    write_pickle(tmp_path, L2A=lr[:, :, :20], HRharm=hr)
    with pytest.raises(RasterError, match=r"HR \(96, 96\) is not x4 of LR \(20, 24\)"):
        OpenSRTestData(root=str(tmp_path), name="naip", band_names=BANDS, normalization=_reflectance())
    write_pickle(tmp_path, L2A=np.concatenate([lr, lr], 1), HRharm=hr)
    data = OpenSRTestData(
        root=str(tmp_path), name="naip", band_names=BANDS, normalization=_reflectance(), lr_bands=[4, 5, 6, 7]
    )
    assert data.regions("test")[0].lr.shape == (4, 24, 24)
    with pytest.raises(RasterError, match="channel 9 is out of range 0..7"):
        OpenSRTestData(
            root=str(tmp_path), name="naip", band_names=BANDS, normalization=_reflectance(), lr_bands=[9, 1, 2, 3]
        )
    write_roi_folders(tmp_path / "naip", lr, hr)
    with pytest.raises(RasterError, match="holds both naip.pkl and GeoTIFF folders"):
        OpenSRTestData(root=str(tmp_path), name="naip", band_names=BANDS, normalization=_reflectance())
    (tmp_path / "naip" / "L2A" / "roi_0001.tif").unlink()
    with pytest.raises(RasterError, match=r"roi_0001.tif: no LR image for this ROI in .*naip/L2A"):
        OpenSRTestData(
            root=str(tmp_path), name="naip", band_names=BANDS, normalization=_reflectance(), format="geotiff"
        )


def test_pixels_without_data_are_flagged_and_carry_no_signal(tmp_path):
    lr, hr = images(2)
    hr = hr.astype(np.float32)
    hr[1, :, :5, :5] = np.nan
    write_pickle(tmp_path, L2A=lr.astype(np.float32), HRharm=hr)
    data = OpenSRTestData(root=str(tmp_path), name="naip", band_names=BANDS, normalization=_reflectance())
    assert not bool(data.regions("test")[1].hr_valid.all()) and bool(data.regions("test")[0].hr_valid.all())
    assert math.isfinite(float(data.regions("test")[1].hr.sum()))  # nodata is 0, flagged by hr_valid


def _geotiff_set(root, n=2):
    lr, hr = images(n)
    write_roi_folders(root / "naip", lr, hr)
    return lambda **kw: OpenSRTestData(
        root=str(root), name="naip", band_names=BANDS, normalization=_reflectance(), **kw
    )


def test_geotiff_rois_that_do_not_match_are_refused_not_measured(tmp_path):
    """Hostile review, issue 21: each of these was read and measured without a word."""
    load = _geotiff_set(tmp_path)
    lr_dir = tmp_path / "naip" / "L2A"
    with rasterio.open(lr_dir / "roi_0001.tif", "r+") as dst:  # LR 100 km away from its HR
        dst.transform = Affine(10.0, 0, 610000.0, 0, -10.0, 5200000.0)
    with pytest.raises(RasterError, match="roi_0001.tif: bounds .* but its LR .* covers"):
        load()
    with rasterio.open(lr_dir / "roi_0001.tif", "r+") as dst:
        dst.crs, dst.transform = CRS.from_epsg(32633), Affine(10.0, 0, 510000.0, 0, -10.0, 5200000.0)
    with pytest.raises(RasterError, match="roi_0001.tif: CRS EPSG:32614 but its LR"):
        load()
    load = _geotiff_set(tmp_path / "b")
    with rasterio.open(tmp_path / "b/naip/hr_harmonized/roi_0000.tif", "r+") as dst:
        dst.descriptions = ("B08", "B02", "B03", "B04")
    with pytest.raises(RasterError, match=r"its bands are named \['B08', 'B02', 'B03', 'B04'\]"):
        load()
    load = _geotiff_set(tmp_path / "c")
    (tmp_path / "c/naip/L2A/roi_0000.tif").rename(tmp_path / "c/naip/L2A/ROI_0000.TIF")
    assert len(load().regions("test")) == 2  # upper-case names still pair
    (tmp_path / "c/naip/L2A/roi_0000.tiff").write_bytes((tmp_path / "c/naip/L2A/ROI_0000.TIF").read_bytes())
    with pytest.raises(RasterError, match="ROI 'roi_0000' twice"):
        load()
    # a .tif whose bytes are a VRT pointing elsewhere is not followed
    load = _geotiff_set(tmp_path / "d")
    secret = tmp_path / "d/naip/hr_harmonized/roi_0001.tif"
    vrt = (
        '<VRTDataset rasterXSize="96" rasterYSize="96"><VRTRasterBand dataType="UInt16" band="1">'
        f"<SimpleSource><SourceFilename>{secret}</SourceFilename><SourceBand>1</SourceBand></SimpleSource>"
        "</VRTRasterBand></VRTDataset>"
    )
    (tmp_path / "d/naip/hr_harmonized/roi_0000.tif").write_text(vrt)
    with pytest.raises(RasterError, match="roi_0000.tif: not a readable GeoTIFF"):
        load()


def test_geotiff_masks_and_channel_counts_are_honoured(tmp_path):
    lr, hr = images(1)
    write_roi_folders(tmp_path / "naip", lr, hr)
    with rasterio.open(tmp_path / "naip/hr_harmonized/roi_0000.tif", "r+") as dst:
        mask = np.full((96, 96), 255, dtype=np.uint8)
        mask[:48] = 0
        dst.write_mask(mask)
    region = OpenSRTestData(root=str(tmp_path), name="naip", band_names=BANDS, normalization=_reflectance())
    assert int(region.regions("test")[0].hr_valid.sum()) == 48 * 96
    write_pickle(tmp_path / "p", L2A=np.concatenate([lr, lr], 1), HRharm=hr) if (
        tmp_path / "p"
    ).mkdir() is None else None
    with pytest.raises(RasterError, match=r"'L2A': 8 channels for the 4 band_names .* dataset.lr_bands"):
        OpenSRTestData(root=str(tmp_path / "p"), name="naip", band_names=BANDS, normalization=_reflectance())
    write_pickle(tmp_path / "p", L2A=lr[:, :, :0], HRharm=hr[:, :, :0])
    with pytest.raises(RasterError, match="'L2A' is empty"):
        OpenSRTestData(root=str(tmp_path / "p"), name="naip", band_names=BANDS, normalization=_reflectance())
