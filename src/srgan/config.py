"""Schemas for the config keys our own code reads, checked before anything is built.

Components (generator, discriminator, loss, dataset, optimizers) are checked by ``instantiate``
itself: their constructors take typed keyword arguments, so an unknown or misspelt key is a
``TypeError`` naming it. The keys below are read by the entry points and the loop, so they get
a schema: an unknown key, a wrong type or an impossible value fails here, naming the key.

The schemas hold no defaults: the YAML files under ``conf/`` are the one place where defaults live,
and a key missing from them is an error naming it (not a second, silently different default).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"
PRECISIONS = ("no", "bf16", "fp16")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def _positive(section: str, **values: int) -> None:
    for key, value in values.items():
        if value is not None and value < 0:
            raise ConfigError(f"{section + '.' if section else ''}{key} must be >= 0, got {value}")


@dataclass
class CheckpointConfig:
    keep_last: int = MISSING
    best_metric: str | None = MISSING
    best_mode: str = MISSING

    def __post_init__(self) -> None:
        if self.keep_last < 1:
            raise ConfigError(f"trainer.checkpoint.keep_last must be >= 1, got {self.keep_last}")
        if self.best_mode not in ("max", "min"):
            raise ConfigError(f"trainer.checkpoint.best_mode must be 'max' or 'min', got {self.best_mode!r}")


@dataclass
class HealthConfig:
    patience: int = MISSING
    fake_prob_floor: float = MISSING
    real_prob_ceiling: float = MISSING
    adversarial_loss_factor: float = MISSING
    # D(y) - D(G(x)) below this for `patience` checks while D trains: D is not learning.
    min_prob_gap: float = MISSING

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ConfigError(f"trainer.health.patience must be >= 1, got {self.patience}")


@dataclass
class TrainerConfig:
    max_steps: int = MISSING
    batch_size: int = MISSING
    precision: str = MISSING
    seed: int = MISSING
    log_every: int = MISSING
    val_every: int = MISSING
    ckpt_every: int = MISSING
    checkpoint: CheckpointConfig = MISSING
    grad_clip: float | None = MISSING
    grad_accumulation: int = MISSING
    max_nonfinite: int = MISSING
    health: HealthConfig = MISSING
    compile: bool = MISSING
    channels_last: bool = MISSING
    fused_gan_step: Any = MISSING
    num_workers: int = MISSING
    cpu: bool = MISSING
    num_threads: int | None = MISSING
    val_batch_size: int = MISSING
    val_border: int = MISSING
    progress: bool = MISSING

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"trainer.precision must be one of {PRECISIONS}, got {self.precision!r}")
        for key in ("max_steps", "batch_size", "val_batch_size", "grad_accumulation", "max_nonfinite"):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer.{key} must be >= 1, got {getattr(self, key)}")
        if self.fused_gan_step not in (True, False, "auto"):
            raise ConfigError(f"trainer.fused_gan_step must be true, false or auto, got {self.fused_gan_step!r}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"trainer.grad_clip must be > 0 or null, got {self.grad_clip}")
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
    steps: int = MISSING
    shape: str = MISSING

    def __post_init__(self) -> None:
        from srgan.engine.schedules import RAMP_SHAPES  # torch: not on the CLI's start-up path

        if self.shape not in RAMP_SHAPES:
            raise ConfigError(f"schedule.ramp.shape must be one of {RAMP_SHAPES}, got {self.shape!r}")


@dataclass
class DiscriminatorScheduleConfig:
    warmup_steps: int = MISSING
    every: int = MISSING
    steps_per_g: int = MISSING
    holdback: float | None = MISSING

    def __post_init__(self) -> None:
        _positive("schedule.discriminator", warmup_steps=self.warmup_steps)
        for key in ("every", "steps_per_g"):
            if getattr(self, key) < 1:
                raise ConfigError(f"schedule.discriminator.{key} must be >= 1, got {getattr(self, key)}")
        if self.holdback is not None and not 0.0 < self.holdback < 1.0:
            raise ConfigError(f"schedule.discriminator.holdback must be in (0, 1) or null, got {self.holdback}")


@dataclass
class EmaConfig:
    enabled: bool = MISSING
    decay: float = MISSING
    start_step: int = MISSING
    warmup: bool = MISSING


@dataclass
class LRScheduleConfig:
    policy: str = MISSING
    warmup_steps: int = MISSING
    min_lr_ratio: float = MISSING
    milestones: list[int] = MISSING
    gamma: float = MISSING
    monitor: str = MISSING
    mode: str = MISSING
    patience: int = MISSING


@dataclass
class ScheduleConfig:
    pretrain_steps: int = MISSING
    ramp: RampConfig = MISSING
    discriminator: DiscriminatorScheduleConfig = MISSING
    ema: EmaConfig = MISSING
    optimizer_g: Any = MISSING
    optimizer_d: Any = MISSING
    lr_g: LRScheduleConfig = MISSING
    lr_d: LRScheduleConfig = MISSING

    def __post_init__(self) -> None:
        from srgan.engine.schedules import LR_POLICIES

        _positive("schedule", pretrain_steps=self.pretrain_steps, **{"ramp.steps": self.ramp.steps})
        for key in ("optimizer_g", "optimizer_d"):
            node = getattr(self, key)
            if not isinstance(node, (dict, DictConfig)) or "_target_" not in node:
                raise ConfigError(f"schedule.{key} must be an optimizer config with a _target_")
        for key in ("lr_g", "lr_d"):
            lr: LRScheduleConfig = getattr(self, key)
            if lr.policy not in LR_POLICIES:
                raise ConfigError(f"schedule.{key}.policy must be one of {LR_POLICIES}, got {lr.policy!r}")
            if lr.mode not in ("max", "min"):
                raise ConfigError(f"schedule.{key}.mode must be 'max' or 'min', got {lr.mode!r}")
            if not 0.0 <= lr.min_lr_ratio <= 1.0 or not 0.0 < lr.gamma <= 1.0:
                raise ConfigError(f"schedule.{key}: min_lr_ratio must be in [0, 1] and gamma in (0, 1]")
            if any(b <= a for a, b in zip(lr.milestones, lr.milestones[1:])):
                raise ConfigError(f"schedule.{key}.milestones must increase, got {lr.milestones}")
            _positive(f"schedule.{key}", warmup_steps=lr.warmup_steps, patience=lr.patience)


@dataclass
class TrackingConfig:
    uri: str = MISSING
    experiment_name: str = MISSING
    run_name: str | None = MISSING
    artifact_location: str | None = MISSING
    log_images: bool = MISSING
    # Seconds to wait at the end of a run for an unreachable tracking server before writing what
    # it has not received into the run folder (replay with `python -m srgan.tracking replay`).
    flush_timeout: float = MISSING
    # Register the exported model in the MLflow model registry under this name (a new version).
    register_as: str | None = None

    def __post_init__(self) -> None:
        if self.register_as is not None and not re.fullmatch(r"[A-Za-z0-9][\w.\- ]{0,127}", self.register_as):
            raise ConfigError(
                f"tracking.register_as={self.register_as!r}: a model name of letters, digits, '_', '-', '.' "
                "and spaces, starting with a letter or digit"
            )


@dataclass
class InitConfig:
    """``init``: how ``init_from`` loads trained weights into a new run (:mod:`srgan.engine.init_from`)."""

    strict: bool = MISSING
    discriminator: bool = MISSING
    adapt_bands: bool = MISSING
    # This run's band name -> the source's band name, for bands that are the same under other
    # names (e.g. NAIP's R, G, B, NIR and Sentinel-2's B04, B03, B02, B08).
    band_map: dict[str, str] | None = None


def check_band_map(band_map: dict[str, str], ours: list[str], theirs: list[str], key: str, whose: str) -> list[str]:
    """``ours`` renamed by ``band_map`` (our name -> the name in ``theirs``); every key must be one
    of ours and every value one of theirs, each used once, or a ``ConfigError`` naming ``key``."""
    problems = [f"{k!r} is not a band of this dataset {ours}" for k in band_map if k not in ours]
    problems += [f"{v!r} is not one of {whose} {theirs}" for v in band_map.values() if v not in theirs]
    if problems:
        raise ConfigError(f"{key}: {'; '.join(problems)}")
    renamed = [band_map.get(b, b) for b in ours]
    if len(set(renamed)) != len(renamed):
        raise ConfigError(f"{key}: maps two bands to one name: {renamed}")
    return renamed


@dataclass
class Settings:
    trainer: TrainerConfig
    schedule: ScheduleConfig
    tracking: TrackingConfig
    resume: str | None = None
    init_from: str | None = None
    init: InitConfig | None = None


def _check(schema: type, node: Any, section: str) -> Any:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
        raise ConfigError(
            f"{section + '.' if section else ''}{key}: {err.msg if hasattr(err, 'msg') else err}"
        ) from None


def validate_training_config(cfg: DictConfig) -> Settings:
    """Typed, checked view of the sections the loop reads; raises ``ConfigError`` naming the key."""
    for section in ("generator", "discriminator", "loss", "schedule", "dataset", "trainer", "tracking"):
        if section not in cfg:
            raise ConfigError(f"config has no {section!r} section; is the defaults list in conf/train.yaml intact?")
    scale = cfg.dataset.get("scale")
    if cfg.generator.get("scale") != scale:
        raise ConfigError(f"generator.scale={cfg.generator.get('scale')} differs from dataset.scale={scale}")
    schedule_node = OmegaConf.to_container(cfg.schedule, resolve=True)
    settings = Settings(
        trainer=_check(TrainerConfig, cfg.trainer, "trainer"),
        schedule=_check(ScheduleConfig, schedule_node, "schedule"),
        tracking=_check(TrackingConfig, cfg.tracking, "tracking"),
        resume=_check_resume(cfg.get("resume")),
        init_from=_check_init_from(cfg.get("init_from")),
        init=_check(InitConfig, _section(cfg, "init"), "init"),
    )
    if settings.init.discriminator and settings.init_from is None:
        raise ConfigError("init.discriminator=true loads D from init_from's run, but init_from is null")
    if settings.trainer.grad_accumulation > 1 and settings.schedule.discriminator.steps_per_g > 1:
        raise ConfigError(
            "schedule.discriminator.steps_per_g > 1 cannot be combined with trainer.grad_accumulation > 1 "
            "(each extra D step would need its own accumulation cycle); use one of them"
        )
    return settings


@dataclass
class TiledPassConfig:
    """The tiled forward pass of ``srgan-eval`` and ``srgan-infer``: LR tile size, overlap, tiles per batch."""

    tile: int = MISSING
    overlap: int = MISSING
    batch_size: int = MISSING
    device: str = MISSING

    def __post_init__(self) -> None:
        if self.tile < 1 or self.batch_size < 1:
            raise ConfigError(f"tile and batch_size must be >= 1, got tile={self.tile}, batch_size={self.batch_size}")
        if not 0 <= self.overlap < self.tile:
            raise ConfigError(f"overlap must be in [0, tile), got overlap={self.overlap} with tile={self.tile}")


@dataclass
class EvalConfig(TiledPassConfig):
    """``conf/eval.yaml``'s own keys (``dataset``, ``uncertainty`` and ``tracking`` are groups)."""

    model: str = MISSING
    split: str = MISSING
    allow_train_overlap: bool = MISSING
    border: int = MISSING
    output: str | None = MISSING
    figure: bool = MISSING
    overwrite: bool = MISSING
    lpips: str | None = MISSING
    histogram_match: bool = MISSING
    clusters: int = MISSING
    log_to_mlflow: bool = MISSING
    # The dataset's band name -> the model's, for the same bands under other names.
    band_map: dict[str, str] | None = None
    normalize_as: str = "model"

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("", border=self.border)
        if self.lpips not in (None, "alex", "vgg"):
            raise ConfigError(f"lpips must be alex, vgg or null, got {self.lpips!r}")
        if self.clusters < 2:
            raise ConfigError(f"clusters must be >= 2, got {self.clusters}")
        if self.normalize_as not in ("model", "dataset"):
            raise ConfigError(f"normalize_as must be model or dataset, got {self.normalize_as!r}")


@dataclass
class InferConfig(TiledPassConfig):
    """``conf/infer.yaml``'s own keys (``uncertainty`` is a group)."""

    model: str = MISSING
    input: str = MISSING
    output: str = MISSING
    std_output: str | None = MISSING
    tracking_uri: str | None = MISSING
    # A number, "none" or null (conf/infer.yaml says what each means).
    nodata: Any = MISSING
    bands: list[Any] | None = MISSING
    bf16: bool = MISSING
    channels_last: bool = MISSING
    cog: bool = MISSING
    histogram_match: bool = MISSING
    progress: bool = MISSING
    overwrite: bool = MISSING


@dataclass
class ExportConfig:
    """``conf/export.yaml``."""

    model: str = MISSING
    format: str = MISSING
    output: str | None = MISSING
    opset: int = MISSING
    check_sizes: list[int] = MISSING
    atol: float = MISSING
    tracking_uri: str | None = MISSING
    overwrite: bool = MISSING

    def __post_init__(self) -> None:
        if self.format != "onnx":
            raise ConfigError(f"format must be onnx, got {self.format!r}")
        if not 13 <= self.opset <= 23:
            raise ConfigError(f"opset must be in [13, 23], got {self.opset}")
        if not self.check_sizes or any(s < 1 for s in self.check_sizes):
            raise ConfigError(f"check_sizes must be positive LR tile sizes, got {self.check_sizes}")
        if not self.atol > 0:
            raise ConfigError(f"atol must be > 0, got {self.atol}")


def validate_entry_config(schema: type, cfg: DictConfig, groups: tuple[str, ...]) -> Any:
    """The typed, checked top-level keys of an entry point's config (everything but its ``groups``);
    a key the schema does not know (``+tyle=64``) is named."""
    from dataclasses import fields

    known = {f.name for f in fields(schema)}
    unknown = sorted(set(cfg) - known - set(groups) - {"hydra"})
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; known: {sorted(known | set(groups))}")
    return _check(schema, {k: cfg[k] for k in known if k in cfg}, "")


def _check_resume(value: Any) -> str | None:
    """``resume``: null, "auto" (latest checkpoint in the run folder, if any) or an existing path."""
    if value is None or value == "auto":
        return value
    path = Path(str(value))
    if not path.exists():
        raise ConfigError(f"resume={value!r}: no such checkpoint or run folder (use resume=auto or a path)")
    return str(path)


def _section(cfg: DictConfig, key: str) -> Any:
    if key not in cfg or not isinstance(cfg[key], DictConfig):
        raise ConfigError(f"config has no {key!r} section; is conf/train.yaml intact?")
    return cfg[key]


def _check_init_from(value: Any) -> str | None:
    """``init_from``: null or a non-empty path / URI string. Whether it exists is checked when it is
    used: a resumed run ignores it, and its source may be gone by then."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"init_from must be a run folder, a model folder or an MLflow URI, got {value!r}")
    return value


# Keys with which Hydra's instantiate would call, or change how it calls, code named in a config.
_HYDRA_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")


def build_option(node: Any, classes: tuple[type, ...], group: str) -> Any:
    """One of ``classes`` built from a config node of ``group`` (``uncertainty``, ``benchmark``):
    its ``_target_`` must name one of them, and the rest are plain keyword arguments; a Hydra key
    anywhere below (a nested ``_target_`` would otherwise be instantiated first) is refused."""
    allowed = {f"{c.__module__}.{c.__name__}": c for c in classes}
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    target = values.get("_target_") if isinstance(values, dict) else None
    if target not in allowed:
        raise ConfigError(
            f"{group}._target_={target!r} is not one of the {group} options; use one of {sorted(allowed)}"
        )

    def check(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in _HYDRA_KEYS:
                    raise ConfigError(f"{where}.{key}: {group} options take plain values, not {key}")
                check(item, f"{where}.{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                check(item, f"{where}[{i}]")

    kwargs = {k: v for k, v in values.items() if k != "_target_"}
    check(kwargs, group)
    try:
        return allowed[target](**kwargs)
    except TypeError as err:
        raise ConfigError(f"{group}: {err}") from None


def register_resolvers() -> None:
    """``${len:list}`` and ``${srgan_root:}`` for the configs (idempotent)."""
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda seq: len(seq))
    if not OmegaConf.has_resolver("srgan_root"):
        OmegaConf.register_new_resolver("srgan_root", lambda: str(PROJECT_ROOT))


register_resolvers()
