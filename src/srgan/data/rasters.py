"""GeoTIFF reading and writing through rasterio, with band selection by name or index."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.windows import Window

log = logging.getLogger(__name__)

# Real-valued data types whose values a network can be trained on and written back in. Complex data
# would lose its imaginary part and int8 its sign in most toolchains downstream: both are refused,
# by training, evaluation and inference alike (one rule: ``select_bands``).
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")


class RasterError(ValueError):
    """A raster that cannot be used: unreadable, missing a band, wrong shape. Names the file."""


@dataclass
class BandSelection:
    """The bands of an open raster that a run uses: 1-based indices, names and their one data type."""

    indices: list[int]
    names: list[str]
    dtype: str


def select_bands(path: Path, src: Any, bands: Sequence[str | int] | None) -> BandSelection:
    """Resolve ``bands`` in an open rasterio dataset and check what every entry point needs: each
    band once, one supported data type across them. A file without georeference (a PNG renamed
    .tif, a bare array) is used but logged, since its outputs will have no CRS either."""
    indices = _band_indices(path, src.descriptions, src.count, bands)
    seen: dict[int, str | int] = {}
    for band, index in zip(bands or indices, indices):
        if index in seen:
            raise RasterError(f"{path}: band {band!r} is selected twice (as {seen[index]!r} and {band!r})")
        seen[index] = band
    dtypes = {src.dtypes[i - 1] for i in indices}
    if len(dtypes) > 1:
        per_band = ", ".join(f"{i}: {src.dtypes[i - 1]}" for i in indices)
        raise RasterError(f"{path}: the selected bands have different data types ({per_band})")
    dtype = dtypes.pop()
    if dtype not in SUPPORTED_DTYPES:
        raise RasterError(f"{path}: unsupported data type {dtype}; supported: {', '.join(SUPPORTED_DTYPES)}")
    if src.crs is None:
        log.warning(
            "%s: no CRS (driver %s%s); outputs made from it will not be georeferenced",
            path,
            src.driver,
            ", no geotransform" if src.transform.is_identity else "",
        )
    names = [src.descriptions[i - 1] or f"band{i}" for i in indices]
    return BandSelection(indices, names, dtype)


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
            chosen = select_bands(path, src, bands)
            data = src.read(chosen.indices, window=window)
            transform = src.window_transform(window) if window is not None else src.transform
            return Raster(data, transform, src.crs, chosen.names, chosen.dtype, src.nodata)
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
