"""Image-quality metrics for multispectral super-resolution, accumulated over tiles.

PSNR is pooled: the squared error is summed over every pixel and band of every tile before the
log is taken (the convention of the bundled sample's reference figures). Per-band PSNR pools the
same way within each band. SSIM and SAM are means over tiles and pixels. All on the normalised
values with the given ``data_range`` (reflectance: 1.0), after cropping ``border`` HR pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics.image import PeakSignalNoiseRatio, SpectralAngleMapper, StructuralSimilarityIndexMeasure


class SRMetrics(nn.Module):
    """PSNR (pooled and per band), SSIM and spectral angle (degrees) of predictions against HR."""

    def __init__(
        self, band_names: Sequence[str], border: int = 4, data_range: float = 1.0, per_band_ssim: bool = False
    ) -> None:
        super().__init__()
        self.band_names = list(band_names)
        self.border = border
        self.psnr = PeakSignalNoiseRatio(data_range=data_range)
        self.band_psnr = nn.ModuleList(PeakSignalNoiseRatio(data_range=data_range) for _ in self.band_names)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=data_range)
        self.band_ssim = nn.ModuleList(
            StructuralSimilarityIndexMeasure(data_range=data_range) for _ in (self.band_names if per_band_ssim else [])
        )
        self.sam = SpectralAngleMapper() if len(self.band_names) > 1 else None

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        b = self.border
        return x[..., b : x.shape[-2] - b, b : x.shape[-1] - b] if b else x

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        if pred.shape[1] != len(self.band_names):
            raise ValueError(f"expected {len(self.band_names)} bands {self.band_names}, got {pred.shape[1]}")
        pred, target = self._crop(pred.float()), self._crop(target.float())
        self.psnr.update(pred, target)
        for i, metric in enumerate(self.band_psnr):
            metric.update(pred[:, i : i + 1], target[:, i : i + 1])
        self.ssim.update(pred, target)
        for i, metric in enumerate(self.band_ssim):
            metric.update(pred[:, i : i + 1], target[:, i : i + 1])
        if self.sam is not None:
            self.sam.update(pred, target)

    def compute(self) -> dict[str, float]:
        out = {"psnr": float(self.psnr.compute()), "ssim": float(self.ssim.compute())}
        if self.sam is not None:
            out["sam_deg"] = math.degrees(float(self.sam.compute()))
        for name, metric in zip(self.band_names, self.band_psnr):
            out[f"psnr_{name}"] = float(metric.compute())
        for name, metric in zip(self.band_names, self.band_ssim):
            out[f"ssim_{name}"] = float(metric.compute())
        return out

    def reset(self) -> None:
        for metric in [self.psnr, self.ssim, *self.band_psnr, *self.band_ssim] + ([self.sam] if self.sam else []):
            metric.reset()
