"""``fit()``: the training loop, counted in generator optimizer steps."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from srgan.engine.checkpoint import save_checkpoint
from srgan.engine.ema import EMA
from srgan.engine.schedules import AdversarialRamp
from srgan.engine.steps import discriminator_step, generator_step
from srgan.losses.composite import CompositeLoss
from srgan.tracking import MlflowTracker

Validator = Callable[[nn.Module], tuple[dict[str, float], "np.ndarray | None"]]


class TrainState:
    """The loop position, saved with every checkpoint."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


@dataclass
class Cadence:
    """How often things happen, in generator steps (0 disables a periodic action)."""

    max_steps: int
    log_every: int
    val_every: int
    ckpt_every: int
    grad_clip: float | None = None
    progress: bool = True


def _due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


def fit(
    accelerator: Accelerator,
    generator: nn.Module,
    discriminator: nn.Module,
    loss: CompositeLoss,
    optimizer_g: torch.optim.Optimizer,
    optimizer_d: torch.optim.Optimizer,
    loader: DataLoader,
    ema: EMA,
    ramp: AdversarialRamp,
    state: TrainState,
    cadence: Cadence,
    tracker: MlflowTracker,
    run_dir: Path,
    validator: Validator,
) -> dict[str, float]:
    """Train until ``cadence.max_steps``; returns the last validation metrics."""
    g_module = accelerator.unwrap_model(generator)
    d_module = accelerator.unwrap_model(discriminator)
    batches = iter(accelerator.skip_first_batches(loader, state.step) if state.step else loader)
    history: dict[str, list[torch.Tensor]] = defaultdict(list)
    last_val: dict[str, float] = {}
    bar = tqdm(
        total=cadence.max_steps,
        initial=state.step,
        disable=not (accelerator.is_main_process and cadence.progress),
        dynamic_ncols=True,
        unit="step",
        # Redirected to a file (CI, nohup), a redraw per step would fill the log with bars.
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
    )
    tick, tick_step = time.perf_counter(), state.step
    generator.train()
    discriminator.train()
    while state.step < cadence.max_steps:
        batch = next(batches)
        step = state.step
        adversarial_weight = loss.adversarial_weight * ramp(step)
        sr, stats = generator_step(
            accelerator, generator, d_module, loss, optimizer_g, batch, adversarial_weight, cadence.grad_clip
        )
        if ramp.adversarial_phase(step):
            stats.update(
                discriminator_step(accelerator, discriminator, loss, optimizer_d, batch["hr"], sr, cadence.grad_clip)
            )
        if accelerator.sync_gradients:
            ema.update(g_module, step)
        state.step += 1
        bar.update(1)
        for key, value in stats.items():
            history[key].append(value)

        if _due(state.step, cadence.log_every, cadence.max_steps):
            # Losses stay on the device between logs; one reduction here instead of a sync per step.
            names = sorted(history)
            means = accelerator.reduce(torch.stack([torch.stack(history[k]).mean() for k in names]), "mean").tolist()
            now = time.perf_counter()
            rate = (state.step - tick_step) / max(now - tick, 1e-9)
            logs = {f"train/{k}": v for k, v in zip(names, means)}
            logs.update(
                {
                    "train/adversarial_weight": adversarial_weight,
                    "train/lr_g": optimizer_g.param_groups[0]["lr"],
                    "train/lr_d": optimizer_d.param_groups[0]["lr"],
                    "train/steps_per_s": rate,
                    "train/images_per_s": rate * batch["lr"].shape[0] * accelerator.num_processes,
                }
            )
            tracker.log_metrics(logs, state.step)
            bar.set_postfix(
                {
                    k.split("/")[1]: f"{v:.4g}"
                    for k, v in logs.items()
                    if k.split("/")[1] in ("l1", "g_adversarial", "d_loss", "d_real_prob", "d_fake_prob")
                },
                refresh=False,
            )
            history.clear()
            tick, tick_step = now, state.step

        if _due(state.step, cadence.val_every, cadence.max_steps):
            last_val, grid = validator(ema.module)
            tracker.log_metrics(last_val, state.step)
            if grid is not None and accelerator.is_main_process:
                tracker.log_image(grid, key="val_grid", step=state.step)
            if accelerator.is_main_process:
                bar.write(
                    f"step {state.step}: val PSNR {last_val['val/psnr']:.2f} dB "
                    f"(bicubic {last_val['val/bicubic_psnr']:.2f} dB, "
                    f"gain {last_val['val/psnr_gain_over_bicubic']:+.2f} dB)"
                )

        if cadence.ckpt_every > 0 and state.step % cadence.ckpt_every == 0 or state.step == cadence.max_steps:
            save_checkpoint(accelerator, run_dir / "checkpoints" / "last")
    bar.close()
    return last_val
