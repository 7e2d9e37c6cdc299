"""Training state as data: nested state dicts written as JSON + safetensors, read back without pickle.

A state dict (an optimizer's, a scheduler's, the RNG states, ...) is a tree of dicts, lists, tuples,
numbers, strings, tensors and numpy arrays. ``save_tree`` writes its structure to ``<stem>.json``
and its tensors to ``<stem>.safetensors``; ``load_tree`` rebuilds it. Nothing in either file can
name code: the JSON has five tags (tensor, ndarray, tuple, a dict with non-string keys, a float
JSON cannot spell), and anything else in a file is an error naming that file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

TENSOR, NDARRAY, TUPLE, ITEMS, FLOAT = "__tensor__", "__ndarray__", "__tuple__", "__items__", "__float__"
_TAGS = {TENSOR, NDARRAY, TUPLE, ITEMS, FLOAT}
_NDARRAY_DTYPES = {"uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "float32", "float64", "bool"}


class StateFileError(RuntimeError):
    """A state file that is missing, damaged or not what srgan writes; the message names the file."""


def _tensor_key(where: str, tensors: dict[str, torch.Tensor]) -> str:
    """Tensors are stored under their path in the tree (``head.weight``), readable with any
    safetensors tool; a path that two entries spell alike gets a suffix."""
    where = where or "tensor"
    key, n = where, 1
    while key in tensors:
        key, n = f"{where}#{n}", n + 1
    return key


def _encode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(value, torch.Tensor):
        key = _tensor_key(where, tensors)
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {TENSOR: key}
    if isinstance(value, np.ndarray):
        if value.dtype.name not in _NDARRAY_DTYPES:
            raise TypeError(f"{where}: numpy dtype {value.dtype} is not stored")
        key = _tensor_key(where, tensors)
        # uint16/uint32 have no torch dtype on every torch: stored widened, narrowed back on load.
        wide = value.astype(np.int64) if value.dtype.name in ("uint16", "uint32") else value
        tensors[key] = torch.from_numpy(np.ascontiguousarray(wide)).clone()
        return {NDARRAY: key, "dtype": value.dtype.name}
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else {FLOAT: repr(value)}
    if isinstance(value, tuple):
        return {TUPLE: [_encode(v, tensors, f"{where}.{i}" if where else str(i)) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{where}.{i}" if where else str(i)) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not _TAGS & set(value):
            return {k: _encode(v, tensors, f"{where}.{k}" if where else k) for k, v in value.items()}
        items = []
        for k, v in value.items():
            if not isinstance(k, (str, int, bool)) and k is not None:
                raise TypeError(f"{where}: dict key {k!r} of type {type(k).__name__} is not stored")
            items.append([k, _encode(v, tensors, f"{where}.{k}" if where else str(k))])
        return {ITEMS: items}
    raise TypeError(f"{where}: a {type(value).__name__} cannot be stored as training state")


def _decode(value: Any, tensors: dict[str, torch.Tensor], path: Path) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors, path) for v in value]
    if not isinstance(value, dict):
        return value
    tags = _TAGS & set(value)
    if not tags:
        return {k: _decode(v, tensors, path) for k, v in value.items()}
    tag = tags.pop()
    if tag in (TENSOR, NDARRAY):
        key = value[tag]
        if key not in tensors:
            raise StateFileError(f"{path}: tensor {key!r} is missing from {path.with_suffix('.safetensors').name}")
        if tag == TENSOR:
            return tensors[key]
        dtype = value.get("dtype")
        if dtype not in _NDARRAY_DTYPES:
            raise StateFileError(f"{path}: unsupported array dtype {dtype!r}")
        return tensors[key].numpy().astype(dtype)
    if tag == TUPLE:
        return tuple(_decode(v, tensors, path) for v in value[tag])
    if tag == FLOAT:
        if value[tag] not in ("inf", "-inf", "nan"):
            raise StateFileError(f"{path}: {value[tag]!r} is not a float")
        return float(value[tag])
    items = value[ITEMS]
    if not isinstance(items, list) or not all(isinstance(i, list) and len(i) == 2 for i in items):
        raise StateFileError(f"{path}: malformed {ITEMS} entry")
    return {k: _decode(v, tensors, path) for k, v in items}


def save_tree(stem: str | os.PathLike, tree: Any) -> list[Path]:
    """Write ``tree`` to ``<stem>.json`` and ``<stem>.safetensors``; returns both paths."""
    stem = Path(stem)
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(tree, tensors, "")
    json_path, tensor_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    save_file(tensors, str(tensor_path), metadata={"format": "srgan-state"})
    # No temporary file here: a checkpoint's pieces are written into a folder renamed when complete.
    json_path.write_text(json.dumps(structure, allow_nan=False))
    return [json_path, tensor_path]


def read_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise StateFileError(f"{path}: missing")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise StateFileError(f"{path}: not a readable safetensors file ({err}); truncated or damaged?") from None


def load_tree(stem: str | os.PathLike) -> Any:
    """Read what :func:`save_tree` wrote; a missing or damaged file is a ``StateFileError`` naming it."""
    stem = Path(stem)
    json_path = stem.with_suffix(".json")
    if not json_path.is_file():
        raise StateFileError(f"{json_path}: missing")
    try:
        structure = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StateFileError(f"{json_path}: not readable JSON ({err}); truncated or damaged?") from None
    tensors = read_safetensors(stem.with_suffix(".safetensors"))
    return _decode(structure, tensors, json_path)
