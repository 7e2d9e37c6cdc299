"""Validation of the EMA generator against HR and against bicubic upsampling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import Dataset

from srgan.metrics import SRMetrics
from srgan.models.blocks import upsample_image
from srgan.viz import comparison_grid


@torch.no_grad()
def validate(
    accelerator: Accelerator,
    generator: nn.Module,
    dataset: Dataset,
    scale: int,
    band_names: Sequence[str],
    rgb: Sequence[int],
    batch_size: int = 8,
    border: int = 4,
) -> tuple[dict[str, float], np.ndarray | None]:
    """Metrics of SR and of bicubic over the whole validation set, and one comparison grid.

    Each process takes every ``world``-th tile (no padding duplicates), and torchmetrics sums the
    metric states over processes, so the numbers are exact under DDP.
    """
    sr_metrics = SRMetrics(band_names, border).to(accelerator.device)
    bicubic_metrics = SRMetrics(band_names, border).to(accelerator.device)
    indices = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    grid = None
    was_training = generator.training
    generator.eval()
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start : start + batch_size]]
        lr = torch.stack([it["lr"] for it in items]).to(accelerator.device)
        hr = torch.stack([it["hr"] for it in items]).to(accelerator.device)
        with accelerator.autocast():
            sr = generator(lr)
        sr = sr.float()
        bicubic = upsample_image(lr, scale, "bicubic")
        sr_metrics.update(sr, hr)
        bicubic_metrics.update(bicubic, hr)
        if grid is None:
            grid = comparison_grid(bicubic[0], sr[0], hr[0], rgb)
    generator.train(was_training)
    sr_values, bicubic_values = sr_metrics.compute(), bicubic_metrics.compute()
    metrics = {f"val/{k}": v for k, v in sr_values.items()}
    metrics.update({f"val/bicubic_{k}": v for k, v in bicubic_values.items()})
    metrics["val/psnr_gain_over_bicubic"] = sr_values["psnr"] - bicubic_values["psnr"]
    return metrics, grid
