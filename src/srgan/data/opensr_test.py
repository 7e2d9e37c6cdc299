"""opensr-test's benchmark sets (naip, spot, venus, spain_crops, spain_urban) read from where a user
has put them, in either of the two forms they are distributed in.

- **Pickles**, what ``opensr_test.load(name, model_dir=root)`` keeps: ``<root>/<name>.pkl``, a dict
  of ``N x C x H x W`` arrays (``L2A`` and ``L1C``: the Sentinel-2 LR images; ``HRharm``: the HR
  images harmonised to Sentinel-2's reflectance; ``HR``: as acquired). They are read with a
  restricted unpickler (:mod:`srgan.safe_pickle`): a file that names anything but NumPy arrays in
  plain containers is refused before anything in it runs.
- **Per-ROI GeoTIFF folders**: ``<root>/<name>/{L1C,L2A,hr,hr_harmonized}/<roi>.tif`` (or those
  folders directly under ``root``), the same ROI file name in each, with their georeference.

A set of one's own in either form works the same way (``name`` is its file or folder name).
Every image is one region of the ``test`` split: these are benchmark sets, never training data (a
model card's training areas are still checked against them). ``lr`` / ``hr`` pick the arrays
(default ``L2A`` / ``HRharm``, as opensr-test's README evaluates), ``bands`` / ``lr_bands`` pick
channels (0-based for pickles; 1-based or band names for GeoTIFFs) and ``band_names`` names them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.errors import RasterioError

from srgan.data.datasets import Area, Region, _HeldOutAreas, _normalized, _rgb_indices
from srgan.data.normalization import resolve_auto
from srgan.data.rasters import RasterError, select_bands
from srgan.safe_pickle import load_numpy_pickle

# Published scale factors (opensr-test README, "Datasets").
SETS = {"naip": 4, "spot": 4, "venus": 2, "spain_crops": 4, "spain_urban": 4}
# Array names in the pickles and the folder names of the GeoTIFF form.
FOLDERS = {"L1C": "L1C", "L2A": "L2A", "HR": "hr", "HRharm": "hr_harmonized"}
FORMATS = ("auto", "pickle", "geotiff")


def _rois(folder: Path) -> dict[str, Path]:
    """ROI name (lower case, without .tif / .tiff) -> file; one name twice is an error."""
    out: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if file.suffix.lower() not in (".tif", ".tiff") or not file.is_file():
            continue
        roi = file.stem.lower()
        if roi in out:
            raise RasterError(f"{folder}: ROI {file.stem!r} twice ({out[roi].name} and {file.name})")
        out[roi] = file
    return out


def _check_same_place(hr_file: Path, hr: dict, lr_file: Path, lr: dict) -> None:
    """LR and HR of a ROI cover the same ground in the same CRS (to half an LR pixel), or neither is
    georeferenced."""
    if (hr["crs"] is None) != (lr["crs"] is None) or (hr["crs"] is not None and hr["crs"] != lr["crs"]):
        raise RasterError(f"{hr_file}: CRS {hr['crs']} but its LR {lr_file} has {lr['crs']}")
    if hr["crs"] is not None:
        tolerance = abs(lr["transform"].a) / 2
        if any(abs(a - b) > tolerance for a, b in zip(hr["bounds"], lr["bounds"])):
            raise RasterError(f"{hr_file}: bounds {hr['bounds']} but its LR {lr_file} covers {lr['bounds']}")


class OpenSRTestData(_HeldOutAreas):
    """One opensr-test set as normalised test regions (one per image)."""

    def __init__(
        self,
        root: str,
        name: str,
        band_names: Sequence[str],
        normalization: Any,
        num_bands: int | None = None,
        lr: str = "L2A",
        hr: str = "HRharm",
        format: str = "auto",
        bands: Sequence[int | str] | None = None,
        lr_bands: Sequence[int | str] | None = None,
        scale: int | None = None,
        rgb_bands: Sequence[str | int] | None = None,
        val_tile: int = 128,
        lr_normalization: Any = None,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError(f"dataset.name={name!r}: a set's file or folder name (opensr-test's: {', '.join(SETS)})")
        for key, value in (("lr", lr), ("hr", hr)):
            if value not in FOLDERS:
                raise ValueError(f"dataset.{key}={value!r}: one of {', '.join(FOLDERS)}")
        if format not in FORMATS:
            raise ValueError(f"dataset.format={format!r}: one of {', '.join(FORMATS)}")
        self.root, self.name, self.scale, self.val_tile = Path(root), name, scale or SETS[name], val_tile
        self.band_names = list(band_names)
        if num_bands is not None and num_bands != len(self.band_names):
            raise ValueError(f"dataset.num_bands={num_bands} but dataset.band_names has {len(self.band_names)}")
        self.lr_key, self.hr_key = lr, hr
        self.format, self.path = self._locate(format)
        if self.format == "pickle":
            self._images = self._read_pickle(bands, lr_bands)
        else:
            self._images = self._read_folders(bands, lr_bands)
        if not self._images:
            raise RasterError(f"{self.path}: no images")
        self.dtype = self._images[0]["dtype"]
        self.nodata = None
        self.normalization = resolve_auto(normalization, self.dtype, self.path)
        # LR and HR share one data type here, so one resolved normalisation serves both unless asked.
        self.lr_normalization = (
            resolve_auto(lr_normalization, self.dtype, self.path) if lr_normalization else self.normalization
        )
        self.rgb_indices = _rgb_indices(self.band_names, self.band_names, rgb_bands)
        self._regions: list[Region] | None = None

    # -- where the set lies -------------------------------------------------------------------------
    def _locate(self, format: str) -> tuple[str, Path]:
        pickle_file = self.root / f"{self.name}.pkl"
        folders = [d for d in (self.root / self.name, self.root) if (d / FOLDERS[self.hr_key]).is_dir()]
        if format in ("auto", "pickle") and pickle_file.is_file():
            if format == "auto" and folders:
                raise RasterError(
                    f"{self.root}: holds both {pickle_file.name} and GeoTIFF folders under {folders[0]}; "
                    "choose one with dataset.format=pickle or dataset.format=geotiff"
                )
            return "pickle", pickle_file
        if format in ("auto", "geotiff") and folders:
            return "geotiff", folders[0]
        expected = {
            "auto": f"{pickle_file} or {self.root / self.name}/{{{FOLDERS[self.lr_key]},{FOLDERS[self.hr_key]}}}/",
            "pickle": str(pickle_file),
            "geotiff": f"{self.root / self.name}/{{{FOLDERS[self.lr_key]},{FOLDERS[self.hr_key]}}}/",
        }[format]
        raise RasterError(f"{self.root}: no opensr-test set {self.name!r} (expected {expected})")

    # -- pickles ------------------------------------------------------------------------------------
    def _array(self, content: dict, key: str) -> np.ndarray:
        if key not in content:
            raise RasterError(f"{self.path}: no {key!r} array (it has {', '.join(map(str, content))})")
        array = content[key]
        if not isinstance(array, np.ndarray) or array.ndim != 4:
            shape = getattr(array, "shape", type(array).__name__)
            raise RasterError(f"{self.path}: {key!r} is {shape}, not an N x C x H x W array")
        if array.dtype.kind not in "uif":
            raise RasterError(f"{self.path}: {key!r} has data type {array.dtype}, not numbers")
        if 0 in array.shape:
            raise RasterError(f"{self.path}: {key!r} is empty (shape {array.shape})")
        return array

    def _channels(self, where: str, count: int, chosen: Sequence[int | str] | None, key: str) -> list[int]:
        if chosen is None:
            if count != len(self.band_names):
                raise RasterError(
                    f"{where}: {count} channels for the {len(self.band_names)} band_names {self.band_names}; "
                    f"choose them with dataset.{key} (0-based) or name them all with dataset.band_names"
                )
            chosen = list(range(len(self.band_names)))
        indices = []
        for band in chosen:
            if isinstance(band, str):
                if band not in self.band_names:
                    raise RasterError(f"{where}: dataset.{key} names {band!r}, not one of band_names {self.band_names}")
                band = self.band_names.index(band)
            if not 0 <= int(band) < count:
                raise RasterError(f"{where}: dataset.{key} channel {band} is out of range 0..{count - 1}")
            indices.append(int(band))
        if len(indices) != len(self.band_names):
            raise RasterError(
                f"{where}: {len(indices)} channels chosen by dataset.{key} for the {len(self.band_names)} "
                f"band_names {self.band_names}"
            )
        return indices

    def _read_pickle(self, bands, lr_bands) -> list[dict[str, Any]]:
        content = load_numpy_pickle(self.path)
        if not isinstance(content, dict):
            raise RasterError(f"{self.path}: holds a {type(content).__name__}, not opensr-test's dict of arrays")
        lr, hr = self._array(content, self.lr_key), self._array(content, self.hr_key)
        if lr.shape[0] != hr.shape[0]:
            raise RasterError(f"{self.path}: {lr.shape[0]} {self.lr_key!r} images but {hr.shape[0]} {self.hr_key!r}")
        if lr.dtype != hr.dtype:
            raise RasterError(f"{self.path}: {self.lr_key!r} is {lr.dtype} and {self.hr_key!r} {hr.dtype}")
        self._check_grid(f"{self.path}", lr.shape[-2:], hr.shape[-2:])
        hr_idx = self._channels(f"{self.path} {self.hr_key!r}", hr.shape[1], bands, "bands")
        lr_idx = self._channels(
            f"{self.path} {self.lr_key!r}", lr.shape[1], lr_bands if lr_bands is not None else bands, "lr_bands"
        )
        return [
            {
                "name": f"{self.path.name}[{i}]",
                "lr": lr[i, lr_idx],
                "hr": hr[i, hr_idx],
                "dtype": str(hr.dtype),
                "transform": Affine.identity(),
                "crs": None,
                "file": f"{self.path}[{i}]",
            }
            for i in range(hr.shape[0])
        ]

    # -- GeoTIFF folders ----------------------------------------------------------------------------
    def _read_folders(self, bands, lr_bands) -> list[dict[str, Any]]:
        lr_dir, hr_dir = self.path / FOLDERS[self.lr_key], self.path / FOLDERS[self.hr_key]
        if not lr_dir.is_dir():
            raise RasterError(f"{self.path}: no {FOLDERS[self.lr_key]}/ folder beside {FOLDERS[self.hr_key]}/")
        hr_files, lr_files = _rois(hr_dir), _rois(lr_dir)
        extra = sorted(set(lr_files) - set(hr_files))
        if extra:
            raise RasterError(
                f"{lr_dir}: {len(extra)} ROI(s) without an HR image in {hr_dir} (e.g. {lr_files[extra[0]]})"
            )
        images = []
        for roi, hr_file in hr_files.items():
            if roi not in lr_files:
                raise RasterError(f"{hr_file}: no LR image for this ROI in {lr_dir}")
            lr_file = lr_files[roi]
            hr_data, hr_meta = self._read_tif(hr_file, bands, "bands")
            lr_data, lr_meta = self._read_tif(lr_file, lr_bands if lr_bands is not None else bands, "lr_bands")
            if lr_meta["dtype"] != hr_meta["dtype"]:
                raise RasterError(f"{hr_file}: HR is {hr_meta['dtype']} and {lr_file.name} in LR {lr_meta['dtype']}")
            if images and hr_meta["dtype"] != images[0]["dtype"]:
                raise RasterError(f"{hr_file}: {hr_meta['dtype']}, but {images[0]['file']} is {images[0]['dtype']}")
            self._check_grid(str(hr_file), lr_data.shape[-2:], hr_data.shape[-2:])
            _check_same_place(hr_file, hr_meta, lr_file, lr_meta)
            images.append({"name": hr_file.stem, "lr": lr_data, "hr": hr_data, "file": str(hr_file), **hr_meta})
        return images

    def _read_tif(self, path: Path, chosen, key: str) -> tuple[np.ndarray, dict[str, Any]]:
        try:
            # GeoTIFF only: another GDAL format (a VRT) named .tif could read other files
            with rasterio.open(path, driver="GTiff") as src:
                if chosen is None and src.count != len(self.band_names):
                    raise RasterError(
                        f"{path}: {src.count} bands for band_names {self.band_names}; choose them with dataset.{key}"
                    )
                # names or 1-based indices, each once, one supported data type (the rule every reader uses)
                selection = select_bands(path, src, None if chosen is None else list(chosen))
                indices = selection.indices
                if len(indices) != len(self.band_names):
                    raise RasterError(
                        f"{path}: {len(indices)} bands chosen by dataset.{key} for band_names {self.band_names}"
                    )
                chosen_names = [src.descriptions[i - 1] or "" for i in indices]
                if all(chosen_names) and chosen_names != self.band_names:
                    raise RasterError(f"{path}: its bands are named {chosen_names}, not band_names {self.band_names}")
                data = src.read(indices).astype(np.float32)
                valid = src.read_masks(indices).min(axis=0) > 0
                meta = {
                    "dtype": selection.dtype,
                    "transform": src.transform,
                    "crs": src.crs,
                    "bounds": tuple(src.bounds),
                }
        except RasterioError as err:
            raise RasterError(f"{path}: not a readable GeoTIFF ({err})") from err
        data[:, ~valid] = np.nan  # nodata tags and mask bands
        return data, meta

    def _check_grid(self, where: str, lr_shape, hr_shape) -> None:
        if tuple(hr_shape) != (lr_shape[0] * self.scale, lr_shape[1] * self.scale):
            raise RasterError(
                f"{where}: HR {tuple(hr_shape)} is not x{self.scale} of LR {tuple(lr_shape)} "
                f"(dataset.scale={self.scale}{self._published()})"
            )

    def _published(self) -> str:
        return f"; opensr-test's {self.name} is x{SETS[self.name]}" if self.name in SETS else ""

    # -- what srgan-eval reads ----------------------------------------------------------------------
    def _check_split(self, split: str) -> None:
        if split != "test":
            raise ValueError(
                f"{self.path}: opensr-test's {self.name} is a test set (split=test); it has no {split!r} split"
            )

    def regions(self, split: str) -> list[Region]:
        self._check_split(split)
        if self._regions is None:
            self._regions = []
            for image in self._images:
                lr, hr = (np.asarray(image[k], dtype=np.float32) for k in ("lr", "hr"))
                lr_valid, hr_valid = np.isfinite(lr).all(0), np.isfinite(hr).all(0)
                self._regions.append(
                    Region(
                        _normalized(self.lr_normalization, np.nan_to_num(lr), lr_valid),
                        _normalized(self.normalization, np.nan_to_num(hr), hr_valid),
                        image["transform"],
                        image["crs"],
                        torch.from_numpy(hr_valid),
                        torch.from_numpy(lr_valid),
                        image["file"],
                    )
                )
        return self._regions

    def areas(self, split: str) -> list[Area]:
        self._check_split(split)
        return [
            Area.of(Path(image["file"]), image["crs"], image["transform"], (0, 0, *image["hr"].shape[-2:]))
            for image in self._images
        ]

    def train_dataset(self, length: int, seed: int, augment: bool = True):
        raise ValueError(
            f"{self.path}: opensr-test's sets are benchmark (test) data; train on another dataset and "
            "evaluate on this one with srgan-eval"
        )
