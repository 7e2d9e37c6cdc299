"""Schemas for the config keys our own code reads, checked before anything is built.

Components (generator, discriminator, loss, dataset, optimizers) are checked by ``instantiate``
itself: their constructors take typed keyword arguments, so an unknown or misspelt key is a
``TypeError`` naming it. The keys below are read by the entry points and the loop, so they get
a schema: an unknown key, a wrong type or an impossible value fails here, naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"
PRECISIONS = ("no", "bf16", "fp16")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def _positive(section: str, **values: int) -> None:
    for key, value in values.items():
        if value is not None and value < 0:
            raise ConfigError(f"{section}.{key} must be >= 0, got {value}")


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    batch_size: int = 16
    precision: str = "no"
    seed: int = 0
    log_every: int = 10
    val_every: int = 200
    ckpt_every: int = 0
    grad_clip: float | None = None
    num_workers: int = 0
    cpu: bool = False
    num_threads: int | None = None
    val_batch_size: int = 8
    val_border: int = 4
    resume_from: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"trainer.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.max_steps < 1 or self.batch_size < 1 or self.val_batch_size < 1:
            raise ConfigError("trainer.max_steps, trainer.batch_size and trainer.val_batch_size must be >= 1")
        if self.resume_from is not None and not (Path(self.resume_from) / "model.safetensors").is_file():
            raise ConfigError(
                f"trainer.resume_from={self.resume_from!r} is not a checkpoint folder "
                "(expected <run>/checkpoints/last written by srgan-train)"
            )
        _positive(
            "trainer",
            log_every=self.log_every,
            val_every=self.val_every,
            ckpt_every=self.ckpt_every,
            num_workers=self.num_workers,
            val_border=self.val_border,
        )


@dataclass
class RampConfig:
    steps: int = 0
    shape: str = "linear"


@dataclass
class EmaConfig:
    decay: float = 0.999
    start_step: int = 0


@dataclass
class ScheduleConfig:
    pretrain_steps: int = 0
    ramp: RampConfig = field(default_factory=RampConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    optimizer_g: Any = None
    optimizer_d: Any = None

    def __post_init__(self) -> None:
        _positive("schedule", pretrain_steps=self.pretrain_steps, **{"ramp.steps": self.ramp.steps})
        for key in ("optimizer_g", "optimizer_d"):
            node = getattr(self, key)
            if not isinstance(node, (dict, DictConfig)) or "_target_" not in node:
                raise ConfigError(f"schedule.{key} must be an optimizer config with a _target_")


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlruns.db"
    experiment_name: str = "srgan"
    run_name: str | None = None
    artifact_location: str | None = "mlartifacts"
    log_images: bool = True


@dataclass
class Settings:
    trainer: TrainerConfig
    schedule: ScheduleConfig
    tracking: TrackingConfig


def _check(schema: type, node: Any, section: str) -> Any:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
        raise ConfigError(f"{section}.{key}: {err.msg if hasattr(err, 'msg') else err}") from None


def validate_training_config(cfg: DictConfig) -> Settings:
    """Typed, checked view of the sections the loop reads; raises ``ConfigError`` naming the key."""
    for section in ("generator", "discriminator", "loss", "schedule", "dataset", "trainer", "tracking"):
        if section not in cfg:
            raise ConfigError(f"config has no {section!r} section; is the defaults list in conf/train.yaml intact?")
    scale = cfg.dataset.get("scale")
    if cfg.generator.get("scale") != scale:
        raise ConfigError(f"generator.scale={cfg.generator.get('scale')} differs from dataset.scale={scale}")
    schedule_node = OmegaConf.to_container(cfg.schedule, resolve=True)
    return Settings(
        trainer=_check(TrainerConfig, cfg.trainer, "trainer"),
        schedule=_check(ScheduleConfig, schedule_node, "schedule"),
        tracking=_check(TrackingConfig, cfg.tracking, "tracking"),
    )


def register_resolvers() -> None:
    """``${len:list}`` and ``${srgan_root:}`` for the configs (idempotent)."""
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda seq: len(seq))
    if not OmegaConf.has_resolver("srgan_root"):
        OmegaConf.register_new_resolver("srgan_root", lambda: str(PROJECT_ROOT))


register_resolvers()
