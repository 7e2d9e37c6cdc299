"""Bands to RGB, the one place: the percentile stretch, composites, and the labelled
LR | bicubic | SR | HR comparison grids for logging (``srgan-eval``'s figure draws with them too)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

PANELS = ("lr", "bicubic", "sr", "hr")
PANEL_LABELS = ("LR", "bicubic", "SR", "HR")
# Where validation grids go in a run's artifacts: one folder, one file per validation step.
GRID_FOLDER = "val_grids"
# Nodata pixels (the HR validity mask) are painted in this colour in every panel.
NODATA_RGB = (96, 96, 96)


def grid_artifact_file(step: int) -> str:
    """The artifact path of the validation grid of generator step ``step``: ``val_grids/val_grid_step000100.png``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return f"{GRID_FOLDER}/val_grid_step{step:06d}.png"


def _check_rgb(rgb: Sequence[int], bands: int) -> list[int]:
    rgb = list(rgb)
    if len(rgb) != 3 or any(not 0 <= b < bands for b in rgb):
        raise ValueError(f"rgb must be three band indices in [0, {bands}), got {rgb}")
    return rgb


def stretch(
    reference: torch.Tensor,
    rgb: Sequence[int],
    low: float = 1.0,
    high: float = 99.0,
    valid: torch.Tensor | None = None,
    per_band: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The percentile stretch ``(lo, hi)`` of the ``rgb`` bands of a ``(bands, H, W)`` reference, each
    ``(3, 1, 1)``: per band, or with ``per_band=False`` one pair for all three (the bands keep their
    relative brightness). ``valid`` (``(H, W)`` booleans, True where the reference holds data): the
    percentiles are taken over valid pixels only, since nodata is zero-filled and would otherwise pull
    the low end down."""
    rgb = _check_rgb(rgb, reference.shape[0])
    values = reference[rgb].float().flatten(1)
    if valid is not None:
        if valid.shape != reference.shape[-2:]:
            raise ValueError(f"valid mask has shape {tuple(valid.shape)}, the HR image {tuple(reference.shape[-2:])}")
        mask = valid.to(device=values.device, dtype=torch.bool)
        if not bool(mask.any()):
            raise ValueError("valid mask has no valid pixel: nothing to stretch the composite on")
        values = values[:, mask.flatten()]
    values = values.cpu().numpy()
    # numpy, not torch.quantile: that refuses more than 2**24 values (a whole evaluated scene).
    limits = np.percentile(values if per_band else values.reshape(1, -1), [low, high], axis=1)
    lo, hi = (torch.as_tensor(v, dtype=torch.float32, device=reference.device).view(-1, 1, 1) for v in limits)
    return lo.expand(3, 1, 1), hi.expand(3, 1, 1)


def to_rgb(image: torch.Tensor, rgb: Sequence[int], lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The ``rgb`` bands of a ``(bands, H, W)`` image with the stretch of :func:`stretch`: an
    ``(H, W, 3)`` float image in [0, 1]."""
    x = (image[rgb].float().to(lo.device) - lo) / (hi - lo).clamp_min(1e-12)
    return x.clamp(0, 1).permute(1, 2, 0)


def composite(
    images: Sequence[torch.Tensor],
    rgb: Sequence[int],
    low: float = 1.0,
    high: float = 99.0,
    valid: torch.Tensor | None = None,
) -> list[np.ndarray]:
    """RGB uint8 composites of ``(bands, H, W)`` images, all stretched with the same percentiles.

    The stretch (:func:`stretch`, per band) comes from the last image (the HR reference), so
    differences in brightness between panels are real, not an artefact of per-panel stretching.
    ``valid`` (``(H, W)`` booleans, True where HR holds data): the percentiles are taken over valid
    pixels only, and invalid pixels are painted ``NODATA_RGB``.
    """
    rgb = _check_rgb(rgb, images[-1].shape[0])
    lo, hi = stretch(images[-1], rgb, low, high, valid)
    mask = None if valid is None else valid.bool().cpu().numpy()
    out = []
    for img in images:
        panel = (to_rgb(img, rgb, lo, hi) * 255).round().to(torch.uint8).cpu().numpy()
        if mask is not None and panel.shape[:2] == mask.shape:
            panel[~mask] = NODATA_RGB
        out.append(panel)
    return out


def detail_score(hr: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """How much detail each HR tile of a ``(N, bands, H, W)`` batch holds: mean absolute gradient
    over pairs of valid neighbours, times the valid share (a mostly-nodata tile ranks low, and the
    edge of a nodata area is not detail)."""
    hr = hr.float()
    ok = torch.ones(hr.shape[0], *hr.shape[-2:], dtype=torch.bool, device=hr.device) if valid is None else valid
    ok = ok.to(device=hr.device, dtype=torch.bool)
    dx, dy = (hr[..., :, 1:] - hr[..., :, :-1]).abs().mean(1), (hr[..., 1:, :] - hr[..., :-1, :]).abs().mean(1)
    ok_x, ok_y = ok[..., :, 1:] & ok[..., :, :-1], ok[..., 1:, :] & ok[..., :-1, :]
    pairs = (ok_x.sum((1, 2)) + ok_y.sum((1, 2))).clamp_min(1)
    gradient = ((dx * ok_x).sum((1, 2)) + (dy * ok_y).sum((1, 2))) / pairs
    return gradient * ok.float().mean((1, 2))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or built without FreeType: the bitmap font
        return ImageFont.load_default()


def comparison_grid(
    rows: Sequence[dict[str, torch.Tensor]],
    rgb: Sequence[int],
    gap: int = 4,
    low: float = 1.0,
    high: float = 99.0,
) -> np.ndarray:
    """A labelled grid, one row per patch, columns ``LR | bicubic | SR | HR``; an ``(H, W, 3)`` uint8 image.

    Each row is a dict with ``lr`` (``(bands, h, w)``), ``bicubic``, ``sr`` and ``hr`` (``(bands, H, W)``)
    and optionally ``valid`` (``(H, W)`` booleans for HR). LR is shown at HR size with nearest
    neighbour, so its pixels stay visible. All four panels of a row share one percentile stretch,
    from that row's valid HR pixels.
    """
    if not rows:
        raise ValueError("comparison_grid needs at least one row")
    blocks = []
    for i, row in enumerate(rows):
        missing = [k for k in PANELS if k not in row]
        if missing:
            raise ValueError(f"grid row {i} lacks {missing}; each row needs {list(PANELS)}")
        hr = row["hr"]
        size = tuple(hr.shape[-2:])
        for key in ("bicubic", "sr"):
            if tuple(row[key].shape) != tuple(hr.shape):
                raise ValueError(f"grid row {i}: {key} has shape {tuple(row[key].shape)}, HR {tuple(hr.shape)}")
        lr = torch.nn.functional.interpolate(row["lr"][None].float(), size=size, mode="nearest")[0]
        panels = composite([lr, row["bicubic"], row["sr"], hr], rgb, low, high, row.get("valid"))
        height = panels[0].shape[0]
        spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
        line = [panels[0]]
        for panel in panels[1:]:
            line += [spacer, panel]
        blocks.append(np.concatenate(line, axis=1))
    widths = {b.shape[1] for b in blocks}
    if len(widths) != 1:
        raise ValueError("grid rows differ in size; all patches must have the same HR size")
    width, panel_width = widths.pop(), blocks[0].shape[1] // len(PANELS)
    font = _font(max(10, min(18, panel_width // 6)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [probe.textbbox((0, 0), label, font=font) for label in PANEL_LABELS]
    header = Image.new("RGB", (width, max(b[3] for b in boxes) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    column = (width + gap) / len(PANELS)
    for k, (label, box) in enumerate(zip(PANEL_LABELS, boxes)):
        # Centred over its panel (the bitmap fallback font knows no anchors, so placed by its box).
        x = k * column + (column - gap - (box[2] - box[0])) / 2 - box[0]
        draw.text((x, 4), label, fill=(0, 0, 0), font=font)
    parts = [np.asarray(header)]
    for block in blocks:
        parts += [np.full((gap, width, 3), 255, dtype=np.uint8), block]
    return np.ascontiguousarray(np.concatenate(parts, axis=0))
