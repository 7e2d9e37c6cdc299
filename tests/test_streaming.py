"""Large sets: held-out regions of paired sets and of many scenes are read one at a time, never all
held; a dataset of many scenes comes from a folder, a glob or a list, and is sampled by area."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from srgan.data.datasets import RasterSRData, StreamedRegions, StreamedTiles, Tiles
from srgan.data.degradation import Resample
from srgan.data.normalization import LinearScale
from srgan.data.rasters import RasterError
from tests.conftest import write_geotiff
from tests.test_datasets import paired, sen2naip


def _tiles_in_order(dataset) -> list[dict[str, torch.Tensor]]:
    return [dataset[i] for i in range(len(dataset))]


def test_paired_validation_reads_each_region_once_and_holds_one_at_a_time(tmp_path):
    data = paired(
        sen2naip(tmp_path / "set", regions=24, size=32),
        split={"fractions": {"train": 0.25, "val": 0.5, "test": 0.25}},
    )
    regions = data.regions("val")
    assert isinstance(regions, StreamedRegions) and len(regions) >= 8
    one_region = 4 * (128 * 128 + 32 * 32) * 4  # HR + LR float32 bytes of one region
    val = data.val_dataset("val")
    assert isinstance(val, StreamedTiles) and len(val) == 16 * len(regions)  # 32 px HR tiles of 128 px
    tracemalloc.start()
    try:
        for i in range(len(val)):
            val[i]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert val.regions.reads == len(regions)  # in order: each region read once
    # All regions together would be len(regions) x one_region; streamed, a few at most.
    assert peak < 4 * one_region < len(regions) * one_region / 2, (peak, one_region, len(regions))


def test_streamed_tiles_are_the_tiles_of_the_whole_regions(tmp_path):
    data = paired(sen2naip(tmp_path / "set", regions=12, size=16), val_tile=24)
    streamed = _tiles_in_order(data.val_dataset("val"))
    whole = [t for r in data.regions("val") for t in _tiles_in_order(Tiles(r.lr, r.hr, 4, 24, r.hr_valid))]
    assert len(streamed) == len(whole) > 0
    for a, b in zip(streamed, whole):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(IndexError):
        data.regions("val")[len(data.regions("val"))]


def _scene(path, width, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(100, 3000, (4, 128, width)).astype(np.uint16)
    return write_geotiff(path, data, ["B04", "B03", "B02", "B08"])


def _raster(path, **kwargs):
    args = dict(
        path=path,
        bands=["B04", "B03", "B02", "B08"],
        num_bands=4,
        scale=4,
        degradation=Resample(4, "box"),
        normalization=LinearScale(10000.0),
        split={"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}, "gap": 0},
        patch_size=32,
        val_tile=32,
    )
    args.update(kwargs)
    return RasterSRData(**args)


def test_many_scenes_from_a_folder_a_glob_or_a_list(tmp_path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    a, b, c = (_scene(scenes / f"{n}_10m.tif", w, i) for i, (n, w) in enumerate([("a", 200), ("b", 400), ("c", 200)]))
    (scenes / "notes.txt").write_text("not a raster")
    by_folder = _raster(str(scenes))
    assert [str(s.path) for s in by_folder.sources] == [str(a), str(b), str(c)]
    assert [str(s.path) for s in _raster(f"{scenes}/*_10m.tif").sources] == [str(a), str(b), str(c)]
    mixed = _raster([str(c), f"{scenes}/[ab]_10m.tif", str(c)])
    assert [str(s.path) for s in mixed.sources] == [str(c), str(a), str(b)]  # each file once
    with pytest.raises(RasterError, match=r"pattern .*\*\.tiff' matches no file"):
        _raster(f"{scenes}/*.tiff")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RasterError, match="empty holds no .tif"):
        _raster(str(tmp_path / "empty"))

    # Held-out areas of several scenes are streamed, their sizes known from the headers.
    regions = by_folder.regions("val")
    assert isinstance(regions, StreamedRegions) and len(regions) == 3
    assert [r.hr.shape[-2:] for r in regions] == [torch.Size(s) for s in regions.hr_shapes]
    # Training patches come from the scenes in proportion to their training areas (b is twice a).
    patches = by_folder.train_dataset(length=8, seed=0)
    assert patches.weights == pytest.approx(np.array([1, 2, 1]) / 4, abs=0.02)


def test_one_scene_keeps_its_held_out_area_in_memory(tmp_path):
    data = _raster(str(_scene(tmp_path / "one.tif", 200)))
    first = data.regions("val")
    assert isinstance(first, list) and first[0] is data.regions("val")[0]
