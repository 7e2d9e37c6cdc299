"""What a released model records of the data it was trained on, and the dataset rebuilt from it.

A model card (``model/config.yaml``) holds ``data.dataset``: the dataset's kind and its plain
arguments (absolute file paths, bands, scale, split), and ``data.train_areas``: where the training
split lies (file, CRS, bounds, pixel window). ``srgan-eval model=<run>`` without ``dataset=...``
evaluates on that data and split; with another dataset it refuses a test area that overlaps a
training area (:func:`check_held_out`).

A card is untrusted input (a model folder from someone else): the kind must be one of srgan's
dataset classes, every argument one of its parameters with a plain value (or a mapping of plain
values, e.g. ``split``), the degradation one of srgan's two classes, and the normalisation is the
model's own (fitted) one. Nothing in the file chooses code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from srgan.data.datasets import Area, PairedFolderData, RasterSRData, SyntheticSRData
from srgan.data.taco import TacoPairsData

KINDS: dict[str, type] = {
    "raster": RasterSRData,
    "paired_folder": PairedFolderData,
    "taco_pairs": TacoPairsData,
    "synthetic": SyntheticSRData,
}
_BY_CLASS = {cls.__name__: kind for kind, cls in KINDS.items()}
# Set from the model, not from the card (normalisations), or of no use to an evaluation.
_NOT_RECORDED = {"_target_", "normalization", "lr_normalization", "degradation", "cache_dir", "filters"}


class CardDataError(ValueError):
    """A model card's data record that cannot be used; names the file and key."""


def dataset_record(config: dict[str, Any], data: Any) -> dict[str, Any]:
    """``data.dataset`` and ``data.train_areas`` for a model card, from the resolved dataset config
    (a plain dict) and the dataset built from it."""
    kind = _BY_CLASS.get(type(data).__name__)
    if kind is None:
        return {}
    record: dict[str, Any] = {"kind": kind}
    for key, value in config.items():
        if key in _NOT_RECORDED:
            continue
        if key == "path" and kind in ("raster", "taco_pairs"):
            value = [str(Path(p).resolve()) for p in ([value] if isinstance(value, str) else value)]
        elif key == "root":
            value = str(Path(value).resolve())
        record[key] = value
    return {"dataset": record, "train_areas": [a.to_card() for a in data.areas("train")]}


def _check_plain(value: Any, where: str, file: Path, depth: int = 0) -> Any:
    from srgan.engine.checkpoint import _plain

    if isinstance(value, dict):
        if depth >= 2:
            raise CardDataError(f"{file}: {where} is nested too deeply for a dataset argument")
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith("_"):
                raise CardDataError(f"{file}: {where}.{key} is not allowed in a model card")
            _check_plain(item, f"{where}.{key}", file, depth + 1)
        return value
    return _plain(value, where, file)


def dataset_from_card(model: Any) -> Any:
    """The dataset the model was trained on, rebuilt from its card with the model's normalisation."""
    import inspect

    from srgan.engine.checkpoint import MODEL_CONFIG, build_from_card

    file = Path(model.directory) / MODEL_CONFIG
    data = model.config.get("data", {})
    record = data.get("dataset")
    if not isinstance(record, dict):
        raise CardDataError(
            f"{file}: the model card does not record the data it was trained on (data.dataset; models "
            "exported before srgan recorded it): pass dataset=... (e.g. dataset=raster dataset.path=...)"
        )
    kind = record.get("kind")
    if kind not in KINDS:
        raise CardDataError(f"{file}: data.dataset.kind={kind!r} is not one of {sorted(KINDS)}")
    cls = KINDS[kind]
    params = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {}
    for key, value in record.items():
        if key == "kind":
            continue
        if key not in params or key == "self" or key in _NOT_RECORDED:
            raise CardDataError(f"{file}: data.dataset.{key} is not an argument of {cls.__name__}")
        kwargs[key] = _check_plain(value, f"data.dataset.{key}", file)
    if "degradation" in params:
        degradation = data.get("degradation")
        if degradation is None:
            raise CardDataError(f"{file}: data.degradation is missing; {cls.__name__} needs one")
        try:
            kwargs["degradation"] = build_from_card(degradation, "degradation", file)
        except ValueError as err:
            raise CardDataError(str(err)) from None
    kwargs["normalization"] = model.normalization
    if "lr_normalization" in params:
        kwargs["lr_normalization"] = model.lr_normalization
    for key in ("path", "root"):
        for path in [kwargs[key]] if isinstance(kwargs.get(key), str) else kwargs.get(key) or []:
            if kind != "synthetic" and not Path(path).exists():
                raise CardDataError(
                    f"{file}: the training data {path} (data.dataset.{key}) is not there any more; "
                    "pass dataset=... to evaluate on other data"
                )
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise CardDataError(f"{file}: data.dataset: {cls.__name__} cannot be built from it ({err})") from None


def train_areas(model: Any) -> list[Area]:
    """The training areas a model card records (none for cards written before they were)."""
    areas = []
    for item in model.config.get("data", {}).get("train_areas") or []:
        try:
            areas.append(Area(str(item["path"]), item["crs"], tuple(item["bounds"]), tuple(item["pixels"])))
        except (KeyError, TypeError, ValueError):
            raise CardDataError(f"{model.directory}: data.train_areas holds a malformed entry {item!r}") from None
    return areas


def check_held_out(model: Any, data: Any, split: str) -> int:
    """Refuse to evaluate ``split`` of ``data`` where it overlaps the model's training areas;
    returns the number of training areas checked against."""
    trained = train_areas(model)
    if not trained or not hasattr(data, "areas"):
        return 0
    for area in data.areas(split):
        for seen in trained:
            if area.overlaps(seen):
                raise CardDataError(
                    f"the {split} area of {area.path} (pixels row, col, rows, cols = {list(area.pixels)}) overlaps "
                    f"the area model {model.directory} was trained on ({seen.path}, {list(seen.pixels)}): its numbers "
                    "would not be held-out results. Evaluate another split or area (e.g. the model's own split: "
                    "leave dataset= unset), or pass allow_train_overlap=true to measure it anyway"
                )
    return len(trained)
