"""``eval.png``: example tiles LR | bicubic | SR | HR | |SR - HR| and per-band PSNR / SSIM bars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from srgan.evaluation.regions import METHODS
from srgan.viz import stretch, to_rgb


def _detail_spots(first: dict[str, torch.Tensor], valid: torch.Tensor, size: int) -> list[tuple[int, int]]:
    """The corners of the three tiles with the most HR detail (where SR matters); tiles with nodata rank last."""
    hr = first["hr"]
    detail = (hr - first["bicubic"]).abs().mean(0) * valid
    detail = torch.nn.functional.avg_pool2d(detail[None, None], size, size)[0, 0]
    full = torch.nn.functional.avg_pool2d(valid.float()[None, None], size, size)[0, 0]
    order = torch.argsort((detail * (full >= 0.999) + detail * 1e-6).flatten(), descending=True)[:3].tolist()
    return [(i // detail.shape[1] * size, i % detail.shape[1] * size) for i in order]


def _bars(fig, rows: int, results: dict, bands: list[str]) -> None:
    bars = fig.add_subplot(rows, 2, 2 * rows - 1)
    ssim = fig.add_subplot(rows, 2, 2 * rows)
    x = np.arange(len(bands))
    for k, method in enumerate(METHODS):
        bars.bar(x + (k - 1) * 0.27, [results[method][f"psnr_{b}"] for b in bands], 0.27, label=method)
        ssim.bar(x + (k - 1) * 0.27, [results[method][f"ssim_{b}"] for b in bands], 0.27, label=method)
    for ax, name in ((bars, "PSNR dB"), (ssim, "SSIM")):
        ax.set_xticks(x, bands)
        ax.set_ylabel(name)
        ax.legend(fontsize=8)
    lows = [min(results[m][f"psnr_{b}"] for m in METHODS) for b in bands]
    bars.set_ylim(min(lows) - 2, None)
    ssim.set_ylim(min(min(results[m][f"ssim_{b}"] for m in METHODS) for b in bands) - 0.05, 1.0)


def figure(first: dict[str, torch.Tensor], results: dict, rgb: list[int], bands: list[str], path: Path) -> Path:
    """Example tiles (LR | bicubic | SR | HR | |SR - HR|) and per-band PSNR / SSIM bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hr = first["hr"]
    valid = first.get("valid", torch.ones(hr.shape[-2:], dtype=torch.bool))
    size = min(128, hr.shape[-2], hr.shape[-1])
    spots = _detail_spots(first, valid, size)
    # One stretch for the three bands, from the HR pixels with data: true relative brightness.
    lo, hi = stretch(hr, rgb, 1, 99, valid, per_band=False)
    scale = hr.shape[-1] // first["lr"].shape[-1]
    columns = ["LR", "bicubic", "SR", "HR", "|SR - HR|"]
    fig, axes = plt.subplots(len(spots) + 1, 5, figsize=(15, 3 * len(spots) + 3.5), squeeze=False)
    for row, (r, c) in enumerate(spots):
        lr_tile = first["lr"][:, r // scale : (r + size) // scale, c // scale : (c + size) // scale]
        tiles = [
            torch.nn.functional.interpolate(lr_tile[None], scale_factor=scale, mode="nearest")[0],
            first["bicubic"][:, r : r + size, c : c + size],
            first["sr"][:, r : r + size, c : c + size],
            hr[:, r : r + size, c : c + size],
        ]
        for col, t in enumerate(tiles):
            axes[row, col].imshow(to_rgb(t, rgb, lo, hi).numpy())
        err = (tiles[2] - tiles[3]).abs().mean(0).numpy()
        axes[row, 4].imshow(err, cmap="magma", vmin=0, vmax=max(float(np.percentile(err, 99)), 1e-6))
        for col, name in enumerate(columns):
            axes[row, col].set_title(name if row == 0 else "")
            axes[row, col].axis("off")
    for ax in axes[-1]:
        ax.axis("off")
    _bars(fig, len(spots) + 1, results, bands)
    fig.subplots_adjust(left=0.04, right=0.98, top=0.95, bottom=0.05, hspace=0.3, wspace=0.08)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
