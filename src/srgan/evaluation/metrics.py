"""Image-quality metrics for multispectral super-resolution, accumulated over tiles.

PSNR is pooled: the squared error is summed over every pixel and band of every tile before the
log is taken (the convention of the bundled sample's reference figures). Per-band PSNR pools the
same way within each band. SSIM and SAM are means over tiles and pixels. All on the normalised
values with the given ``data_range`` (reflectance: 1.0), after cropping ``border`` HR pixels.

With ``masked=True`` every measure counts only the pixels an ``update`` marks valid: PSNR and SAM
over the valid pixels, SSIM as the mean of its map over the pixels whose whole 11 x 11 window is
valid (a window reaching into nodata would compare made-up zeros), pooled over all updates;
``pixels`` and ``ssim_pixels`` report how many were counted. Without nodata the numbers equal the
unmasked ones (``tests/test_user_data.py``).

:class:`BandLpips` measures LPIPS per band (each band as a grey image) on whole nodata-free tiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.image import PeakSignalNoiseRatio, SpectralAngleMapper, StructuralSimilarityIndexMeasure

SSIM_WINDOW = 11  # torchmetrics' default Gaussian window (sigma 1.5)


class SRMetrics(nn.Module):
    """PSNR (pooled and per band), SSIM and spectral angle (degrees) of predictions against HR."""

    def __init__(
        self,
        band_names: Sequence[str],
        border: int = 4,
        data_range: float = 1.0,
        per_band_ssim: bool = False,
        masked: bool = False,
    ) -> None:
        super().__init__()
        self.band_names = list(band_names)
        self.border = border
        self.masked, self.data_range = masked, data_range
        bands = len(self.band_names)
        # masked SSIM: per band, the sum of the SSIM map over counted pixels and their number
        self._ssim_sum, self._ssim_count, self._pixels = torch.zeros(bands, dtype=torch.float64), 0, 0
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
    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Add ``(N, bands, H, W)`` predictions and targets; ``valid`` ``(N, H, W)`` (masked mode only)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        if pred.shape[1] != len(self.band_names):
            raise ValueError(f"expected {len(self.band_names)} bands {self.band_names}, got {pred.shape[1]}")
        if self.masked:
            self._update_masked(pred, target, valid)
            return
        if valid is not None:
            raise ValueError("SRMetrics(masked=False) takes no validity mask")
        pred, target = self._crop(pred.float()), self._crop(target.float())
        self.psnr.update(pred, target)
        for i, metric in enumerate(self.band_psnr):
            metric.update(pred[:, i : i + 1], target[:, i : i + 1])
        self.ssim.update(pred, target)
        for i, metric in enumerate(self.band_ssim):
            metric.update(pred[:, i : i + 1], target[:, i : i + 1])
        if self.sam is not None:
            self.sam.update(pred, target)

    def _update_masked(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> None:
        pred, target = self._crop(pred.float()), self._crop(target.float())
        n, bands, h, w = pred.shape
        valid = torch.ones(n, h, w, dtype=torch.bool) if valid is None else self._crop(valid.bool())
        valid = valid.to(pred.device)
        count = int(valid.sum())
        if count == 0:
            return
        self._pixels += count
        # (bands, K) valid pixels: pooled PSNR and SAM are sums over pixels, so a flat view is exact.
        p, t = pred.permute(1, 0, 2, 3)[:, valid], target.permute(1, 0, 2, 3)[:, valid]
        self.psnr.update(p, t)
        for i, metric in enumerate(self.band_psnr):
            metric.update(p[i], t[i])
        if self.sam is not None:
            self.sam.update(p[None, :, :, None], t[None, :, :, None])
        _, full = structural_similarity_index_measure(
            pred, target, data_range=self.data_range, reduction="none", return_full_image=True
        )
        near_nodata = F.max_pool2d((~valid).float()[:, None], SSIM_WINDOW, 1, SSIM_WINDOW // 2)[:, 0] > 0
        counted = valid & ~near_nodata
        self._ssim_sum += full.permute(1, 0, 2, 3)[:, counted].double().sum(1).cpu()
        self._ssim_count += int(counted.sum())

    def compute(self) -> dict[str, float]:
        if self.masked:
            return self._compute_masked()
        out = {"psnr": float(self.psnr.compute()), "ssim": float(self.ssim.compute())}
        if self.sam is not None:
            out["sam_deg"] = math.degrees(float(self.sam.compute()))
        for name, metric in zip(self.band_names, self.band_psnr):
            out[f"psnr_{name}"] = float(metric.compute())
        for name, metric in zip(self.band_names, self.band_ssim):
            out[f"ssim_{name}"] = float(metric.compute())
        return out

    def _compute_masked(self) -> dict[str, float]:
        if self._pixels == 0:
            nan = math.nan
            out = {"psnr": nan, "ssim": nan, **({"sam_deg": nan} if self.sam is not None else {})}
            out.update({f"psnr_{n}": nan for n in self.band_names})
            out.update({f"ssim_{n}": nan for n in self.band_names} if self.band_ssim else {})
            return {**out, "pixels": 0, "ssim_pixels": 0}
        per_band = (self._ssim_sum / max(self._ssim_count, 1)).tolist()
        ssim = float(sum(per_band) / len(per_band)) if self._ssim_count else math.nan
        out = {"psnr": float(self.psnr.compute()), "ssim": ssim}
        if self.sam is not None:
            out["sam_deg"] = math.degrees(float(self.sam.compute()))
        for name, metric in zip(self.band_names, self.band_psnr):
            out[f"psnr_{name}"] = float(metric.compute())
        if self.band_ssim:
            for name, value in zip(self.band_names, per_band):
                out[f"ssim_{name}"] = value if self._ssim_count else math.nan
        out["pixels"], out["ssim_pixels"] = self._pixels, self._ssim_count
        return out

    def reset(self) -> None:
        self._ssim_sum.zero_()
        self._ssim_count = self._pixels = 0
        for metric in [self.psnr, self.ssim, *self.band_psnr, *self.band_ssim] + ([self.sam] if self.sam else []):
            metric.reset()


class BandLpips:
    """LPIPS per band (each band as a grey image, like the loss without ``rgb_bands``) on 256 px tiles."""

    def __init__(self, net: str, device: torch.device) -> None:
        from srgan.losses.perceptual import LPIPSLoss

        self.loss = LPIPSLoss(num_bands=1, net=net)
        self.device = device

    @torch.no_grad()
    def __call__(
        self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[list[float], int]:
        """Per-band LPIPS over the tiles that hold no nodata pixel (a network's receptive field
        would see the zero fill), weighted by area; also the pixels those tiles cover."""
        size = 256
        h, w = pred.shape[-2:]
        tiles = []
        for r in range(0, h, size):
            for c in range(0, w, size):
                part = (slice(r, r + size), slice(c, c + size))
                if min(pred[(0, *part)].shape) < 32:  # AlexNet's pooling needs some extent
                    continue
                if valid is not None and not bool(valid[part].all()):
                    continue
                tiles.append(part)
        values = []
        for b in range(pred.shape[0]):
            parts, weights = [], []
            for part in tiles:
                p = pred[(slice(b, b + 1), *part)][None].to(self.device)
                t = target[(slice(b, b + 1), *part)][None].to(self.device)
                parts.append(float(self.loss(p.clamp(0, 1), t.clamp(0, 1))))
                weights.append(p.shape[-2] * p.shape[-1])
            values.append(float(np.average(parts, weights=weights)) if parts else math.nan)
        return values, int(sum(pred[(0, *part)].numel() for part in tiles))
