"""Normalisations between a raster's stored units and the network's value range, with exact inverses.

``LinearScale`` covers fixed conversions: Sentinel-2 digital numbers to reflectance (``scale=10000``,
and ``offset=1000`` for L2A products of processing baseline 04.00 and later, which store
``DN = 10000 * reflectance + 1000``), 8-bit imagery to [0, 1] (``scale=255``). ``ZScore`` and
``PercentileScale`` take per-band statistics computed on the training split only (never on the
validation or test areas), cached on disk by the dataset; their ``to_config()`` carries the
numbers into a released model, so inference uses exactly the training statistics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

Array = np.ndarray | torch.Tensor
log = logging.getLogger(__name__)

# Stored units -> physical units by data type, where a convention exists: 8-bit imagery is DN / 255;
# 16-bit unsigned is taken as Sentinel-2-style reflectance x 10000 (said in the log); floats are
# physical already. Other integer types have no convention: srgan refuses to guess.
DTYPE_SCALES = {"uint8": 255.0, "uint16": 10000.0, "float32": 1.0, "float64": 1.0}


def dtype_scale(dtype: str, path: Any = None) -> float:
    """The divisor that turns stored values of ``dtype`` into physical units (:data:`DTYPE_SCALES`)."""
    if dtype not in DTYPE_SCALES:
        where = f"{path}: " if path is not None else ""
        raise ValueError(
            f"{where}data type {dtype} has no conventional unit scale; choose one: "
            "dataset/normalization=reflectance (DN / 10000), uint8 (DN / 255), zscore or percentile, "
            "or dataset.normalization.scale=<divisor> with dataset/normalization=reflectance"
        )
    return DTYPE_SCALES[dtype]


class ByDataType:
    """``dataset/normalization=auto``: a :class:`LinearScale` chosen from the file's data type when
    the dataset opens it (:data:`DTYPE_SCALES`); the run and its released model record the result."""

    needs_statistics = False

    def to_config(self) -> dict[str, Any]:
        raise RuntimeError("ByDataType is resolved to a LinearScale by the dataset before use")

    def __repr__(self) -> str:
        return "ByDataType()"


def resolve_auto(normalization: Any, dtype: str, path: Any) -> Any:
    """``normalization`` itself, or for :class:`ByDataType` the linear scale of ``dtype``."""
    if not isinstance(normalization, ByDataType):
        return normalization
    scale = dtype_scale(dtype, path)
    if dtype == "uint16":
        log.info(
            "%s: uint16 values read as reflectance x 10000 (Sentinel-2 convention); set "
            "dataset/normalization=... if they are not",
            path,
        )
    return LinearScale(scale)


def _per_band(values: Sequence[float], x: Array) -> Array:
    v = np.asarray(values, dtype=np.float32).reshape(-1, 1, 1)
    if isinstance(x, torch.Tensor):
        return torch.as_tensor(v, device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
    return v


class LinearScale:
    """``(x - offset) / scale`` with one scale and offset for all bands."""

    needs_statistics = False

    def __init__(self, scale: float, offset: float = 0.0) -> None:
        if scale <= 0:
            raise ValueError(f"normalization scale must be > 0, got {scale}")
        self.scale = float(scale)
        self.offset = float(offset)

    def normalize(self, x: Array) -> Array:
        return (x - self.offset) / self.scale

    def denormalize(self, x: Array) -> Array:
        return x * self.scale + self.offset

    def to_config(self) -> dict[str, Any]:
        return {"_target_": f"{__name__}.LinearScale", "scale": self.scale, "offset": self.offset}

    def __repr__(self) -> str:
        return f"LinearScale(scale={self.scale}, offset={self.offset})"


class _FittedPerBand:
    """A per-band affine map ``(x - center) / width`` whose parameters come from training statistics."""

    needs_statistics = True

    def __init__(self, center: Sequence[float] | None = None, width: Sequence[float] | None = None) -> None:
        self.center = None if center is None else [float(v) for v in center]
        self.width = None if width is None else [float(v) for v in width]
        if self.width is not None and any(w <= 0 for w in self.width):
            raise ValueError(f"{type(self).__name__}: per-band widths must be > 0, got {self.width}")

    @property
    def fitted(self) -> bool:
        return self.center is not None and self.width is not None

    def _require(self) -> None:
        if not self.fitted:
            raise RuntimeError(
                f"{type(self).__name__} has no statistics yet: the dataset computes them on its train split"
            )

    def normalize(self, x: Array) -> Array:
        self._require()
        return (x - _per_band(self.center, x)) / _per_band(self.width, x)

    def denormalize(self, x: Array) -> Array:
        self._require()
        return x * _per_band(self.width, x) + _per_band(self.center, x)


class ZScore(_FittedPerBand):
    """Per-band ``(x - mean) / std`` with the training split's mean and standard deviation."""

    statistics = ("mean", "std")

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__(mean, std)

    def fit(self, stats: dict[str, list[float]]) -> None:
        if any(s <= 0 for s in stats["std"]):
            raise ValueError(f"z-score: a band is constant over the training split (std {stats['std']})")
        self.center, self.width = list(stats["mean"]), list(stats["std"])

    def to_config(self) -> dict[str, Any]:
        self._require()
        return {"_target_": f"{__name__}.ZScore", "mean": self.center, "std": self.width}

    def __repr__(self) -> str:
        return f"ZScore(mean={self.center}, std={self.width})"


class PercentileScale(_FittedPerBand):
    """Per-band ``(x - p_low) / (p_high - p_low)``: the training split's percentiles map to 0 and 1.

    Values outside the percentile range are kept (not clipped), so the inverse stays exact; with
    ``clip=True`` the network input is clipped to [0, 1] and the inverse is exact only inside it.
    """

    statistics = ("percentiles",)

    def __init__(
        self,
        low: float = 1.0,
        high: float = 99.0,
        clip: bool = False,
        p_low: Sequence[float] | None = None,
        p_high: Sequence[float] | None = None,
    ) -> None:
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
        self.low, self.high, self.clip = float(low), float(high), clip
        width = None if p_low is None or p_high is None else [h - lo for lo, h in zip(p_low, p_high)]
        super().__init__(p_low, width)

    def fit(self, stats: dict[str, list[float]]) -> None:
        lo, hi = stats[f"p{self.low:g}"], stats[f"p{self.high:g}"]
        if any(h <= lo_ for lo_, h in zip(lo, hi)):
            raise ValueError(f"percentile scaling: p{self.high:g} <= p{self.low:g} for a band ({lo}, {hi})")
        self.center, self.width = list(lo), [h - lo_ for lo_, h in zip(lo, hi)]

    def normalize(self, x: Array) -> Array:
        y = super().normalize(x)
        if self.clip:
            y = y.clamp(0.0, 1.0) if isinstance(y, torch.Tensor) else np.clip(y, 0.0, 1.0)
        return y

    def to_config(self) -> dict[str, Any]:
        self._require()
        return {
            "_target_": f"{__name__}.PercentileScale",
            "low": self.low,
            "high": self.high,
            "clip": self.clip,
            "p_low": self.center,
            "p_high": [c + w for c, w in zip(self.center, self.width)],
        }

    def __repr__(self) -> str:
        return f"PercentileScale(p{self.low:g}={self.center}, p{self.high:g}, clip={self.clip})"
