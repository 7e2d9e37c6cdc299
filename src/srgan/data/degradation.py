"""Degradations that make a low-resolution image from a high-resolution one.

There is no real LR/HR pair in the bundled sample, so LR is simulated. ``box`` is the mean of
each ``scale x scale`` block (the pixel-aggregation model used for the reference figures in the
sample's README); ``bicubic``/``bilinear`` are antialiased interpolations as in PyTorch.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

METHODS = ("box", "bicubic", "bilinear")


class Resample:
    """Downsample by an integer ``scale`` with a fixed, documented kernel."""

    def __init__(self, scale: int, method: str = "box") -> None:
        if method not in METHODS:
            raise ValueError(f"degradation method must be one of {METHODS}, got {method!r}")
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        self.scale = scale
        self.method = method

    def __call__(self, hr: torch.Tensor) -> torch.Tensor:
        """Degrade ``(bands, H, W)`` or ``(batch, bands, H, W)``; H and W must be multiples of scale."""
        squeeze = hr.dim() == 3
        x = hr.unsqueeze(0) if squeeze else hr
        h, w = x.shape[-2:]
        if h % self.scale or w % self.scale:
            raise ValueError(f"HR size {h}x{w} is not a multiple of scale {self.scale}")
        if self.method == "box":
            lr = F.avg_pool2d(x, self.scale)
        else:
            lr = F.interpolate(
                x, size=(h // self.scale, w // self.scale), mode=self.method, antialias=True, align_corners=False
            )
        return lr.squeeze(0) if squeeze else lr

    def __repr__(self) -> str:
        return f"Resample(scale={self.scale}, method={self.method!r})"
