"""Models others can use without srgan's training code: an MLflow pyfunc flavour and ONNX.

Both take the input raster's own units (what the GeoTIFF holds, e.g. Sentinel-2 digital numbers as
float32) and return the super-resolved image in the same units: the model card's normalisations are
part of the model (:class:`PhysicalUnitsModel`), so a user needs no srgan code to feed it.

- **MLflow pyfunc.** Every exported model folder (``<run>/model``) carries an ``MLmodel`` file: the
  ``python_function`` flavour with ``loader_module: srgan.deploy`` and an input/output tensor
  signature ``(-1, bands, -1, -1)`` float32. ``mlflow.pyfunc.load_model`` / ``mlflow models predict
  --env-manager local`` then work on arrays. Nothing is pickled: the flavour's data is the folder's
  own safetensors weights and YAML card, read by :func:`srgan.engine.checkpoint.load_model` (which
  trusts nothing in them). srgan itself never reads ``MLmodel`` for code: ``srgan-infer`` and
  ``srgan-eval`` only follow its ``data`` path, and only inside the folder.
- **ONNX** (``srgan-export format=onnx``): the same module exported with dynamic batch, height and
  width, checked against the torch output on random tiles of several sizes with onnxruntime on the
  CPU before the file is kept.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

MLMODEL = "MLmodel"
INPUT_NAME = "lr"
OUTPUT_NAME = "sr"


class DeployError(ValueError):
    """An export or a prediction that cannot be done as asked; the message names the file or value."""


class PhysicalUnitsModel(nn.Module):
    """The generator between the card's normalisations: input and output in the raster's units.

    ``forward(lr)``: ``(N, bands, H, W)`` float32 -> ``(N, bands, H * scale, W * scale)`` float32."""

    def __init__(self, generator: nn.Module, lr_normalization: Any, normalization: Any) -> None:
        super().__init__()
        self.generator = generator
        self.lr_normalization = lr_normalization
        self.normalization = normalization

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.normalization.denormalize(self.generator(self.lr_normalization.normalize(lr)))


def physical_model(model: Any) -> PhysicalUnitsModel:
    """:class:`PhysicalUnitsModel` of an :class:`srgan.engine.checkpoint.ExportedModel`, in eval mode."""
    return PhysicalUnitsModel(model.generator, model.lr_normalization, model.normalization).eval()


# -- MLflow pyfunc ---------------------------------------------------------------------------------


def _signature(bands: int) -> Any:
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    spec = (-1, bands, -1, -1)
    return ModelSignature(
        # One unnamed tensor each way: pyfunc then passes and returns a plain array.
        inputs=Schema([TensorSpec(np.dtype(np.float32), spec)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), spec)]),
    )


def write_mlmodel(directory: Path, bands: int, scale: int) -> Path:
    """Add the ``python_function`` flavour to an exported model folder (its ``MLmodel`` file)."""
    import mlflow.pyfunc
    from mlflow.models import Model

    model = Model(signature=_signature(bands), metadata={"srgan_scale": scale, "srgan_bands": bands})
    # data ".": the flavour's data is this folder itself (generator weights + card), no copy.
    mlflow.pyfunc.add_to_model(model, loader_module=__name__, data=".")
    path = Path(directory) / MLMODEL
    model.save(str(path))
    return path


class SRPyfunc:
    """What ``mlflow.pyfunc.load_model`` returns for an srgan model: ``predict(array)``.

    ``model_input``: ``(N, bands, H, W)`` or ``(bands, H, W)``, in the raster's units. Large images
    are processed in tiles (``params``: ``tile``, ``overlap``, ``batch_size``), blended without seams."""

    def __init__(self, path: str | os.PathLike) -> None:
        from srgan.engine.checkpoint import load_model

        self.model = load_model(path)
        self.net = physical_model(self.model)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        from srgan.tiling import tiled_super_resolve

        params = dict(params or {})
        if isinstance(model_input, dict):  # {"lr": array}, as a named-tensor client may send it
            if len(model_input) != 1:
                raise DeployError(f"expected one input array, got {sorted(model_input)}")
            (model_input,) = model_input.values()
        array = np.asarray(model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input)
        if not np.issubdtype(array.dtype, np.number):
            raise DeployError(f"expected a numeric array, got dtype {array.dtype}")
        single = array.ndim == 3
        batch = array[None] if single else array
        bands = len(self.model.band_names)
        if batch.ndim != 4 or batch.shape[1] != bands:
            raise DeployError(
                f"expected an array (N, {bands}, H, W) or ({bands}, H, W) of bands "
                f"{self.model.band_names}, got shape {tuple(array.shape)}"
            )
        options = {k: int(params.get(k, d)) for k, d in (("tile", 128), ("overlap", 16), ("batch_size", 4))}
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        out = [tiled_super_resolve(self.net, image, self.model.scale, **options).numpy() for image in x]
        result = np.stack(out).astype(np.float32, copy=False)
        return result[0] if single else result


def _load_pyfunc(data_path: str) -> SRPyfunc:
    """MLflow's entry point for the ``python_function`` flavour (``loader_module: srgan.deploy``)."""
    return SRPyfunc(data_path)


def mlmodel_data_dir(directory: Path) -> Path | None:
    """The folder an ``MLmodel`` file's ``python_function`` flavour names as its data, if the file is
    there; the path must stay inside ``directory`` (a hostile file cannot point elsewhere)."""
    import yaml

    file = Path(directory) / MLMODEL
    if not file.is_file():
        return None
    try:
        spec = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise DeployError(f"{file}: not a readable MLmodel file ({err})") from None
    flavour = (spec or {}).get("flavors", {}).get("python_function") if isinstance(spec, dict) else None
    data = flavour.get("data") if isinstance(flavour, dict) else None
    if not isinstance(data, str):
        return None
    root = Path(directory).resolve()
    target = (root / data).resolve()
    if target != root and root not in target.parents:
        raise DeployError(f"{file}: python_function.data={data!r} points outside the model folder")
    return target


# -- ONNX ------------------------------------------------------------------------------------------


def export_onnx(
    model: Any,
    output: str | os.PathLike,
    opset: int = 18,
    check_sizes: tuple[int, ...] = (16, 37, 64),
    atol: float = 1e-4,
    seed: int = 0,
) -> dict[str, Any]:
    """Export ``model`` (an ``ExportedModel``) to ONNX with dynamic batch, height and width, in the
    raster's units, then check onnxruntime's output against torch's on a random tile of each of
    ``check_sizes`` (LR pixels, square and not). ``atol`` is relative to the output's value range
    (the largest absolute output value, at least 1): a model in digital numbers of 0..10000 is held to
    the same relative accuracy as one in reflectance. The file is written only if every check passes;
    returns the check report."""
    try:
        import onnxruntime as ort
        import onnxscript  # noqa: F401 - torch's ONNX exporter needs it
    except ImportError as err:
        raise DeployError(f"ONNX export needs the deploy extra: pip install 'srgan[deploy]' ({err})") from None

    output = Path(output)
    net = physical_model(model)
    bands = len(model.band_names)
    example = _random_tile(model, bands, 24, 24, np.random.default_rng(seed))
    batch, height, width = (torch.export.Dim(n, min=1, max=16384) for n in ("batch", "height", "width"))
    with tempfile.TemporaryDirectory(prefix="srgan-onnx-") as tmp:
        staged = Path(tmp) / output.name
        with torch.no_grad():
            program = torch.onnx.export(
                net,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch, 2: height, 3: width},),
                opset_version=opset,
                external_data=False,
            )
        program.save(str(staged))
        session = ort.InferenceSession(str(staged), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(seed + 1)
        checks = []
        for size in check_sizes:
            h, w = size, max(1, size + (size % 7) - 3)
            tile = _random_tile(model, bands, h, w, rng, batch=2)
            with torch.no_grad():
                expected = net(tile).numpy()
            got = session.run([OUTPUT_NAME], {INPUT_NAME: tile.numpy()})[0]
            if got.shape != expected.shape:
                raise DeployError(
                    f"{output}: ONNX output shape {got.shape} != torch {expected.shape} for a {h}x{w} tile"
                )
            span = max(1.0, float(np.abs(expected).max()))
            err = float(np.abs(got - expected).max())
            checks.append({"lr_size": [h, w], "max_abs_error": err, "relative_error": err / span})
            if err / span > atol:
                raise DeployError(
                    f"{output}: ONNX output differs from torch by {err:.3g} (relative {err / span:.3g} > {atol:g}) "
                    f"on a {h}x{w} tile; nothing written"
                )
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), output)
    return {
        "onnx": str(output),
        "opset": opset,
        "input": [INPUT_NAME, "float32", ["batch", bands, "height", "width"]],
        "output": [OUTPUT_NAME, "float32", ["batch", bands, f"height*{model.scale}", f"width*{model.scale}"]],
        "units": "the input raster's own (the model card's normalisations are inside the graph)",
        "checks": checks,
        "atol": atol,
    }


def _random_tile(model: Any, bands: int, h: int, w: int, rng: np.random.Generator, batch: int = 1) -> torch.Tensor:
    """Random input in the raster's units: uniform in normalised space [0, 1], mapped back."""
    x = torch.from_numpy(rng.uniform(0.0, 1.0, (batch, bands, h, w)).astype(np.float32))
    return model.lr_normalization.denormalize(x).float().contiguous()
