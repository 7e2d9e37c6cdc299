"""Validation of the EMA generator against HR and against bicubic upsampling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import Dataset

from srgan.evaluation.metrics import SRMetrics
from srgan.models.blocks import upsample_image
from srgan.viz import comparison_grid, detail_score


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
    grid_rows: int = 4,
) -> tuple[dict[str, float], np.ndarray | None]:
    """Metrics of SR and of bicubic over the whole validation set, and one comparison grid.

    Each process takes every ``world``-th tile (no padding duplicates), and torchmetrics sums the
    metric states over processes, so the numbers are exact under DDP.

    The grid (:func:`srgan.viz.comparison_grid`, ``LR | bicubic | SR | HR``) shows the
    ``grid_rows`` tiles of this process's share with the most HR detail (:func:`srgan.viz.detail_score`),
    the same tiles at every validation, in validation order. A tile's optional ``hr_valid`` entry
    (``(H, W)`` booleans, True where HR holds data) keeps nodata out of the ranking and the stretch.
    """
    if grid_rows < 0:
        raise ValueError(f"grid_rows must be >= 0, got {grid_rows}")
    sr_metrics = SRMetrics(band_names, border).to(accelerator.device)
    bicubic_metrics = SRMetrics(band_names, border).to(accelerator.device)
    indices = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    best: list[tuple[float, int, dict[str, torch.Tensor]]] = []  # (score, tile position, panels)
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
        if grid_rows:
            valid = None
            if all("hr_valid" in it for it in items):
                valid = torch.stack([it["hr_valid"] for it in items]).to(accelerator.device)
            scores = detail_score(hr, valid).tolist()
            for j, score in enumerate(scores):
                if len(best) == grid_rows and score <= best[-1][0]:
                    continue
                panels = {"lr": lr[j], "bicubic": bicubic[j], "sr": sr[j], "hr": hr[j]}
                if valid is not None:
                    panels["valid"] = valid[j]
                best.append((score, start + j, {k: v.detach().cpu() for k, v in panels.items()}))
                # Highest score first; equal scores keep validation order, so the choice is reproducible.
                best.sort(key=lambda entry: (-entry[0], entry[1]))
                del best[grid_rows:]
    generator.train(was_training)
    grid = comparison_grid([p for _, _, p in sorted(best, key=lambda e: e[1])], rgb) if best else None
    sr_values, bicubic_values = sr_metrics.compute(), bicubic_metrics.compute()
    metrics = {f"val/{k}": v for k, v in sr_values.items()}
    metrics.update({f"val/bicubic_{k}": v for k, v in bicubic_values.items()})
    metrics["val/psnr_gain_over_bicubic"] = sr_values["psnr"] - bicubic_values["psnr"]
    return metrics, grid
