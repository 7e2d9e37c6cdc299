"""Datasets: degradations, normalisations, area splits, patches, validation tiles, paired folders, filters."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import rasterio
import torch
from hydra.utils import instantiate
from rasterio.windows import Window
from torch.utils.data import DataLoader

from srgan.config import CONF_DIR
from srgan.data.datasets import PairedFolderData, RasterSRData, SyntheticSRData, Tiles
from srgan.data.degradation import S2_MTF_NYQUIST, Degradation, Resample, gaussian_kernel, mtf_sigma
from srgan.data.normalization import LinearScale, PercentileScale, ZScore
from srgan.data.rasters import RasterError, to_dtype
from srgan.data.splits import column_blocks
from tests.conftest import compose_config, write_geotiff

SPLIT = {"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "gap": 8}


def raster(path, **kwargs):
    args = dict(
        path=path if isinstance(path, list) else str(path),
        bands=["B04", "B03", "B02", "B08"],
        num_bands=4,
        scale=4,
        degradation=Resample(4, "box"),
        normalization=LinearScale(10000.0),
        split=SPLIT,
        patch_size=16,
        val_tile=16,
    )
    args.update(kwargs)
    return RasterSRData(**args)


# -- degradations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "degradation",
    [
        Resample(4, "box"),
        Resample(4, "bicubic"),
        Resample(4, "bilinear"),
        Degradation(4, "box", psf="s2_mtf", band_names=["B04", "B03", "B02", "B08"]),
        Degradation(4, "bicubic", psf=1.5, shift=[0.3, -0.2]),
    ],
    ids=repr,
)
def test_degrading_a_constant_gives_that_constant(degradation):
    hr = torch.full((4, 64, 64), 0.1234)
    torch.testing.assert_close(degradation(hr), torch.full((4, 16, 16), 0.1234))


def test_box_is_the_block_mean():
    hr = torch.arange(64.0).reshape(1, 8, 8)
    assert Degradation(4)(hr)[0, 1, 0] == hr[0, 4:8, 0:4].mean()
    lr = Resample(4, "box")(hr)
    assert lr.shape == (1, 2, 2) and lr[0, 0, 0] == hr[0, :4, :4].mean()
    with pytest.raises(ValueError, match="multiple of scale"):
        Resample(4)(torch.zeros(1, 6, 8))


@pytest.mark.parametrize("sigma", [0.7, 1.5, 4.2])
def test_gaussian_psf_energy_sums_to_one(sigma):
    taps = gaussian_kernel(sigma)
    assert taps.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.outer(taps, taps).sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(taps, taps.flip(0))


@pytest.mark.parametrize("band,scale", [("B04", 4), ("B8A", 2), ("B12", 8)])
def test_psf_width_reproduces_the_band_mtf_at_the_lr_nyquist_frequency(band, scale):
    mtf = S2_MTF_NYQUIST[band]
    sigma = mtf_sigma(mtf, scale)
    taps = gaussian_kernel(sigma, radius=math.ceil(6 * sigma)).double()
    x = torch.arange(taps.numel(), dtype=torch.float64) - taps.numel() // 2
    response = (taps * torch.cos(2 * math.pi * x / (2 * scale))).sum().item()  # the kernel's MTF at 1/(2 scale)
    assert response == pytest.approx(mtf, abs=2e-3)


def test_s2_psf_needs_known_band_names():
    with pytest.raises(ValueError, match="no Sentinel-2 MTF value for band 'B10'"):
        Degradation(4, psf="s2_mtf", band_names=["B04", "B10"])
    with pytest.raises(ValueError, match="needs the band names"):
        Degradation(4, psf="s2_mtf")


def test_noise_has_the_requested_snr_and_is_seeded():
    hr = torch.full((2, 256, 256), 0.5)
    degradation = Degradation(4, snr=50.0)
    lr = degradation(hr, np.random.default_rng(1))
    assert lr.std().item() == pytest.approx(0.5 / 50, rel=0.05)
    torch.testing.assert_close(lr, degradation(hr, np.random.default_rng(1)))
    assert not torch.equal(lr, degradation(hr, np.random.default_rng(2)))


def test_misregistration_shifts_lr_by_the_given_subpixel_offset():
    xx = torch.arange(128.0).expand(1, 64, 128) * 0.01  # a ramp along x, 0.01 per HR pixel
    straight = Degradation(4)(xx)
    shifted = Degradation(4, shift=[0.0, 0.25])(xx)
    # 0.25 LR px = 1 HR px: the ramp moves by 0.01, away from the reflected edges.
    torch.testing.assert_close(shifted[:, :, 2:-2] - straight[:, :, 2:-2], torch.full_like(straight[:, :, 2:-2], 0.01))


def test_windowed_patches_equal_crops_of_the_whole_degraded_area(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(500, 3000, (2, 96, 320)).astype(np.uint16)
    path = write_geotiff(tmp_path / "psf.tif", data, ["B04", "B08"])
    psf = Degradation(4, psf="s2_mtf", band_names=["B04", "B08"])
    ds = raster(path, bands=["B04", "B08"], num_bands=2, degradation=psf, patch_size=32, val_tile=32)
    assert ds.margin >= 3 * mtf_sigma(0.24, 4)
    whole = psf(torch.from_numpy(data.astype(np.float32) / 10000))
    patches = ds.train_dataset(8, seed=0, augment=False)
    for i in range(8):
        item = patches[i]
        dn = np.rint(item["hr"].numpy() * 10000)
        # locate the patch in the file, then compare its LR with the crop of the whole image's LR
        found = [
            (r, c)
            for r in range(0, 96 - 32 + 1, 4)
            for c in range(0, 320 - 32 + 1, 4)
            if np.array_equal(data[:, r : r + 32, c : c + 32], dn)
        ]
        assert len(found) == 1, i
        r, c = found[0]
        torch.testing.assert_close(item["lr"], whole[:, r // 4 : r // 4 + 8, c // 4 : c // 4 + 8], atol=1e-6, rtol=0)


# -- normalisations ----------------------------------------------------------------------------


def test_normalisation_inverses_are_exact_over_the_whole_uint16_range(tmp_path):
    dn = np.arange(0, 65536, dtype=np.uint16).reshape(1, 256, 256).repeat(2, 0)
    fitted_z = ZScore(mean=[1234.5, 800.0], std=[321.0, 97.5])
    fitted_p = PercentileScale(p_low=[100.0, 50.0], p_high=[3000.0, 4000.0])
    for norm in (LinearScale(10000.0), LinearScale(10000.0, 1000.0), LinearScale(255.0), fitted_z, fitted_p):
        x = np.asarray(norm.normalize(dn.astype(np.float32)), dtype=np.float32)
        back = to_dtype(np.asarray(norm.denormalize(x)), "uint16")
        assert np.array_equal(back, dn), norm
        t = norm.normalize(torch.from_numpy(dn.astype(np.float32)))
        assert np.array_equal(to_dtype(norm.denormalize(t).numpy(), "uint16"), dn), norm


def test_zscore_and_percentiles_come_from_the_train_split_and_are_cached(small_geotiff, tmp_path):
    cache = tmp_path / "cache"
    data = raster(small_geotiff, normalization=ZScore(), cache_dir=str(cache))
    row, col, rows, cols = data.extent(0, "train")
    from srgan.data.rasters import read_raster

    train = read_raster(small_geotiff, data.bands).data[:, row : row + rows, col : col + cols].astype(np.float64)
    np.testing.assert_allclose(data.normalization.center, train.mean(axis=(1, 2)), rtol=1e-9)
    np.testing.assert_allclose(data.normalization.width, train.std(axis=(1, 2)), rtol=1e-6)
    (file,) = cache.glob("stats-*.json")
    stats = json.loads(file.read_text())
    assert stats["mean"] == data.normalization.center
    stats["mean"] = [0.0] * 4  # a second dataset reads the cache instead of recomputing
    file.write_text(json.dumps(stats))
    assert raster(small_geotiff, normalization=ZScore(), cache_dir=str(cache)).normalization.center == [0.0] * 4
    p = raster(small_geotiff, normalization=PercentileScale(2, 98), cache_dir=str(cache)).normalization
    lo, hi = np.percentile(train.reshape(4, -1), [2, 98], axis=1)
    np.testing.assert_allclose(p.center, lo, rtol=0.02)
    # The released model carries the numbers, not the recipe.
    config = data.normalization.to_config()
    assert config["_target_"] == "srgan.data.normalization.ZScore" and len(config["mean"]) == 4


def test_unfitted_statistics_are_an_error():
    with pytest.raises(RuntimeError, match="ZScore has no statistics"):
        ZScore().normalize(np.zeros((1, 2, 2)))


# -- splits, filters, loading ------------------------------------------------------------------


@pytest.mark.parametrize("axis", ["columns", "rows"])
def test_split_areas_are_disjoint_blocks_with_a_gap(small_geotiff, axis):
    data = raster(
        small_geotiff,
        split={**SPLIT, "axis": axis}
        if axis == "columns"
        else {"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}, "gap": 4, "axis": "rows"},
        patch_size=16,
    )
    covered = np.zeros((96, 192), dtype=int)
    for split in ("train", "val", "test"):
        row, col, rows, cols = data.extent(0, split)
        covered[row : row + rows, col : col + cols] += 1
        region = data.region(split)
        assert region.hr.shape[-2:] == (rows, cols)
    assert covered.max() == 1  # never overlapping


def test_water_filter_keeps_only_land_patches(tmp_path):
    data = np.full((4, 64, 192), 2000, np.uint16)
    data[3, :, :96] = 300  # the west half is water: NIR below 600
    path = write_geotiff(tmp_path / "coast.tif", data, ["B04", "B03", "B02", "B08"])
    filters = {"water_band": "B08", "water_below": 600, "max_water": 0.25}
    patches = raster(path, filters=filters, split={**SPLIT, "fractions": {"train": 0.8, "val": 0.1, "test": 0.1}})
    for i in range(20):
        hr = patches.train_dataset(20, 0, augment=False)[i]["hr"]
        assert (hr[3] < 0.06).float().mean() <= 0.25
    impossible = raster(path, filters={**filters, "max_water": 0.0, "max_tries": 5}, split={**SPLIT, "gap": 0})
    with pytest.raises(
        RasterError, match=r"no training patch passed dataset.filters in 5 tries \(rejected for \{'water'"
    ):
        for i in range(50):
            impossible.train_dataset(50, 0)[i]


def test_nodata_and_nan_are_masked_or_rejected(tmp_path):
    data = np.full((4, 64, 160), 1500.0, np.float32)
    data[:, 10:20, 10:20] = np.nan
    path = write_geotiff(tmp_path / "nan.tif", data, ["B04", "B03", "B02", "B08"])
    with pytest.raises(RasterError, match=r"nan\.tif: NaN pixels in band\(s\) \['B04', 'B03', 'B02', 'B08'\]"):
        raster(path, nan_policy="reject")
    masked = raster(path, nan_policy="mask")
    assert torch.isfinite(masked.region("train").hr).all()
    assert masked.region("train").hr[0, 15, 15] == 0.0
    blank = np.zeros((4, 64, 160), np.uint16)
    blank[:, :, :40] = 1000
    path = write_geotiff(tmp_path / "blank.tif", blank, ["B04", "B03", "B02", "B08"])
    import rasterio

    with rasterio.open(path, "r+") as dst:
        dst.nodata = 0
    with pytest.raises(RasterError, match=r"blank\.tif: the val area is entirely nodata"):
        raster(path)


def test_bad_rasters_are_named_before_training(tmp_path, small_geotiff):
    with pytest.raises(RasterError, match=r"missing\.tif: no such file"):
        raster(tmp_path / "missing.tif")
    with pytest.raises(RasterError, match=r"small\.tif: no band named 'B11'"):
        raster(small_geotiff, bands=["B04", "B11"], num_bands=2)
    tiny = write_geotiff(tmp_path / "tiny.tif", np.ones((4, 12, 120), np.uint16), ["B04", "B03", "B02", "B08"])
    with pytest.raises(RasterError, match=r"tiny\.tif: 12x120 px is smaller than a patch"):
        raster(tiny).train_dataset(4, 0)
    narrow = write_geotiff(tmp_path / "narrow.tif", np.ones((4, 12, 12), np.uint16), ["B04", "B03", "B02", "B08"])
    with pytest.raises(RasterError, match=r"narrow\.tif: split 'train' gets no columns out of width 12"):
        raster(narrow)
    complex_ = write_geotiff(tmp_path / "complex.tif", np.ones((4, 64, 64), np.complex64), ["B04", "B03", "B02", "B08"])
    with pytest.raises(RasterError, match=r"complex\.tif: unsupported data type complex64"):
        raster(complex_)
    other = write_geotiff(tmp_path / "other.tif", np.ones((4, 96, 192), np.uint16), ["B04", "B03", "B02", "B8A"])
    with pytest.raises(RasterError, match="B8A"):
        raster([str(small_geotiff), str(other)])


def test_a_list_of_rasters_feeds_one_dataset_through_worker_processes(small_geotiff, tmp_path):
    second = write_geotiff(
        tmp_path / "second.tif", np.full((4, 96, 192), 3000, np.uint16), ["B04", "B03", "B02", "B08"]
    )
    data = raster([str(small_geotiff), str(second)])
    first = data.regions("val")[0]  # two same-sized files: twice one file's tiles
    one_file = Tiles(first.lr, first.hr, data.scale, data.val_tile)
    assert len(data.regions("val")) == 2 and len(data.val_dataset("val")) == 2 * len(one_file)
    loader = DataLoader(data.train_dataset(16, 0), batch_size=8, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["hr"].shape == (8, 4, 16, 16)
    means = torch.cat([b["hr"].mean(dim=(1, 2, 3)) for b in batches])
    constant = (means - 0.3).abs() < 1e-6
    assert constant.any() and not constant.all()  # patches from both files


# -- paired folders (SEN2NAIP layout) -----------------------------------------------------------


def sen2naip(root, regions=8, bands=4, scale=4, size=16):
    rng = np.random.default_rng(0)
    for i in range(regions):
        folder = root / f"ROI_{i:04d}"
        folder.mkdir(parents=True)
        hr = rng.integers(0, 4000, (bands, size * scale, size * scale)).astype(np.uint16)
        lr = hr.reshape(bands, size, scale, size, scale).mean(axis=(2, 4)).astype(np.uint16)
        write_geotiff(folder / "hr.tif", hr, None, pixel=2.5)
        write_geotiff(folder / "lr.tif", lr, None, pixel=10.0)
    return root


def paired(root, **kwargs):
    args = dict(
        root=str(root),
        bands=[1, 2, 3, 4],
        num_bands=4,
        scale=4,
        normalization=LinearScale(10000.0),
        split={"fractions": {"train": 0.5, "val": 0.25, "test": 0.25}},
        patch_size=32,
        val_tile=32,
    )
    args.update(kwargs)
    return PairedFolderData(**args)


def test_paired_folder_loads_aligned_real_pairs_split_by_region(tmp_path):
    data = paired(sen2naip(tmp_path / "sen2naip"))
    names = {s: {id(p[1]) for p in pairs} for s, pairs in data.pairs.items()}
    assert sum(len(v) for v in names.values()) == 8 and all(names.values())
    assert not (names["train"] & names["val"]) and not (names["val"] & names["test"])
    item = data.train_dataset(4, seed=1, augment=False)[2]
    assert item["lr"].shape == (4, 8, 8) and item["hr"].shape == (4, 32, 32)
    # lr.tif is the (truncated) block mean of hr.tif in this folder: the windows are aligned.
    assert (Resample(4)(item["hr"]) - item["lr"]).abs().max() < 1.5 / 10000
    region = data.region("val")
    assert region.hr.shape[-1] == 4 * region.lr.shape[-1]


def test_paired_folder_errors_name_the_region(tmp_path):
    root = sen2naip(tmp_path / "bad", regions=6)
    write_geotiff(root / "ROI_0003" / "lr.tif", np.zeros((4, 15, 16), np.uint16), None)
    with pytest.raises(RasterError, match=r"ROI_0003: hr\.tif is 64x64 px and lr\.tif 15x16 px, not x4"):
        paired(root)
    (root / "ROI_0003" / "lr.tif").unlink()
    with pytest.raises(RasterError, match=r"ROI_0003/lr\.tif: no such file"):
        paired(root)
    with pytest.raises(RasterError, match="no such folder"):
        paired(tmp_path / "nowhere")
    with pytest.raises(RasterError, match=r"band index 5 is out of range"):
        paired(sen2naip(tmp_path / "ok", regions=4), bands=[1, 2, 3, 5])


def test_paired_folder_band_names_fill_in_where_the_files_have_none_and_never_rename(tmp_path):
    bare = sen2naip(tmp_path / "bare")
    assert paired(bare).band_names == ["band1", "band2", "band3", "band4"]  # null: as before
    data = paired(bare, band_names=["R", "G", "B", "NIR"], rgb_bands=["R", "G", "B"])
    assert data.band_names == ["R", "G", "B", "NIR"] and data.rgb_indices == [0, 1, 2]
    assert all(hr.band_names == ["R", "G", "B", "NIR"] for pairs in data.pairs.values() for _, hr in pairs)
    named = tmp_path / "named"
    for folder in sorted(bare.iterdir()):
        for image in ("lr.tif", "hr.tif"):
            (named / folder.name).mkdir(parents=True, exist_ok=True)
            with rasterio.open(folder / image) as src:
                write_geotiff(named / folder.name / image, src.read(), ["B04", "B03", "B02", "B08"], src.res[0])
    # The files' own names: agreeing band_names pass, and bands select by name.
    assert paired(named, band_names=["B04", "B03", "B02", "B08"]).band_names == ["B04", "B03", "B02", "B08"]
    by_name = paired(named, bands=["B08", "B04"], num_bands=2, band_names=None)
    assert by_name.band_names == ["B08", "B04"]
    with pytest.raises(RasterError) as err:
        paired(named, band_names=["R", "G", "B", "NIR"])
    message = str(err.value)
    assert str(named / "ROI_0000" / "hr.tif") in message
    assert "['B04', 'B03', 'B02', 'B08']" in message and "['R', 'G', 'B', 'NIR']" in message
    with pytest.raises(ValueError, match=r"dataset.band_names must name each of the 4 dataset.bands"):
        paired(bare, band_names=["R", "G", "B"])


def test_the_paired_folder_config_names_rgbn_and_interpolates_the_band_count(tmp_path, monkeypatch):
    monkeypatch.setenv("SRGAN_CACHE_DIR", str(tmp_path / "cache"))
    root = sen2naip(tmp_path / "pairs", regions=24, size=32)
    cfg = compose_config("train", ["dataset=paired_folder", f"dataset.root={root}"])
    assert cfg.dataset.band_names == ["R", "G", "B", "NIR"] and cfg.generator.in_channels == 4
    assert instantiate(cfg.dataset, _convert_="all").band_names == ["R", "G", "B", "NIR"]
    three = compose_config(
        "train",
        ["dataset=paired_folder", f"dataset.root={root}", "dataset.bands=[1,2,3]", "dataset.band_names=[R,G,B]"],
    )
    assert three.dataset.num_bands == three.generator.in_channels == 3
    assert instantiate(three.dataset, _convert_="all").band_names == ["R", "G", "B"]


# -- configs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "dataset" / "degradation").glob("*.yaml")))
def test_every_degradation_option_instantiates_on_the_sample(option):
    cfg = compose_config("train", [f"dataset/degradation={option}"])
    data = instantiate(cfg.dataset, _convert_="all")
    item = data.train_dataset(4, 0)[1]
    if getattr(data.degradation, "on_device", False):  # LR is made by the training loop, per batch
        item = data.degradation.degrade_batch({k: v[None] for k, v in item.items()}, seed=0)
        item = {k: v[0] for k, v in item.items() if torch.is_tensor(v)}
    assert item["lr"].shape == (4, 24, 24) and torch.isfinite(item["lr"]).all()
    assert item["hr_valid"].shape == (96, 96) and item["hr_valid"].all()


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "dataset" / "normalization").glob("*.yaml")))
def test_every_normalization_option_instantiates_on_the_sample(option, tmp_path, monkeypatch):
    monkeypatch.setenv("SRGAN_CACHE_DIR", str(tmp_path))
    cfg = compose_config("train", [f"dataset/normalization={option}"])
    data = instantiate(cfg.dataset, _convert_="all")
    region = data.region("val")
    stored = data.normalization.denormalize(region.hr)
    assert 0 <= float(stored.min()) and float(stored.max()) < 20000  # back in the file's DN


def test_synthetic_dataset_is_small_and_deterministic():
    cfg = compose_config("train", ["dataset=synthetic"])
    a, b = instantiate(cfg.dataset, _convert_="all"), instantiate(cfg.dataset, _convert_="all")
    assert isinstance(a, SyntheticSRData) and a.band_names == ["S1", "S2", "S3", "S4"]
    torch.testing.assert_close(a.train_dataset(4, 0)[3]["hr"], b.train_dataset(4, 0)[3]["hr"])


def test_bundled_20m_and_naip_samples_are_what_the_configs_say():
    import rasterio

    from srgan.config import PROJECT_ROOT

    sample = PROJECT_ROOT / "data" / "sample"
    with rasterio.open(next(sample.glob("*_20m_*.tif"))) as src:
        assert src.descriptions == ("B05", "B06", "B07", "B8A", "B11", "B12")
        assert src.res == (20.0, 20.0) and src.crs.to_epsg() == 32618 and src.dtypes[0] == "uint16"
    with rasterio.open(next(sample.glob("naip_*.tif"))) as src:
        assert src.descriptions == ("R", "G", "B", "NIR")
        assert src.res == (5.0, 5.0) and src.crs.to_epsg() == 26914 and src.dtypes[0] == "uint8"
    assert (sample / "README.md").read_text().count("Contains modified Copernicus Sentinel data 2016") >= 2


def test_only_the_split_that_is_used_must_hold_a_patch(tmp_path):
    """A small foreign raster evaluated on its test area: its narrow val area must not matter."""
    data = (1000 + 500 * np.random.default_rng(0).random((4, 40, 200))).astype(np.uint16)
    path = write_geotiff(tmp_path / "foreign.tif", data, ["B04", "B03", "B02", "B08"])
    split = {"fractions": {"train": 0.2, "val": 0.05, "test": 0.75}, "gap": 0, "axis": "columns"}
    ds = raster(path, patch_size=16, split=split)
    (region,) = ds.regions("test")
    assert region.hr.shape[-1] >= 16
    with pytest.raises(RasterError, match=r"foreign\.tif: split 'val' is \d+x40 px, smaller than a patch"):
        ds.regions("val")


@pytest.mark.parametrize("kind", ["zscore", "percentile"])
def test_paired_folder_fits_statistics_on_its_train_regions(tmp_path, kind):

    root = sen2naip(tmp_path / "pairs")
    norm = ZScore() if kind == "zscore" else PercentileScale(2.0, 98.0)
    data = paired(root, normalization=norm, cache_dir=None)
    assert norm.fitted and data.lr_normalization is norm
    train_hr = np.concatenate(
        [hr.read(Window(0, 0, hr.width, hr.height))[0].reshape(4, -1) for _, hr in data.pairs["train"]], 1
    )
    if kind == "zscore":
        np.testing.assert_allclose(norm.center, train_hr.mean(1), rtol=1e-6)
    else:
        np.testing.assert_allclose(norm.center, np.percentile(train_hr, 2.0, axis=1), rtol=0.02)
    item = data.train_dataset(2, seed=0)[0]  # used to fail here: "no statistics yet"
    assert torch.isfinite(item["hr"]).all() and abs(float(item["hr"].mean())) < 3
    # A separate LR normalisation is fitted on the LR images of the same regions.
    lr_norm = ZScore()
    paired(root, normalization=LinearScale(10000.0), lr_normalization=lr_norm)
    assert lr_norm.fitted


@pytest.mark.parametrize(
    "fractions",
    [{"train": 0.8, "val": 0.1, "test": 1.0}, {"train": 0.5, "val": -0.5, "test": 1.0}, {"train": 1.0, "tset": 0.0}],
)
def test_split_fractions_are_checked(tmp_path, fractions, small_geotiff):
    root = sen2naip(tmp_path / "pairs", regions=4)
    with pytest.raises(ValueError, match="dataset.split.fractions"):
        paired(root, split={"fractions": fractions})
    with pytest.raises(ValueError, match="dataset.split.fractions"):
        raster(small_geotiff, split={"fractions": fractions, "gap": 0})


# -- patches, regions and tiles -------------------------------------------------------------------


def test_column_blocks_are_disjoint_aligned_and_gapped():
    blocks = column_blocks(1024, {"train": 0.7, "val": 0.1, "test": 0.2}, gap=32, align=4)
    (a0, a1), (b0, b1), (c0, c1) = blocks["train"], blocks["val"], blocks["test"]
    assert a0 == 0 and c1 == 1024
    assert b0 - a1 >= 32 and c0 - b1 >= 32
    assert all(v % 4 == 0 for v in (a1, b0, b1, c0))
    with pytest.raises(ValueError, match="sum to 1"):
        column_blocks(100, {"train": 0.7, "val": 0.7}, 0)
    with pytest.raises(ValueError, match="unknown split"):
        column_blocks(100, {"train": 0.5, "holdout": 0.5}, 0)


def test_regions_do_not_overlap_and_lr_is_degraded_hr(small_geotiff):
    data = raster(small_geotiff)
    seen = set()
    for split in ("train", "val", "test"):
        region = data.region(split)
        c0, c1 = data.blocks[0][split]
        assert not seen & set(range(c0, c1))
        seen |= set(range(c0, c1))
        torch.testing.assert_close(region.lr, Resample(4)(region.hr))
        transform = data.sources[0].transform
        assert region.hr_transform.c == transform.c + c0 * transform.a


def test_random_patches_are_deterministic_aligned_pairs(small_geotiff):
    data = raster(small_geotiff)
    ds = data.train_dataset(length=20, seed=3, augment=False)
    a, b = ds[5], ds[5]
    torch.testing.assert_close(a["hr"], b["hr"])
    assert a["lr"].shape == (4, 4, 4) and a["hr"].shape == (4, 16, 16)
    torch.testing.assert_close(a["lr"], Resample(4)(a["hr"]))
    augmented = data.train_dataset(length=20, seed=3, augment=True)
    for i in range(10):  # flips and rotations are applied identically to LR and HR
        item = augmented[i]
        torch.testing.assert_close(item["lr"], Resample(4)(item["hr"]))


def test_dataset_rejects_inconsistent_config(small_geotiff):
    with pytest.raises(ValueError, match="num_bands=3"):
        raster(small_geotiff, num_bands=3)
    with pytest.raises(ValueError, match="patch_size=18"):
        raster(small_geotiff, patch_size=18)
    with pytest.raises(ValueError, match="rgb_bands"):
        raster(small_geotiff, rgb_bands=["B05", "B04", "B03"])


@pytest.mark.parametrize("rows,cols,tile", [(96, 24, 128), (40, 64, 16), (33, 17, 32)])
def test_validation_tiles_cover_the_region_exactly(rows, cols, tile):
    from srgan.data.datasets import Tiles

    hr = torch.rand(2, rows * 4, cols * 4)
    lr = Resample(4)(hr)
    tiles = Tiles(lr, hr, 4, tile)
    covered = torch.zeros(rows * 4, cols * 4, dtype=torch.bool)
    for i, (r, c) in enumerate(tiles.origins):
        item = tiles[i]
        assert item["lr"].shape == (2, min(tile // 4, rows), min(tile // 4, cols))
        assert item["hr"].shape[-2:] == (item["lr"].shape[-2] * 4, item["lr"].shape[-1] * 4)
        torch.testing.assert_close(item["lr"], Resample(4)(item["hr"]))
        covered[r * 4 : r * 4 + item["hr"].shape[-2], c * 4 : c * 4 + item["hr"].shape[-1]] = True
    assert covered.all()


def test_two_processes_caching_the_same_statistics_at_once_both_succeed(tmp_path, monkeypatch):
    """Parallel sweep jobs (make sweep JOBS=2) on one raster compute and cache the same statistics:
    each must write its own temporary file, or one moves the other's away before it is renamed."""
    import threading

    import srgan.data.datasets as datasets

    monkeypatch.setenv("SRGAN_CACHE_DIR", str(tmp_path / "cache"))
    real_replace = datasets.os.replace
    both_written = threading.Barrier(2, timeout=30)

    def replace_after_the_other_wrote(src, dst):
        both_written.wait()  # both writers have written their temporary file: now rename
        real_replace(src, dst)

    monkeypatch.setattr(datasets.os, "replace", replace_after_the_other_wrote)
    cfg = compose_config("train", ["dataset/normalization=zscore"])
    results, errors = [], []

    def build():
        try:
            results.append(instantiate(cfg.dataset, _convert_="all").normalization)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    (cached,) = (tmp_path / "cache").glob("stats-*.json")
    assert not [p for p in (tmp_path / "cache").iterdir() if p != cached]  # no temporary file left
    stats = json.loads(cached.read_text())
    assert len(stats["mean"]) == 4
    assert results[0].center == results[1].center == stats["mean"]
