"""GeoTIFF reading and writing through rasterio, with band selection by name or index."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.windows import Window


class RasterError(ValueError):
    """A raster that cannot be used: unreadable, missing a band, wrong shape. Names the file."""


@dataclass
class Raster:
    """Pixels ``(bands, rows, cols)`` with their georeference and band names."""

    data: np.ndarray
    transform: Affine
    crs: CRS | None
    band_names: list[str]
    dtype: str
    nodata: float | None = None


def _band_indices(
    path: Path, descriptions: Sequence[str | None], count: int, bands: Sequence[str | int] | None
) -> list[int]:
    """Map requested bands (names or 1-based indices) to 1-based indices, with errors naming the band."""
    if bands is None:
        return list(range(1, count + 1))
    names = [d or "" for d in descriptions]
    indices = []
    for band in bands:
        if isinstance(band, (int, np.integer)) and not isinstance(band, bool):
            if not 1 <= band <= count:
                raise RasterError(f"{path}: band index {band} is out of range 1..{count}")
            indices.append(int(band))
        elif isinstance(band, str):
            if band not in names:
                known = ", ".join(n for n in names if n) or "none (the file has no band descriptions)"
                raise RasterError(f"{path}: no band named {band!r}; band names in the file: {known}")
            indices.append(names.index(band) + 1)
        else:
            raise RasterError(f"{path}: band {band!r} must be a band name or a 1-based index")
    return indices


def read_raster(
    path: str | os.PathLike, bands: Sequence[str | int] | None = None, window: Window | None = None
) -> Raster:
    """Read the selected bands of a GeoTIFF (all when ``bands`` is None)."""
    path = Path(path)
    if not path.is_file():
        raise RasterError(f"{path}: no such file")
    try:
        with rasterio.open(path) as src:
            indices = _band_indices(path, src.descriptions, src.count, bands)
            data = src.read(indices, window=window)
            transform = src.window_transform(window) if window is not None else src.transform
            names = [src.descriptions[i - 1] or f"band{i}" for i in indices]
            return Raster(data, transform, src.crs, names, src.dtypes[indices[0] - 1], src.nodata)
    except RasterioError as err:
        raise RasterError(f"{path}: cannot read as a raster ({err})") from err


def write_raster(path: str | os.PathLike, raster: Raster, overwrite: bool = False) -> Path:
    """Write a tiled, compressed GeoTIFF atomically (a temporary file renamed into place).

    A crash or a bad value mid-write leaves any existing file at ``path`` untouched.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=true to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    bands, rows, cols = raster.data.shape
    profile = dict(
        driver="GTiff",
        width=cols,
        height=rows,
        count=bands,
        dtype=raster.dtype,
        crs=raster.crs,
        transform=raster.transform,
        nodata=raster.nodata,
        compress="deflate",
        predictor=3 if np.dtype(raster.dtype).kind == "f" else 2,
    )
    if rows >= 256 and cols >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    fd, tmp = tempfile.mkstemp(suffix=".tif", dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(raster.data.astype(raster.dtype, copy=False))
            dst.descriptions = tuple(raster.band_names)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def to_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """Cast float values to ``dtype``: rounded and clipped to the integer range, as is for floats."""
    target = np.dtype(dtype)
    if target.kind in "ui":
        info = np.iinfo(target)
        return np.clip(np.rint(values), info.min, info.max).astype(target)
    return values.astype(target)
