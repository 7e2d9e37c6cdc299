"""Device choice for the evaluation and inference entry points."""

from __future__ import annotations

import torch


def pick_device(name: str) -> torch.device:
    """``auto`` takes CUDA when present, else the CPU; an explicit device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} was requested but torch sees no CUDA device; use device=cpu or auto")
    return device
