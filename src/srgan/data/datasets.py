"""Datasets built from one GeoTIFF: HR is the raster, LR is made by a degradation model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from affine import Affine
from rasterio.crs import CRS
from torch.utils.data import Dataset

from srgan.data.degradation import Resample
from srgan.data.normalization import LinearScale
from srgan.data.rasters import RasterError, read_raster
from srgan.data.splits import column_blocks


@dataclass
class Region:
    """One split's area: normalised HR and its degraded LR, with the HR georeference."""

    lr: torch.Tensor
    hr: torch.Tensor
    hr_transform: Affine
    crs: CRS | None


class RasterSRData:
    """A GeoTIFF as a super-resolution data source, split into disjoint column blocks.

    Args:
        path: the GeoTIFF.
        bands: band names (matched against the file's band descriptions) or 1-based indices.
        num_bands: the band count the rest of the config interpolates; must equal ``len(bands)``.
        scale: the super-resolution factor.
        degradation: makes LR from HR (a callable on tensors).
        normalization: maps stored values to the network's range and back.
        split: ``{"fractions": {"train": .., "val": .., "test": ..}, "gap": columns}``.
        patch_size: HR size of training patches (a multiple of ``scale``).
        val_tile: HR size of validation tiles (a multiple of ``scale``).
        rgb_bands: names of the bands shown as red, green, blue in image grids.
        name: a label for logs.
        dtype: the stored data type (informative; the file's own is used).
    """

    def __init__(
        self,
        path: str,
        bands: Sequence[str | int],
        num_bands: int,
        scale: int,
        degradation: Resample,
        normalization: LinearScale,
        split: dict[str, Any],
        patch_size: int = 96,
        val_tile: int = 128,
        rgb_bands: Sequence[str | int] | None = None,
        name: str = "raster",
    ) -> None:
        bands = list(bands)
        if num_bands != len(bands):
            raise ValueError(f"dataset.num_bands={num_bands} but dataset.bands lists {len(bands)} bands: {bands}")
        for key, size in (("patch_size", patch_size), ("val_tile", val_tile)):
            if size % scale:
                raise ValueError(f"dataset.{key}={size} must be a multiple of dataset.scale={scale}")
        if getattr(degradation, "scale", scale) != scale:
            raise ValueError(f"dataset.degradation.scale={degradation.scale} differs from dataset.scale={scale}")
        self.path = Path(path)
        self.bands = bands
        self.scale = scale
        self.degradation = degradation
        self.normalization = normalization
        self.patch_size = patch_size
        self.val_tile = val_tile
        self.name = name
        raster = read_raster(self.path, bands)
        self.band_names = raster.band_names
        self.dtype = raster.dtype
        self.rgb_indices = self._rgb_indices(rgb_bands)
        rows = raster.data.shape[1] - raster.data.shape[1] % scale
        self._hr = torch.from_numpy(np.asarray(self.normalization.normalize(raster.data[:, :rows].astype(np.float32))))
        self._transform = raster.transform
        self._crs = raster.crs
        self.blocks = column_blocks(self._hr.shape[-1], dict(split["fractions"]), int(split["gap"]), align=scale)
        for name_, (c0, c1) in self.blocks.items():
            if min(rows, c1 - c0) < patch_size:
                raise RasterError(
                    f"{self.path}: split {name_!r} is {rows}x{c1 - c0} px, smaller than patch_size={patch_size}"
                )
        self._regions: dict[str, Region] = {}

    def _rgb_indices(self, rgb_bands: Sequence[str | int] | None) -> list[int]:
        if rgb_bands is None:
            return [0, 0, 0] if len(self.bands) < 3 else [0, 1, 2]
        out = []
        for band in rgb_bands:
            if band in self.bands:
                out.append(self.bands.index(band))
            elif band in self.band_names:
                out.append(self.band_names.index(band))
            else:
                raise ValueError(f"dataset.rgb_bands: {band!r} is not one of dataset.bands {self.bands}")
        return out

    def region(self, split: str) -> Region:
        """The whole area of one split, HR and degraded LR (computed once, then cached)."""
        if split not in self.blocks:
            raise KeyError(f"unknown split {split!r}; this dataset has {list(self.blocks)}")
        if split not in self._regions:
            c0, c1 = self.blocks[split]
            hr = self._hr[:, :, c0:c1].contiguous()
            self._regions[split] = Region(
                lr=self.degradation(hr), hr=hr, hr_transform=self._transform @ Affine.translation(c0, 0), crs=self._crs
            )
        return self._regions[split]

    def train_dataset(self, length: int, seed: int, augment: bool = True) -> RandomPatches:
        region = self.region("train")
        return RandomPatches(region.lr, region.hr, self.scale, self.patch_size, length, seed, augment)

    def val_dataset(self, split: str = "val") -> Tiles:
        region = self.region(split)
        return Tiles(region.lr, region.hr, self.scale, self.val_tile)


def _dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


class RandomPatches(Dataset):
    """``length`` random aligned LR/HR patch pairs; item ``i`` depends only on ``(seed, i)``.

    Deterministic items make a resumed run see the same batches as an uninterrupted one.
    """

    def __init__(
        self,
        lr: torch.Tensor,
        hr: torch.Tensor,
        scale: int,
        patch_size: int,
        length: int,
        seed: int,
        augment: bool = True,
    ) -> None:
        self.lr, self.hr, self.scale = lr, hr, scale
        self.lr_patch = patch_size // scale
        self.length, self.seed, self.augment = length, seed, augment

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        rows, cols = self.lr.shape[-2:]
        r = int(rng.integers(0, rows - self.lr_patch + 1))
        c = int(rng.integers(0, cols - self.lr_patch + 1))
        p, s = self.lr_patch, self.scale
        lr = self.lr[:, r : r + p, c : c + p]
        hr = self.hr[:, r * s : (r + p) * s, c * s : (c + p) * s]
        if self.augment:
            k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
            lr, hr = _dihedral(lr, k, flip), _dihedral(hr, k, flip)
        return {"lr": lr.contiguous(), "hr": hr.contiguous()}


class Tiles(Dataset):
    """Non-overlapping HR tiles covering a whole region; the last row and column of tiles are
    shifted inwards to end at the region's edge, and tiles shrink to a region narrower than them."""

    def __init__(self, lr: torch.Tensor, hr: torch.Tensor, scale: int, tile: int) -> None:
        self.lr, self.hr, self.scale = lr, hr, scale
        rows, cols = lr.shape[-2:]
        self.tile_rows, self.tile_cols = min(tile // scale, rows), min(tile // scale, cols)

        def starts(size: int, step: int) -> list[int]:
            return sorted({min(i, size - step) for i in range(0, size, step)})

        self.origins = [(r, c) for r in starts(rows, self.tile_rows) for c in starts(cols, self.tile_cols)]

    def __len__(self) -> int:
        return len(self.origins)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        r, c = self.origins[index]
        h, w, s = self.tile_rows, self.tile_cols, self.scale
        return {
            "lr": self.lr[:, r : r + h, c : c + w].contiguous(),
            "hr": self.hr[:, r * s : (r + h) * s, c * s : (c + w) * s].contiguous(),
        }
