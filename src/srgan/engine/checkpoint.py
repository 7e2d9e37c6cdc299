"""Resume checkpoints (full training state) and released models (EMA generator + config)."""

from __future__ import annotations

import json
import os
import re
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


CHECKPOINT_MARKER = "checkpoint.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


def save_checkpoint(accelerator: Accelerator, directory: Path, info: dict[str, Any] | None = None) -> None:
    """``accelerator.save_state`` into a temporary folder renamed into place when complete.

    ``checkpoint.json`` (step, MLflow run, metrics) is the last file written before the rename:
    a crash mid-write leaves a ``.tmp`` folder, never a folder that looks like a valid checkpoint.
    """
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker = tmp / CHECKPOINT_MARKER
        marker.write_text(json.dumps(info or {}, indent=1, default=float))
        with open(marker) as f:
            os.fsync(f.fileno())
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    accelerator.wait_for_everyone()


def is_checkpoint(path: Path) -> bool:
    return (Path(path) / CHECKPOINT_MARKER).is_file() and (Path(path) / "model.safetensors").is_file()


def checkpoint_steps(root: Path) -> dict[int, Path]:
    """Complete checkpoints under ``root`` (``step-N`` folders with their marker), by step."""
    root = Path(root)
    found = {}
    if root.is_dir():
        for child in root.iterdir():
            match = STEP_DIR.match(child.name)
            if match and is_checkpoint(child):
                found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """A checkpoint folder itself, or the latest complete checkpoint of a run folder; None if none."""
    path = Path(path)
    if is_checkpoint(path):
        return path
    for root in (path / "checkpoints", path):
        steps = checkpoint_steps(root)
        if steps:
            return steps[max(steps)]
    return None


def read_checkpoint_info(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / CHECKPOINT_MARKER).read_text())


class CheckpointManager:
    """``checkpoints/step-N`` folders: the last ``keep_last`` kept, plus the best by a validation metric.

    The best checkpoint's step and value are in ``checkpoints/best.json``; its folder survives
    pruning for as long as it stays the best.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        root: Path,
        keep_last: int = 2,
        best_metric: str | None = "val/psnr",
        best_mode: str = "max",
    ) -> None:
        self.accelerator, self.root = accelerator, Path(root)
        self.keep_last, self.best_metric, self.best_mode = keep_last, best_metric, best_mode
        self.best: dict[str, Any] | None = None
        best_file = self.root / "best.json"
        if best_file.is_file():
            self.best = json.loads(best_file.read_text())

    def improves(self, metrics: dict[str, float]) -> bool:
        if not self.best_metric:
            return False
        if self.best_metric not in metrics:
            raise KeyError(
                f"trainer.checkpoint.best_metric={self.best_metric!r} is not a validation metric; "
                f"choose one of {sorted(metrics)}"
            )
        value = metrics[self.best_metric]
        if self.best is None:
            return True
        return value > self.best["value"] if self.best_mode == "max" else value < self.best["value"]

    def save(self, step: int, info: dict[str, Any], metrics: dict[str, float] | None = None) -> Path:
        directory = self.root / f"step-{step:08d}"
        save_checkpoint(self.accelerator, directory, {**info, "step": step, "metrics": metrics or {}})
        if metrics is not None and self.improves(metrics):
            self.best = {"step": step, "metric": self.best_metric, "value": metrics[self.best_metric]}
            if self.accelerator.is_main_process:
                tmp = self.root / "best.json.tmp"
                tmp.write_text(json.dumps(self.best, indent=1))
                os.replace(tmp, self.root / "best.json")
        if self.accelerator.is_main_process:
            self._prune()
        self.accelerator.wait_for_everyone()
        return directory

    def _prune(self) -> None:
        steps = checkpoint_steps(self.root)
        keep = set(list(steps)[-self.keep_last :])
        if self.best is not None:
            keep.add(int(self.best["step"]))
        for step, directory in steps.items():
            if step not in keep:
                shutil.rmtree(directory)


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
