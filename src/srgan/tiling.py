"""Tiled super-resolution without seams, in memory or streamed through a GeoTIFF.

Tiles overlap by ``overlap`` LR pixels on a grid fixed by the image size. Each SR tile is weighted
by a window that is exactly 0 within ``margin`` pixels of an edge it shares with another tile,
rises with a raised cosine, and is 1 in the interior; edges on the image border keep weight 1
(nothing else covers them). Pixels near a tile edge, where zero padding makes convolutions wrong,
therefore never reach the output wherever another tile covers them: with ``margin`` at least the
generator's receptive-field radius the blend equals the untiled result, and there is no seam.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext

import torch
from torch import nn


def tile_origins(size: int, tile: int, overlap: int) -> list[int]:
    """Start positions of tiles of ``tile`` px covering ``size`` px with at least ``overlap`` px shared."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    return starts + [size - tile]


def _axis_weights(n: int, margin: int, ramp: int, taper_start: bool, taper_end: bool) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32)

    def side(dist: torch.Tensor) -> torch.Tensor:
        t = ((dist + 0.5 - margin) / max(ramp, 1)).clamp(0.0, 1.0)
        return 0.5 - 0.5 * torch.cos(math.pi * t)

    w = torch.ones(n)
    if taper_start:
        w = w * side(pos)
    if taper_end:
        w = w * side(n - 1 - pos)
    return w


def blend_window(
    height: int, width: int, overlap: int, edges: tuple[bool, bool, bool, bool] = (True, True, True, True)
) -> torch.Tensor:
    """``(height, width)`` weights for one tile; ``overlap`` in the same pixels; ``edges`` = which of the
    top, bottom, left, right edges are shared with another tile (tapered)."""
    if overlap == 0:
        return torch.ones(height, width)
    margin = overlap // 3
    ramp = max(overlap - 2 * margin, 1)
    top, bottom, left, right = edges
    return _axis_weights(height, margin, ramp, top, bottom)[:, None] * _axis_weights(width, margin, ramp, left, right)


def tile_boxes(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """``(row, col, rows, cols)`` of every LR tile, row by row."""
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap}, tile={tile}")
    th, tw = min(tile, height), min(tile, width)
    return [(r, c, th, tw) for r in tile_origins(height, th, overlap) for c in tile_origins(width, tw, overlap)]


def _edges(box: tuple[int, int, int, int], height: int, width: int) -> tuple[bool, bool, bool, bool]:
    r, c, h, w = box
    return r > 0, r + h < height, c > 0, c + w < width


def run_tiles(
    model: nn.Module,
    read: Callable[[tuple[int, int, int, int]], torch.Tensor],
    boxes: list[tuple[int, int, int, int]],
    batch_size: int,
    device: torch.device,
    bf16: bool = False,
    channels_last: bool = False,
) -> Iterator[tuple[tuple[int, int, int, int], torch.Tensor]]:
    """Model outputs (fp32) for the tiles in ``boxes``, in order, ``batch_size`` at a time.

    With ``channels_last`` the batches are NHWC (the model should be converted too: see
    ``bench/speed.py`` for what it gains on the machine at hand)."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start : start + batch_size]
        batch = torch.stack([read(box) for box in chunk]).to(device).contiguous(memory_format=fmt)
        with torch.inference_mode(), autocast:
            out = model(batch).float()
        yield from zip(chunk, out)


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
    out_channels: int | None = None,
) -> torch.Tensor:
    """Super-resolve ``lr`` of shape ``(bands, H, W)`` in memory, tile by tile; ``(bands, H*s, W*s)`` fp32
    (``out_channels`` when the model returns another number of channels, e.g. mean and spread)."""
    if lr.dim() != 3:
        raise ValueError(f"expected (bands, H, W), got shape {tuple(lr.shape)}")
    device = torch.device(device)
    bands, height, width = lr.shape
    boxes = tile_boxes(height, width, tile, overlap)
    out = torch.zeros(out_channels or bands, height * scale, width * scale, device=device)
    weight = torch.zeros(1, height * scale, width * scale, device=device)

    def read(box):
        r, c, h, w = box
        return lr[:, r : r + h, c : c + w]

    for box, sr in run_tiles(model, read, boxes, batch_size, device, bf16):
        r, c, h, w = (v * scale for v in box)
        window = blend_window(h, w, overlap * scale, _edges(box, height, width)).to(device)
        out[:, r : r + h, c : c + w] += sr * window
        weight[:, r : r + h, c : c + w] += window
    return out / weight
