"""Schedules counted in generator optimizer steps."""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

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


LR_POLICIES = ("constant", "cosine", "multistep", "plateau")


class LRSchedule:
    """One optimizer's learning rate per generator step: a linear warm-up, then a policy.

    ``constant``, ``cosine`` (to ``min_lr_ratio`` of the base rate at ``max_steps``) and ``multistep``
    (times ``gamma`` at each milestone) are closed-form factors driven by ``torch``'s ``LambdaLR``;
    ``plateau`` hands over to ``ReduceLROnPlateau`` after the warm-up, fed the monitored
    validation metric. Call :meth:`step` once per generator step and :meth:`observe` after each
    validation. The schedule is not passed to ``accelerator.prepare``, which would step it once
    per process.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_steps: int,
        policy: str = "constant",
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        milestones: Sequence[int] = (),
        gamma: float = 0.5,
        monitor: str = "val/psnr",
        mode: str = "max",
        patience: int = 2,
        name: str = "lr",
    ) -> None:
        if policy not in LR_POLICIES:
            raise ValueError(f"{name}.policy must be one of {LR_POLICIES}, got {policy!r}")
        self.policy, self.max_steps, self.warmup_steps = policy, max_steps, warmup_steps
        self.min_lr_ratio, self.milestones, self.gamma = min_lr_ratio, sorted(milestones), gamma
        self.monitor, self.name = monitor, name
        self.step_count = 0
        self.lambda_lr = LambdaLR(optimizer, lambda step: self.factor(step))
        self.plateau = (
            ReduceLROnPlateau(optimizer, mode=mode, factor=gamma, patience=patience) if policy == "plateau" else None
        )

    def factor(self, step: int) -> float:
        """The multiplier of the base rate during generator step ``step`` (0-based), plateau aside."""
        warm = (step + 1) / self.warmup_steps if step < self.warmup_steps else 1.0
        if self.policy == "cosine" and step >= self.warmup_steps:
            t = min(1.0, (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
            return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
        if self.policy == "multistep":
            return warm * self.gamma ** bisect.bisect_right(self.milestones, step)
        return warm

    def step(self) -> None:
        """After a generator optimizer step."""
        self.step_count += 1
        # Under "plateau" the closed form is only the warm-up; afterwards ReduceLROnPlateau owns the rate.
        if self.plateau is None or self.step_count <= self.warmup_steps:
            with warnings.catch_warnings():
                # The discriminator's schedule runs through pretraining, before D's first step.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
                self.lambda_lr.step()

    def observe(self, metrics: dict[str, float]) -> None:
        """After a validation; only ``plateau`` reacts, and only once the warm-up is over."""
        if self.plateau is None or self.step_count < self.warmup_steps:
            return
        if self.monitor not in metrics:
            raise KeyError(
                f"schedule.{self.name}.monitor={self.monitor!r} is not a validation metric; "
                f"choose one of {sorted(metrics)}"
            )
        self.plateau.step(metrics[self.monitor])

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "lambda_lr": self.lambda_lr.state_dict(),
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = state["step_count"]
        self.lambda_lr.load_state_dict(state["lambda_lr"])
        if self.plateau is not None and state["plateau"] is not None:
            self.plateau.load_state_dict(state["plateau"])


class DiscriminatorSchedule:
    """When the discriminator trains, counted in generator steps.

    - ``warmup_steps``: D optimizer steps taken alone (G frozen) when the adversarial phase starts;
      they use fresh batches and do not count as generator steps.
    - ``every``: D is updated after every ``every``-th generator step of the adversarial phase,
    - ``steps_per_g``: ... with this many D updates, each on a fresh batch (WGAN's critic iterations).
    - ``holdback``: a D update is skipped while mean D(y) - mean D(G(x)) on the current batch exceeds
      this gap, i.e. while D already separates real from fake with confidence.
    """

    def __init__(self, warmup_steps: int = 0, every: int = 1, steps_per_g: int = 1, holdback: float | None = None):
        self.warmup_steps, self.every, self.steps_per_g, self.holdback = warmup_steps, every, steps_per_g, holdback

    def due(self, step: int, pretrain_steps: int) -> bool:
        return step >= pretrain_steps and (step - pretrain_steps) % self.every == 0
