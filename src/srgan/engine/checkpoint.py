"""Resume checkpoints (full training state) and released models (EMA generator + config)."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn

from srgan.engine.state_io import StateFileError, load_tree, read_safetensors, save_tree

MODEL_WEIGHTS = "generator.safetensors"
MODEL_CONFIG = "config.yaml"


CHECKPOINT_MARKER = "checkpoint.json"
CHECKPOINT_FORMAT = "srgan-checkpoint/2"
STEP_DIR = re.compile(r"^step-(\d+)$")
# What accelerate's save_state wrote (srgan <= 0.1): pickles, never read again.
LEGACY_PICKLES = ("random_states_*.pkl", "custom_checkpoint_*.pkl", "optimizer*.bin", "scaler*.pt", "sampler*.bin")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed: missing, damaged or pickled pieces; names the file."""


class _Module:
    """A network as a checkpoint piece: its plain (unwrapped) state dict, loaded strictly."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state, strict=True)


class _Accelerator:
    """The Accelerator's own counters: its micro-step (gradient accumulation) and the fp16 loss scale."""

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator

    def state_dict(self) -> dict[str, Any]:
        scaler = self.accelerator.scaler
        return {"step": self.accelerator.step, "scaler": scaler.state_dict() if scaler is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accelerator.step = int(state["step"])
        scaler = self.accelerator.scaler
        if (scaler is None) != (state["scaler"] is None):
            raise ValueError("the checkpoint's precision (fp16 loss scaler or not) differs from this run's")
        if scaler is not None:
            scaler.load_state_dict(state["scaler"])


def rng_state() -> dict[str, Any]:
    """Every random generator a training process draws from (Python, NumPy, torch CPU and CUDA)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        if not torch.cuda.is_available() or torch.cuda.device_count() != len(state["cuda"]):
            raise ValueError(
                f"the checkpoint holds CUDA RNG states of {len(state['cuda'])} devices, this run sees "
                f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}"
            )
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_pieces(
    accelerator: Accelerator, models: dict[str, nn.Module], stateful: dict[str, Any]
) -> dict[str, Any]:
    """Name -> object with ``state_dict`` / ``load_state_dict``: the networks (unwrapped), the
    optimizers, schedules, EMA, loop state and the Accelerator's counters."""
    pieces: dict[str, Any] = {
        name: _Module(accelerator.unwrap_model(m, keep_torch_compile=False)) for name, m in models.items()
    }
    pieces.update(stateful)
    pieces["accelerator"] = _Accelerator(accelerator)
    return pieces


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    accelerator: Accelerator, directory: Path, pieces: dict[str, Any], info: dict[str, Any] | None = None
) -> None:
    """Write every piece as JSON + safetensors (``state_io``) into a temporary folder, renamed into
    place when complete; each process adds its own RNG state (``rng_rank<r>``).

    ``checkpoint.json`` (format, step, MLflow run, metrics, and the size and SHA-256 of every file)
    is the last file written before the rename: a crash mid-write leaves a ``.tmp`` folder, never
    a folder that looks like a valid checkpoint, and a file damaged later is found on resume.
    """
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name, piece in pieces.items():
            save_tree(tmp / name, piece.state_dict())
    save_tree(tmp / f"rng_rank{accelerator.process_index}", rng_state())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
        marker = tmp / CHECKPOINT_MARKER
        body = {
            **(info or {}),
            "format": CHECKPOINT_FORMAT,
            "processes": accelerator.num_processes,
            "pieces": sorted(pieces),
            "files": files,
        }
        marker.write_text(json.dumps(body, indent=1, default=float))
        with open(marker) as f:
            os.fsync(f.fileno())
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    accelerator.wait_for_everyone()


def verify_checkpoint(directory: Path, pieces: list[str] | None = None, processes: int | None = None) -> dict:
    """The checkpoint's marker, after checking that it is srgan's pickle-free format, that every file
    it lists is present and unchanged, and that it has the pieces and ranks asked for."""
    directory = Path(directory)
    marker = directory / CHECKPOINT_MARKER
    legacy = sorted(p.name for pattern in LEGACY_PICKLES for p in directory.glob(pattern))
    if legacy:
        raise CheckpointError(
            f"{directory}: an accelerate save_state checkpoint with pickled state ({', '.join(legacy)}). "
            "srgan never unpickles files it is given (a pickle can run any code); this format is no longer "
            "resumed. Start a new run (its exported model/ folder is still usable for inference)."
        )
    try:
        info = json.loads(marker.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{marker}: missing; {directory} is not a complete checkpoint") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{marker}: not readable JSON ({err})") from None
    if not isinstance(info, dict) or info.get("format") != CHECKPOINT_FORMAT:
        found = info.get("format") if isinstance(info, dict) else None
        raise CheckpointError(f"{marker}: format {found!r}, expected {CHECKPOINT_FORMAT!r}")
    files = info.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{marker}: no file list")
    for name, meta in files.items():
        path = directory / Path(name).name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from the checkpoint")
        size = path.stat().st_size
        if size != meta.get("bytes"):
            raise CheckpointError(f"{path}: {size} bytes, the checkpoint recorded {meta.get('bytes')}; truncated?")
        if _sha256(path) != meta.get("sha256"):
            raise CheckpointError(f"{path}: contents changed since the checkpoint was written (SHA-256 differs)")
    expected = [f"{piece}.{ext}" for piece in (pieces or []) for ext in ("json", "safetensors")]
    if processes is not None:
        if info.get("processes") != processes:
            raise CheckpointError(
                f"{marker}: written by {info.get('processes')} processes, this run has {processes}; "
                "resume with the same number of processes"
            )
        expected += [f"rng_rank{r}.{ext}" for r in range(processes) for ext in ("json", "safetensors")]
    for name in expected:
        if name not in files:
            raise CheckpointError(f"{directory / name}: missing from the checkpoint")
    return info


def load_checkpoint(accelerator: Accelerator, directory: Path, pieces: dict[str, Any]) -> dict[str, Any]:
    """Restore every piece and this process's RNG state from a checkpoint; returns its marker.

    Nothing is unpickled. A missing, truncated, changed or unreadable file is a ``CheckpointError``
    naming it, raised before any piece is changed."""
    directory = Path(directory)
    info = verify_checkpoint(directory, list(pieces), accelerator.num_processes)
    try:
        trees = {name: load_tree(directory / name) for name in pieces}
        rng = load_tree(directory / f"rng_rank{accelerator.process_index}")
    except StateFileError as err:
        raise CheckpointError(str(err)) from None
    for name, piece in pieces.items():
        try:
            piece.load_state_dict(trees[name])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
            raise CheckpointError(f"{directory / (name + '.json')}: does not fit this run ({err})") from None
    try:
        set_rng_state(rng)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        rng_file = directory / f"rng_rank{accelerator.process_index}.json"
        raise CheckpointError(f"{rng_file}: not a usable RNG state ({err})") from None
    return info


def is_checkpoint(path: Path) -> bool:
    """A folder with a checkpoint marker (whether it can be resumed is ``verify_checkpoint``'s call:
    an old or damaged checkpoint must be refused loudly, not skipped)."""
    return (Path(path) / CHECKPOINT_MARKER).is_file()


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


class CheckpointManager:
    """``checkpoints/step-N`` folders: the last ``keep_last`` kept, plus the best by a validation metric.

    The best checkpoint's step and value are in ``checkpoints/best.json``; its folder survives
    pruning for as long as it stays the best.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        root: Path,
        pieces: dict[str, Any],
        keep_last: int = 2,
        best_metric: str | None = "val/psnr",
        best_mode: str = "max",
    ) -> None:
        self.accelerator, self.root, self.pieces = accelerator, Path(root), pieces
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
        save_checkpoint(self.accelerator, directory, self.pieces, {**info, "step": step, "metrics": metrics or {}})
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
    # How the LR input is normalised, when it differs from the output's (real LR of another sensor).
    lr_normalization: Any = None

    def __post_init__(self) -> None:
        if self.lr_normalization is None:
            self.lr_normalization = self.normalization


class ModelError(ValueError):
    """A model folder that cannot be used as it is; the message names the file and key."""


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """Accept a model folder or a run folder holding ``model/``."""
    from srgan.deploy import DeployError, mlmodel_data_dir

    path = Path(path)
    candidates = [path, path / "model"]
    try:
        # An MLflow pyfunc folder (MLmodel) whose flavour data lies in a subfolder: only its path is read.
        data = mlmodel_data_dir(path) if path.is_dir() else None
    except DeployError as err:
        raise ModelError(str(err)) from None
    if data is not None:
        candidates.append(data)
    for candidate in candidates:
        if (candidate / MODEL_WEIGHTS).is_file() and (candidate / MODEL_CONFIG).is_file():
            return candidate
    raise FileNotFoundError(
        f"{path}: not a model folder (no {MODEL_WEIGHTS} + {MODEL_CONFIG}) nor a run folder with model/ inside"
    )


def _model_classes() -> dict[str, dict[str, type]]:
    """The closed set of classes a model's config may name, by every ``_target_`` spelling srgan writes."""
    from srgan.data import degradation, normalization
    from srgan.models import generators

    allowed: dict[str, dict[str, type]] = {"generator": {}, "normalization": {}, "degradation": {}}
    for cls in (degradation.Resample, degradation.Degradation, degradation.RandomDegradation):
        allowed["degradation"][f"srgan.data.degradation.{cls.__name__}"] = cls
    for cls in (
        generators.SRResNetGenerator,
        generators.RCABGenerator,
        generators.RRDBGenerator,
        generators.LKAGenerator,
        generators.StochasticGenerator,
    ):
        allowed["generator"][f"srgan.models.{cls.__name__}"] = cls
        allowed["generator"][f"srgan.models.generators.{cls.__name__}"] = cls
    for cls in (normalization.LinearScale, normalization.ZScore, normalization.PercentileScale):
        allowed["normalization"][f"srgan.data.normalization.{cls.__name__}"] = cls
    return allowed


_SCALARS = (bool, int, float, str, type(None))


def _plain(value: Any, where: str, file: Path) -> Any:
    """A scalar or a flat list of scalars; anything else (a nested node) is refused."""
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, _SCALARS):
            raise ModelError(
                f"{file}: {where} must be a plain value or a list of plain values, got {type(v).__name__} "
                "(a model's config names one srgan class and its plain arguments, nothing nested)"
            )
        if isinstance(v, str) and "${" in v:
            raise ModelError(f"{file}: {where}={v!r}: interpolations are not allowed in a model's config")
    return list(value) if isinstance(value, list) else value


def build_from_card(node: Any, kind: str, file: Path) -> Any:
    """Build one of srgan's own ``kind`` classes ("generator", "normalization" or "degradation") from
    a model card node.

    ``_target_`` must be one of the closed set in :func:`_model_classes`; every other key must be a
    parameter of that class with a plain value. Hydra's special keys (``_partial_``, ``_args_``,
    ``_recursive_``, ``_convert_``) and nested nodes are refused: nothing in the file chooses code.
    """
    if not isinstance(node, dict):
        raise ModelError(f"{file}: {kind} must be a mapping, got {type(node).__name__}")
    target = node.get("_target_")
    classes = _model_classes()[kind]
    if target not in classes:
        names = sorted({c.__name__ for c in classes.values()})
        raise ModelError(
            f"{file}: {kind}._target_={target!r} is not one of srgan's {kind} classes ({', '.join(names)})"
        )
    cls = classes[target]
    params = inspect.signature(cls.__init__).parameters
    kwargs = {}
    for key, value in node.items():
        if key == "_target_":
            continue
        if key.startswith("_") or key not in params or key == "self":
            raise ModelError(f"{file}: {kind}.{key} is not a parameter of {cls.__name__}")
        kwargs[key] = _plain(value, f"{kind}.{key}", file)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ModelError(f"{file}: {kind}: {cls.__name__} cannot be built from it ({err})") from None


def read_model_card(directory: Path) -> dict[str, Any]:
    """``config.yaml`` of a model folder as plain data, with the keys inference needs checked."""
    file = directory / MODEL_CONFIG
    try:
        loaded = OmegaConf.load(file)
        config = OmegaConf.to_container(loaded, resolve=False)
    except Exception as err:  # YAML and OmegaConf raise many types; all mean "not a model card"
        raise ModelError(f"{file}: not a readable YAML model card ({type(err).__name__}: {err})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{file}: a model card is a mapping, got {type(config).__name__}")
    for key in ("generator", "data"):
        if not isinstance(config.get(key), dict):
            raise ModelError(f"{file}: missing mapping {key!r}")
    data = config["data"]
    for key in ("scale", "bands", "band_names", "normalization"):
        if key not in data:
            raise ModelError(f"{file}: missing key data.{key}")
    if not isinstance(data["scale"], int) or isinstance(data["scale"], bool) or data["scale"] < 1:
        raise ModelError(f"{file}: data.scale must be a positive integer, got {data['scale']!r}")
    for key in ("bands", "band_names"):
        values = _plain(data[key], f"data.{key}", file)
        if not isinstance(values, list) or not values:
            raise ModelError(f"{file}: data.{key} must be a non-empty list")
    if not all(isinstance(b, str) for b in data["band_names"]):
        raise ModelError(f"{file}: data.band_names must be strings")
    return config


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ExportedModel:
    """Rebuild the generator from a model or run folder and load its weights.

    What is trusted: nothing in the folder. ``config.yaml`` is read as data and may only name one of
    srgan's generator and normalisation classes with plain arguments (:func:`build_from_card`);
    the weights are read from safetensors (no unpickling) and must match that generator exactly."""
    directory = resolve_model_dir(path)
    config = read_model_card(directory)
    file = directory / MODEL_CONFIG
    data = config["data"]
    generator = build_from_card(config["generator"], "generator", file)
    normalization = build_from_card(data["normalization"], "normalization", file)
    lr_normalization = (
        build_from_card(data["lr_normalization"], "normalization", file) if "lr_normalization" in data else None
    )
    weights = directory / MODEL_WEIGHTS
    try:
        state = read_safetensors(weights, device=str(map_location))
    except StateFileError as err:
        raise ModelError(str(err)) from None
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelError(f"{weights}: does not match the generator in {file} ({err})") from None
    generator.eval().requires_grad_(False)
    return ExportedModel(
        generator=generator,
        scale=data["scale"],
        bands=list(data["bands"]),
        band_names=list(data["band_names"]),
        normalization=normalization,
        config=config,
        directory=directory,
        lr_normalization=lr_normalization,
    )
