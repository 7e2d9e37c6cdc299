"""A training run assembled from its composed config: the networks, the loss and optimizers, the
schedules, the data loader, the resumable pieces; and the model card exported with the weights.

``srgan-train`` (:mod:`srgan.train`) only calls these; ``bench/`` builds its networks the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from srgan.config import ConfigError, Settings
from srgan.data.normalization import LinearScale
from srgan.engine.checkpoint import checkpoint_pieces
from srgan.engine.ema import EMA
from srgan.engine.health import PROBABILISTIC_GAN_TYPES, GANHealth
from srgan.engine.loop import Cadence, Parts, TrainState
from srgan.engine.schedules import AdversarialRamp, DiscriminatorSchedule, LRSchedule


def fused_gan_step(setting: Any, discriminator: nn.Module) -> bool:
    """``trainer.fused_gan_step``: true, false, or auto (on unless D has batch norm).

    The fused step (``engine.steps.gan_step``) gives the same gradients as the separate G and D
    steps, except that a batch-norm discriminator in train mode would normalise G's pass over real
    and SR images together instead of SR alone; ``auto`` keeps the separate steps for such a D.
    """
    if setting == "auto":
        return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in discriminator.modules())
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"trainer.fused_gan_step must be true, false or auto, got {setting!r}")


def build_networks(cfg: DictConfig, device: torch.device) -> tuple[Any, Any, Any, Any, Any]:
    """Generator, discriminator, loss and both optimizers as a run builds them (``bench/speed.py`` too)."""
    generator = instantiate(cfg.generator, _convert_="all")
    discriminator = instantiate(cfg.discriminator, _convert_="all")
    if cfg.trainer.channels_last:
        generator.to(memory_format=torch.channels_last)
        discriminator.to(memory_format=torch.channels_last)
    loss = instantiate(cfg.loss, _convert_="all").to(device)
    optimizer_g = instantiate(cfg.schedule.optimizer_g, _convert_="all")(generator.parameters())
    optimizer_d = instantiate(cfg.schedule.optimizer_d, _convert_="all")(discriminator.parameters())
    return generator, discriminator, loss, optimizer_g, optimizer_d


def backbone_passes(loss_cfg: DictConfig, built_terms: Iterable[str]) -> list[str]:
    """One note per built loss term that runs an ImageNet network (VGG perceptual, LPIPS): how many
    passes per image its band mapping (``rgb_bands``) costs. Such a term is many times slower than L1."""
    notes = []
    for name in built_terms:
        node = loss_cfg.terms.get(name)
        if node is None or "rgb_bands" not in node:
            continue
        bands, rgb = int(node.num_bands), node.rgb_bands
        if rgb is None:
            notes.append(
                f"loss term {name!r} runs its ImageNet network once per band: {bands} bands, {bands} passes per "
                f"image on SR and on HR, much slower than L1 (loss.terms.{name}.rgb_bands=[i,j,k]: one pass)"
            )
        else:
            notes.append(
                f"loss term {name!r} runs its ImageNet network 1 pass per image on bands {list(rgb)} as R, G, B "
                f"(of {bands} bands), slower than L1"
            )
    return notes


def train_loader(data: Any, settings: Settings, accelerator: Accelerator) -> DataLoader:
    """The training batches: item i depends only on (seed, i), so resuming at data position p and
    skipping p batches reproduces the uninterrupted order. The length only bounds what the loop can
    draw: generator steps, extra D steps, D warm-up and skipped steps."""
    trainer, d = settings.trainer, settings.schedule.discriminator
    batches = (trainer.max_steps * d.steps_per_g + d.warmup_steps) * trainer.grad_accumulation + 1_000_000
    return DataLoader(
        data.train_dataset(batches * trainer.batch_size * accelerator.num_processes, trainer.seed),
        batch_size=trainer.batch_size,
        shuffle=False,
        drop_last=True,
        num_workers=trainer.num_workers,
        pin_memory=accelerator.device.type == "cuda",
        # Starting an iterator draws a worker seed; from the global RNG that draw would happen again
        # after a resume (a new iterator) and shift every later random number (GP interpolation, noise).
        generator=torch.Generator().manual_seed(trainer.seed),
    )


@dataclass
class TrainingRun:
    """Everything :func:`srgan.engine.loop.fit` needs besides tracking, checkpoints and validation,
    prepared by Accelerate; ``pieces``: what a checkpoint saves and a resume restores."""

    parts: Parts
    loader: DataLoader
    state: TrainState
    health: GANHealth
    cadence: Cadence
    pieces: Any


def check_relative_residual(cfg: DictConfig, data: Any) -> None:
    """``generator.global_residual=<mode>_relative`` scales the detail by the interpolated value, which
    is a brightness only in physical units (a linear normalisation), not for z-scores or percentiles."""
    mode = str(OmegaConf.select(cfg, "generator.global_residual", default=None) or "")
    normalization = getattr(data, "normalization", None)
    if mode.endswith("_relative") and not isinstance(normalization, LinearScale):
        raise ConfigError(
            f"generator.global_residual={mode} needs values in physical units (a linear normalisation: "
            f"dataset/normalization=reflectance, uint8 or auto), but dataset {getattr(data, 'name', '?')} "
            f"is normalised with {normalization!r}; use {mode.removesuffix('_relative')} there"
        )


def build_training_run(cfg: DictConfig, settings: Settings, accelerator: Accelerator, data: Any) -> TrainingRun:
    """Networks, loss, optimizers, LR schedules, EMA, GAN health, the loader and the loop's cadence;
    the networks, optimizers and loader prepared by ``accelerator``."""
    trainer, schedule = settings.trainer, settings.schedule
    check_relative_residual(cfg, data)
    generator, discriminator, loss, optimizer_g, optimizer_d = build_networks(cfg, accelerator.device)
    degradation = getattr(data, "degradation", None)
    loss.bind(degradation, data.scale, f"dataset {getattr(data, 'name', '?')}")
    lr_g = LRSchedule(optimizer_g, trainer.max_steps, **vars(schedule.lr_g), name="lr_g")
    lr_d = LRSchedule(optimizer_d, trainer.max_steps, **vars(schedule.lr_d), name="lr_d")
    ema = EMA(generator, schedule.ema.decay, schedule.ema.start_step, schedule.ema.warmup, schedule.ema.enabled)
    health = GANHealth(**vars(trainer.health), probabilistic=loss.adversarial.gan_type in PROBABILISTIC_GAN_TYPES)
    loader = train_loader(data, settings, accelerator)
    generator, discriminator, optimizer_g, optimizer_d, loader = accelerator.prepare(
        generator, discriminator, optimizer_g, optimizer_d, loader
    )
    ema.module.to(accelerator.device)
    state = TrainState()
    # Resume state is data srgan writes and reads itself (JSON + safetensors), never a pickle.
    pieces = checkpoint_pieces(
        accelerator,
        {"generator": generator, "discriminator": discriminator},
        {
            "optimizer_g": optimizer_g,
            "optimizer_d": optimizer_d,
            "ema": ema,
            "train_state": state,
            "lr_g": lr_g,
            "lr_d": lr_d,
            "health": health,
        },
    )
    d = schedule.discriminator
    parts = Parts(
        generator=generator,
        discriminator=discriminator,
        loss=loss,
        optimizer_g=optimizer_g,
        optimizer_d=optimizer_d,
        lr_g=lr_g,
        lr_d=lr_d,
        ema=ema,
        ramp=AdversarialRamp(schedule.pretrain_steps, schedule.ramp.steps, schedule.ramp.shape),
        d_schedule=DiscriminatorSchedule(d.warmup_steps, d.every, d.steps_per_g, d.holdback),
        degradation=degradation if getattr(degradation, "on_device", False) else None,
    )
    cadence = Cadence(
        max_steps=trainer.max_steps,
        log_every=trainer.log_every,
        val_every=trainer.val_every,
        ckpt_every=trainer.ckpt_every,
        grad_clip=trainer.grad_clip,
        max_nonfinite=trainer.max_nonfinite,
        channels_last=trainer.channels_last,
        progress=trainer.progress,
        fused_gan_step=fused_gan_step(trainer.fused_gan_step, accelerator.unwrap_model(discriminator)),
    )
    return TrainingRun(parts, loader, state, health, cadence, pieces)


def model_card(cfg: DictConfig, data: Any, run_id: str | None, step: int) -> dict[str, Any]:
    """The config saved beside released weights: how to rebuild the generator and feed it, and the
    data it was trained on (:mod:`srgan.data.card`)."""
    from srgan.data.card import dataset_record

    degradation = cfg.dataset.get("degradation")
    return {
        "generator": OmegaConf.to_container(cfg.generator, resolve=True),
        "data": {
            "scale": int(cfg.dataset.scale),
            "bands": list(data.bands),
            "band_names": list(data.band_names),
            "dtype": data.dtype,
            # The fitted object, not the config: z-score / percentile statistics travel with the model.
            "normalization": data.normalization.to_config(),
            # Real LR from another sensor may have its own units (paired_folder's lr_normalization).
            **(
                {"lr_normalization": data.lr_normalization.to_config()}
                if getattr(data, "lr_normalization", data.normalization) is not data.normalization
                else {}
            ),
            # Real LR/HR pairs (paired_folder) have no degradation: LR came from the sensor.
            "degradation": OmegaConf.to_container(degradation, resolve=True) if degradation is not None else None,
            # The data and split it trained on: srgan-eval's default, and the areas a test must avoid.
            **dataset_record(OmegaConf.to_container(cfg.dataset, resolve=True), data),
        },
        "source": {"mlflow_run_id": run_id, "step": step, "weights": "EMA generator"},
    }


def weights_fingerprint(*modules: nn.Module) -> str:
    """SHA-256 of the modules' weights and buffers, to prove that every process holds the same."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
