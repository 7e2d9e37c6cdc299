"""Data sources for training and evaluation.

- :class:`RasterSRData`: one or more GeoTIFFs; HR is the raster, LR is made by a degradation model.
  Training patches are read through rasterio windows (with the context the degradation needs),
  so a large raster is never loaded whole; the validation and test areas are read as blocks.
- :class:`PairedData`: real LR/HR pairs, whole regions assigned to splits; its sources only list
  their pairs: :class:`PairedFolderData` (the SEN2NAIP layout, ``<root>/<region>/lr.tif``,
  ``hr.tif``) and :class:`srgan.data.taco.TacoPairsData` (the samples of TACO files).
- :class:`SyntheticSRData`: generated images, for fast tests only.

All of them split by area (never random overlapping windows), name the file and the problem when
input cannot be used, and produce items ``{"lr", "hr"}`` of normalised float32 tensors.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.windows import Window
from torch.utils.data import ConcatDataset, Dataset

from srgan.data.degradation import Resample
from srgan.data.normalization import resolve_auto
from srgan.data.rasters import RasterError, effective_nodata, parse_nodata, select_bands, valid_pixels
from srgan.data.splits import SPLITS, check_fractions, column_blocks
from srgan.files import replaced_atomically

NAN_POLICIES = ("mask", "reject")


@dataclass
class Region:
    """One split's area: normalised HR and its LR, with the HR georeference and which pixels hold
    data (``(H, W)`` booleans; nodata pixels are 0 in the normalised tensors)."""

    lr: torch.Tensor
    hr: torch.Tensor
    hr_transform: Affine
    crs: CRS | None
    hr_valid: torch.Tensor | None = None
    lr_valid: torch.Tensor | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.hr_valid is None:
            self.hr_valid = torch.ones(self.hr.shape[-2:], dtype=torch.bool)
        if self.lr_valid is None:
            self.lr_valid = torch.ones(self.lr.shape[-2:], dtype=torch.bool)


@dataclass
class Area:
    """Where a split's pixels lie: the file, its CRS (WKT, None without one), the area's bounds in
    that CRS and its pixel window ``(row, col, rows, cols)``. A model card records its training
    areas, so that an evaluation can refuse a test area that overlaps them."""

    path: str
    crs: str | None
    bounds: tuple[float, float, float, float]
    pixels: tuple[int, int, int, int]

    @classmethod
    def of(cls, path: Path, crs: CRS | None, transform: Affine, pixels: tuple[int, int, int, int]) -> Area:
        row, col, rows, cols = pixels
        xs, ys = zip(*(transform @ (c, r) for r, c in ((row, col), (row + rows, col + cols))))
        left, bottom, right, top = min(xs), min(ys), max(xs), max(ys)
        resolved = str(path.resolve()) if path.exists() else str(path)
        return cls(resolved, crs.to_wkt() if crs else None, (left, bottom, right, top), tuple(pixels))

    def to_card(self) -> dict[str, Any]:
        return {"path": self.path, "crs": self.crs, "bounds": list(self.bounds), "pixels": list(self.pixels)}

    def overlaps(self, other: Area) -> bool:
        """Both georeferenced in one CRS: their bounds share area. Otherwise: the same file and
        their pixel windows share pixels."""
        if self.crs and other.crs:
            if CRS.from_wkt(self.crs) != CRS.from_wkt(other.crs):
                return False
            (l1, b1, r1, t1), (l2, b2, r2, t2) = self.bounds, other.bounds
            width = min(max(r1, l1), max(r2, l2)) - max(min(r1, l1), min(r2, l2))
            height = min(max(t1, b1), max(t2, b2)) - max(min(t1, b1), min(t2, b2))
            return width > 0 and height > 0
        if self.path != other.path:
            return False
        (r1, c1, h1, w1), (r2, c2, h2, w2) = self.pixels, other.pixels
        return min(r1 + h1, r2 + h2) > max(r1, r2) and min(c1 + w1, c2 + w2) > max(c1, c2)


@dataclass
class PatchFilter:
    """Which training patches to reject (shares of the patch's pixels; values in stored units).

    ``water_band`` below ``water_below`` marks water (e.g. Sentinel-2 B08 below 600, reflectance
    0.06); ``saturated_at`` marks saturated pixels (e.g. 65535 or 255). A rejected patch is
    redrawn, deterministically, up to ``max_tries`` times.
    """

    max_nodata: float = 0.5
    water_band: str | int | None = None
    water_below: float = 0.0
    max_water: float = 1.0
    saturated_at: float | None = None
    max_saturated: float = 1.0
    max_tries: int = 100

    def __post_init__(self) -> None:
        for key in ("max_nodata", "max_water", "max_saturated"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"dataset.filters.{key} must be a share in [0, 1], got {getattr(self, key)}")
        if self.max_tries < 1:
            raise ValueError(f"dataset.filters.max_tries must be >= 1, got {self.max_tries}")

    def reason(self, data: np.ndarray, valid: np.ndarray, water_index: int | None) -> str | None:
        """Why a patch is rejected, or None if it is kept."""
        n = valid.size
        if (n - valid.sum()) / n > self.max_nodata:
            return "nodata"
        if water_index is not None and self.max_water < 1.0:
            if ((data[water_index] < self.water_below) & valid).sum() / n > self.max_water:
                return "water"
        if self.saturated_at is not None and self.max_saturated < 1.0:
            if ((data >= self.saturated_at).any(0) & valid).sum() / n > self.max_saturated:
                return "saturated"
        return None


def make_filter(filters: dict[str, Any] | None) -> PatchFilter:
    filters = dict(filters or {})
    unknown = set(filters) - {f.name for f in fields(PatchFilter)}
    if unknown:
        raise ValueError(f"dataset.filters: unknown key(s) {sorted(unknown)}")
    return PatchFilter(**filters)


def short(text: str, limit: int = 100) -> str:
    """``text`` whole up to ``limit`` characters, else its start and its length: for values a file
    supplies (ids, splits, paths) echoed in messages."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# The GDAL driver that reads a GeoTIFF stored inside a container, and no other.
GEOTIFF_ONLY = "GTiff"


class GeoTiffSource:
    """One GeoTIFF: band selection checked up front, windowed reads in stored units plus a validity
    mask (:func:`srgan.data.rasters.valid_pixels`: nodata where every band is at the nodata value or
    the file's mask says so; NaN in any band). ``nodata`` overrides the file's tag (a number) or
    ignores it (``"none"``). The file is opened lazily once per process, so the source can go to
    DataLoader workers.

    A GeoTIFF stored inside a container (a sample's member of a TACO file) is opened by the GDAL
    path the container's reader gives (``/vsisubfile/<offset>_<size>,<file>``, or a file under a
    TACO folder) with :meth:`member`; ``path`` is then the name messages use (``<file>/<sample>/hr``),
    and GDAL may read it as a GeoTIFF only (bytes of another format, such as VRT XML naming other
    files or URLs, are refused). A read that fails (a damaged or truncated file) is a
    :class:`RasterError` naming the image and the window.
    """

    def __init__(
        self, path: str | os.PathLike, bands: Sequence[str | int] | None, nodata: float | str | None = None
    ) -> None:
        self.path = Path(path)
        self.nodata_setting = parse_nodata(nodata, "dataset.nodata")
        if not self.path.is_file():
            raise RasterError(f"{self.path}: no such file")
        self._open(str(self.path), self.path, bands)

    @classmethod
    def member(
        cls,
        gdal_path: str,
        container: str | os.PathLike,
        name: str | os.PathLike,
        bands: Sequence[str | int] | None,
        nodata: float | str | None = None,
    ) -> GeoTiffSource:
        """A GeoTIFF inside ``container`` (a file or folder on disk), opened by ``gdal_path``, named
        ``name`` in messages. The path must point into the container: a ``/vsisubfile/`` range of
        the container file, or a file under the container folder; anything else (a path that the
        container's metadata made point elsewhere) is refused, and so are bytes that are not a
        GeoTIFF (GDAL would otherwise pick the driver from them: a VRT reads whatever it names)."""
        container = Path(container)
        if gdal_path.startswith("/vsisubfile/"):
            target = gdal_path.partition(",")[2]
            if not re.fullmatch(r"/vsisubfile/\d+_\d+,.+", gdal_path) or Path(target) != container:
                raise RasterError(f"{name}: its data path {short(repr(gdal_path))} does not point into {container}")
            on_disk = container
        else:
            on_disk = Path(gdal_path).resolve()
            if gdal_path.startswith("/vsi") or not on_disk.is_relative_to(container.resolve()):
                raise RasterError(f"{name}: its data path {short(repr(gdal_path))} does not point into {container}")
            if not on_disk.is_file():
                raise RasterError(f"{name}: {short(gdal_path)}: no such file")
        source = cls.__new__(cls)
        source.path = Path(name)
        source.nodata_setting = parse_nodata(nodata, "dataset.nodata")
        source._open(gdal_path, on_disk, bands, GEOTIFF_ONLY)
        return source

    def _open(
        self, gdal_path: str, on_disk: Path, bands: Sequence[str | int] | None, driver: str | None = None
    ) -> None:
        # What GDAL opens, the file whose size and time stamp its bytes (the statistics cache key),
        # and the one GDAL driver allowed to read it (None: the one GDAL picks from the bytes).
        self.gdal_path, self.on_disk, self.driver = gdal_path, on_disk, driver
        try:
            with self._rasterio_open() as src:
                chosen = select_bands(self.path, src, bands)
                self.indices, self.band_names, self.dtype = chosen.indices, chosen.names, chosen.dtype
                # The selected bands' own names (None where the file has no description).
                self.described = [src.descriptions[i - 1] or None for i in chosen.indices]
                self.nodata = effective_nodata(src, chosen.indices, self.nodata_setting)
                self.height, self.width = src.height, src.width
                self.transform, self.crs = src.transform, src.crs
        except RasterioError as err:
            raise RasterError(f"{self.path}: {self._not_readable()} ({err})") from err
        self._handle = None
        self._pid = None

    def _rasterio_open(self) -> Any:
        if self.driver is None:
            return rasterio.open(self.gdal_path)
        # rasterio hands GDAL the allowed drivers: other formats' bytes (VRT XML naming other files
        # or URLs, ...) are refused instead of read.
        return rasterio.open(self.gdal_path, driver=self.driver)

    def _not_readable(self) -> str:
        if self.driver == GEOTIFF_ONLY:
            return (
                "not a GeoTIFF, or not a readable one (TACO members are read as GeoTIFF only, never as "
                "another GDAL format such as VRT, which could read other files)"
            )
        return "cannot read as a raster"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None, "_pid": None}

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        if self._handle is None or self._pid != os.getpid():
            try:
                self._handle, self._pid = self._rasterio_open(), os.getpid()
            except RasterioError as err:
                raise RasterError(f"{self.path}: {self._not_readable()} ({err})") from err
        try:
            raw = self._handle.read(self.indices, window=window)
            valid = valid_pixels(self._handle, self.indices, raw, window, self.nodata_setting)
        except RasterioError as err:
            r, c, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
            raise RasterError(
                f"{self.path}: cannot read rows {r}-{r + h}, columns {c}-{c + w} ({err}); the file may be damaged "
                "or truncated"
            ) from err
        return raw.astype(np.float32), valid


class ArraySource:
    """An in-memory image with the same interface as :class:`GeoTiffSource`."""

    def __init__(self, data: np.ndarray, band_names: Sequence[str], name: str = "synthetic") -> None:
        self.data = data.astype(np.float32)
        self.path = Path(name)
        self.band_names = list(band_names)
        self.dtype = str(data.dtype)
        self.nodata = None
        self.height, self.width = data.shape[1:]
        self.transform, self.crs = Affine.identity(), None

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        r, c = int(window.row_off), int(window.col_off)
        data = self.data[:, r : r + int(window.height), c : c + int(window.width)]
        return data.copy(), np.isfinite(data).all(0)


def _statistics(
    sources: list[Any], blocks: list[tuple[int, int, int, int]], percentiles: Sequence[float], cache_dir: Path | None
) -> dict[str, list[float]]:
    """Per-band mean, std and percentiles of the valid pixels of the training blocks, streamed in
    row chunks and cached on disk under a key of the files (path, size, mtime), bands and blocks."""

    def stamp(source: Any) -> list[int]:
        # The file that holds the bytes: the GeoTIFF itself, or the container of a member.
        disk = getattr(source, "on_disk", source.path)
        return [disk.stat().st_size, disk.stat().st_mtime_ns] if disk.exists() else []

    key = json.dumps(
        [
            [str(s.path.resolve()) if s.path.exists() else str(s.path), getattr(s, "indices", None), b] + stamp(s)
            for s, b in zip(sources, blocks)
        ]
        + [sorted(percentiles)]
    )
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir).expanduser() / f"stats-{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"
        if cache.is_file():
            return json.loads(cache.read_text())
    bands = len(sources[0].band_names)
    total, total_sq, count = np.zeros(bands), np.zeros(bands), 0
    sample: list[np.ndarray] = []
    for source, (row, col, rows, cols) in zip(sources, blocks):
        for r in range(row, row + rows, 256):
            data, valid = source.read(Window(col, r, cols, min(256, row + rows - r)))
            values = data[:, valid].astype(np.float64)
            total += values.sum(1)
            total_sq += (values**2).sum(1)
            count += values.shape[1]
            sample.append(values[:, :: max(1, values.shape[1] // 20000)])
    if count == 0:
        raise RasterError(f"{sources[0].path}: the training area has no valid pixel to compute statistics from")
    mean = total / count
    stats = {"mean": mean.tolist(), "std": np.sqrt(np.maximum(total_sq / count - mean**2, 0)).tolist()}
    pooled = np.concatenate(sample, axis=1)
    for p in percentiles:
        stats[f"p{p:g}"] = np.percentile(pooled, p, axis=1).tolist()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with replaced_atomically(cache) as tmp:  # parallel jobs on the same data write the same cache
            Path(tmp).write_text(json.dumps(stats))
    return stats


def _fit_normalization(normalization: Any, sources, blocks, cache_dir) -> None:
    if getattr(normalization, "needs_statistics", False) and not normalization.fitted:
        percentiles = [normalization.low, normalization.high] if hasattr(normalization, "low") else []
        normalization.fit(_statistics(sources, blocks, percentiles, cache_dir))


def _rgb_indices(bands: list, band_names: list[str], rgb_bands: Sequence[str | int] | None) -> list[int]:
    if rgb_bands is None:
        return [0, 0, 0] if len(bands) < 3 else [0, 1, 2]
    out = []
    for band in rgb_bands:
        if band in bands:
            out.append(bands.index(band))
        elif band in band_names:
            out.append(band_names.index(band))
        else:
            raise ValueError(f"dataset.rgb_bands: {band!r} is not one of dataset.bands {bands}")
    return out


def _check_sizes(bands: list, num_bands: int, scale: int, patch_size: int, val_tile: int) -> None:
    if num_bands != len(bands):
        raise ValueError(f"dataset.num_bands={num_bands} but dataset.bands lists {len(bands)} bands: {bands}")
    for key, size in (("patch_size", patch_size), ("val_tile", val_tile)):
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError(f"dataset.{key} must be a positive integer, got {size!r}")
        if size % scale:
            raise ValueError(f"dataset.{key}={size} must be a multiple of dataset.scale={scale}")


def _normalized(normalization: Any, data: np.ndarray, valid: np.ndarray) -> torch.Tensor:
    """Stored units to the network's range; nodata and NaN pixels carry no signal (0)."""
    out = np.asarray(normalization.normalize(data), dtype=np.float32)
    out[:, ~valid] = 0.0
    return torch.from_numpy(out)


class StreamedRegions(Sequence):
    """A split's regions read when asked for, never all held at once: a large paired set (thousands of
    SEN2NAIP regions) or a long list of scenes validates and evaluates in the memory of one region.

    ``load(i)`` reads and degrades region ``i``; ``lr_shapes`` / ``hr_shapes`` come from the files'
    headers, so sizes are known without reading pixels. Iterating reads each region once; ``[i]``
    keeps the last region read, so consecutive tiles of one region read it once."""

    def __init__(
        self, load: Callable[[int], Region], lr_shapes: list[tuple[int, int]], hr_shapes: list[tuple[int, int]]
    ) -> None:
        self._load, self.lr_shapes, self.hr_shapes = load, lr_shapes, hr_shapes
        self._last: tuple[int, Region] | None = None
        self.reads = 0

    def __len__(self) -> int:
        return len(self.lr_shapes)

    def __getitem__(self, index: int) -> Region:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"region {index} of {len(self)}")
        index %= len(self)
        if self._last is None or self._last[0] != index:
            self._last = None  # let the previous region go before the next is read
            self._last = (index, self._load(index))
            self.reads += 1
        return self._last[1]

    def __iter__(self) -> Iterator[Region]:
        for index in range(len(self)):
            yield self[index]


def _crop_tile(region: Any, r: int, c: int, h: int, w: int, s: int) -> dict[str, torch.Tensor]:
    """The tile at LR ``(r, c)``, ``h x w`` LR pixels, of anything with ``lr``, ``hr``, ``hr_valid``."""
    hr_valid = region.hr_valid if region.hr_valid is not None else torch.ones(region.hr.shape[-2:], dtype=torch.bool)
    return {
        "lr": region.lr[:, r : r + h, c : c + w].contiguous(),
        "hr": region.hr[:, r * s : (r + h) * s, c * s : (c + w) * s].contiguous(),
        # Which HR pixels hold data (the validation grid leaves nodata out of its stretch).
        "hr_valid": hr_valid[r * s : (r + h) * s, c * s : (c + w) * s].bool().contiguous(),
    }


def _tile_origins(rows: int, cols: int, tile_rows: int, tile_cols: int) -> list[tuple[int, int]]:
    """Non-overlapping tile origins over ``rows x cols``, the last row and column shifted inwards."""

    def starts(size: int, step: int) -> list[int]:
        return sorted({min(i, size - step) for i in range(0, size, step)})

    return [(r, c) for r in starts(rows, tile_rows) for c in starts(cols, tile_cols)]


class StreamedTiles(Dataset):
    """:class:`Tiles` over every region of a :class:`StreamedRegions`, reading a region when its first
    tile is asked for (tiles in index order read each region once)."""

    def __init__(self, regions: StreamedRegions, scale: int, tile: int) -> None:
        self.regions, self.scale = regions, scale
        self.index: list[tuple[int, int, int, int, int]] = []  # region, row, col, tile rows, tile cols
        for i, (rows, cols) in enumerate(regions.lr_shapes):
            th, tw = min(tile // scale, rows), min(tile // scale, cols)
            self.index += [(i, r, c, th, tw) for r, c in _tile_origins(rows, cols, th, tw)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i, r, c, h, w = self.index[index]
        return _crop_tile(self.regions[i], r, c, h, w, self.scale)


class _HeldOutAreas:
    """What every data source offers besides training patches: the held-out areas as regions and tiles."""

    scale: int
    val_tile: int

    def regions(self, split: str) -> Sequence[Region]:
        raise NotImplementedError

    def region(self, split: str) -> Region:
        """The split's first (or only) area."""
        return self.regions(split)[0]

    def val_dataset(self, split: str = "val") -> Dataset:
        regions = self.regions(split)
        if isinstance(regions, StreamedRegions):
            return StreamedTiles(regions, self.scale, self.val_tile)
        tiles = [Tiles(r.lr, r.hr, self.scale, self.val_tile, r.hr_valid) for r in regions]
        return tiles[0] if len(tiles) == 1 else ConcatDataset(tiles)


def _dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


def _augment(*images: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    """One of the 8 flips / 90-degree rotations, identical for every image (LR, HR, validity masks)."""
    k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
    return tuple(_dihedral(x, k, flip).contiguous() for x in images)


RASTER_SUFFIXES = (".tif", ".tiff")


def expand_paths(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """``dataset.path`` as the files it names: a file, a folder (its ``*.tif`` / ``*.tiff``, not
    recursive), a glob pattern (``/data/scenes/*_10m.tif``, ``**`` recursive), or a list of these;
    sorted within each entry, each file once. An entry that names nothing is an error naming it."""
    entries = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not entries:
        raise ValueError("dataset.path lists no file")
    files: list[str] = []
    for entry in entries:
        text = str(entry)
        if Path(text).is_dir():
            found = sorted(str(p) for p in Path(text).iterdir() if p.suffix.lower() in RASTER_SUFFIXES and p.is_file())
            if not found:
                raise RasterError(f"dataset.path: folder {text} holds no .tif / .tiff file")
        elif any(ch in text for ch in "*?["):
            found = sorted(p for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not found:
                raise RasterError(f"dataset.path: pattern {text!r} matches no file")
        else:
            found = [text]  # a missing file is named by the reader
        files += found
    return list(dict.fromkeys(files))  # each file once, in first-named order


class RasterSRData(_HeldOutAreas):
    """GeoTIFF(s) as a super-resolution data source, each split into disjoint column blocks.

    Args:
        path: a GeoTIFF, a folder of them, a glob pattern, or a list of these (same bands in each;
            :func:`expand_paths`). Training patches are drawn from the files in proportion to
            their training areas; validation and test areas are read one file at a time.
        bands: band names (matched against the file's band descriptions) or 1-based indices.
        num_bands: the band count the rest of the config interpolates; must equal ``len(bands)``.
        scale: the super-resolution factor.
        degradation: makes LR from HR (``Resample`` or ``Degradation``).
        normalization: maps stored values to the network's range and back.
        split: ``{"fractions": {"train": .., "val": .., "test": ..}, "gap": pixels, "axis": "columns"}``:
            disjoint blocks of columns (or of rows, ``axis: rows``), ``gap`` HR pixels apart.
        patch_size: HR size of training patches (a multiple of ``scale``).
        val_tile: HR size of validation tiles (a multiple of ``scale``).
        rgb_bands: names of the bands shown as red, green, blue in image grids.
        name: a label for logs.
        filters: :class:`PatchFilter` keys (nodata, water, saturation shares) for training patches.
        nan_policy: ``mask`` (NaN pixels are nodata) or ``reject`` (a NaN anywhere is an error).
        cache_dir: where per-band statistics of the training split are cached (z-score, percentiles).
        nodata: None (the file's nodata tag and mask), ``"none"`` (ignore the tag) or a number.

    ``normalization`` may be :class:`srgan.data.normalization.ByDataType` (``dataset/normalization=auto``,
    the default of ``dataset=raster``): the scale then follows the file's data type.
    """

    def __init__(
        self,
        path: str | Sequence[str],
        bands: Sequence[str | int],
        num_bands: int,
        scale: int,
        degradation: Resample,
        normalization: Any,
        split: dict[str, Any],
        patch_size: int = 96,
        val_tile: int = 128,
        rgb_bands: Sequence[str | int] | None = None,
        name: str = "raster",
        filters: dict[str, Any] | None = None,
        nan_policy: str = "mask",
        cache_dir: str | None = None,
        nodata: float | str | None = None,
    ) -> None:
        bands = list(bands)
        self.nodata_setting = parse_nodata(nodata, "dataset.nodata")
        _check_sizes(bands, num_bands, scale, patch_size, val_tile)
        if getattr(degradation, "scale", scale) != scale:
            raise ValueError(f"dataset.degradation.scale={degradation.scale} differs from dataset.scale={scale}")
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"dataset.nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        self.bands, self.scale, self.degradation = bands, scale, degradation
        self.normalization, self.patch_size, self.val_tile, self.name = normalization, patch_size, val_tile, name
        self.filter = make_filter(filters)
        self.nan_policy = nan_policy
        self.sources = self._open(path)
        self.path = self.sources[0].path
        self.band_names = self.sources[0].band_names
        for source in self.sources[1:]:
            if source.band_names != self.band_names:
                raise RasterError(
                    f"{source.path}: bands {source.band_names} differ from {self.path}'s {self.band_names}"
                )
        self.dtype = self.sources[0].dtype
        self.nodata = self.sources[0].nodata
        self.normalization = resolve_auto(self.normalization, self.dtype, self.path)
        self.rgb_indices = _rgb_indices(bands, self.band_names, rgb_bands)
        self.water_index = self._water_index()
        self.margin = getattr(degradation, "margin", 0)
        self.axis = split.get("axis", "columns")
        if self.axis not in ("columns", "rows"):
            raise ValueError(f"dataset.split.axis must be 'columns' or 'rows', got {self.axis!r}")
        self.blocks = []
        for source in self.sources:
            length = source.width if self.axis == "columns" else source.height
            try:
                self.blocks.append(column_blocks(length, dict(split["fractions"]), int(split["gap"]), align=scale))
            except ValueError as err:
                raise RasterError(f"{source.path}: {err}") from None
        # Sizes are checked per split where it is used (training: here, when the statistics need the
        # train split, or in train_dataset; held-out areas in regions()): evaluating the test area of
        # a small foreign raster must not fail on the size of its training area.
        self._checked: set[str] = set()
        if getattr(self.normalization, "needs_statistics", False) and not self.normalization.fitted:
            self.check_split("train")
        self._check_pixels()
        if getattr(self.normalization, "needs_statistics", False):
            train = [self.extent(i, "train") for i in range(len(self.sources))]
            _fit_normalization(self.normalization, self.sources, train, cache_dir)
        self._regions: dict[tuple[str, int], Region] = {}

    def extent(self, index: int, split: str) -> tuple[int, int, int, int]:
        """``(row, col, rows, cols)`` of a split's area in file ``index``, aligned to the scale."""
        source, (a, b) = self.sources[index], self.blocks[index][split]
        s = self.scale
        if self.axis == "columns":
            return 0, a, source.height - source.height % s, b - a
        return a, 0, b - a, source.width - source.width % s

    def _open(self, path: str | Sequence[str]) -> list[Any]:
        return [GeoTiffSource(p, self.bands, self.nodata_setting) for p in expand_paths(path)]

    def _water_index(self) -> int | None:
        band = self.filter.water_band
        if band is None:
            return None
        for candidates in (self.bands, self.band_names):
            if band in candidates:
                return candidates.index(band)
        raise ValueError(f"dataset.filters.water_band={band!r} is not one of dataset.bands {self.bands}")

    def _check_pixels(self) -> None:
        """One streamed pass: NaNs (per nan_policy) and splits with no valid pixel fail here, before training."""
        for i, (source, blocks) in enumerate(zip(self.sources, self.blocks)):
            valid_per_split = dict.fromkeys(blocks, 0)
            for r in range(0, source.height, 512):
                data, valid = source.read(Window(0, r, source.width, min(512, source.height - r)))
                if self.nan_policy == "reject" and np.isnan(data).any():
                    bands = [self.band_names[b] for b in np.flatnonzero(np.isnan(data).any(axis=(1, 2)))]
                    raise RasterError(
                        f"{source.path}: NaN pixels in band(s) {bands} (rows from {r}); "
                        "set dataset.nan_policy=mask to treat them as nodata"
                    )
                for split_name in blocks:
                    row, col, rows, cols = self.extent(i, split_name)
                    lo, hi = max(row - r, 0), max(min(row + rows - r, valid.shape[0]), 0)
                    valid_per_split[split_name] += int(valid[lo:hi, col : col + cols].sum())
            for split_name, count in valid_per_split.items():
                if count == 0:
                    raise RasterError(f"{source.path}: the {split_name} area is entirely nodata")

    def regions(self, split: str) -> Sequence[Region]:
        """The whole area of one split in every file, HR and degraded LR. One file: computed once and
        kept (validation reuses it). Several files (many scenes): :class:`StreamedRegions`, each read
        when asked for, so the held-out areas of any number of scenes never sit in memory together."""
        self.check_split(split)
        if len(self.sources) > 1:
            extents = [self.extent(i, split) for i in range(len(self.sources))]
            hr_shapes = [(rows, cols) for _, _, rows, cols in extents]
            lr_shapes = [(rows // self.scale, cols // self.scale) for rows, cols in hr_shapes]
            return StreamedRegions(lambda i: self._read_region(split, i), lr_shapes, hr_shapes)
        if (split, 0) not in self._regions:
            self._regions[(split, 0)] = self._read_region(split, 0)
        return [self._regions[(split, 0)]]

    def _read_region(self, split: str, i: int) -> Region:
        source = self.sources[i]
        row, col, rows, cols = self.extent(i, split)
        data, valid = source.read(Window(col, row, cols, rows))
        hr = _normalized(self.normalization, data, valid)
        rng = np.random.default_rng((getattr(self.degradation, "seed", 0), SPLITS.index(split), i))
        hr_valid = torch.from_numpy(valid)
        lr, lr_valid = self.degradation.masked(hr, hr_valid, rng)
        return Region(
            lr=lr,
            hr=hr,
            hr_transform=source.transform @ Affine.translation(col, row),
            crs=source.crs,
            hr_valid=hr_valid,
            lr_valid=lr_valid,
            source=str(source.path),
        )

    def check_split(self, split: str) -> None:
        """Every file's ``split`` area holds at least a patch (with the degradation's context for
        training; held-out areas are degraded whole); an error names the file, split and size."""
        if split in self._checked:
            return
        if split not in self.blocks[0]:
            raise KeyError(f"unknown split {split!r}; this dataset has {list(self.blocks[0])}")
        need = self.patch_size + 2 * self.margin
        least = need if split == "train" else self.patch_size
        for source, blocks in zip(self.sources, self.blocks):
            if split == "train" and (source.height < need or source.width < need):
                raise RasterError(
                    f"{source.path}: {source.height}x{source.width} px is smaller than a patch "
                    f"(patch_size={self.patch_size} + 2 x {self.margin} px of degradation context)"
                )
            c0, c1 = blocks[split]
            across = c1 - c0
            other = source.height if self.axis == "columns" else source.width
            if min(across, other) < least:
                raise RasterError(
                    f"{source.path}: split {split!r} is {across}x{other} px, smaller than a patch ({least} px"
                    f"{' with degradation context' if least > self.patch_size else ''}); "
                    "change dataset.split.fractions or patch_size"
                )
        self._checked.add(split)

    def train_dataset(self, length: int, seed: int, augment: bool = True) -> RasterPatches:
        self.check_split("train")
        return RasterPatches(self, length, seed, augment)

    def areas(self, split: str) -> list[Area]:
        """Where ``split`` lies in each file."""
        return [Area.of(s.path, s.crs, s.transform, self.extent(i, split)) for i, s in enumerate(self.sources)]


class RasterPatches(Dataset):
    """``length`` random aligned LR/HR training patches; item ``i`` depends only on ``(seed, i)``.

    Each item reads one HR window with the degradation's context around it, checks the patch
    filters (redrawing when rejected), normalises, degrades, crops the context away and applies
    the same flip / rotation to LR and HR. Deterministic items let a resumed run see the same
    batches as an uninterrupted one.
    """

    def __init__(self, data: RasterSRData, length: int, seed: int, augment: bool = True) -> None:
        self.data, self.length, self.seed, self.augment = data, length, seed, augment
        self.extents = [data.extent(i, "train") for i in range(len(data.sources))]
        areas = np.array([rows * cols for _, _, rows, cols in self.extents], dtype=np.float64)
        self.weights = areas / areas.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        d = self.data
        rng = np.random.default_rng((self.seed, index))
        s, p, m = d.scale, d.patch_size, d.margin
        reasons = []
        for _ in range(d.filter.max_tries):
            i = int(rng.choice(len(d.sources), p=self.weights)) if len(d.sources) > 1 else 0
            source, (row, col, rows, cols) = d.sources[i], self.extents[i]
            r = row + int(rng.integers(0, (rows - p - 2 * m) // s + 1)) * s
            c = col + int(rng.integers(0, (cols - p - 2 * m) // s + 1)) * s
            data, valid = source.read(Window(c, r, p + 2 * m, p + 2 * m))
            inner = (slice(None), slice(m, m + p), slice(m, m + p))
            reason = d.filter.reason(data[inner], valid[inner[1:]], d.water_index)
            if reason is None:
                return self._item(d, data, valid, rng)
            reasons.append(reason)
        counts = {k: reasons.count(k) for k in set(reasons)}
        raise RasterError(
            f"{d.path}: no training patch passed dataset.filters in {d.filter.max_tries} tries "
            f"(rejected for {counts}); loosen the filters or check the area"
        )

    def _item(self, d: RasterSRData, data: np.ndarray, valid: np.ndarray, rng: np.random.Generator) -> dict:
        """LR, HR and HR's validity (``hr_valid``: the loss leaves nodata out) of one accepted window;
        for a degradation drawn on the device (``on_device``), HR with its context instead of LR."""
        s, p, m = d.scale, d.patch_size, d.margin
        hr, valid_t = _normalized(d.normalization, data, valid), torch.from_numpy(valid)
        if getattr(d.degradation, "on_device", False):
            if self.augment:
                hr, valid_t = _augment(hr, valid_t, rng=rng)
            inner = (slice(m, m + p), slice(m, m + p))
            return {
                "hr": hr[:, inner[0], inner[1]].contiguous(),
                "hr_valid": valid_t[inner].contiguous(),
                "hr_context": hr.contiguous(),
                "valid_context": valid_t.contiguous(),
            }
        lr = d.degradation.masked(hr, valid_t, rng)[0]
        lr = lr[:, m // s : (m + p) // s, m // s : (m + p) // s]
        hr, valid_t = hr[:, m : m + p, m : m + p], valid_t[m : m + p, m : m + p]
        if self.augment:
            lr, hr, valid_t = _augment(lr, hr, valid_t, rng=rng)
        return {"lr": lr.contiguous(), "hr": hr.contiguous(), "hr_valid": valid_t.contiguous()}


class Tiles(Dataset):
    """Non-overlapping HR tiles covering a whole region; the last row and column of tiles are
    shifted inwards to end at the region's edge, and tiles shrink to a region narrower than them."""

    def __init__(
        self, lr: torch.Tensor, hr: torch.Tensor, scale: int, tile: int, hr_valid: torch.Tensor | None = None
    ) -> None:
        self.lr, self.hr, self.scale = lr, hr, scale
        self.hr_valid = torch.ones(hr.shape[-2:], dtype=torch.bool) if hr_valid is None else hr_valid.bool()
        rows, cols = lr.shape[-2:]
        self.tile_rows, self.tile_cols = min(tile // scale, rows), min(tile // scale, cols)
        self.origins = _tile_origins(rows, cols, self.tile_rows, self.tile_cols)

    def __len__(self) -> int:
        return len(self.origins)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        r, c = self.origins[index]
        return _crop_tile(self, r, c, self.tile_rows, self.tile_cols, self.scale)


class SyntheticSRData(RasterSRData):
    """Generated multi-band images (smooth fields plus texture), degraded like a raster: fast tests only."""

    def __init__(
        self,
        num_bands: int,
        scale: int,
        degradation: Resample,
        normalization: Any,
        split: dict[str, Any],
        rows: int = 96,
        cols: int = 384,
        seed: int = 0,
        patch_size: int = 32,
        val_tile: int = 32,
        name: str = "synthetic",
        bands: Sequence[str] | None = None,
        rgb_bands: Sequence[str | int] | None = None,
        filters: dict[str, Any] | None = None,
    ) -> None:
        bands = list(bands) if bands is not None else [f"S{i + 1}" for i in range(num_bands)]
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
        image = []
        for b in range(num_bands):
            fx, fy, phase = rng.uniform(0.05, 0.4, 2).tolist() + [rng.uniform(0, 2 * np.pi)]
            field = 0.3 + 0.15 * np.sin(fx * xx + phase) * np.cos(fy * yy) + 0.05 * b
            image.append(field + 0.02 * rng.standard_normal((rows, cols)))
        self._image = np.stack(image).astype(np.float32)
        super().__init__(
            path="synthetic",
            bands=bands,
            num_bands=num_bands,
            scale=scale,
            degradation=degradation,
            normalization=normalization,
            split=split,
            patch_size=patch_size,
            val_tile=val_tile,
            rgb_bands=rgb_bands,
            name=name,
            filters=filters,
        )

    def _open(self, path: Any) -> list[Any]:
        return [ArraySource(self._image, self.bands, name=str(path))]


@dataclass
class RegionPair:
    """One region of real pairs as a source lists it: ``name`` (what the hash split reads), its LR
    and HR images, the split its source assigns (None: by the hash of ``name``), and how messages
    name the region (``where``) and its two images."""

    name: str
    lr: GeoTiffSource
    hr: GeoTiffSource
    where: str
    lr_name: str = "lr.tif"
    hr_name: str = "hr.tif"
    split: str | None = None


def split_by_hash(name: str, fractions: dict[str, float]) -> str:
    """A region's split from a hash of its name against the fractions: stable when regions are added."""
    u = int(hashlib.sha1(name.encode()).hexdigest()[:12], 16) / 16**12
    edge = 0.0
    for split_name, fraction in fractions.items():
        edge += fraction
        if u < edge:
            return split_name
    return list(fractions)[-1]


def _band_names_setting(band_names: Sequence[str] | None, bands: list) -> list[str] | None:
    if band_names is None:
        return None
    names = list(band_names)
    if len(names) != len(bands) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(
            f"dataset.band_names must name each of the {len(bands)} dataset.bands {bands} (or be null: the "
            f"files' own names), got {names}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"dataset.band_names names a band twice: {names}")
    return names


class PairedData(_HeldOutAreas):
    """Real LR/HR pairs, region by region; :class:`PairedFolderData` and
    :class:`srgan.data.taco.TacoPairsData` only list their regions (:class:`RegionPair`).

    Whole regions go to train, validation or test: the split the source assigns, else a hash of
    the region's name against ``split.fractions`` (whose keys are the splits the dataset uses; each
    must receive a region). The scale is checked from the shapes (``hr = scale x lr`` in both
    directions). ``bands`` select HR bands, ``lr_bands`` the LR bands (the same by default), any
    count, equal between the two. ``band_names`` name the selected HR bands where the files carry
    no band descriptions; a file whose descriptions differ from them is an error (null: the files'
    own names, ``band<i>`` where they have none). LR from another sensor may name its bands its own
    way. ``lr_normalization`` defaults to ``normalization``. A normalisation that needs statistics
    (z-score, percentiles) is fitted on the training regions only: ``normalization`` on their HR
    images, a separate ``lr_normalization`` on their LR images.
    """

    # What messages call one region.
    unit = "region"

    def __init__(
        self,
        pairs: Iterable[RegionPair],
        path: str | os.PathLike,
        bands: Sequence[str | int],
        num_bands: int,
        scale: int,
        normalization: Any,
        split: dict[str, Any],
        patch_size: int,
        val_tile: int,
        rgb_bands: Sequence[str | int] | None,
        name: str,
        lr_bands: Sequence[str | int] | None,
        lr_normalization: Any,
        cache_dir: str | None,
        band_names: Sequence[str] | None,
        split_keys: Sequence[str] = ("fractions",),
    ) -> None:
        """Check and split ``pairs`` (taken as they come, so that a source may open them lazily),
        resolve and fit the normalisations. ``path`` names the data in messages."""
        self.path = Path(path)
        bands = list(bands)
        _check_sizes(bands, num_bands, scale, patch_size, val_tile)
        unknown = set(split) - set(split_keys)
        if unknown:
            raise ValueError(f"dataset.split: unknown key(s) {sorted(unknown)}; expected {list(split_keys)}")
        if "fractions" not in split:
            raise ValueError(
                "dataset.split.fractions is missing: give the share of each split the dataset uses, "
                "e.g. {train: 0.8, val: 0.1, test: 0.1}"
            )
        fractions = check_fractions(dict(split["fractions"]))
        if lr_bands is not None and len(lr_bands) != len(bands):
            raise ValueError(f"dataset.lr_bands lists {len(lr_bands)} bands, dataset.bands {len(bands)}: {bands}")
        names = _band_names_setting(band_names, bands)
        self.bands, self.scale, self.patch_size, self.val_tile, self.name = bands, scale, patch_size, val_tile, name
        self.normalization = normalization
        self.lr_normalization = lr_normalization or normalization
        self.pairs: dict[str, list[tuple[GeoTiffSource, GeoTiffSource]]] = {s: [] for s in fractions}
        self.region_names: dict[str, list[str]] = {s: [] for s in fractions}
        first: RegionPair | None = None
        count = 0
        for pair in pairs:
            count += 1
            self._check_pair(pair, names, first)
            first = first or pair
            split_name = pair.split if pair.split is not None else split_by_hash(pair.name, fractions)
            if split_name in self.pairs:  # a split the config does not use leaves its regions out
                self.pairs[split_name].append((pair.lr, pair.hr))
                self.region_names[split_name].append(pair.name)
        for split_name, got in self.pairs.items():
            if not got:
                raise RasterError(self._empty_split_message(split_name, count))
        first_lr, first_hr = next(iter(self.pairs.values()))[0]
        self.band_names, self.dtype, self.nodata = first_hr.band_names, first_hr.dtype, first_hr.nodata
        self.normalization = resolve_auto(self.normalization, self.dtype, first_hr.path)
        self.lr_normalization = resolve_auto(self.lr_normalization, first_lr.dtype, first_lr.path)
        self.rgb_indices = _rgb_indices(bands, self.band_names, rgb_bands)
        train = self.pairs.get("train", [])
        for norm, images in (
            (self.normalization, [hr for _, hr in train]),
            (self.lr_normalization, [lr for lr, _ in train]),
        ):
            if getattr(norm, "needs_statistics", False) and not norm.fitted:
                if not train:
                    raise RasterError(
                        f"{self.path}: {type(norm).__name__} needs a train split to fit its statistics on"
                    )
                _fit_normalization(norm, images, [(0, 0, im.height, im.width) for im in images], cache_dir)

    def _check_pair(self, pair: RegionPair, band_names: list[str] | None, first: RegionPair | None) -> None:
        lr, hr, scale = pair.lr, pair.hr, self.scale
        if (hr.height, hr.width) != (lr.height * scale, lr.width * scale):
            raise RasterError(
                f"{pair.where}: {pair.hr_name} is {hr.height}x{hr.width} px and {pair.lr_name} "
                f"{lr.height}x{lr.width} px, not x{scale} (dataset.scale)"
            )
        if hr.height < self.patch_size or hr.width < self.patch_size:
            raise RasterError(f"{pair.where}: {hr.height}x{hr.width} px is smaller than patch_size={self.patch_size}")
        if band_names is not None:
            if any(d is not None and d != n for d, n in zip(hr.described, band_names)):
                raise RasterError(
                    f"{hr.path}: its bands {self.bands} are named {hr.band_names} in the file, but dataset.band_names "
                    f"is {band_names}; set dataset.band_names to the file's names (or null to use them)"
                )
            # Names from the config where the file has none (never in place of the file's own).
            hr.band_names = list(band_names)
        if first is not None:
            for attr, what in (("band_names", "bands"), ("dtype", "data type")):
                if getattr(hr, attr) != getattr(first.hr, attr):
                    raise RasterError(
                        f"{hr.path}: {what} {getattr(hr, attr)} differ from {first.hr.path}'s {getattr(first.hr, attr)}"
                    )
            if lr.dtype != first.lr.dtype:
                raise RasterError(f"{lr.path}: data type {lr.dtype} differs from {first.lr.path}'s {first.lr.dtype}")

    def _empty_split_message(self, split_name: str, count: int) -> str:
        return (
            f"{self.path}: no {self.unit} falls in the {split_name!r} split ({count} {self.unit}s); "
            f"add {self.unit}s or change dataset.split.fractions"
        )

    def regions(self, split: str) -> StreamedRegions:
        """The split's regions, each read when asked for (:class:`StreamedRegions`): a paired set of
        any size validates and evaluates in the memory of one region."""
        if split not in self.pairs:
            raise KeyError(f"unknown split {split!r}; this dataset has {list(self.pairs)}")
        pairs = self.pairs[split]

        def load(i: int) -> Region:
            lr_src, hr_src = pairs[i]
            lr_data, lr_valid = lr_src.read(Window(0, 0, lr_src.width, lr_src.height))
            hr_data, hr_valid = hr_src.read(Window(0, 0, hr_src.width, hr_src.height))
            return Region(
                _normalized(self.lr_normalization, lr_data, lr_valid),
                _normalized(self.normalization, hr_data, hr_valid),
                hr_src.transform,
                hr_src.crs,
                torch.from_numpy(hr_valid),
                torch.from_numpy(lr_valid),
                str(hr_src.path.parent),
            )

        return StreamedRegions(
            load, [(lr.height, lr.width) for lr, _ in pairs], [(hr.height, hr.width) for _, hr in pairs]
        )

    def train_dataset(self, length: int, seed: int, augment: bool = True) -> Dataset:
        return PairedPatches(self, length, seed, augment)

    def areas(self, split: str) -> list[Area]:
        """The HR images of ``split``'s regions."""
        if split not in self.pairs:
            raise KeyError(f"unknown split {split!r}; this dataset has {list(self.pairs)}")
        return [Area.of(hr.path, hr.crs, hr.transform, (0, 0, hr.height, hr.width)) for _, hr in self.pairs[split]]


class PairedFolderData(PairedData):
    """Real LR/HR pairs in the SEN2NAIP layout: ``<root>/<region>/lr.tif`` and ``hr.tif``, one
    region per folder, split by a hash of the folder name (see :class:`PairedData`)."""

    def __init__(
        self,
        root: str,
        bands: Sequence[str | int],
        num_bands: int,
        scale: int,
        normalization: Any,
        split: dict[str, Any],
        patch_size: int = 128,
        val_tile: int = 128,
        rgb_bands: Sequence[str | int] | None = None,
        name: str = "paired_folder",
        lr_bands: Sequence[str | int] | None = None,
        lr_normalization: Any = None,
        lr_file: str = "lr.tif",
        hr_file: str = "hr.tif",
        cache_dir: str | None = None,
        nodata: float | str | None = None,
        band_names: Sequence[str] | None = None,
    ) -> None:
        self.root = self.path = Path(root)
        self.nodata_setting = parse_nodata(nodata, "dataset.nodata")
        hr_bands = list(bands)

        def listed() -> Iterator[RegionPair]:
            if not self.root.is_dir():
                raise RasterError(f"{self.root}: no such folder (expected <root>/<region>/{lr_file} and {hr_file})")
            folders = sorted(d for d in self.root.iterdir() if d.is_dir())
            if not folders:
                raise RasterError(f"{self.root}: no region folders (expected <root>/<region>/{lr_file} and {hr_file})")
            for folder in folders:
                lr = GeoTiffSource(folder / lr_file, list(lr_bands) if lr_bands is not None else hr_bands, nodata)
                hr = GeoTiffSource(folder / hr_file, hr_bands, nodata)
                yield RegionPair(folder.name, lr, hr, str(folder), lr_file, hr_file)

        super().__init__(
            listed(),
            self.root,
            bands,
            num_bands,
            scale,
            normalization,
            split,
            patch_size,
            val_tile,
            rgb_bands,
            name,
            lr_bands,
            lr_normalization,
            cache_dir,
            band_names,
        )


class PairedPatches(Dataset):
    """Random aligned windows of the training regions' real LR/HR pairs; item ``i`` depends only on ``(seed, i)``."""

    def __init__(self, data: PairedData, length: int, seed: int, augment: bool = True) -> None:
        self.data, self.length, self.seed, self.augment = data, length, seed, augment
        self.pairs = data.pairs["train"]
        areas = np.array([hr.height * hr.width for _, hr in self.pairs], dtype=np.float64)
        self.weights = areas / areas.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        d = self.data
        rng = np.random.default_rng((self.seed, index))
        lr_src, hr_src = self.pairs[int(rng.choice(len(self.pairs), p=self.weights))]
        q, s = d.patch_size // d.scale, d.scale
        r, c = int(rng.integers(0, lr_src.height - q + 1)), int(rng.integers(0, lr_src.width - q + 1))
        lr_t = _normalized(d.lr_normalization, *lr_src.read(Window(c, r, q, q)))
        hr_data, hr_valid = hr_src.read(Window(c * s, r * s, q * s, q * s))
        hr_t, valid_t = _normalized(d.normalization, hr_data, hr_valid), torch.from_numpy(hr_valid)
        if self.augment:
            lr_t, hr_t, valid_t = _augment(lr_t, hr_t, valid_t, rng=rng)
        return {"lr": lr_t.contiguous(), "hr": hr_t.contiguous(), "hr_valid": valid_t.contiguous()}
