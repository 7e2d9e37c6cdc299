"""Schedules counted in generator optimizer steps."""

from __future__ import annotations

import math

RAMP_SHAPES = ("linear", "cosine", "sigmoid")


class AdversarialRamp:
    """The adversarial weight's multiplier: 0 during generator-only pretraining, then a ramp to 1.

    ``pretrain_steps`` steps train the generator on content losses alone; the discriminator starts
    at step ``pretrain_steps`` and the multiplier reaches 1 after ``ramp_steps`` more steps.
    """

    def __init__(self, pretrain_steps: int, ramp_steps: int, shape: str = "linear") -> None:
        if shape not in RAMP_SHAPES:
            raise ValueError(f"schedule.ramp.shape must be one of {RAMP_SHAPES}, got {shape!r}")
        if pretrain_steps < 0 or ramp_steps < 0:
            raise ValueError("schedule.pretrain_steps and schedule.ramp.steps must be >= 0")
        self.pretrain_steps = pretrain_steps
        self.ramp_steps = ramp_steps
        self.shape = shape

    def adversarial_phase(self, step: int) -> bool:
        return step >= self.pretrain_steps

    def __call__(self, step: int) -> float:
        if step < self.pretrain_steps:
            return 0.0
        if self.ramp_steps == 0:
            return 1.0
        t = min(1.0, (step - self.pretrain_steps + 1) / self.ramp_steps)
        if self.shape == "linear":
            return t
        if self.shape == "cosine":
            return 0.5 * (1.0 - math.cos(math.pi * t))
        # Logistic curve rescaled so that it passes exactly through 0 and 1.
        lo, hi = 1 / (1 + math.exp(6)), 1 / (1 + math.exp(-6))
        return (1 / (1 + math.exp(-12 * (t - 0.5))) - lo) / (hi - lo)
