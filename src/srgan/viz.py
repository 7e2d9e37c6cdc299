"""Band composites and LR | SR | HR comparison grids for logging."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def composite(
    images: Sequence[torch.Tensor], rgb: Sequence[int], low: float = 1.0, high: float = 99.0
) -> list[np.ndarray]:
    """RGB uint8 composites of ``(bands, H, W)`` images, all stretched with the same percentiles.

    The stretch comes from the last image (the HR reference), so differences in brightness between
    panels are real, not an artefact of per-panel stretching.
    """
    reference = images[-1][list(rgb)].float()
    lo = torch.quantile(reference.flatten(1), low / 100, dim=1).view(3, 1, 1)
    hi = torch.quantile(reference.flatten(1), high / 100, dim=1).view(3, 1, 1)
    out = []
    for img in images:
        x = (img[list(rgb)].float() - lo) / (hi - lo).clamp_min(1e-12)
        out.append((x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy())
    return out


def comparison_grid(
    lr_up: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor, rgb: Sequence[int], gap: int = 4
) -> np.ndarray:
    """One row ``upsampled LR | SR | HR`` as an ``(H, 3W + 2 gap, 3)`` uint8 image."""
    panels = composite([lr_up, sr, hr], rgb)
    spacer = np.full((panels[0].shape[0], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([panels[0], spacer, panels[1], spacer, panels[2]], axis=1)
