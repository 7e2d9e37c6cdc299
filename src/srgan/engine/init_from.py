"""``init_from``: a new run that starts from trained weights instead of a random initialisation.

The source is a run folder (the generator from its ``model/`` export, the discriminator, with
``init.discriminator=true``, from its latest complete checkpoint), a model folder, or an MLflow
artifact URI (``runs:/<id>/model``, ``models:/<name>/<version>``; fetched by
:func:`srgan.model_source.resolve_model`; a URI holds no checkpoint, so no discriminator). Only
weights are taken: the optimizers, step, schedules and data position start fresh, and the EMA
starts from the loaded generator. Everything read is untrusted data: the weights are safetensors
(nothing is unpickled), the card is read as YAML data and nothing is built from it; it is compared
with this run's config and names the source's bands.

Strict (``init.strict=true``, the default): the card's generator settings must equal this run's
``generator.*`` (except ``in_channels`` / ``out_channels`` under ``init.adapt_bands``, and
``noise_mode`` / ``noise_seed``, which only choose the inference noise), else an error lists the
settings that differ; then every weight must fit, else an error lists the missing, unexpected and
mismatched keys and names the file. ``init.strict=false`` loads the weights whose name and shape
fit and records the rest.

Band adaptation (``init.adapt_bands=true``), when the source's band names (``data.band_names`` of
its card) differ from this run's (``dataset.bands``): in srgan's generators (the
:class:`srgan.models.generators.SRGenerator` skeleton) only the first conv (``head``, one input
slice per band) and the last conv (``tail``, one output row and bias per band) are tied to the
bands; the interpolated skip (``global_residual``) has no weights and follows the bands by itself.
Bands are matched by name, exactly as spelled:

- ``head.weight[:, i]`` of this run's band ``i`` is the source's slice of the band of that name, or,
  for a band the source lacks, the mean of all the source's slices; the whole kernel is then
  multiplied by ``n_source / n_new``, so that the response to a uniform image (every band equal)
  is kept: exactly when the new bands include all of the source's, and in expectation (slices
  taken as exchangeable) when some are dropped. ``head.bias`` is not per band and is copied.
- ``tail.weight[i]`` and ``tail.bias[i]`` are the source's row and bias of that band, or, for a
  band the source lacks, the mean of the source's rows and of its biases. No rescaling.

A weight outside these three whose shape still differs is not adapted: it is a mismatch (an error
when strict). The discriminator is never adapted: its weights must fit this run's exactly.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from srgan.config import ConfigError, check_band_map
from srgan.engine.checkpoint import (
    MODEL_CONFIG,
    MODEL_WEIGHTS,
    CheckpointError,
    ModelError,
    checkpoint_steps,
    is_checkpoint,
    read_model_card,
    resolve_model_dir,
    verify_checkpoint,
)
from srgan.engine.state_io import StateFileError, load_tree, read_safetensors

log = logging.getLogger(__name__)

REPORT_FILE = "init_from.json"
# StochasticGenerator's inference noise: no weight depends on it, training always resamples.
INFERENCE_ONLY = ("noise_mode", "noise_seed")
BAND_KEYS = ("in_channels", "out_channels")
# The weights of SRGenerator tied to the bands: key -> (which bands, the band dimension).
BAND_WEIGHTS = {"head.weight": ("input", 1), "tail.weight": ("output", 0), "tail.bias": ("output", 0)}
_URI = re.compile(r"^[a-zA-Z][\w+.-]+:/")


class InitError(ConfigError):
    """``init_from`` cannot be applied as asked; the message names the source, file or setting."""


@dataclass
class InitSource:
    """A resolved ``init_from``: the model folder of its generator, its card, and (a run folder
    only) its latest complete checkpoint."""

    text: str
    kind: str
    model_dir: Path
    card: dict[str, Any]
    checkpoint: Path | None = None

    @property
    def weights(self) -> Path:
        return self.model_dir / MODEL_WEIGHTS


def shorten(items: list[str], limit: int = 8) -> str:
    """``a, b, c`` or, past ``limit``, the first ones and ``(+N more)``."""
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def _local_source(text: str, path: Path) -> tuple[str, Path, Path | None]:
    """(kind, model folder, latest checkpoint) of a path on disk."""
    if is_checkpoint(path):
        raise InitError(
            f"init_from={text!r} is a checkpoint; init_from takes the run folder ({path.parent.parent}: G from "
            "its model/, D from its latest checkpoint). To continue that run instead, use resume=<checkpoint>"
        )
    if (path / "model").is_dir() or (path / "checkpoints").is_dir():
        if not (path / "model").is_dir():
            raise InitError(
                f"init_from={text!r}: the run folder has no model/ export (the run did not finish?); "
                f"resume={path} continues it"
            )
        steps = checkpoint_steps(path / "checkpoints")
        return "run folder", path / "model", steps[max(steps)] if steps else None
    if (path / MODEL_CONFIG).is_file() or (path / MODEL_WEIGHTS).is_file():
        return "model folder", path, None
    raise InitError(
        f"init_from={text!r}: not a run folder (with model/) nor a model folder ({MODEL_WEIGHTS} + {MODEL_CONFIG})"
    )


def _download(text: str, tracking_uri: str | None) -> Path:
    from mlflow.exceptions import MlflowException

    from srgan.model_source import resolve_model

    try:
        return resolve_model_dir(resolve_model(text, tracking_uri))
    except (MlflowException, OSError) as err:
        raise InitError(f"init_from={text!r}: cannot fetch it from MLflow at {tracking_uri} ({err})") from None


def resolve_source(text: str, tracking_uri: str | None = None) -> InitSource:
    """Find what ``init_from`` names and read its card (as data); fetch an MLflow URI first."""
    path = Path(os.path.expanduser(text))
    if path.exists():
        kind, model_dir, checkpoint = _local_source(text, path.resolve())
    elif _URI.match(text):
        kind, model_dir, checkpoint = "MLflow URI", _download(text, tracking_uri), None
    else:
        raise InitError(f"init_from={text!r}: no such run folder or model folder, and not an MLflow URI (runs:/...)")
    try:
        card = read_model_card(model_dir)
    except (ModelError, OSError) as err:
        raise InitError(f"init_from={text!r}: {err}") from None
    return InitSource(text, kind, model_dir, card, checkpoint)


def _class_name(target: Any) -> str:
    return str(target).rsplit(".", 1)[-1]


def _defaults(class_name: str) -> dict[str, Any]:
    """The constructor defaults of one of srgan's generators (for a key one config lacks)."""
    from srgan.models import generators

    cls = getattr(generators, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, generators.SRGenerator)):
        return {}
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def generator_differences(source: dict[str, Any], run: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """``key (source a, this run b)`` for every generator setting that differs (the class first)."""
    a, b = _class_name(source.get("_target_")), _class_name(run.get("_target_"))
    if a != b:
        return [f"_target_ (source {a}, this run {b})"]
    defaults, unset = _defaults(a), "(unset)"
    keys = (set(source) | set(run)) - {"_target_", *INFERENCE_ONLY, *ignore}
    out = []
    for key in sorted(keys):
        x, y = source.get(key, defaults.get(key, unset)), run.get(key, defaults.get(key, unset))
        if x != y:
            out.append(f"{key} (source {x!r}, this run {y!r})")
    return out


def fit_report(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Which source tensors fit the target by name and shape: ``loadable`` (the tensors) and the
    ``missing``, ``unexpected`` and ``mismatched`` keys."""
    mismatched = [
        f"{k} (source {tuple(v.shape)}, this run {tuple(target[k].shape)})"
        for k, v in source.items()
        if k in target and v.shape != target[k].shape
    ]
    return {
        "loadable": {k: v for k, v in source.items() if k in target and v.shape == target[k].shape},
        "missing": sorted(set(target) - set(source)),
        "unexpected": sorted(set(source) - set(target)),
        "mismatched": sorted(mismatched),
    }


def _misfit(fit: dict[str, Any]) -> str:
    parts = [f"{what} {shorten(fit[what])}" for what in ("missing", "unexpected", "mismatched") if fit[what]]
    return "; ".join(parts)


def _band_rows(weight: torch.Tensor, dim: int, src: list[str], new: list[str]) -> torch.Tensor:
    """``weight`` with its band dimension ``dim`` re-indexed by name; a band ``src`` lacks: the mean."""
    mean = weight.mean(dim=dim)
    rows = [weight.select(dim, src.index(name)) if name in src else mean for name in new]
    return torch.stack(rows, dim=dim)


def adapt_bands(
    state: dict[str, torch.Tensor], src: list[str], new: list[str], file: Path
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The source generator's weights re-indexed from bands ``src`` to bands ``new`` by name (the rule
    in this module's docstring), and which bands were copied and which started from the mean."""
    if len(set(src)) != len(src) or len(set(new)) != len(new):
        raise InitError(f"{file}: band names must be unique to be matched (source {src}, this run {new})")
    for key, (which, dim) in BAND_WEIGHTS.items():
        if key not in state:
            raise InitError(f"{file}: no {key}; init.adapt_bands knows srgan's generators (head and tail convs) only")
        if state[key].shape[dim] != len(src):
            raise InitError(
                f"{file}: {key} has {state[key].shape[dim]} {which} bands, its card names {len(src)} ({src})"
            )
    adapted = dict(state)
    adapted["head.weight"] = _band_rows(state["head.weight"], 1, src, new) * (len(src) / len(new))
    adapted["tail.weight"] = _band_rows(state["tail.weight"], 0, src, new)
    adapted["tail.bias"] = _band_rows(state["tail.bias"], 0, src, new)
    report = {
        "source": list(src),
        "run": list(new),
        "copied": [name for name in new if name in src],
        "mean": [name for name in new if name not in src],
        "dropped": [name for name in src if name not in new],
        "input_scale": len(src) / len(new),
    }
    return adapted, report


def _check_settings(source: InitSource, generator_cfg: dict[str, Any], strict: bool, adapt: bool) -> list[str]:
    differences = generator_differences(source.card["generator"], generator_cfg, BAND_KEYS if adapt else ())
    if differences and strict:
        raise InitError(
            f"init_from={source.text!r}: the source's generator ({source.model_dir / MODEL_CONFIG}) differs from "
            f"this run's in {shorten(differences)}; set generator.* to the source's, or init.strict=false to load "
            "only the weights that fit"
        )
    return differences


def _bands(
    source: InitSource, state: dict, band_names: list[str], strict: bool, adapt: bool, band_map: dict | None = None
) -> tuple[dict, Any]:
    src = list(source.card["data"]["band_names"])
    band_names = check_band_map(dict(band_map or {}), list(band_names), src, "init.band_map", "the source's bands")
    if src == list(band_names):
        return state, ({"band_map": dict(band_map)} if band_map else None)
    if adapt:
        return adapt_bands(state, src, list(band_names), source.weights)
    if strict:
        raise InitError(
            f"init_from={source.text!r}: the source trained on bands {src}, this run has {list(band_names)}; "
            "init.adapt_bands=true maps the first and last convs by band name"
        )
    return state, {"source": src, "run": list(band_names), "by_position": True}


def read_weights(file: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        return read_safetensors(file)
    except StateFileError as err:
        raise InitError(f"init_from: the {what}: {err}") from None


def load_generator(
    generator: nn.Module,
    source: InitSource,
    generator_cfg: dict[str, Any],
    band_names: list[str],
    strict: bool = True,
    adapt_bands: bool = True,
    band_map: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Load the source's generator weights into ``generator`` (built from ``generator_cfg`` for a
    run on ``band_names``); returns the report. Nothing changes if it raises."""
    differences = _check_settings(source, generator_cfg, strict, adapt_bands)
    state = read_weights(source.weights, "generator weights")
    state, bands = _bands(source, state, band_names, strict, adapt_bands, band_map)
    fit = fit_report(state, generator.state_dict())
    if strict and _misfit(fit):
        raise InitError(f"{source.weights}: does not fit this run's generator: {_misfit(fit)}")
    generator.load_state_dict(fit["loadable"], strict=False)
    report = {
        "weights": str(source.weights),
        "loaded": len(fit["loadable"]),
        "of": len(generator.state_dict()),
        **{k: fit[k] for k in ("missing", "unexpected", "mismatched")},
        "setting_differences": differences,
    }
    return {"generator": report, "bands": bands}


def _discriminator_settings(checkpoint: Path, discriminator_cfg: dict[str, Any]) -> list[str]:
    """Where the source run's discriminator config (its resolved_config.yaml, read as data) differs."""
    file = checkpoint.parent.parent / "resolved_config.yaml"
    try:
        node = OmegaConf.to_container(OmegaConf.load(file), resolve=False).get("discriminator")
    except Exception:  # missing or unreadable (YAML and OmegaConf raise many types): the key names say the rest
        return []
    if not isinstance(node, dict):
        return []
    keys = sorted(set(node) | set(discriminator_cfg))
    return [
        f"{k} (source {node.get(k)!r}, this run {discriminator_cfg.get(k)!r})"
        for k in keys
        if node.get(k) != discriminator_cfg.get(k)
    ]


def load_discriminator(discriminator: nn.Module, source: InitSource, discriminator_cfg: dict[str, Any]) -> dict:
    """Load D, and nothing else, from the source run's latest complete checkpoint (verified first)."""
    checkpoint = source.checkpoint
    if checkpoint is None:
        where = {"run folder": "has no complete checkpoint", "model folder": "is a model folder"}.get(
            source.kind, "is an MLflow URI"
        )
        raise InitError(
            f"init.discriminator=true needs a run folder with a checkpoint (checkpoints/step-N), but "
            f"init_from={source.text!r} {where}: a model holds the generator only"
        )
    try:
        info = verify_checkpoint(checkpoint, ["discriminator"])
        state = load_tree(checkpoint / "discriminator")
    except (CheckpointError, StateFileError) as err:
        raise InitError(f"init_from: the discriminator: {err}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InitError(f"{checkpoint / 'discriminator.json'}: not a network's weights")
    fit = fit_report(state, discriminator.state_dict())
    if _misfit(fit):
        differences = _discriminator_settings(checkpoint, discriminator_cfg)
        settings = f"; its discriminator settings differ in {shorten(differences)}" if differences else ""
        raise InitError(
            f"{checkpoint / 'discriminator.safetensors'}: does not fit this run's discriminator (it is never "
            f"band-adapted){settings}: {_misfit(fit)}"
        )
    discriminator.load_state_dict(state, strict=True)
    return {"checkpoint": str(checkpoint), "step": info.get("step"), "loaded": len(state)}


def _notes(source: InitSource, data: Any) -> list[str]:
    notes = []
    normalization = getattr(data, "normalization", None)
    theirs = source.card["data"].get("normalization")
    if normalization is not None and hasattr(normalization, "to_config") and normalization.to_config() != theirs:
        notes.append(f"normalization differs: the source's {theirs}, this run's {normalization.to_config()}")
    return notes


def initialise(settings: Any, cfg: Any, parts: Any, data: Any, unwrap: Any) -> dict[str, Any]:
    """Apply ``settings.init_from`` to a built run's ``parts`` (every process loads the same files):
    G, its EMA copy re-synced to it, and D when asked; returns the report (also logged).
    ``unwrap``: the accelerator's ``unwrap_model``."""
    source_text, init = settings.init_from, settings.init
    source = resolve_source(source_text, settings.tracking.uri)
    generator = unwrap(parts.generator)
    generator_cfg = OmegaConf.to_container(cfg.generator, resolve=True)
    options = (init.strict, init.adapt_bands, dict(init.band_map or {}))
    loaded = load_generator(generator, source, generator_cfg, list(data.band_names), *options)
    # The EMA copied G when it was built: it must start from the loaded weights too.
    parts.ema.module.load_state_dict(generator.state_dict())
    discriminator = None
    if init.discriminator:
        d_cfg = OmegaConf.to_container(cfg.discriminator, resolve=True)
        discriminator = load_discriminator(unwrap(parts.discriminator), source, d_cfg)
    card_source = source.card.get("source") if isinstance(source.card.get("source"), dict) else {}
    report = {
        "init_from": source_text,
        "kind": source.kind,
        "model_dir": str(source.model_dir),
        "source_run_id": card_source.get("mlflow_run_id"),
        "source_step": card_source.get("step"),
        **loaded,
        "discriminator": discriminator,
        "notes": _notes(source, data),
    }
    g = report["generator"]
    partial = [f"{k}: {shorten(g[k])}" for k in ("setting_differences", "missing", "unexpected", "mismatched") if g[k]]
    if partial or (report["bands"] or {}).get("by_position"):
        log.warning("init_from %s (init.strict=false): %s; %s", source_text, summary(report), "; ".join(partial))
    else:
        log.info("init_from %s: %s", source_text, summary(report))
    for note in report["notes"]:
        log.warning("init_from %s: %s", source_text, note)
    return report


def summary(report: dict[str, Any]) -> str:
    """One short line: what was loaded and adapted (an MLflow tag)."""
    g = report["generator"]
    parts = [f"G {g['loaded']}/{g['of']} tensors"]
    for key in ("missing", "unexpected", "mismatched"):
        if g[key]:
            parts.append(f"{len(g[key])} {key}")
    bands = report.get("bands") or {}
    if bands.get("band_map"):
        parts.append(f"bands mapped by init.band_map {bands['band_map']}")
    if "copied" in bands:
        parts.append(
            f"bands copied [{shorten(bands['copied'])}], from mean [{shorten(bands['mean'])}], "
            f"dropped [{shorten(bands['dropped'])}], input x{bands['input_scale']:.4g}"
        )
    elif bands.get("by_position"):
        parts.append(f"bands {bands['source']} loaded by position into {bands['run']}")
    d = report.get("discriminator")
    parts.append(f"D from step {d['step']}" if d else "D fresh")
    return "; ".join(parts)


def write_report(report: dict[str, Any], run_dir: Path) -> Path:
    path = Path(run_dir) / REPORT_FILE
    path.write_text(json.dumps(report, indent=1, default=str))
    return path
