"""Exponential moving average of the generator's weights."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """A frozen copy of a model whose parameters track ``decay * ema + (1 - decay) * model``.

    Buffers (batch-norm statistics, noise seeds) are copied, not averaged: an average of running
    statistics is not the statistics of the averaged weights. Before ``start_step`` the copy
    simply follows the model. With ``warmup`` the decay after ``n`` averaging updates is
    ``min(decay, (1 + n) / (10 + n))`` (the ``num_updates`` rule of TensorFlow's
    ``tf.train.ExponentialMovingAverage``), so early random weights are forgotten quickly.
    ``enabled=False`` keeps the same interface with decay 0: the copy is the model itself, which
    is how an EMA ablation runs the identical loop.
    """

    def __init__(
        self, model: nn.Module, decay: float = 0.999, start_step: int = 0, warmup: bool = False, enabled: bool = True
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"schedule.ema.decay must be in [0, 1), got {decay}")
        self.decay = decay if enabled else 0.0
        self.start_step = start_step
        self.warmup = warmup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay applied by the update after generator step ``step`` (0-based)."""
        if step < self.start_step:
            return 0.0
        if self.warmup:
            n = step - self.start_step
            return min(self.decay, (1 + n) / (10 + n))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold the model's current weights in; call once per generator optimizer step."""
        decay = self.decay_at(step)
        ema_params = list(self.module.parameters())
        params = [p.detach().to(e.dtype) for e, p in zip(ema_params, model.parameters())]
        # One fused kernel over all tensors instead of a Python loop of small ones.
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "start_step": self.start_step,
            "warmup": self.warmup,
            "module": self.module.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = state["decay"]
        self.start_step = state["start_step"]
        self.warmup = state.get("warmup", False)
        self.module.load_state_dict(state["module"])
