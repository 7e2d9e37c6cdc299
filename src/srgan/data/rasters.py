"""GeoTIFF reading and writing through rasterio, with band selection by name or index."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window

from srgan.files import replaced_atomically

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
    # Which pixels hold data (None: all). Written as the nodata value, or as NaN for a float raster
    # without one, or as an internal mask band for an integer raster without one.
    valid: np.ndarray | None = None


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
                if any(names):
                    hint = f"band names in the file: {', '.join(n for n in names if n)}"
                else:
                    hint = (
                        f"the file has no band descriptions: select its bands by 1-based index instead, "
                        f"e.g. bands=[{','.join(str(i) for i in range(1, min(count, 4) + 1))}]"
                    )
                raise RasterError(f"{path}: no band named {band!r}; {hint}")
            indices.append(names.index(band) + 1)
        else:
            raise RasterError(f"{path}: band {band!r} must be a band name or a 1-based index")
    return indices


NODATA_FROM_FILE = None
# ``nodata: none`` in a config: ignore the file's nodata tag (its value is real data, e.g. NIR = 0
# over water in a file tagged nodata=0); NaN and mask bands still mark missing pixels.
NODATA_IGNORED = "none"


def parse_nodata(value: Any, key: str = "nodata") -> float | str | None:
    """A ``nodata`` setting: None (the file's), ``"none"`` (ignore the file's tag) or a number."""
    if value is None or value == NODATA_IGNORED:
        return value
    if isinstance(value, bool):
        raise ValueError(f"{key} must be null (the file's), 'none' (ignore the file's tag) or a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{key} must be null (the file's), 'none' (ignore the file's tag) or a number, got {value!r}"
        ) from None


def effective_nodata(src: Any, indices: Sequence[int], nodata: float | str | None) -> float | None:
    """The nodata value in force for the selected bands: the override, or the file's tag."""
    if nodata == NODATA_IGNORED:
        return None
    if nodata is not None:
        return float(nodata)
    values = {src.nodatavals[i - 1] for i in indices} - {None}
    return float(values.pop()) if len(values) == 1 else (src.nodata if values else None)


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


def valid_pixels(
    src: Any, indices: Sequence[int], data: np.ndarray, window: Window | None, nodata: float | str | None = None
) -> np.ndarray:
    """Which pixels of ``data`` (the selected bands, read through ``window``) hold data.

    GDAL's per-dataset rule: a pixel is nodata only where *every* selected band equals its nodata
    value (one band at the nodata value, e.g. NIR = 0 over water, is data), or where the file's mask
    band or alpha band says so. ``nodata`` overrides the file's tag (a number) or ignores it
    (``"none"``). A NaN in any band makes the pixel unusable: a network cannot take it.
    """
    flags = [src.mask_flag_enums[i - 1] for i in indices]
    per_dataset = any(MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags)
    # GDAL writes any 4-band 8-bit GeoTIFF as RGBA unless told otherwise, so a NAIP-style R, G, B,
    # NIR file without a nodata tag has its NIR band as "alpha": a band used as data is no mask.
    alpha_is_data = any(MaskFlags.alpha in f for f in flags) and any(
        src.colorinterp[i - 1] == ColorInterp.alpha for i in indices
    )
    if alpha_is_data and nodata is None:
        band = next(i for i in indices if src.colorinterp[i - 1] == ColorInterp.alpha)
        _warn_once(f"{src.name}: band {band} is tagged as alpha but selected as data: it is not used as a mask")
    if nodata is None and per_dataset and not alpha_is_data:
        valid = (src.read_masks(list(indices), window=window) > 0).any(0)
    else:
        if nodata is None:
            values = [src.nodatavals[i - 1] for i in indices]
        else:
            values = [None if nodata == NODATA_IGNORED else float(nodata)] * len(indices)
        missing = np.ones(data.shape[1:], dtype=bool)
        for band, value in zip(data, values):
            if value is None:
                missing[:] = False
                break
            missing &= np.isnan(band) if math.isnan(value) else band == value
        valid = ~missing
    return valid & np.isfinite(data).all(0)


def read_raster(
    path: str | os.PathLike,
    bands: Sequence[str | int] | None = None,
    window: Window | None = None,
    nodata: float | str | None = None,
) -> Raster:
    """Read the selected bands of a GeoTIFF (all when ``bands`` is None), with their validity
    (:func:`valid_pixels`) in ``Raster.valid``."""
    path = Path(path)
    if not path.is_file():
        raise RasterError(f"{path}: no such file")
    try:
        with rasterio.open(path) as src:
            chosen = select_bands(path, src, bands)
            data = src.read(chosen.indices, window=window)
            transform = src.window_transform(window) if window is not None else src.transform
            valid = valid_pixels(src, chosen.indices, data, window, nodata)
            fill = effective_nodata(src, chosen.indices, nodata)
            return Raster(data, transform, src.crs, chosen.names, chosen.dtype, fill, valid)
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
    data = raster.data.astype(raster.dtype, copy=raster.valid is not None)
    nodata, mask = raster.nodata, None
    if raster.valid is not None and not raster.valid.all():
        if nodata is None and np.dtype(raster.dtype).kind == "f":
            nodata = float("nan")
        if nodata is None:
            mask = raster.valid.astype(np.uint8) * 255
        else:
            data[:, ~raster.valid] = nodata
    profile = dict(
        driver="GTiff",
        width=cols,
        height=rows,
        count=bands,
        dtype=raster.dtype,
        crs=raster.crs,
        transform=raster.transform,
        nodata=nodata,
        compress="deflate",
        predictor=3 if np.dtype(raster.dtype).kind == "f" else 2,
        # Bands are bands, not colours: without this GDAL makes a 4-band uint8 file RGBA, and every
        # GDAL reader (QGIS included) would take the 4th band (NIR) as transparency.
        photometric="MINISBLACK",
    )
    if rows >= 256 and cols >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with replaced_atomically(path, suffix=".tif") as tmp:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
            if mask is not None:
                dst.write_mask(mask)
            dst.descriptions = tuple(raster.band_names)
    return path


def to_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """Cast float values to ``dtype``: rounded and clipped to the integer range, as is for floats."""
    target = np.dtype(dtype)
    if target.kind in "ui":
        info = np.iinfo(target)
        return np.clip(np.rint(values), info.min, info.max).astype(target)
    return values.astype(target)
