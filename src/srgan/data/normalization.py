"""Normalisations between a raster's stored units and the network's value range, with exact inverses."""

from __future__ import annotations

import numpy as np
import torch


class LinearScale:
    """``(x - offset) / scale``; e.g. Sentinel-2 L1C digital numbers to reflectance with scale 10000.

    L2A products from processing baseline 04.00 on store ``DN = 10000 * reflectance + 1000``:
    use ``offset=1000`` there.
    """

    def __init__(self, scale: float, offset: float = 0.0) -> None:
        if scale <= 0:
            raise ValueError(f"normalization scale must be > 0, got {scale}")
        self.scale = float(scale)
        self.offset = float(offset)

    def normalize(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        return (x - self.offset) / self.scale

    def denormalize(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        return x * self.scale + self.offset

    def __repr__(self) -> str:
        return f"LinearScale(scale={self.scale}, offset={self.offset})"
