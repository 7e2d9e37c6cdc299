"""GeoTIFF I/O: band selection by name or index, errors that name the file, round trips, safe writes."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from srgan.data.rasters import Raster, RasterError, read_raster, to_dtype, write_raster
from tests.conftest import write_geotiff


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
