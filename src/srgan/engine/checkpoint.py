"""Resume checkpoints (full training state) and released models (EMA generator + config)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

MODEL_WEIGHTS = "generator.safetensors"
MODEL_CONFIG = "config.yaml"
# A released model's config is data, and instantiate() would call whatever _target_ names:
# only our own generator classes are allowed.
ALLOWED_TARGETS = {"generator": "srgan.models.", "normalization": "srgan.data."}


def save_checkpoint(accelerator: Accelerator, directory: Path) -> None:
    """``accelerator.save_state`` into a temporary folder renamed into place when complete.

    A crash mid-write leaves a ``.tmp`` folder, never a folder that looks like a valid checkpoint.
    """
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    accelerator.wait_for_everyone()


def export_model(generator: nn.Module, config: dict[str, Any], directory: Path) -> Path:
    """Write the released model: weights as safetensors and the config needed to rebuild and use it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in generator.state_dict().items()}
    save_file(state, str(directory / MODEL_WEIGHTS))
    OmegaConf.save(OmegaConf.create(config), directory / MODEL_CONFIG)
    return directory


@dataclass
class ExportedModel:
    """A loaded released model and what is needed to feed it and write its output."""

    generator: nn.Module
    scale: int
    bands: list[str | int]
    band_names: list[str]
    normalization: Any
    config: dict[str, Any]
    directory: Path


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """Accept a model folder or a run folder holding ``model/``."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / MODEL_WEIGHTS).is_file() and (candidate / MODEL_CONFIG).is_file():
            return candidate
    raise FileNotFoundError(
        f"{path}: not a model folder (no {MODEL_WEIGHTS} + {MODEL_CONFIG}) nor a run folder with model/ inside"
    )


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ExportedModel:
    """Rebuild the generator from a model or run folder and load its weights (no unpickling)."""
    directory = resolve_model_dir(path)
    config = OmegaConf.to_container(OmegaConf.load(directory / MODEL_CONFIG), resolve=True)
    for key in ("generator", "data"):
        if key not in config:
            raise KeyError(f"{directory / MODEL_CONFIG}: missing key {key!r}")
    data = config["data"]
    for name, node in (("generator", config["generator"]), ("normalization", data["normalization"])):
        target = str(node.get("_target_", ""))
        if not target.startswith(ALLOWED_TARGETS[name]):
            raise ValueError(
                f"{directory / MODEL_CONFIG}: {name}._target_={target!r} is outside {ALLOWED_TARGETS[name]}"
            )
    generator = instantiate(config["generator"])
    generator.load_state_dict(load_file(str(directory / MODEL_WEIGHTS), device=str(map_location)))
    generator.eval().requires_grad_(False)
    return ExportedModel(
        generator=generator,
        scale=int(data["scale"]),
        bands=list(data["bands"]),
        band_names=list(data["band_names"]),
        normalization=instantiate(data["normalization"]),
        config=config,
        directory=directory,
    )
