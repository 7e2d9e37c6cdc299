"""GeoTIFF I/O, band selection, area splits, degradation and the patch datasets."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from srgan.data.datasets import RasterSRData
from srgan.data.degradation import Resample
from srgan.data.normalization import LinearScale
from srgan.data.rasters import Raster, RasterError, read_raster, to_dtype, write_raster
from srgan.data.splits import column_blocks
from tests.conftest import write_geotiff


def make_data(path, **kwargs):
    args = dict(
        path=str(path),
        bands=["B04", "B03", "B02", "B08"],
        num_bands=4,
        scale=4,
        degradation=Resample(4, "box"),
        normalization=LinearScale(10000.0),
        split={"fractions": {"train": 0.7, "val": 0.1, "test": 0.2}, "gap": 8},
        patch_size=16,
        val_tile=16,
    )
    args.update(kwargs)
    return RasterSRData(**args)


def test_bands_selected_by_name_in_requested_order(small_geotiff):
    full = read_raster(small_geotiff)
    picked = read_raster(small_geotiff, ["B08", "B04"])
    assert picked.band_names == ["B08", "B04"]
    np.testing.assert_array_equal(picked.data, full.data[[3, 0]])
    np.testing.assert_array_equal(read_raster(small_geotiff, [4]).data, full.data[[3]])


def test_missing_band_names_the_file_and_band(small_geotiff):
    with pytest.raises(RasterError, match=r"small\.tif.*'B11'.*B04, B03, B02, B08"):
        read_raster(small_geotiff, ["B04", "B11"])
    with pytest.raises(RasterError, match="index 7"):
        read_raster(small_geotiff, [7])


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"II*\x00this is not a tiff")
    with pytest.raises(RasterError, match="corrupt.tif"):
        read_raster(bad)
    with pytest.raises(RasterError, match="nope.tif: no such file"):
        read_raster(tmp_path / "nope.tif")


def test_geotiff_round_trip_keeps_georeference_dtype_and_names(small_geotiff, tmp_path):
    src = read_raster(small_geotiff)
    out = write_raster(tmp_path / "copy.tif", src)
    back = read_raster(out)
    assert back.crs == src.crs and back.transform == src.transform
    assert back.dtype == "uint16" and back.band_names == src.band_names
    np.testing.assert_array_equal(back.data, src.data)


def test_write_never_clobbers_without_overwrite(small_geotiff, tmp_path):
    target = tmp_path / "keep.tif"
    target.write_bytes(b"precious")
    src = read_raster(small_geotiff)
    with pytest.raises(FileExistsError, match="keep.tif"):
        write_raster(target, src)
    bad = Raster(src.data, src.transform, src.crs, src.band_names, "not-a-dtype")
    with pytest.raises(TypeError):
        write_raster(target, bad, overwrite=True)
    assert target.read_bytes() == b"precious"  # a failed write leaves the old file intact
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".keep")] == []


def test_to_dtype_rounds_and_clips():
    np.testing.assert_array_equal(to_dtype(np.array([-3.0, 1.4, 1.6, 70000.0]), "uint16"), [0, 1, 2, 65535])


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


def test_box_degradation_is_the_block_mean():
    hr = torch.arange(64.0).view(1, 8, 8)
    lr = Resample(4, "box")(hr)
    assert lr.shape == (1, 2, 2)
    assert lr[0, 0, 0] == hr[0, :4, :4].mean()
    with pytest.raises(ValueError, match="multiple of scale"):
        Resample(4)(torch.zeros(1, 6, 8))


def test_regions_do_not_overlap_and_lr_is_degraded_hr(small_geotiff):
    data = make_data(small_geotiff)
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
    data = make_data(small_geotiff)
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
        make_data(small_geotiff, num_bands=3)
    with pytest.raises(ValueError, match="patch_size=18"):
        make_data(small_geotiff, patch_size=18)
    with pytest.raises(ValueError, match="rgb_bands"):
        make_data(small_geotiff, rgb_bands=["B05", "B04", "B03"])


def test_file_without_band_names_reports_that(tmp_path):
    path = write_geotiff(tmp_path / "anon.tif", np.zeros((3, 16, 16), np.uint16), None)
    with pytest.raises(RasterError, match="no band descriptions"):
        read_raster(path, ["B04"])
    assert read_raster(path, [1, 2]).band_names == ["band1", "band2"]


def test_bundled_sample_is_real_sentinel2():
    from srgan.config import PROJECT_ROOT

    path = next((PROJECT_ROOT / "data" / "sample").glob("*_10m_*.tif"))
    with rasterio.open(path) as src:
        assert src.descriptions == ("B02", "B03", "B04", "B08")
        assert src.crs.to_epsg() == 32618 and src.res == (10.0, 10.0)
        assert src.dtypes[0] == "uint16"


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
