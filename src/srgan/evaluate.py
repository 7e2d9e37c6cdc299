"""``srgan-eval``: metrics of a trained model against bicubic and nearest upsampling on held-out data.

srgan-eval model=outputs/demo/<run>            # a run folder or its model/ folder
srgan-eval model=<run> dataset=raster dataset.path=scene.tif 'dataset.bands=[B04,B03,B02,B08]'
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from srgan.config import CONF_DIR
from srgan.devices import pick_device
from srgan.engine.checkpoint import ExportedModel, load_model
from srgan.metrics import SRMetrics
from srgan.models.blocks import upsample_image
from srgan.tiling import tiled_super_resolve
from srgan.tracking import MlflowTracker

BASELINES = ("bicubic", "nearest")


def check_compatible(model: ExportedModel, data: Any) -> None:
    """The model must have been trained for this scale and these bands, in this order."""
    if model.scale != data.scale:
        raise ValueError(f"model {model.directory} is x{model.scale} but dataset.scale={data.scale}")
    if list(model.band_names) != list(data.band_names):
        raise ValueError(
            f"model {model.directory} expects bands {model.band_names}, dataset {data.path} gives {data.band_names}"
        )


def evaluate_regions(
    model: ExportedModel,
    regions: list[tuple[torch.Tensor, torch.Tensor]],
    band_names: list[str],
    border: int,
    tile: int,
    overlap: int,
    batch_size: int,
    device: torch.device,
) -> dict[str, dict[str, float]]:
    """Metrics of the model and of each baseline over LR/HR pairs of normalised tensors, pooled."""
    methods = ("sr", *BASELINES)
    metrics = {name: SRMetrics(band_names, border).to(device) for name in methods}
    for lr, hr in regions:
        predictions = {
            "sr": tiled_super_resolve(model.generator.to(device), lr, model.scale, tile, overlap, batch_size, device),
            "bicubic": upsample_image(lr[None].to(device), model.scale, "bicubic")[0],
            "nearest": torch.nn.functional.interpolate(lr[None].to(device), scale_factor=model.scale, mode="nearest")[
                0
            ],
        }
        for name, pred in predictions.items():
            metrics[name].update(pred[None], hr[None].to(device))
    return {name: metrics[name].compute() for name in methods}


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per metric, one column per method, and the gain over bicubic."""
    columns = list(results)
    rows = list(results["sr"])
    head = f"{'metric':<16}" + "".join(f"{c:>12}" for c in columns) + f"{'SR-bicubic':>12}"
    lines = [head, "-" * len(head)]
    for row in rows:
        values = "".join(f"{results[c][row]:>12.4f}" for c in columns)
        gain = results["sr"][row] - results["bicubic"][row]
        lines.append(f"{row:<16}{values}{gain:>+12.4f}")
    return "\n".join(lines)


def default_output(model_dir: Path) -> Path:
    run_dir = model_dir.parent
    return (run_dir if (run_dir / "resolved_config.yaml").is_file() else model_dir) / "metrics.json"


@hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    device = pick_device(cfg.device)
    model = load_model(cfg.model)
    data = instantiate(cfg.dataset, _convert_="all")
    check_compatible(model, data)
    # The model sees data normalised as in its training (e.g. its z-score statistics), whatever
    # normalisation the evaluation's dataset config names.
    if model.normalization.to_config() != data.normalization.to_config():
        print(f"using the model's normalisation {model.normalization!r} instead of {data.normalization!r}")
        if getattr(data, "lr_normalization", None) is data.normalization:
            data.lr_normalization = model.normalization
        data.normalization = model.normalization
    regions = data.regions(cfg.split)
    results = evaluate_regions(
        model,
        [(r.lr, r.hr) for r in regions],
        data.band_names,
        cfg.border,
        cfg.tile,
        cfg.overlap,
        cfg.batch_size,
        device,
    )
    size = " + ".join(f"{r.hr.shape[-2]}x{r.hr.shape[-1]}" for r in regions)
    print(
        f"\n{data.name} / {cfg.split} area ({size} HR px, x{data.scale}, "
        f"border {cfg.border} px); PSNR pooled over bands on normalised values, SAM in degrees\n"
    )
    print(format_table(results))
    output = Path(cfg.output) if cfg.output else default_output(model.directory)
    report = {
        "model": str(model.directory),
        "dataset": data.name,
        "path": str(data.path),
        "split": cfg.split,
        "border": cfg.border,
        "scale": data.scale,
        "bands": data.band_names,
        "results": results,
        "gain_over_bicubic": {k: v - results["bicubic"][k] for k, v in results["sr"].items()},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {output}")
    run_id = model.config.get("source", {}).get("mlflow_run_id")
    if cfg.log_to_mlflow and run_id:
        tracker = MlflowTracker(cfg.tracking.uri, cfg.tracking.experiment_name)
        if tracker.attach(run_id):
            finite = {f"{cfg.split}/{m}/{k}": v for m, r in results.items() for k, v in r.items() if math.isfinite(v)}
            tracker.log_metrics(finite, step=int(model.config["source"].get("step") or 0))
            tracker.log_artifact(output, "evaluation")
            tracker.finish(status=None)
            print(f"logged to MLflow run {run_id} ({tracker.uri})")
        else:
            print(f"not logged to MLflow: run {run_id} is not in {tracker.uri}")


if __name__ == "__main__":
    main()
