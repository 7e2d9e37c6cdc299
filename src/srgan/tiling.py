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

import numpy as np
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


class RowBlender:
    """SR tiles blended into a buffer of output rows that rolls down the image.

    ``add`` weights a tile by its :func:`blend_window` (cached per size and shared edges) into the
    buffer, which grows to cover it; ``take`` returns the blended rows above a given HR row (no later
    tile may touch them) and drops them. Streaming a scene keeps only the rows between the current
    tile row and the last one written; ``rows`` pre-allocates an in-memory image. ``missing`` is a
    boolean HR mask that rolls with the buffer (``mark`` ORs pixels into it).
    """

    def __init__(
        self, channels: int, height: int, width: int, scale: int, overlap: int, device: torch.device, rows: int = 0
    ) -> None:
        self.height, self.width, self.scale, self.overlap, self.device = height, width, scale, overlap, device
        self.acc = torch.zeros(channels, rows, width * scale, device=device)
        self.wsum = torch.zeros(1, rows, width * scale, device=device)
        self.missing = np.zeros((rows, width * scale), dtype=bool)
        self.base = 0  # the first HR row held in the buffers
        self._windows: dict[tuple, torch.Tensor] = {}

    def _cover(self, end: int) -> None:
        grow = end - (self.base + self.acc.shape[1])
        if grow > 0:
            self.acc = torch.cat([self.acc, self.acc.new_zeros(self.acc.shape[0], grow, self.acc.shape[2])], 1)
            self.wsum = torch.cat([self.wsum, self.wsum.new_zeros(1, grow, self.wsum.shape[2])], 1)
            self.missing = np.concatenate([self.missing, np.zeros((grow, self.missing.shape[1]), dtype=bool)])

    def mark(self, row: int, missing: np.ndarray) -> None:
        """OR an ``(rows, width * scale)`` HR mask into ``missing`` from HR row ``row`` on."""
        self._cover(row + missing.shape[0])
        self.missing[row - self.base : row - self.base + missing.shape[0]] |= missing

    def add(self, box: tuple[int, int, int, int], sr: torch.Tensor) -> None:
        """The SR of LR tile ``box`` = ``(row, col, rows, cols)``, weighted into the buffer."""
        r, c, h, w = box
        s = self.scale
        key = (h, w, _edges(box, self.height, self.width))
        if key not in self._windows:
            self._windows[key] = blend_window(h * s, w * s, self.overlap * s, key[2]).to(self.device)
        window = self._windows[key]
        self._cover((r + h) * s)
        top = r * s - self.base
        self.acc[:, top : top + h * s, c * s : (c + w) * s] += sr * window
        self.wsum[:, top : top + h * s, c * s : (c + w) * s] += window

    def take(self, end: int) -> tuple[torch.Tensor, np.ndarray] | None:
        """The blended HR rows from ``base`` up to ``end`` and their ``missing`` mask, dropped from the
        buffer (None when there are none)."""
        n = end - self.base
        if n <= 0:
            return None
        out, missing = self.acc[:, :n] / self.wsum[:, :n], self.missing[:n]
        self.acc, self.wsum, self.missing = self.acc[:, n:], self.wsum[:, n:], self.missing[n:]
        self.base = end
        return out, missing


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
    blender = RowBlender(out_channels or bands, height, width, scale, overlap, device, rows=height * scale)

    def read(box):
        r, c, h, w = box
        return lr[:, r : r + h, c : c + w]

    for box, sr in run_tiles(model, read, boxes, batch_size, device, bf16):
        blender.add(box, sr)
    return blender.take(height * scale)[0]
