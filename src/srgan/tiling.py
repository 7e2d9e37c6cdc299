"""Tiled super-resolution of images larger than memory allows in one pass, without seams.

Tiles overlap by ``overlap`` LR pixels; each SR tile is weighted by a window that ramps linearly
from near 0 at the tile's edge to 1 at ``overlap`` pixels inside, and the weighted sum is divided
by the summed weights. Pixels near a tile edge (where zero padding makes convolutions wrong) thus
contribute little wherever another tile covers them, and the blend has no visible seam.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn


def _origins(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def blend_window(height: int, width: int, ramp: int) -> torch.Tensor:
    """``(height, width)`` weights: linear ramp over ``ramp`` pixels at every edge, 1 inside, > 0 everywhere."""

    def axis(n: int) -> torch.Tensor:
        pos = torch.arange(n, dtype=torch.float32)
        dist = torch.minimum(pos, n - 1 - pos) + 0.5
        return (dist / max(ramp, 1)).clamp(max=1.0)

    return axis(height)[:, None] * axis(width)[None, :]


@torch.no_grad()
def tiled_super_resolve(
    model: nn.Module,
    lr: torch.Tensor,
    scale: int,
    tile: int = 128,
    overlap: int = 16,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    bf16: bool = False,
) -> torch.Tensor:
    """Super-resolve ``lr`` of shape ``(bands, H, W)`` tile by tile; returns ``(bands, H*scale, W*scale)`` in fp32."""
    if lr.dim() != 3:
        raise ValueError(f"expected (bands, H, W), got shape {tuple(lr.shape)}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap}, tile={tile}")
    bands, height, width = lr.shape
    th, tw = min(tile, height), min(tile, width)
    boxes = [(r, c) for r in _origins(height, th, th - overlap) for c in _origins(width, tw, tw - overlap)]
    window = blend_window(th * scale, tw * scale, overlap * scale).to(device)
    out = torch.zeros(bands, height * scale, width * scale, device=device)
    weight = torch.zeros(1, height * scale, width * scale, device=device)
    lr = lr.to(device)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else nullcontext()
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start : start + batch_size]
        batch = torch.stack([lr[:, r : r + th, c : c + tw] for r, c in chunk])
        with autocast:
            sr = model(batch)
        sr = sr.float()
        for (r, c), tile_sr in zip(chunk, sr):
            rs, cs = r * scale, c * scale
            out[:, rs : rs + th * scale, cs : cs + tw * scale] += tile_sr * window
            weight[:, rs : rs + th * scale, cs : cs + tw * scale] += window
    return out / weight
