"""``fit()``: the training loop, counted in generator optimizer steps."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
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
from tqdm.contrib.logging import logging_redirect_tqdm

from srgan.engine.checkpoint import CheckpointManager, checkpoint_steps, find_checkpoint
from srgan.engine.ema import EMA
from srgan.engine.health import GANHealth
from srgan.engine.schedules import AdversarialRamp, DiscriminatorSchedule, LRSchedule
from srgan.engine.steps import Update, discriminator_step, update
from srgan.losses.composite import CompositeLoss
from srgan.tracking import MlflowTracker
from srgan.viz import grid_artifact_file

log = logging.getLogger(__name__)

Validator = Callable[[nn.Module], tuple[dict[str, float], "np.ndarray | None"]]


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM stopped the run; what the one-line report needs travels with it
    (``checkpoint``: the one a resume continues from).

    A ``KeyboardInterrupt``, so that no ``except Exception`` (a sweep's per-job handler, Hydra's
    job runner) swallows it: a signal stops the whole command.
    """

    def __init__(self, signum: int, step: int | None = None, checkpoint: Path | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.run_dir: Path | None = None
        self.run_id: str | None = None
        # How to continue, when "the same command plus resume=<run_dir>" is not it (a sweep's job).
        self.resume_command: str | None = None

    @property
    def exit_code(self) -> int:
        """The shell's convention for a death by signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum

    def report(self) -> str:
        """One line: what stopped, where, what was kept and how to continue."""
        name = signal.Signals(self.signum).name
        where = f" at step {self.step}" if self.step is not None else " before training started"
        parts = [f"srgan-train: interrupted by {name}{where}"]
        parts.append(f"checkpoint {self.checkpoint}" if self.checkpoint is not None else "no checkpoint")
        if self.run_id:
            parts.append(f"MLflow run {self.run_id} marked KILLED")
        if self.checkpoint is not None and self.resume_command:
            parts.append(f"continue with: {self.resume_command}")
        elif self.checkpoint is not None and self.run_dir is not None:
            parts.append(f"continue with the same command plus resume={self.run_dir}")
        return "; ".join(parts)


class StopSignals:
    """SIGINT and SIGTERM handlers for the time of a ``with`` block (main thread only; else a no-op).

    Outside :func:`fit`'s loop a signal raises :class:`Interrupted` at once. Inside it (``deferred``),
    the first signal is only recorded: the loop finishes the generator step it is in, writes a
    checkpoint and raises at the next step boundary, where the training state is whole. A second
    signal raises at once, without a checkpoint. Nested blocks restore the outer handlers on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferred = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.deferred and self.signum is None:
            self.signum = signum
            # Straight to file descriptor 2, not through logging: the signal may have landed inside a
            # log handler's write or flush, and re-entering that stream raises (a "Logging error").
            notice = (
                f"\n{signal.Signals(signum).name}: stopping at the end of this step with a checkpoint "
                "(send it again to stop at once, without one)\n"
            )
            with contextlib.suppress(OSError):
                os.write(2, notice.encode())
            return
        raise Interrupted(signum)

    def agreed(self, accelerator: Accelerator) -> int:
        """The signal every process has seen by now (0: none): all processes stop at the same step."""
        if accelerator.num_processes == 1:
            return self.signum or 0
        flag = torch.tensor([self.signum or 0], device=accelerator.device)
        return int(accelerator.gather(flag).max().item())


class TrainState:
    """The loop position and counters, saved with every checkpoint.

    ``step`` counts generator optimizer steps; ``batches`` is the data position (batches drawn by
    each process, including D-only and skipped steps), so a resumed run draws the same batches.
    """

    def __init__(self) -> None:
        self.step = 0
        self.batches = 0
        self.d_warmup_done = 0
        self.nonfinite_total = 0
        self.run_id: str | None = None

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = set(vars(self))
        if set(state) != expected:
            raise ValueError(f"train state keys {sorted(state)} differ from {sorted(expected)}")
        for key, value in state.items():
            ok = isinstance(value, str) or value is None if key == "run_id" else isinstance(value, int)
            if not ok or isinstance(value, bool):
                raise ValueError(f"train state {key}={value!r} has the wrong type")
            setattr(self, key, value)


@dataclass
class Cadence:
    """How often things happen, in generator steps (0 disables a periodic action)."""

    max_steps: int
    log_every: int
    val_every: int
    ckpt_every: int
    grad_clip: float | None = None
    max_nonfinite: int = 10
    channels_last: bool = False
    progress: bool = True
    # One D forward pass for both updates when D trains on the generator step's batch (steps.gan_step).
    fused_gan_step: bool = True


@dataclass
class Parts:
    """What one training run optimises, and the schedules that drive it."""

    generator: nn.Module
    discriminator: nn.Module
    loss: CompositeLoss
    optimizer_g: torch.optim.Optimizer
    optimizer_d: torch.optim.Optimizer
    lr_g: LRSchedule
    lr_d: LRSchedule
    ema: EMA
    ramp: AdversarialRamp
    d_schedule: DiscriminatorSchedule
    # A degradation drawn on the device (srgan.data.degradation.RandomDegradation): batches carry HR
    # with its context, and LR is made here, per batch; None: the loader's batches hold LR.
    degradation: Any = None


def _due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


class _Batches:
    """The training batches from the data position ``state.batches`` on, each one counted there.

    With a ``degradation`` drawn on the device, each batch's LR is made here from its HR context,
    seeded by (the degradation's seed, the process, the batch position): the same draws after a resume.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        loader: DataLoader,
        state: TrainState,
        channels_last: bool,
        degradation: Any = None,
    ) -> None:
        self.state, self.channels_last, self.degradation = state, channels_last, degradation
        self.process = accelerator.process_index
        self._it = iter(accelerator.skip_first_batches(loader, state.batches) if state.batches else loader)

    def next(self) -> dict[str, Any]:
        self.state.batches += 1
        batch = next(self._it)
        if self.degradation is not None:
            words = [int(getattr(self.degradation, "seed", 0)), self.process, self.state.batches]
            seed = int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1)
            batch = self.degradation.degrade_batch(batch, seed)
        if self.channels_last:
            batch = {k: _channels_last(v) for k, v in batch.items()}
        return batch


def _channels_last(value: Any) -> Any:
    """Images (4-D tensors) in NHWC memory; masks and other entries as they are."""
    return value.contiguous(memory_format=torch.channels_last) if torch.is_tensor(value) and value.dim() == 4 else value


class _NonFiniteGuard:
    """Counts optimizer steps skipped for a non-finite loss or gradient; too many in a row stop the run."""

    def __init__(self, accelerator: Accelerator, state: TrainState, limit: int, checkpoint_root: Path) -> None:
        self.accelerator, self.state, self.limit, self.root = accelerator, state, limit, checkpoint_root
        self.in_a_row = 0

    def account(self, ok: bool, what: str) -> None:
        if ok:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.state.nonfinite_total += 1
        if self.accelerator.is_main_process:
            log.warning("step %d: non-finite %s loss or gradient, optimizer step skipped", self.state.step, what)
        if self.in_a_row >= self.limit:
            last = find_checkpoint(self.root)
            raise NonFiniteError(
                f"{self.in_a_row} optimizer steps in a row had a non-finite loss or gradient (at generator step "
                f"{self.state.step}; trainer.max_nonfinite={self.limit}). Last good checkpoint: "
                f"{last or 'none yet'}. Lower the learning rate, set trainer.grad_clip, or check the data."
            )


class _TrainLog:
    """Losses kept on the device between logs, reduced once per log (not a sync per step), then
    logged with the schedule's values, checked for GAN health and shown on the progress bar."""

    BAR_KEYS = ("l1", "g_adversarial", "d_loss", "d_real_prob", "d_fake_prob")

    def __init__(self, accelerator: Accelerator, parts: Parts, tracker: MlflowTracker, health: GANHealth, step: int):
        self.accelerator, self.parts, self.tracker, self.health = accelerator, parts, tracker, health
        self.history: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.held_back = 0
        self.tick, self.tick_step = time.perf_counter(), step

    def record(self, stats: dict[str, torch.Tensor]) -> None:
        for key, value in stats.items():
            self.history[key].append(value)

    def record_update(self, result: Update) -> None:
        """A generator micro-step's stats (unless it was skipped: its non-finite losses would poison
        the logged means) and whether holdback skipped D on it."""
        self.held_back += result.held_back
        if result.g_stepped:
            self.record(result.stats)

    def emit(self, state: TrainState, step: int, adversarial_weight: float, batch_size: int, bar: tqdm) -> None:
        """``train/*`` at ``state.step`` (``step``: the generator step just taken, for the EMA decay)."""
        p, accelerator = self.parts, self.accelerator
        names = sorted(self.history)
        means = accelerator.reduce(torch.stack([torch.stack(self.history[k]).mean() for k in names]), "mean").tolist()
        now = time.perf_counter()
        rate = (state.step - self.tick_step) / max(now - self.tick, 1e-9)
        logs = {f"train/{k}": v for k, v in zip(names, means)}
        logs.update(
            {
                "train/adversarial_weight": adversarial_weight,
                "train/lr_g": p.optimizer_g.param_groups[0]["lr"],
                "train/lr_d": p.optimizer_d.param_groups[0]["lr"],
                "train/ema_decay": p.ema.decay_at(step),
                "train/steps_per_s": rate,
                "train/images_per_s": rate * batch_size * accelerator.num_processes,
                "train/nonfinite_skipped_total": state.nonfinite_total,
                "train/d_warmup_steps_done": state.d_warmup_done,
            }
        )
        if p.d_schedule.holdback is not None:
            logs["train/d_held_back"], self.held_back = self.held_back, 0
        self.tracker.log_metrics(logs, state.step)
        for name, message in self.health.update(state.step, logs).items():
            if accelerator.is_main_process:
                log.warning("GAN health: %s", message)
            self.tracker.set_tags({f"health.{name}": message})
        shown = {k.split("/")[1]: f"{v:.4g}" for k, v in logs.items() if k.split("/")[1] in self.BAR_KEYS}
        bar.set_postfix(shown, refresh=False)
        self.history.clear()
        self.tick, self.tick_step = now, state.step


def _progress_bar(accelerator: Accelerator, cadence: Cadence, state: TrainState) -> tqdm:
    return tqdm(
        total=cadence.max_steps,
        initial=state.step,
        disable=not (accelerator.is_main_process and cadence.progress),
        dynamic_ncols=True,
        unit="step",
        # Redirected to a file (CI, nohup), a redraw per step would fill the log with bars.
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
    )


def _loop_scope(bar: tqdm, stop: StopSignals | None) -> contextlib.ExitStack:
    """Closes the bar at the end; log records print above it; signals are deferred to step boundaries."""
    scope = contextlib.ExitStack()
    scope.callback(bar.close)
    if not bar.disable:
        # Log records (validation results, warnings) printed above the bar instead of through it.
        scope.enter_context(logging_redirect_tqdm())
    if stop is not None:
        stop.deferred = True
        scope.callback(setattr, stop, "deferred", False)
    return scope


def _stop_if_signalled(
    stop: StopSignals | None,
    accelerator: Accelerator,
    state: TrainState,
    tracker: MlflowTracker,
    checkpoints: CheckpointManager,
    saved_at: int,
) -> None:
    """At a step boundary (outside a gradient-accumulation cycle, where the state is whole): after a
    signal, a checkpoint of this step (unless one exists, or it is step 0) and :class:`Interrupted`."""
    if stop is None or not (signum := stop.agreed(accelerator)):
        return
    if state.step > 0 and saved_at != state.step:
        tracker.flush(timeout=5.0)
        checkpoints.save(state.step, {"run_id": state.run_id})
    raise Interrupted(signum, state.step, checkpoint_steps(checkpoints.root).get(state.step))


def _discriminator_only_step(
    accelerator: Accelerator, p: Parts, g_module: nn.Module, batch: dict[str, torch.Tensor], grad_clip: float | None
) -> tuple[dict[str, torch.Tensor], bool]:
    """D against the frozen generator's SR of ``batch`` (warm-up and the extra D steps per G step)."""
    with torch.no_grad(), accelerator.autocast():
        sr = p.loss.masked(g_module(batch["lr"]), batch["hr"], batch.get("hr_valid"))
    return discriminator_step(accelerator, p.discriminator, p.loss, p.optimizer_d, batch["hr"], sr, grad_clip)


def _validate(
    accelerator: Accelerator, p: Parts, validator: Validator, tracker: MlflowTracker, step: int
) -> dict[str, float]:
    """Validate the EMA generator; the LR schedules see the result; metrics, grid and a log line."""
    metrics, grid = validator(p.ema.module)
    p.lr_g.observe(metrics)
    p.lr_d.observe(metrics)
    tracker.log_metrics(metrics, step)
    if grid is not None and accelerator.is_main_process:
        tracker.log_image(grid, grid_artifact_file(step))
    if accelerator.is_main_process:
        # Through the logger: Hydra's train.log keeps it (and the bar is redrawn below it).
        log.info("step %d: %s", step, validation_summary(metrics))
    return metrics


def _discriminator_alone(
    accelerator: Accelerator,
    p: Parts,
    g_module: nn.Module,
    batch: dict[str, torch.Tensor],
    train_log: _TrainLog,
    guard: _NonFiniteGuard,
    grad_clip: float | None,
    *,
    warmup: bool,
) -> None:
    """D against the frozen generator: one micro-batch of D's warm-up (``warmup``; a completed D step
    is counted in ``state.d_warmup_done``) or one of ``schedule.discriminator.steps_per_g - 1``
    further D steps after a generator step (never under gradient accumulation)."""
    with accelerator.accumulate(p.discriminator) if warmup else contextlib.nullcontext():
        stats, ok = _discriminator_only_step(accelerator, p, g_module, batch, grad_clip)
    train_log.record(stats)
    if accelerator.sync_gradients or not warmup:
        guard.account(ok, "discriminator")
    if warmup and accelerator.sync_gradients:
        guard.state.d_warmup_done += 1


def _advance(p: Parts, g_module: nn.Module, state: TrainState, step: int, bar: tqdm) -> None:
    """After a generator step that stepped: the EMA, the LR schedules, the step counter and the bar."""
    p.ema.update(g_module, step)
    p.lr_g.step()
    p.lr_d.step()
    state.step += 1
    bar.update(1)


def _checkpoint_due(
    cadence: Cadence, step: int, validated: bool, checkpoints: CheckpointManager, metrics: dict[str, float]
) -> bool:
    """Periodically, at the last step, and when this step's validation improved the best metric."""
    periodic = cadence.ckpt_every > 0 and step % cadence.ckpt_every == 0
    return periodic or step == cadence.max_steps or (validated and checkpoints.improves(metrics))


def fit(
    accelerator: Accelerator,
    parts: Parts,
    loader: DataLoader,
    state: TrainState,
    cadence: Cadence,
    tracker: MlflowTracker,
    checkpoints: CheckpointManager,
    validator: Validator,
    health: GANHealth,
    stop: StopSignals | None = None,
) -> dict[str, float]:
    """Train until ``cadence.max_steps``; returns the last validation metrics.

    With ``stop`` (a :class:`StopSignals` block around the run), SIGINT / SIGTERM end the loop at
    the next generator step boundary: a checkpoint of that step is written (unless one exists) and
    :class:`Interrupted` is raised, naming the step and the checkpoint.
    """
    p, clip = parts, cadence.grad_clip
    step_options = {"fused": cadence.fused_gan_step, "grad_clip": clip}
    g_module = accelerator.unwrap_model(p.generator)
    batches = _Batches(accelerator, loader, state, cadence.channels_last, p.degradation)
    guard = _NonFiniteGuard(accelerator, state, cadence.max_nonfinite, checkpoints.root)
    train_log = _TrainLog(accelerator, p, tracker, health, state.step)
    bar = _progress_bar(accelerator, cadence, state)
    p.generator.train()
    p.discriminator.train()
    last_val: dict[str, float] = {}
    micro, d_active = 0, False
    saved_at = state.step  # the step of the last checkpoint written here or (resumed) started from
    with _loop_scope(bar, stop):
        while state.step < cadence.max_steps:
            if micro == 0:  # a step boundary, outside a gradient-accumulation cycle: the state is whole
                _stop_if_signalled(stop, accelerator, state, tracker, checkpoints, saved_at)
            step = state.step
            adversarial = p.ramp.adversarial_phase(step)
            if adversarial and state.d_warmup_done < p.d_schedule.warmup_steps:
                # D trains alone against the frozen generator; these are not generator steps.
                _discriminator_alone(accelerator, p, g_module, batches.next(), train_log, guard, clip, warmup=True)
                continue

            batch = batches.next()
            adversarial_weight = p.loss.adversarial_weight * p.ramp(step)
            if micro == 0:  # decided once per generator step, identically on every process
                d_active = adversarial and p.d_schedule.due(step, p.ramp.pretrain_steps)
            holdback = p.d_schedule.holdback if micro == 0 else None
            with accelerator.accumulate(p.generator, p.discriminator):
                result = update(
                    accelerator, p, batch, adversarial_weight, train_d=d_active, holdback=holdback, **step_options
                )
            d_active = result.d_trained
            train_log.record_update(result)
            if not accelerator.sync_gradients:
                micro += 1
                continue
            micro = 0
            if d_active:
                guard.account(result.d_stepped, "discriminator")
                for _ in range(p.d_schedule.steps_per_g - 1):
                    _discriminator_alone(accelerator, p, g_module, batches.next(), train_log, guard, clip, warmup=False)
            guard.account(result.g_stepped, "generator")
            if not result.g_stepped:
                continue  # not a generator step: nothing below advances

            _advance(p, g_module, state, step, bar)
            if _due(state.step, cadence.log_every, cadence.max_steps):
                train_log.emit(state, step, adversarial_weight, batch["lr"].shape[0], bar)
            validated = _due(state.step, cadence.val_every, cadence.max_steps)
            if validated:
                last_val = _validate(accelerator, p, validator, tracker, state.step)
            if _checkpoint_due(cadence, state.step, validated, checkpoints, last_val):
                # Metrics up to a checkpoint reach MLflow before it exists, so a run killed later and
                # resumed from it has no hole in its curves (bounded wait: a server outage must not stall).
                tracker.flush(timeout=5.0)
                checkpoints.save(state.step, {"run_id": state.run_id}, last_val if validated else None)
                saved_at = state.step
    return last_val


def validation_summary(metrics: dict[str, float]) -> str:
    """``val PSNR 31.20 dB (bicubic 30.10 dB, gain +1.10 dB), SSIM 0.912 (bicubic 0.897)``."""
    text = (
        f"val PSNR {metrics['val/psnr']:.2f} dB (bicubic {metrics['val/bicubic_psnr']:.2f} dB, "
        f"gain {metrics['val/psnr_gain_over_bicubic']:+.2f} dB)"
    )
    if "val/ssim" in metrics and "val/bicubic_ssim" in metrics:
        text += f", SSIM {metrics['val/ssim']:.4f} (bicubic {metrics['val/bicubic_ssim']:.4f})"
    return text
